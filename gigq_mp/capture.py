"""Per-job capture of a worker process's stdout and stderr.

Each worker process points its file descriptors 1 and 2 at two files of its own
in the pool's capture directory (so output of C code and of child processes is
caught too), empties them before each job, and sends the last CAPTURE_TAIL
bytes of each with its reply. The files stay where the supervisor can read them, so the
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


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            continue  # the job closed or broke the stream; what reached the fd is kept


class OutputCapture:
    """Inside a worker process: fds 1 and 2 point at this process's capture files for as
    long as it lives (a dup2 there and back per job cost more than a short job), and each
    job starts with them empty. What the process prints between jobs is dropped or goes
    with the next job's output; its own last words, if it fails, go where fds 1 and 2
    pointed before (restore)."""

    def __init__(self, capture_dir: str):
        self.files = [open(path, "w+b") for path in capture_paths(capture_dir, os.getpid())]
        self.saved = [os.dup(1), os.dup(2)]
        for fd, f in zip((1, 2), self.files):
            os.dup2(f.fileno(), fd)
        self.dirty = [False, False]  # written to by the last job: empty it before the next

    def start(self) -> None:
        for i, f in enumerate(self.files):
            if self.dirty[i]:
                f.seek(0)
                f.truncate()

    def stop(self) -> Output:
        _flush_streams()
        return (self._tail(0), self._tail(1))

    def _tail(self, i: int) -> str:
        f = self.files[i]
        size = os.lseek(f.fileno(), 0, os.SEEK_END)  # its size; cheaper than fstat
        self.dirty[i] = size > 0
        if not size:
            return ""
        f.seek(max(0, size - CAPTURE_TAIL))
        return f.read().decode("utf-8", errors="replace")

    def restore(self) -> None:
        """Point fds 1 and 2 back where they pointed before (the worker's own last words);
        what a job left in Python's buffers stays in the capture files."""
        _flush_streams()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
