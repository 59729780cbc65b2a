"""Skipping a job sent ahead to a worker process (cancelled while it waited there):
the pool against real worker processes, without a supervisor."""

from __future__ import annotations

import os
import time

import pytest

from gigq_mp.messages import JobSucceeded, Killed, Unstarted
from gigq_mp.pool import LocalPool

from .util import collect_events as collect
from .util import run_message as run
from .util import wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pool():
    pool = LocalPool(1)
    yield pool
    pool.shutdown()


def test_a_skipped_job_is_answered_unstarted_and_the_worker_runs_on(pool, tmp_path):
    marker = str(tmp_path / "ran")
    pool.dispatch(
        [run("long", 1, "sleep_for", seconds=1.0), run("skipped", 2, "record_run", path=marker, tag="x")], 2, {}
    )
    (worker,) = pool.workers
    wait_until(lambda: worker.running() == 0, 20, "the long job to start")
    pool.skip("skipped", 2)
    events = collect(pool, lambda evs: any(isinstance(e, Unstarted) for e in evs))
    replies = [(type(e).__name__, e.job_id) for e in events if isinstance(e, (JobSucceeded, Unstarted))]
    assert replies == [("JobSucceeded", "long"), ("Unstarted", "skipped")]
    assert not os.path.exists(marker)
    assert pool.workers == [worker]  # the same process
    pool.dispatch([run("next", 3, "add", a=1, b=2)], 2, {})
    events = collect(pool, lambda evs: any(isinstance(e, JobSucceeded) for e in evs))
    assert [e.result_text for e in events if isinstance(e, JobSucceeded)] == ["3"]


def test_a_skip_for_a_job_already_answered_is_ignored(pool):
    pool.dispatch([run("quick", 1, "noop")], 2, {})
    (worker,) = pool.workers
    wait_until(lambda: worker.counter.read() >= 1, 20, "the job to start")
    time.sleep(0.2)  # it has answered; the pool has not read the answer yet
    pool.skip("quick", 1)
    events = collect(pool, lambda evs: any(isinstance(e, JobSucceeded) for e in evs))
    assert [e.job_id for e in events if isinstance(e, JobSucceeded)] == ["quick"]
    time.sleep(0.2)
    assert pool.wait(0.05) == [] and pool.workers == [worker]  # no crash, no replacement


def test_a_worker_that_starts_a_job_it_was_told_to_skip_is_killed(pool):
    pool.dispatch([run("started", 1, "sleep_for", seconds=30)], 2, {})
    (worker,) = pool.workers
    wait_until(lambda: worker.counter.read() >= 1, 20, "the job to start")
    pool.skip("started", 1)  # too late: it runs
    events = collect(pool, lambda evs: any(isinstance(e, Killed) for e in evs), timeout=10)
    assert [(e.job_id, e.status) for e in events if isinstance(e, Killed)] == [("started", "cancelled")]
    assert pool.workers and pool.workers != [worker]  # replaced
    assert worker.popen.returncode is not None  # killed and reaped


def test_replies_taken_off_the_pipe_by_an_interrupted_kill_come_with_the_next_wait(pool, monkeypatch):
    from gigq_mp.pool import WorkerProcess

    pool.dispatch([run("quick", 1, "add", a=1, b=2), run("slow", 2, "sleep_for", seconds=60)], 4, {})
    (worker,) = pool.workers
    wait_until(lambda: worker.running() == 1, 20, "the slow job to start")
    time.sleep(0.2)  # the quick job's reply waits on the pipe
    kill = WorkerProcess.kill

    def kill_then_ctrl_c(self, grace):
        kill(self, grace)
        raise KeyboardInterrupt

    monkeypatch.setattr(WorkerProcess, "kill", kill_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        pool.kill("slow", 2, "timeout", "timed out")
    monkeypatch.undo()
    events = pool.wait(0.1)
    assert [(e.job_id, e.result_text) for e in events if isinstance(e, JobSucceeded)] == [("quick", "3")]
