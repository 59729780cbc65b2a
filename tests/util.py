"""Helpers for tests that drive gigq_mp from the outside."""

from __future__ import annotations

import os
import threading
import time

import psutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TERMINAL = {"completed", "failed", "timeout", "cancelled"}


def subprocess_env():
    """Environment for a child Python that must import gigq_mp and tests."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def wait_terminal(queue, ids, timeout=30.0):
    """Poll get_status until every id is terminal; return {id: status}."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = {i: queue.get_status(i)["status"] for i in ids}
        if all(s in TERMINAL for s in statuses.values()):
            return statuses
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs not finished after {timeout}s: {statuses}")
        time.sleep(0.05)


def drain(worker, limit=1000):
    """Call worker.process_one() until it reports no ready job; return count."""
    n = 0
    while worker.process_one():
        n += 1
        assert n <= limit, "process_one kept returning True"
    return n


def pid_gone(pid):
    """True when the process is gone (a zombie counts as gone: it is dead,
    only waiting for its parent to reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_pids_gone(pids, timeout=2.0):
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if not pid_gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if not pid_gone(p)]
    return alive


def kill_pids(pids):
    """Best-effort cleanup for processes a failed test may have left."""
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


class WorkerThread:
    """Run Worker.start() in a background thread; stop() and close() on exit."""

    def __init__(self, worker):
        self.worker = worker
        self.error = None
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.worker.start()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def __enter__(self):
        self.thread.start()
        return self

    def stop(self, timeout=15.0):
        """Stop the worker; return how long start() took to return."""
        if self.stopped:
            return 0.0
        self.stopped = True
        t0 = time.monotonic()
        self.worker.stop()
        self.thread.join(timeout)
        took = time.monotonic() - t0
        assert not self.thread.is_alive(), f"Worker.start() did not return {timeout}s after stop()"
        self.worker.close()
        if self.error is not None:
            raise self.error
        return took

    def __exit__(self, exc_type, exc, tb):
        try:
            self.stop()
        except BaseException:
            if exc_type is None:
                raise
        return False
