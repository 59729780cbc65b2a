"""Progress of a run as one line: live in place on a terminal, a plain line every few
seconds otherwise. The supervisor calls it with its counts."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

PLAIN_EVERY_SECONDS = 5.0


def describe(counts: dict) -> str:
    """'12/40 done, 2 running, 1 failed, 3.1 s, ETA 7 s' from the supervisor's counts."""
    total, done, elapsed = counts["total"], counts["done"], counts["elapsed"]
    parts = [f"{done}/{total} done" if total is not None else f"{done} done", f"{counts['running']} running"]
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed")
    if counts["cancelled"]:
        parts.append(f"{counts['cancelled']} cancelled")
    parts.append(f"{elapsed:.1f} s")
    if total and 0 < done < total:
        parts.append(f"ETA {elapsed / done * (total - done):.0f} s")
    return ", ".join(parts)


class ProgressLine:
    """A progress callback for Workflow.run(progress=...) and the supervisor."""

    def __init__(self, stream: Optional[TextIO] = None, label: str = ""):
        self.stream = stream if stream is not None else sys.stderr
        self.label = f"{label}: " if label else ""
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_plain = float("-inf")

    def __call__(self, counts: dict) -> None:
        text = self.label + describe(counts)
        if self.live:
            self.stream.write("\r" + text + "\x1b[K" + ("\n" if counts.get("final") else ""))
            self.stream.flush()
        elif counts.get("final") or time.monotonic() - self._last_plain >= PLAIN_EVERY_SECONDS:
            self._last_plain = time.monotonic()
            self.stream.write(text + "\n")
            self.stream.flush()


class NotebookProgress:
    """A progress callback that updates one display in place in a Jupyter notebook."""

    def __init__(self, label: str = ""):
        from IPython.display import HTML, display

        self._html = HTML
        self.label = f"<b>{label}</b>: " if label else ""
        self._handle = display(HTML(self.label + "starting"), display_id=True)

    def __call__(self, counts: dict) -> None:
        self._handle.update(self._html(self.label + describe(counts)))


def in_notebook() -> bool:
    """True when running in a Jupyter kernel (IPython with a kernel attached)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ipython = shell.get_ipython()
    except AttributeError:
        return False
    return ipython is not None and getattr(ipython, "kernel", None) is not None


def default_progress(label: str):
    """Progress shown by Workflow.run when the caller asked for none in particular."""
    if in_notebook():
        return NotebookProgress(label)
    if sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty():
        return ProgressLine(sys.stderr, label)
    return None
