"""gigq_mp: run GigQ job graphs on a supervised pool of worker processes.

    from gigq_mp import task, Job, JobQueue, JobStatus, Workflow, Worker

The queue, worker and workflow are imported on first use, so that a worker
process, which imports `gigq_mp.runner` only, starts without loading SQLite or
the supervisor.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__version__ = "0.1.0"

from .model import Job, JobStatus
from .task import task  # binds the name `task` to the decorator, not the submodule

_EXPORTS = {"JobQueue": "jobqueue", "Worker": "worker", "Workflow": "workflow"}

__all__ = ["Job", "JobStatus", "task", *_EXPORTS, "close_connections", "setup_logging", "__version__"]

def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gigq_mp' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))


def close_connections() -> None:
    """Close every database connection this process opened."""
    from .store import close_all

    close_all()


def setup_logging(level: int = 20) -> None:
    """Opt in to gigq_mp's log messages on stderr (`level`: logging.INFO by default)."""
    import logging

    from .log import get_logger

    logger = get_logger("gigq_mp")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if not isinstance(handler, logging.NullHandler):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    logger.addHandler(handler)
