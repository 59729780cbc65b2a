"""Killing a worker process together with everything it started, and saying how a process ended.

Each worker process is a child of the pool's fork server (forkserver.py) and
leads its own process group. It is never reaped before its group has been
killed: while it is a zombie its pid, and so its group id, cannot be handed to
an unrelated process. The functions here take a `ForkedProcess`.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, List

import psutil

from .forkserver import FORK_FAILED, UNKNOWN_EXIT

if TYPE_CHECKING:
    from .forkserver import ForkedProcess

_POLL = 0.002


def wait_dead(popen: "ForkedProcess", timeout: float) -> bool:
    """Wait up to `timeout` seconds for the process to exit, without reaping it."""
    deadline = time.monotonic() + timeout
    while not popen.exited():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def kill_tree(popen: "ForkedProcess", grace: float) -> int:
    """SIGTERM the worker process and its descendants, SIGKILL what is left after `grace`; reap it.

    Children are signalled before their parent. Returns the worker's return code.
    """
    descendants: List[psutil.Process] = []
    if not popen.exited():
        try:
            descendants = psutil.Process(popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        descendants.reverse()
    _signal(popen, descendants, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = descendants
    while True:
        alive = [p for p in alive if _running(p)]
        if (not alive and popen.exited()) or time.monotonic() >= deadline:
            break
        time.sleep(_POLL)
    if alive or not popen.exited():
        _signal(popen, alive, signal.SIGKILL)
    returncode = reap(popen)
    # A descendant that got SIGKILL dies at once; wait (briefly) only for that, not for
    # init to reap its zombie, which can take much longer and frees nothing we care about.
    deadline = time.monotonic() + 1.0
    while any(_running(p) for p in alive) and time.monotonic() < deadline:
        time.sleep(_POLL)
    return returncode


def reap(popen: "ForkedProcess") -> int:
    """Once the worker is dead, kill what remains in its process group, then reap it."""
    if not wait_dead(popen, 5.0):
        _signal(popen, [], signal.SIGKILL)
    if popen.owned():
        _killpg(popen.pid, signal.SIGKILL)  # its zombie still reserves the group id
    return popen.wait()


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal(popen: "ForkedProcess", procs: List[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            continue
    if popen.owned():
        _killpg(popen.pid, sig)
        try:
            os.kill(popen.pid, sig)
        except ProcessLookupError:
            pass  # already exited


def _killpg(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes (0 if it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def describe_exit(returncode: int) -> str:
    """'killed by signal 9 (SIGKILL)' or 'exited with code 1', from a Popen returncode."""
    if returncode == UNKNOWN_EXIT:
        return "ended; how is unknown (its fork server died before reaping it)"
    if returncode == FORK_FAILED:
        return "could not be started (the fork server could not fork it; see its stderr)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-returncode} ({name})"
    return f"exited with code {returncode}"
