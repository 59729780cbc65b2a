"""Per-job capture of a worker process's stdout and stderr.

Each worker process points its file descriptors 1 and 2 at two files of its own
in the pool's capture directory while a job runs (so output of C code and of
child processes is caught too), and sends the last CAPTURE_TAIL bytes of each
with its reply. The files stay where the supervisor can read them, so the
output of a job that hung or crashed is kept as well.
"""

from __future__ import annotations

import os
import sys
from typing import Tuple

CAPTURE_TAIL = 64 * 1024  # bytes of each stream kept per attempt

Output = Tuple[str, str]  # (stdout tail, stderr tail)


def capture_paths(capture_dir: str, pid: int) -> Tuple[str, str]:
    return (os.path.join(capture_dir, f"{pid}.stdout"), os.path.join(capture_dir, f"{pid}.stderr"))


def read_tail(path: str) -> str:
    """The last CAPTURE_TAIL bytes of a capture file, decoded ('' if there is none)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - CAPTURE_TAIL))
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def collect(capture_dir: str, pid: int) -> Output:
    """What the worker process `pid` printed during its last job; removes its files."""
    out_path, err_path = capture_paths(capture_dir, pid)
    output = (read_tail(out_path), read_tail(err_path))
    for path in (out_path, err_path):
        try:
            os.remove(path)
        except FileNotFoundError:
            continue
    return output


class OutputCapture:
    """Inside a worker process: send fds 1 and 2 to this process's capture files during a job."""

    def __init__(self, capture_dir: str):
        self.files = [open(path, "w+b") for path in capture_paths(capture_dir, os.getpid())]
        self.saved = [os.dup(1), os.dup(2)]
        self.dirty = [False, False]  # written to by the last job: empty it before the next

    def start(self) -> None:
        for i, (fd, f) in enumerate(zip((1, 2), self.files)):
            if self.dirty[i]:
                f.seek(0)
                f.truncate()
            os.dup2(f.fileno(), fd)

    def stop(self) -> Output:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                continue  # the job closed or broke the stream; what reached the fd is kept
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
        return (self._tail(0), self._tail(1))

    def _tail(self, i: int) -> str:
        f = self.files[i]
        size = os.fstat(f.fileno()).st_size
        self.dirty[i] = size > 0
        if not size:
            return ""
        f.seek(max(0, size - CAPTURE_TAIL))
        return f.read().decode("utf-8", errors="replace")
