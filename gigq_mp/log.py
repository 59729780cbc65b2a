"""gigq_mp's loggers: silent unless the application configures logging
(`gigq_mp.setup_logging()` opts in). Worker processes never import this."""

from __future__ import annotations

import logging

logging.getLogger("gigq_mp").addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """The logger of one gigq_mp module (pass its `__name__`)."""
    return logging.getLogger(name)
