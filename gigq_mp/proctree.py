"""Killing a worker process together with everything it started, and saying how a process ended.

Each worker process is our direct child and leads its own process group. We
never reap it before its group has been killed: while it is a zombie its pid,
and so its group id, cannot be handed to an unrelated process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import List

import psutil

_POLL = 0.002


def is_dead(popen: subprocess.Popen) -> bool:
    """True once the process has exited (a zombie or reaped), without reaping it."""
    if popen.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def wait_dead(popen: subprocess.Popen, timeout: float) -> bool:
    """Wait up to `timeout` seconds for the process to exit, without reaping it."""
    deadline = time.monotonic() + timeout
    while not is_dead(popen):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def kill_tree(popen: subprocess.Popen, grace: float) -> int:
    """SIGTERM the worker process and its descendants, SIGKILL what is left after `grace`; reap it.

    Children are signalled before their parent. Returns the worker's return code.
    """
    descendants: List[psutil.Process] = []
    if not is_dead(popen):
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
        if (not alive and is_dead(popen)) or time.monotonic() >= deadline:
            break
        time.sleep(_POLL)
    if alive or not is_dead(popen):
        _signal(popen, alive, signal.SIGKILL)
    returncode = reap(popen)
    # A descendant that got SIGKILL dies at once; wait (briefly) only for that, not for
    # init to reap its zombie, which can take much longer and frees nothing we care about.
    deadline = time.monotonic() + 1.0
    while any(_running(p) for p in alive) and time.monotonic() < deadline:
        time.sleep(_POLL)
    return returncode


def reap(popen: subprocess.Popen) -> int:
    """Once the worker is dead, kill what remains in its process group, then reap it."""
    if not wait_dead(popen, 5.0):
        _signal(popen, [], signal.SIGKILL)
    if popen.returncode is None:
        _killpg(popen.pid, signal.SIGKILL)  # its zombie still reserves the group id
    return popen.wait()


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal(popen: subprocess.Popen, procs: List[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            continue
    if popen.returncode is None:
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
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-returncode} ({name})"
    return f"exited with code {returncode}"
