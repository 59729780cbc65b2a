"""`@task`: turn a callable into a submittable job template, and refuse what cannot run.

Unlike GigQ, lambdas, closures, nested functions and functions of `__main__`
or a notebook are accepted: they travel to worker processes cloudpickled.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

from .model import Job, check_job_options

_DEFAULTS = {
    "priority": 0,
    "max_attempts": 3,
    "timeout": 300,
    "description": "",
    "retry_delay": 0,
    "retry_backoff": False,
    "max_memory_mb": None,
}
VALID_OPTIONS = frozenset(_DEFAULTS) | {"name"}


class TaskWrapper:
    """A callable marked with @task: still callable, plus `.submit()` and `.to_job()`."""

    def __init__(self, function: Callable, **options: Any):
        unknown = set(options) - VALID_OPTIONS
        if unknown:
            raise TypeError(
                f"@task got unknown option(s): {', '.join(sorted(unknown))}; "
                f"valid options are: {', '.join(sorted(VALID_OPTIONS))}"
            )
        _refuse(function)
        self._options = {**_DEFAULTS, **options}
        self._options.setdefault("name", getattr(function, "__name__", type(function).__name__))
        check_job_options(
            priority=self._options["priority"],
            max_attempts=self._options["max_attempts"],
            timeout=self._options["timeout"],
            retry_delay=self._options["retry_delay"],
            max_memory_mb=self._options["max_memory_mb"],
        )
        functools.update_wrapper(self, function)
        self.function = function

    @property
    def name(self) -> str:
        return self._options["name"]

    @property
    def options(self) -> dict:
        """The job options fixed at decoration time."""
        return dict(self._options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def to_job(self, **params: Any) -> Job:
        """A Job of this task with `params`, not yet submitted."""
        return self.make_job(params)

    def make_job(self, params: Optional[dict], pass_parent_results: Optional[bool] = None) -> Job:
        options = dict(self._options)
        return Job(
            name=options.pop("name"),
            function=self.function,
            params=params,
            pass_parent_results=pass_parent_results,
            priority=options["priority"],
            max_attempts=options["max_attempts"],
            timeout=options["timeout"],
            description=options["description"],
            retry_delay=options["retry_delay"],
            retry_backoff=options["retry_backoff"],
            max_memory_mb=options["max_memory_mb"],
        )

    def submit(self, queue: Any, /, **params: Any) -> str:
        """Create a Job with `params` and submit it to `queue`; returns the job id."""
        return queue.submit(self.to_job(**params))

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in sorted(self._options.items()) if k != "name")
        return f"<task {self.name!r} ({options})>"


def _check_option_names(options: dict) -> None:
    unknown = set(options) - VALID_OPTIONS
    if unknown:
        raise TypeError(
            f"@task got unknown option(s): {', '.join(sorted(unknown))}; "
            f"valid options are: {', '.join(sorted(VALID_OPTIONS))}"
        )


def _refuse(function: Any) -> None:
    if isinstance(function, TaskWrapper):
        raise TypeError(f"@task applied twice to {function.name!r}; apply it once")
    if not callable(function):
        raise TypeError(f"@task needs a callable, got {type(function).__name__}: {function!r}")
    import inspect  # here: the fork server imports this module (with gigq_mp), and never needs it

    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        raise TypeError(
            f"@task cannot run async function {getattr(function, '__qualname__', function)!r}: "
            "worker processes call jobs synchronously; wrap it with asyncio.run in a plain function"
        )
    if inspect.isgeneratorfunction(function):
        raise TypeError(
            f"@task cannot run generator function {getattr(function, '__qualname__', function)!r}: "
            "its result would be an unconsumed generator; return a list instead"
        )


def task(function: Optional[Callable] = None, **options: Any) -> Any:
    """Mark a function as a job template: `@task`, `@task()` or `@task(name=..., timeout=...)`."""
    if function is not None:
        return TaskWrapper(function, **options)
    _check_option_names(options)  # fail at the decorator line, not at the def below it
    return lambda fn: TaskWrapper(fn, **options)
