"""The fork server: worker processes are forked from it, reaped only when the pool asks,
and nothing outlives the pool, whichever process dies first."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from gigq_mp import proctree
from gigq_mp.forkserver import UNKNOWN_EXIT, ForkedProcess
from gigq_mp.messages import JobSucceeded, RunJob, WorkerLost
from gigq_mp.pool import LocalPool

from .util import wait_until

pytestmark = pytest.mark.timeout(60)


def run(job_id, attempt, function, **params):
    return RunJob(job_id, attempt, f"tests.jobs:{function}", "tests.jobs", function, json.dumps(params), None, (), None)


def collect(pool, until, timeout=20.0):
    events = []
    deadline = time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, events
        events += pool.wait(0.05)
    return events


def succeeded(events):
    return [e for e in events if isinstance(e, JobSucceeded)]


def test_a_pool_forks_its_workers_from_one_server_and_leaves_nothing_behind():
    pool = LocalPool(3)
    try:
        server = pool._server.popen.pid
        pids = [worker.pid for worker in pool.workers]
        assert len(set(pids)) == 3
        for pid in pids:
            process = psutil.Process(pid)
            assert process.ppid() == server  # not the supervisor's children: the server's
            assert os.getpgid(pid) == pid  # each leads its own process group
        assert [p.pid for p in psutil.Process().children()] == [server]
        pool.dispatch([run(f"j{i}", i, "add", a=i, b=1) for i in range(3)], 1, {})
        events = collect(pool, lambda evs: len(succeeded(evs)) == 3)
        assert sorted(e.result_text for e in succeeded(events)) == ["1", "2", "3"]
        assert {e.pid for e in succeeded(events)} <= set(pids)
    finally:
        pool.shutdown()
    assert [pid for pid in [server] + pids if psutil.pid_exists(pid)] == []


def test_a_killed_fork_server_takes_its_workers_along_and_the_pool_starts_another():
    pool = LocalPool(1)
    try:
        (worker,) = pool.workers
        old_server, old_worker = pool._server.popen.pid, worker.pid
        psutil.Process(old_server).kill()  # a process we started: the OOM killer's choice, say
        events = collect(pool, lambda evs: pool.workers and pool.workers[0] is not worker)
        assert not [e for e in events if isinstance(e, WorkerLost)]  # it ran no job: nothing to blame
        wait_until(lambda: not psutil.pid_exists(old_worker), 5, "the orphaned worker to exit")
        assert worker.popen.returncode == UNKNOWN_EXIT  # reaped by init, not by us: never signalled
        assert pool._server.popen.pid != old_server
        pool.dispatch([run("after", 1, "add", a=2, b=3)], 1, {})
        events = collect(pool, lambda evs: succeeded(evs))
        assert [e.result_text for e in succeeded(events)] == ["5"]
        assert psutil.Process(pool.workers[0].pid).ppid() == pool._server.popen.pid
    finally:
        pool.shutdown()


def test_a_worker_killed_by_a_signal_is_reported_as_such_through_the_server():
    pool = LocalPool(1)
    try:
        (worker,) = pool.workers
        pool.dispatch([run("doomed", 1, "sleep_for", seconds=30)], 1, {})
        wait_until(lambda: worker.counter.read() >= 1, 20, "the job to start")
        os.kill(worker.pid, signal.SIGKILL)
        events = collect(pool, lambda evs: any(isinstance(e, WorkerLost) for e in evs))
        (lost,) = [e for e in events if isinstance(e, WorkerLost)]
        assert "killed by signal 9 (SIGKILL)" in lost.error
        assert worker.popen.returncode == -signal.SIGKILL
    finally:
        pool.shutdown()


class _NoServer:
    """A fork server that must never be asked anything (the process was never forked)."""

    def running(self):
        return True

    def _answer(self):
        raise AssertionError("asked the fork server")

    def reap(self, process):
        raise AssertionError("asked the fork server to reap")


def test_a_worker_that_could_not_be_forked_is_never_signalled(monkeypatch):
    process = ForkedProcess(_NoServer())
    process.forked(-1)  # os.fork failed in the server: no pid at all
    signalled = []
    monkeypatch.setattr(os, "kill", lambda *args: signalled.append(args))
    monkeypatch.setattr(os, "killpg", lambda *args: signalled.append(args))
    assert process.pid is None and process.exited()
    assert proctree.kill_tree(process, 0.0) == UNKNOWN_EXIT
    assert proctree.reap(process) == UNKNOWN_EXIT
    assert signalled == []
    assert "unknown" in proctree.describe_exit(UNKNOWN_EXIT)
