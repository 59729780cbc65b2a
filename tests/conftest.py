"""Shared fixtures: a database path per test, and a check that no test leaves
a child process behind (the loky habit)."""

from __future__ import annotations

import os
import time

import psutil
import pytest

# Helpers that Python's multiprocessing keeps for the life of the interpreter
# (one per process, not per pool); they are not leaks of gigq_mp.
_MP_HELPERS = (
    "multiprocessing.resource_tracker",
    "multiprocessing.forkserver",
    "multiprocessing.semaphore_tracker",
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: slower tests (timeouts, chaos, many jobs); still run by make test"
    )


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "q.db")


@pytest.fixture
def queue(db_path):
    from gigq_mp import JobQueue

    q = JobQueue(db_path)
    yield q
    q.close()


def _is_mp_helper(proc):
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False
    return any(name in cmdline for name in _MP_HELPERS)


def _describe(proc):
    try:
        return f"pid={proc.pid} status={proc.status()} cmdline={' '.join(proc.cmdline())[:200]!r}"
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return f"pid={proc.pid} (exited or zombie)"


def _remaining_children():
    me = psutil.Process()
    out = []
    for child in me.children(recursive=True):
        try:
            if child.is_running() and not _is_mp_helper(child):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """After each test, every child process of the test process must be gone
    (zombies count: whoever started a process must reap it)."""
    yield
    deadline = time.monotonic() + 3.0
    leaked = _remaining_children()
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = _remaining_children()
    if not leaked:
        return
    description = "\n".join(_describe(p) for p in leaked)
    for proc in leaked:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leaked, timeout=3)
    # Reap direct children that psutil could not wait for.
    for proc in leaked:
        try:
            os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            pass
    pytest.fail(f"test left {len(leaked)} child process(es) behind:\n{description}")
