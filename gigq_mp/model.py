"""`Job` and `JobStatus`: what a job is, and which states are final."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Callable, Optional

from .errors import ValidationError


class JobStatus(Enum):
    """The states of a job, with GigQ's values."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"


# Statuses a job never leaves on its own (only requeue_job revives the last three).
FINAL = frozenset({"completed", "failed", "cancelled", "timeout"})
# A job that ends in one of these blocks its descendants for good.
BLOCKING = frozenset({"failed", "cancelled", "timeout"})


def now_iso() -> str:
    """The timestamp format GigQ writes: local time, ISO 8601."""
    return datetime.now().isoformat()


def check_job_options(
    *, priority: Any, max_attempts: Any, timeout: Any, retry_delay: Any, max_memory_mb: Any
) -> None:
    """Raise ValidationError naming the first option outside its valid range."""
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ValidationError(f"priority must be an int, got {priority!r}")
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
        raise ValidationError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    for name, value in (("timeout", timeout), ("retry_delay", retry_delay)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValidationError(f"{name} must be a number of seconds >= 0, got {value!r}")
    if timeout == 0:
        raise ValidationError("timeout must be > 0 seconds, got 0")
    if max_memory_mb is not None and (
        not isinstance(max_memory_mb, (int, float)) or isinstance(max_memory_mb, bool) or max_memory_mb <= 0
    ):
        raise ValidationError(f"max_memory_mb must be a number > 0 or None, got {max_memory_mb!r}")


class Job:
    """A unit of work: a callable, its params and how to run it."""

    def __init__(
        self,
        name: str,
        function: Callable,
        params: Optional[dict] = None,
        priority: int = 0,
        dependencies: Optional[list] = None,
        max_attempts: int = 3,
        timeout: float = 300,
        description: str = "",
        pass_parent_results: Optional[bool] = None,
        retry_delay: float = 0,
        *,
        retry_backoff: bool = False,
        max_memory_mb: Optional[float] = None,
    ):
        if not callable(function):
            raise TypeError(f"Job function must be callable, got {type(function).__name__}")
        if params is not None and not isinstance(params, dict):
            raise ValidationError(f"params must be a dict, got {type(params).__name__}")
        if pass_parent_results not in (None, True, False):
            raise ValidationError(
                f"pass_parent_results must be None, True or False, got {pass_parent_results!r}"
            )
        check_job_options(
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
            retry_delay=retry_delay,
            max_memory_mb=max_memory_mb,
        )
        import uuid  # here, not at the top: worker processes import this module but make no jobs

        self.id = str(uuid.uuid4())
        self.name = name
        self.function = function
        self.params = params or {}
        self.priority = priority
        self.dependencies = list(dependencies or [])
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.description = description
        self.pass_parent_results = pass_parent_results
        self.retry_delay = retry_delay
        self.retry_backoff = bool(retry_backoff)
        self.max_memory_mb = max_memory_mb
        self.created_at = now_iso()

    def __repr__(self) -> str:
        return f"<Job {self.name!r} {self.id}>"


def status_value(status: Any) -> Optional[str]:
    """A JobStatus or its value -> the value (None stays None); ValidationError otherwise."""
    if status is None or isinstance(status, JobStatus):
        return status and status.value
    if status in {s.value for s in JobStatus}:
        return status
    raise ValidationError(f"unknown job status {status!r}; valid: {', '.join(s.value for s in JobStatus)}")
