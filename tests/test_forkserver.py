"""The fork server: worker processes are forked from it, reaped only when the pool asks,
and nothing outlives the pool, whichever process dies first."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from gigq_mp import forkserver, proctree
from gigq_mp.forkserver import FORK_FAILED, MAX_OUTSTANDING, UNKNOWN_EXIT, ForkedProcess, ForkServer
from gigq_mp.messages import Interrupted, JobSucceeded, WorkerLost
from gigq_mp.pool import LocalPool

from .util import collect_events as collect
from .util import run_message as run
from .util import wait_pids_gone, wait_until

pytestmark = pytest.mark.timeout(60)


def succeeded(events):
    return [e for e in events if isinstance(e, JobSucceeded)]


def sigkill_while_running(pool):
    """SIGKILL the pool's one worker process while it runs a job; the WorkerLost event."""
    (worker,) = pool.workers
    pool.dispatch([run("doomed", 1, "sleep_for", seconds=30)], 1, {})
    wait_until(lambda: worker.counter.read() >= 1, 20, "the job to start")
    os.kill(worker.pid, signal.SIGKILL)
    events = collect(pool, lambda evs: any(isinstance(e, WorkerLost) for e in evs))
    (lost,) = [e for e in events if isinstance(e, WorkerLost)]
    return lost


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
        lost = sigkill_while_running(pool)
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
    signalled = []
    monkeypatch.setattr(os, "kill", lambda *args: signalled.append(args))
    monkeypatch.setattr(os, "killpg", lambda *args: signalled.append(args))
    for process in (ForkedProcess(_NoServer()), ForkedProcess.unforked()):
        process.forked(-1)  # os.fork failed in the server, or the server could not be asked
        assert process.pid is None and process.exited()
        assert proctree.kill_tree(process, 0.0) == FORK_FAILED
        assert proctree.reap(process) == FORK_FAILED
    assert signalled == []
    assert "could not be started" in proctree.describe_exit(FORK_FAILED)
    assert "unknown" in proctree.describe_exit(UNKNOWN_EXIT)


def test_a_fork_server_killed_while_jobs_run_costs_them_no_attempt():
    pool = LocalPool(2)
    try:
        pool.dispatch([run(f"busy{i}", i, "sleep_for", seconds=30) for i in range(2)], 1, {})
        wait_until(lambda: all(w.counter.read() >= 1 for w in pool.workers), 20, "both jobs to start")
        psutil.Process(pool._server.popen.pid).kill()
        events = collect(pool, lambda evs: len([e for e in evs if isinstance(e, Interrupted)]) == 2)
        assert not [e for e in events if isinstance(e, WorkerLost)]  # run again, not counted as failed
        assert {e.job_id for e in events if isinstance(e, Interrupted)} == {"busy0", "busy1"}
        pool.dispatch([run("after", 9, "add", a=1, b=1)], 1, {})
        assert [e.result_text for e in succeeded(collect(pool, succeeded))] == ["2"]
    finally:
        pool.shutdown()


def test_a_fork_server_killed_again_and_again_only_fails_the_starts_it_took():
    pool = LocalPool(1)
    try:
        for _ in range(3):
            (worker,) = pool.workers
            psutil.Process(pool._server.popen.pid).kill()
            collect(pool, lambda evs: pool.workers and pool.workers[0] is not worker)
        pool.dispatch([run("after", 1, "add", a=2, b=2)], 1, {})
        assert [e.result_text for e in succeeded(collect(pool, succeeded))] == ["4"]
    finally:
        pool.shutdown()


def test_many_fork_requests_at_once_do_not_fill_the_control_socket():
    server = ForkServer()
    processes, ends = [], []
    try:
        for _ in range(MAX_OUTSTANDING * 3):
            ours, theirs = socket.socketpair()
            processes.append(server.fork(theirs.fileno()))
            theirs.close()
            ends.append(ours)
        pids = [p.pid for p in processes]
        assert len(set(pids)) == len(pids) and all(pid > 0 for pid in pids)
        for pid in pids:
            assert os.getpgid(pid) == pid  # it leads its own process group before its pid is known
    finally:
        try:
            for end in ends:
                end.close()  # EOF before their first message: they exit
            for process in processes:
                wait_until(process.exited, 10, "a worker to exit")
                assert server.reap(process) == 0  # dropped before its first message: a quiet exit
        finally:
            server.close()


def test_an_answer_goes_to_its_own_request_after_one_was_never_sent(monkeypatch):
    server = ForkServer()
    real_send = socket.send_fds
    calls = []

    def interrupted_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise KeyboardInterrupt  # after the request was registered, before it left
        return real_send(*args)

    monkeypatch.setattr(forkserver.socket, "send_fds", interrupted_once)
    ours, theirs = socket.socketpair()
    try:
        with pytest.raises(KeyboardInterrupt):
            server.fork(theirs.fileno())
        process = server.fork(theirs.fileno())
        assert process.pid > 0 and psutil.Process(process.pid).ppid() == server.popen.pid
    finally:
        try:
            theirs.close()
            ours.close()
            wait_until(process.exited, 10, "the worker to exit")
            assert server.reap(process) == 0  # dropped before its first message: a quiet exit
        finally:
            server.close()


SUPERVISOR_KILLED_WITH_A_FORKED_CHILD = """
import os, signal, sys, time
from gigq_mp.pool import LocalPool
pool = LocalPool(2)
pids = [w.pid for w in pool.workers] + [pool._server.popen.pid]
child = os.fork()
if child == 0:  # a process the application forked: it holds a copy of the control socket
    time.sleep(30)
    os._exit(0)
print(" ".join(map(str, pids + [child])), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_supervisor_takes_the_fork_server_and_workers_along_even_with_a_forked_child(tmp_path):
    pid_file = tmp_path / "pids"
    with open(pid_file, "w") as out:  # not a pipe: the forked child would hold it open
        subprocess.run([sys.executable, "-c", SUPERVISOR_KILLED_WITH_A_FORKED_CHILD], stdout=out, timeout=30,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    pids = [int(p) for p in pid_file.read_text().split()]
    assert len(pids) == 4, pids
    *ours, forked_child = pids
    try:
        assert wait_pids_gone(ours, timeout=5.0) == []
    finally:
        try:
            psutil.Process(forked_child).kill()  # the test's own grandchild: a process it started
        except psutil.NoSuchProcess:
            pass


def test_a_supervisor_with_more_than_1023_open_files_runs_jobs(tmp_path):
    files = [open(tmp_path / "held", "a") for _ in range(1100)]
    try:
        pool = LocalPool(1)
        try:
            assert pool.workers[0].pid > 0
            pool.dispatch([run("high-fds", 1, "add", a=3, b=4)], 1, {})
            assert [e.result_text for e in succeeded(collect(pool, succeeded))] == ["7"]
        finally:
            pool.shutdown()
    finally:
        for f in files:
            f.close()


def test_workers_see_the_supervisors_environment_as_of_their_start(monkeypatch, tmp_path):
    pool = LocalPool(1)
    try:
        monkeypatch.setenv("GIGQ_MP_TEST_VALUE", "set after the fork server started")
        (worker,) = pool.workers
        os.kill(worker.pid, signal.SIGKILL)  # its replacement is forked now
        collect(pool, lambda evs: pool.workers and pool.workers[0] is not worker)
        out = str(tmp_path / "env")
        pool.dispatch([run("env", 1, "write_env", name="GIGQ_MP_TEST_VALUE", path=out)], 1, {})
        collect(pool, succeeded)
        with open(out) as f:
            assert f.read() == "set after the fork server started"
    finally:
        pool.shutdown()


def test_a_job_that_kills_its_fork_server_is_blamed_the_third_time(queue):
    from gigq_mp import Job, Workflow
    from gigq_mp.errors import WorkflowFailed

    from . import jobs

    wf = Workflow("server killer")
    killer = wf.add_job(Job("killer", jobs.kill_parent_and_sleep, max_attempts=1, timeout=30))
    with pytest.raises(WorkflowFailed) as excinfo:
        wf.run(queue, workers=1, progress=False)
    assert "its fork server died" in excinfo.value.failures[killer.id]["error"]
    statuses = [e["status"] for e in queue.get_status(killer.id)["executions"]]
    assert statuses == ["interrupted", "interrupted", "failed"], statuses


def test_an_application_that_ignores_sigchld_still_gets_exit_statuses():
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        pool = LocalPool(1)
    finally:
        signal.signal(signal.SIGCHLD, previous)
    try:
        assert "killed by signal 9 (SIGKILL)" in sigkill_while_running(pool).error
        pool.dispatch([run("after", 2, "add", a=1, b=2)], 1, {})
        assert [e.result_text for e in succeeded(collect(pool, succeeded))] == ["3"]
    finally:
        pool.shutdown()
