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


def wait_until(predicate, timeout, what="a condition"):
    """Poll ``predicate`` until it is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def descendant_pids(pid):
    """Pids of every live descendant of ``pid`` (empty if it is gone)."""
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


# `python -c` body: Worker(db, **json kwargs).start(); READY before, STOPPED after.
SUPERVISOR_CODE = (
    "import json, sys\n"
    "from gigq_mp import Worker\n"
    "worker = Worker(sys.argv[1], **json.loads(sys.argv[2]))\n"
    "print('READY', flush=True)\n"
    "worker.start()\n"
    "worker.close()\n"
    "print('STOPPED', flush=True)\n"
)


class SupervisorProcess:
    """A supervisor in a child process: ``Worker(db_path, **kwargs).start()``.

    Its stdout and stderr go to files in ``out_dir`` (read with ``output()``).
    Every pid seen among its descendants is kept in ``seen`` so a test can check
    that none survives; ``cleanup()`` kills what is left and reaps the child."""

    _count = 0

    def __init__(self, db_path, out_dir, **worker_kwargs):
        import json
        import subprocess
        import sys

        SupervisorProcess._count += 1
        base = os.path.join(str(out_dir), f"supervisor-{SupervisorProcess._count}")
        self.out_path, self.err_path = base + ".out", base + ".err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", SUPERVISOR_CODE, str(db_path), json.dumps(worker_kwargs)],
                env=subprocess_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            )
        self.pid = self.popen.pid
        self.seen = set()

    def output(self):
        parts = []
        for path in (self.out_path, self.err_path):
            try:
                with open(path) as f:
                    parts.append(f.read())
            except FileNotFoundError:
                parts.append("")
        return f"supervisor pid={self.pid} rc={self.popen.poll()}\nstdout:\n{parts[0]}\nstderr:\n{parts[1][-4000:]}"

    def stdout(self):
        with open(self.out_path) as f:
            return f.read()

    def poll(self):
        return self.popen.poll()

    def wait_alive_until(self, predicate, what, timeout=20):
        """Wait for `predicate` while the supervisor runs; fail with its output if it ends first."""
        wait_until(lambda: predicate() or self.poll() is not None, timeout, what)
        assert self.poll() is None, self.output()

    def descendants(self):
        """Live descendants now (also added to ``seen``)."""
        pids = descendant_pids(self.pid) if self.popen.poll() is None else []
        self.seen.update(pids)
        return pids

    def signal(self, signum):
        self.descendants()
        self.popen.send_signal(signum)

    def kill(self):
        """SIGKILL the supervisor alone (not its workers) and reap it."""
        self.descendants()
        self.popen.kill()
        self.popen.wait()

    def wait(self, timeout):
        return self.popen.wait(timeout)

    def cleanup(self):
        if self.popen.poll() is None:
            self.descendants()
            self.popen.kill()
        self.popen.wait()
        kill_pids(wait_pids_gone(sorted(self.seen), timeout=0.5))


def supervisor_registered(db_path, pid):
    """True once a supervisor with this pid is in the `supervisors` table (it registers
    after installing its signal handlers, so SIGTERM/SIGINT are then handled)."""
    import sqlite3

    conn = sqlite3.connect(str(db_path), timeout=30)
    try:
        return conn.execute("SELECT 1 FROM supervisors WHERE pid = ?", (pid,)).fetchone() is not None
    except sqlite3.OperationalError:  # no such table yet
        return False
    finally:
        conn.close()


def run_message(job_id, attempt, function, **params):
    """A RunJob for tests.jobs.`function` with `params`, for a LocalPool driven by hand."""
    import json

    from gigq_mp.messages import RunJob

    return RunJob(job_id, attempt, f"tests.jobs:{function}", "tests.jobs", function, json.dumps(params), None, (), None)


def collect_events(pool, until, timeout=20.0):
    """Events from pool.wait() until `until(events)` holds (AssertionError after `timeout` s)."""
    events = []
    deadline = time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, events
        events += pool.wait(0.05)
    return events
