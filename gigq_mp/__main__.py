"""`python -m gigq_mp`: the command line."""

from .cli import entry_point

entry_point()
