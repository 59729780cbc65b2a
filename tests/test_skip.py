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


def test_a_skipped_job_touches_the_worker_function_cache_as_it_did_the_pool_mirror(pool):
    """The pool sends a callable only to a worker its mirror says lacks it. A skipped job
    touched the mirror when it was sent, so the worker must touch its cache too: otherwise,
    64 callables later, the two evict different ones, and the pool sends a job without a
    callable the worker has dropped."""
    import json

    import cloudpickle

    from gigq_mp.messages import RunJob

    def make(i):
        return lambda seconds=0: (time.sleep(seconds), i)[1]

    blobs = {f"k{i}": cloudpickle.dumps(make(i)) for i in range(66)}
    numbers = iter(range(1, 1000))

    def job(key, **params):
        n = next(numbers)
        return RunJob(f"j{n}", n, key, "__main__", "<lambda>", json.dumps(params), None, (), None)

    def replies(count):
        events = collect(pool, lambda evs: sum(isinstance(e, (JobSucceeded, Unstarted)) for e in evs) >= count)
        return [e for e in events if not type(e).__name__ == "Accepted"]

    for i in range(64):  # the worker's cache is full: k0 is the oldest
        pool.dispatch([job(f"k{i}")], 128, blobs)
        assert [e.result_text for e in replies(1)] == [str(i)]
    sleeper, skipped = job("k63", seconds=1.0), job("k0")  # sending k0's job makes it the newest
    pool.dispatch([sleeper, skipped], 128, blobs)
    (worker,) = pool.workers
    wait_until(lambda: worker.running() == 0, 20, "the long job to start")
    pool.skip(skipped.job_id, skipped.attempt)
    assert [type(e).__name__ for e in replies(2)] == ["JobSucceeded", "Unstarted"]
    pool.dispatch([job("k64")], 128, blobs)  # evicts the oldest: k1 in both caches
    assert [e.result_text for e in replies(1)] == ["64"]
    pool.dispatch([job("k0")], 128, blobs)  # sent without its callable: the worker still has it
    (reply,) = replies(1)
    assert isinstance(reply, JobSucceeded) and reply.result_text == "0", reply


def test_a_callable_that_fails_to_load_fails_each_of_its_jobs_alike(pool):
    """The pool sends a callable once per worker; if it cannot be loaded there, the next job of
    it must fail for the same reason, not for a pickle the worker threw away."""
    from gigq_mp.messages import JobFailed, RunJob

    blobs = {"bad": b"cno_such_module_for_gigq_mp_tests\nf\n."}  # a pickle of a name that does not import
    for n in (1, 2):
        pool.dispatch([RunJob(f"j{n}", n, "bad", "__main__", "<lambda>", "{}", None, (), None)], 128, blobs)
        events = collect(pool, lambda evs: any(isinstance(e, JobFailed) for e in evs))
        (failed,) = [e for e in events if isinstance(e, JobFailed)]
        assert failed.error_type == "ModuleNotFoundError", failed.error
