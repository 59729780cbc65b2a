"""gigq_mp: run GigQ job graphs on a supervised pool of worker processes.

    from gigq_mp import task, Job, JobQueue, JobStatus, Workflow, Worker
"""

from __future__ import annotations

import atexit
import logging
import sys

from .jobqueue import JobQueue
from .model import Job, JobStatus
from .store import close_all as _close_stores
from .supervisor import close_all as _close_supervisors
from .task import task
from .worker import Worker
from .workflow import Workflow

__version__ = "0.1.0"

__all__ = [
    "Job",
    "JobQueue",
    "JobStatus",
    "Worker",
    "Workflow",
    "close_connections",
    "setup_logging",
    "task",
    "__version__",
]

logging.getLogger("gigq_mp").addHandler(logging.NullHandler())


def close_connections() -> None:
    """Close every database connection this process opened."""
    _close_stores()


def setup_logging(level: int = logging.INFO) -> None:
    """Opt in to gigq_mp's log messages on stderr."""
    logger = logging.getLogger("gigq_mp")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if not isinstance(handler, logging.NullHandler):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    logger.addHandler(handler)


atexit.register(_close_supervisors)
