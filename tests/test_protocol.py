"""The pipe protocol with short jobs sent ahead: a worker process replies to several
jobs at once and never says "started"; the pool infers starts from the order jobs
were sent. A job queued behind short ones must still be timed from its own start,
and the replies held back while it runs must still arrive."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime

import pytest

from gigq_mp import Job, Workflow
from gigq_mp.errors import WorkflowFailed

from . import jobs
from .util import wait_until

QUICK = 80  # enough short jobs for the supervisor to send them ahead dozens at a time


def quick_jobs(wf, count, priority, tag):
    return [wf.add_job(Job(f"{tag}{i}", jobs.add, params={"a": i, "b": 1}, priority=priority)) for i in range(count)]


@pytest.fixture
def untimed_is_quick(monkeypatch):
    """For tests of a job queued in a worker behind short ones: a callable not timed yet
    counts as quick, so its first job is sent ahead with them (the supervisor otherwise
    sends it alone, to a worker with nothing queued, until one of its jobs has finished)."""
    from gigq_mp import supervisor

    monkeypatch.setattr(supervisor, "UNTIMED_SECONDS", 0.0)


def completed_at(queue, job):
    return datetime.fromisoformat(queue.get_status(job.id)["completed_at"])


def run_expecting_one_failure(wf, queue, job, status, within):
    """Run `wf` on one worker process; `job` alone must fail, with `status`, and the whole
    run must end within `within` seconds. Returns the completed jobs' results."""
    t0 = time.monotonic()
    with pytest.raises(WorkflowFailed) as excinfo:
        wf.run(queue, workers=1)
    elapsed = time.monotonic() - t0
    assert elapsed < within, f"the run took {elapsed:.1f} s"
    assert list(excinfo.value.failures) == [job.id], excinfo.value.failures
    assert excinfo.value.failures[job.id]["status"] == status
    return excinfo.value.results


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_job_queued_behind_short_ones_is_killed_at_its_own_timeout(untimed_is_quick, queue):
    wf = Workflow("hang behind quick jobs")
    before = quick_jobs(wf, QUICK, priority=10, tag="before")
    hang = wf.add_job(Job("hang", jobs.sleep_for, params={"seconds": 60}, timeout=1, max_attempts=1, priority=5))
    after = quick_jobs(wf, 10, priority=0, tag="after")
    # one worker process: the hanging job sits in its queue behind short ones
    results = run_expecting_one_failure(wf, queue, hang, "timeout", within=15)
    assert [results[j.id] for j in before] == [i + 1 for i in range(QUICK)]
    assert [results[j.id] for j in after] == [i + 1 for i in range(10)]
    # the short jobs sent ahead behind the killed one ran again elsewhere, their attempt not counted
    assert {queue.get_status(j.id)["attempts"] for j in before + after} == {1}
    # the hanging job ran from its own start, not from when the jobs before it were sent
    assert (completed_at(queue, hang) - completed_at(queue, before[-1])).total_seconds() >= 0.9


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_replies_held_back_while_a_long_job_runs_still_arrive(untimed_is_quick, queue):
    wf = Workflow("quick then slow")
    before = quick_jobs(wf, QUICK, priority=10, tag="before")
    slow = wf.add_job(Job("slow", jobs.sleep_for, params={"seconds": 3}, priority=5))
    wf.run(queue, workers=1)
    # the last short job's reply left the worker while `slow` ran, not after it
    gap = (completed_at(queue, slow) - completed_at(queue, before[-1])).total_seconds()
    assert gap >= 2.5, f"the reply to the job before a 3 s job arrived only {gap:.2f} s before that job ended"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_crash_behind_short_jobs_fails_only_the_job_that_crashed(untimed_is_quick, queue):
    wf = Workflow("crash behind quick jobs")
    before = quick_jobs(wf, QUICK, priority=10, tag="before")
    crash = wf.add_job(Job("crash", jobs.os_exit, params={"code": 3}, max_attempts=1, priority=5))
    with pytest.raises(WorkflowFailed) as excinfo:
        wf.run(queue, workers=1)
    failures = excinfo.value.failures
    assert list(failures) == [crash.id], failures
    assert "exited with code 3" in failures[crash.id]["error"]
    assert [excinfo.value.results[j.id] for j in before] == [i + 1 for i in range(QUICK)]
    # replies lost with the process count as not run: each short job has one counted attempt
    assert {queue.get_status(j.id)["attempts"] for j in before} == {1}
    assert [e["status"] for e in queue.get_status(crash.id)["executions"]] == ["failed"]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_job_holding_the_gil_behind_short_jobs_is_timed_from_its_own_start(untimed_is_quick, queue):
    """The thread that sends held-back replies cannot run while the job holds the GIL; the
    start counter still tells the pool which job runs, so the right one is killed."""
    wf = Workflow("GIL holder behind quick jobs")
    before = [
        wf.add_job(Job(f"before{i}", jobs.add, params={"a": i, "b": 1}, priority=10, timeout=3))
        for i in range(QUICK)
    ]
    hog = wf.add_job(Job("hog", jobs.hold_the_gil, params={"n": 10**11}, timeout=1, max_attempts=1, priority=5))
    results = run_expecting_one_failure(wf, queue, hog, "timeout", within=20)
    assert [results[j.id] for j in before] == [i + 1 for i in range(QUICK)]
    assert [e["status"] for e in queue.get_status(hog.id)["executions"]] == ["timeout"]
    # no short job was blamed (killed, then retried) for the time the hog ran: one counted attempt
    # each; one whose reply was held back when the hog's process was killed ran again, its lost
    # run on record as interrupted
    assert {queue.get_status(j.id)["attempts"] for j in before} == {1}
    for job in before:
        statuses = [e["status"] for e in queue.get_status(job.id)["executions"]]
        assert statuses.count("completed") == 1 and set(statuses) <= {"completed", "interrupted"}, statuses


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_full_pipe_to_a_busy_worker_does_not_stall_the_supervisor(queue):
    """Jobs with large params sent ahead to a process that runs a hanging job fill its
    pipe; the supervisor must still enforce the hanging job's timeout meanwhile."""
    pad = "x" * 20_000
    wf = Workflow("full pipe")
    before = [wf.add_job(Job(f"b{i}", jobs.identity, params={"x": pad}, priority=10)) for i in range(300)]
    hang = wf.add_job(Job("hang", jobs.sleep_for, params={"seconds": 60}, timeout=1, max_attempts=1, priority=5))
    after = [wf.add_job(Job(f"a{i}", jobs.identity, params={"x": pad}, priority=0)) for i in range(300)]
    results = run_expecting_one_failure(wf, queue, hang, "timeout", within=30)
    assert all(results[j.id] == pad for j in before + after)


def run_job(job_id, function, **params):
    import json

    from gigq_mp.messages import RunJob

    return RunJob(job_id, 1, f"tests.jobs:{function}", "tests.jobs", function, json.dumps(params), None, (), None)


@pytest.mark.timeout(60)
def test_replies_that_arrived_before_a_crash_count_though_our_bytes_were_unread():
    """A worker that dies with jobs we sent still unread in its pipe resets the connection;
    the replies it sent before that must still be taken, not lost with it."""
    from gigq_mp.pool import LocalPool

    pool = LocalPool(1)
    try:
        worker = pool.workers[0]
        deadline = time.monotonic() + 20
        while not worker.answered and time.monotonic() < deadline:
            pool.wait(0.05)
        first = [run_job("q1", "add", a=1, b=1), run_job("q2", "add", a=2, b=2),
                 run_job("crash", "sleep_then_exit", seconds=0.2)]
        pool.dispatch(first, 64, {})
        time.sleep(0.05)  # q1 and q2 done, their replies on the way; `crash` sleeping
        pool.dispatch([run_job("m1", "add", a=1, b=1)], 64, {})  # never read by that process
        time.sleep(0.5)  # the supervisor busy elsewhere while the process dies
        events = []
        while len([e for e in events if type(e).__name__ != "Accepted"]) < 4 and time.monotonic() < deadline:
            events += pool.wait(0.05)
    finally:
        pool.shutdown()
    outcomes = [(type(e).__name__, e.job_id) for e in events if type(e).__name__ != "Accepted"]
    assert outcomes == [("JobSucceeded", "q1"), ("JobSucceeded", "q2"), ("WorkerLost", "crash"), ("Unstarted", "m1")]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_job_is_timed_from_its_start_not_from_when_it_was_sent(queue):
    """Large params take a while to reach the worker process; the clock starts when the job
    does, and a job that then runs past its timeout is still killed."""
    wf = Workflow("slow to arrive")
    job = wf.add_job(
        Job("big", jobs.sleep_with_payload, params={"payload": "x" * (50 << 20), "seconds": 5},
            timeout=0.5, max_attempts=1)
    )
    with pytest.raises(WorkflowFailed) as excinfo:
        wf.run(queue, workers=1)
    assert excinfo.value.failures[job.id]["status"] == "timeout"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_job_cancelled_while_it_waits_in_a_workers_queue_never_runs(untimed_is_quick, queue, db_path, tmp_path):
    from gigq_mp import JobQueue

    log = str(tmp_path / "log")
    wf = Workflow("cancel a queued job")
    quick_jobs(wf, QUICK, priority=10, tag="before")  # so the later jobs are sent ahead, together
    long = wf.add_job(Job("long", jobs.record_start_sleep_finish, params={"path": log, "tag": "long", "seconds": 3},
                          priority=5))
    queued = wf.add_job(Job("queued", jobs.record_run, params={"path": log, "tag": "queued"}, priority=1))
    other = JobQueue(db_path)  # another process's connection

    def cancel_once_long_runs():
        wait_until(lambda: os.path.exists(log), timeout=30, what="the long job to start")
        assert other.get_status(queued.id)["status"] == "running"  # claimed: sent to the worker's queue
        assert other.cancel(queued.id, kill=True)

    thread = threading.Thread(target=cancel_once_long_runs)
    thread.start()
    try:
        with pytest.raises(WorkflowFailed) as excinfo:
            wf.run(queue, workers=1, progress=False)
    finally:
        thread.join()
        other.close()
    assert {i: f["status"] for i, f in excinfo.value.failures.items()} == {queued.id: "cancelled"}
    assert excinfo.value.results[long.id] == "long"
    assert [line.split()[0] for line in open(log)] == ["start", "done"]  # nothing but the long job ran
    assert [e["status"] for e in queue.get_status(queued.id)["executions"]] == ["cancelled"]


class HeldJobs:
    """An executor that only holds what it is sent (no processes): a test delivers replies."""

    def __init__(self):
        self.sent = []
        self.skipped = []

    def free_slots(self, depth):
        return 8

    def dispatch(self, runs, depth, pickled, slow=()):
        self.sent.extend(runs)

    def wait(self, timeout, wake_fds=()):
        return []

    def kill(self, job_id, attempt, status, error):
        return []

    def skip(self, job_id, attempt):
        self.skipped.append((job_id, attempt))

    def shutdown(self):
        return None


def catch_up(supervisor):
    """Let the supervisor read what other connections wrote (its reads are throttled)."""
    time.sleep(0.25)
    supervisor._sync()


def claim_all(supervisor):
    supervisor.store.begin_batch()
    supervisor._claim(supervisor.clock(), None)
    supervisor.store.commit_batch()
    supervisor._send()


def deliver(supervisor, *events):
    supervisor.store.begin_batch()
    supervisor._handle_all(list(events))
    supervisor.store.commit_batch()


@pytest.fixture
def other(db_path):
    """Another connection to the database, as another process has: its writes reach a
    supervisor through the change log."""
    from gigq_mp import JobQueue

    queue = JobQueue(db_path)
    yield queue
    queue.close()


@pytest.fixture
def make_supervisor(db_path):
    """Supervisors on their own connections, over a HeldJobs executor unless given one;
    started, not running: a test drives them step by step."""
    from gigq_mp import JobQueue
    from gigq_mp.supervisor import Supervisor

    made = []

    def make(worker_id="sup", executor=None, concurrency=1, **options):
        supervisor = Supervisor(
            JobQueue(db_path).store, worker_id=worker_id, concurrency=concurrency, executor=executor or HeldJobs(),
            **options,
        )
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        supervisor.close()
        supervisor.store.close()


def started(supervisor):
    """The supervisor's first look at the store, as run() takes it."""
    supervisor.tracker.sync(supervisor.running, force=True)
    return supervisor


@pytest.mark.timeout(30)
def test_a_late_reply_from_an_earlier_claim_of_a_requeued_job_is_not_taken(queue, other, make_supervisor):
    """Cancelled while it waited in a worker's queue, requeued, claimed again with the same
    attempt number: the reply the first copy sends later must not count for the second."""
    from gigq_mp.messages import JobSucceeded

    job_id = queue.submit(Job("twice", jobs.add, params={"a": 1, "b": 2}))
    supervisor = started(make_supervisor())
    claim_all(supervisor)
    (first,) = supervisor.executor.sent
    assert other.cancel(job_id, kill=True)
    catch_up(supervisor)  # sees the cancel: the attempt is closed here
    assert job_id not in supervisor.running
    assert other.requeue_job(job_id)
    catch_up(supervisor)
    claim_all(supervisor)
    second = supervisor.executor.sent[-1]
    assert second.job_id == first.job_id and second.attempt != first.attempt
    assert other.get_status(job_id)["attempts"] == 1  # the same attempt number in the database

    deliver(supervisor, JobSucceeded(job_id, first.attempt, "100", None, None))  # the stale copy
    assert other.get_status(job_id)["status"] == "running"
    deliver(supervisor, JobSucceeded(job_id, second.attempt, "3", None, None))
    assert other.get_result(job_id) == 3


@pytest.mark.timeout(30)
def test_successes_written_together_drop_only_the_job_someone_else_changed(queue, other, make_supervisor):
    from gigq_mp.messages import JobSucceeded

    kept = queue.submit(Job("kept", jobs.add, params={"a": 1, "b": 2}))
    changed = queue.submit(Job("changed", jobs.add, params={"a": 3, "b": 4}))
    child = queue.submit(Job("child", jobs.sum_parents, dependencies=[kept]))
    supervisor = started(make_supervisor())
    claim_all(supervisor)
    runs = {run.job_id: run for run in supervisor.executor.sent}
    assert sorted(runs) == sorted([kept, changed])
    assert other.cancel(changed, kill=True)  # not yet seen by the supervisor
    deliver(supervisor, *[JobSucceeded(j, runs[j].attempt, str(v), None, None) for j, v in [(kept, 3), (changed, 7)]])
    assert (other.get_status(kept)["status"], other.get_result(kept)) == ("completed", 3)
    assert (other.get_status(changed)["status"], other.get_result(changed)) == ("cancelled", None)
    assert [e["status"] for e in other.get_status(changed)["executions"]] == ["completed"]  # the attempt ran
    assert supervisor.counts["completed"] == 1  # once, however often its event was applied
    claim_all(supervisor)  # the kept job's child is ready, its parent's result at hand
    run = supervisor.executor.sent[-1]
    assert run.job_id == child and run.parent_results == ((kept, "3", None, None),)


@pytest.mark.timeout(30)
def test_a_parent_result_kept_in_memory_is_not_served_after_its_row_was_deleted(queue, other, make_supervisor):
    from gigq_mp.messages import JobSucceeded

    parent = Job("p", jobs.add, params={"a": 1, "b": 2})
    child = Job("c", jobs.sum_parents, dependencies=[parent.id])
    queue.submit(parent)
    queue.submit(child)
    here = started(make_supervisor("here"))
    claim_all(here)
    deliver(here, JobSucceeded(parent.id, here.executor.sent[0].attempt, "3", None, None))
    assert other.cancel(child.id)  # the child it was kept for never claims it here
    assert other.clear_completed() == 2
    again = Job("p", jobs.add, params={"a": 10, "b": 20})
    again.id = parent.id  # the same id submitted again, completed by another supervisor
    other.submit(again)
    elsewhere = started(make_supervisor("elsewhere"))
    claim_all(elsewhere)
    deliver(elsewhere, JobSucceeded(parent.id, elsewhere.executor.sent[0].attempt, "30", None, None))
    new_child = other.submit(Job("c2", jobs.sum_parents, dependencies=[parent.id]))
    catch_up(here)
    claim_all(here)
    run = here.executor.sent[-1]
    assert run.job_id == new_child and run.parent_results[0][:2] == (parent.id, "30")  # read back: never packed


@pytest.mark.timeout(30)
def test_a_claim_never_takes_a_new_job_that_reused_a_deleted_jobs_rowid(queue, other, make_supervisor):
    gone = queue.submit(Job("x", jobs.add, params={"a": 1, "b": 2}))
    supervisor = started(make_supervisor())
    assert other.cancel(gone)
    assert other.clear_completed() == 1
    new = other.submit(Job("y", jobs.add, params={"a": 5, "b": 5}))  # takes the freed rowid
    claim_all(supervisor)  # before the supervisor has read any of it
    assert supervisor.executor.sent == []
    assert (other.get_status(new)["status"], other.get_status(new)["attempts"]) == ("pending", 0)
    catch_up(supervisor)
    claim_all(supervisor)
    assert [run.job_id for run in supervisor.executor.sent] == [new]
    assert len(other.get_status(new)["executions"]) == 1  # its attempt row matches its rowid


class ScriptedJobs(HeldJobs):
    """HeldJobs whose wait() returns what the next scripted step gives."""

    def __init__(self):
        super().__init__()
        self.script = []

    def wait(self, timeout, wake_fds=()):
        return self.script.pop(0)(self) if self.script else []


@pytest.mark.timeout(30)
def test_a_second_ctrl_c_while_the_grace_periods_outcomes_are_written_keeps_the_results_in_hand(
    queue, make_supervisor, monkeypatch
):
    from gigq_mp.messages import Accepted, JobFailed, JobSucceeded
    from gigq_mp.store import Store

    done = queue.submit(Job("done", jobs.add, params={"a": 1, "b": 2}))
    failing = queue.submit(Job("failing", jobs.add, params={"a": 3, "b": 4}))
    supervisor = make_supervisor(executor=ScriptedJobs(), concurrency=2)

    def first_ctrl_c(executor):
        supervisor.request_stop()  # a grace period for the running jobs
        return [Accepted(run.job_id, run.attempt, 1) for run in executor.sent]

    def replies(executor):
        runs = {run.job_id: run for run in executor.sent}

        def second_ctrl_c(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(Store, "record_failure", second_ctrl_c)
        return [
            JobSucceeded(done, runs[done].attempt, "3", None, None),
            JobFailed(failing, runs[failing].attempt, "E", "e"),
        ]

    supervisor.executor.script = [first_ctrl_c, replies]
    with pytest.raises(KeyboardInterrupt):
        supervisor.run()
    monkeypatch.undo()
    assert (queue.get_status(done)["status"], queue.get_result(done)) == ("completed", 3)
    assert queue.get_status(failing)["status"] == "pending"  # interrupted: runs again, no attempt used


@pytest.mark.timeout(30)
def test_a_job_another_supervisor_ran_and_failed_waits_out_its_retry_delay_here_too(queue, make_supervisor):
    from gigq_mp.messages import JobFailed

    job_id = queue.submit(Job("flaky", jobs.add, params={"a": 1, "b": 2}, max_attempts=2, retry_delay=60))
    here = started(make_supervisor("here"))  # tracks the job as ready
    elsewhere = started(make_supervisor("elsewhere"))
    claim_all(elsewhere)
    deliver(elsewhere, JobFailed(job_id, elsewhere.executor.sent[0].attempt, "E", "first attempt failed"))
    assert queue.get_status(job_id)["retry_after"]
    catch_up(here)
    claim_all(here)
    assert here.executor.sent == []  # not before its retry_after
    assert queue.get_status(job_id)["status"] == "pending"


class FaultyConnection:
    """A sqlite3 connection whose next statement starting with `prefix` raises `error`,
    before it runs, or (`after`) once it has run (its cursor closed, rows unread)."""

    def __init__(self, conn, prefix, error, after=False):
        self._conn, self.prefix, self.error, self.after, self.armed = conn, prefix, error, after, False

    def _check(self, sql):
        if self.armed and sql.startswith(self.prefix):
            self.armed = False
            raise self.error

    def _run(self, method, sql, args):
        if not self.after:
            self._check(sql)
        result = getattr(self._conn, method)(sql, *args)
        if self.after:
            try:
                self._check(sql)
            except BaseException:
                result.close()  # as the unwinding frame of a real interruption would drop it
                raise
        return result

    def execute(self, sql, *args):
        return self._run("execute", sql, args)

    def executemany(self, sql, *args):
        return self._run("executemany", sql, args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.mark.timeout(30)
def test_a_commit_that_fails_in_the_loop_leaves_the_store_usable_and_atomic(queue, other, make_supervisor):
    import sqlite3

    job_id = queue.submit(Job("a", jobs.add, params={"a": 1, "b": 2}))
    supervisor = make_supervisor()
    store = supervisor.store
    store._conn = faulty = FaultyConnection(store._conn, "COMMIT", sqlite3.OperationalError("disk I/O error"))
    claim = supervisor._claim

    def claim_then_fail_the_commit(now, budget):
        claimed = claim(now, budget)
        faulty.armed = faulty.armed or claimed
        return claimed

    supervisor._claim = claim_then_fail_the_commit
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        supervisor.run(max_attempts=1)
    assert store._depth == 0
    assert other.get_status(job_id)["status"] == "pending"  # the claim was rolled back
    with pytest.raises(ValueError):
        with store.transaction() as db:
            db.execute("UPDATE jobs SET description = 'half-written' WHERE id = ?", (job_id,))
            raise ValueError("an error inside a transaction rolls it back")
    assert other.get_status(job_id)["description"] != "half-written"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("after", [False, True], ids=["before-the-update", "after-the-update"])
def test_a_second_ctrl_c_while_successes_are_written_keeps_them(queue, make_supervisor, after):
    from gigq_mp.messages import Accepted, JobSucceeded

    done = queue.submit(Job("done", jobs.add, params={"a": 1, "b": 2}))
    supervisor = make_supervisor(executor=ScriptedJobs())
    real = supervisor.store._conn
    faulty = FaultyConnection(real, "UPDATE jobs SET status = 'completed'", KeyboardInterrupt(), after=after)
    supervisor.store._conn = faulty

    def first_ctrl_c(executor):
        supervisor.request_stop()
        return [Accepted(run.job_id, run.attempt, 1) for run in executor.sent]

    def reply(executor):
        faulty.armed = True  # the second Ctrl-C lands as the success is written
        return [JobSucceeded(done, executor.sent[0].attempt, "3", None, None)]

    supervisor.executor.script = [first_ctrl_c, reply]
    with pytest.raises(KeyboardInterrupt):
        supervisor.run()
    supervisor.store._conn = real
    status = queue.get_status(done)
    assert (status["status"], queue.get_result(done)) == ("completed", 3)
    assert [e["status"] for e in status["executions"]] == ["completed"]
    assert supervisor.counts["completed"] == 1  # once, however often its event was applied


def test_a_ctrl_c_just_after_begin_leaves_no_transaction_open(queue, other):
    store = queue.store
    real = store._conn
    # The statement ran: the Ctrl-C lands as it returns.
    store._conn = faulty = FaultyConnection(real, "BEGIN IMMEDIATE", KeyboardInterrupt(), after=True)
    for open_one in (store.begin_batch, lambda: store.transaction().__enter__()):
        faulty.armed = True
        with pytest.raises(KeyboardInterrupt):
            open_one()
        assert (store._depth, real.in_transaction) == (0, False)
    store._conn = real
    other.submit(Job("after", jobs.noop))  # the database is not left write-locked


@pytest.mark.timeout(30)
def test_a_ctrl_c_between_receiving_a_result_and_applying_it_does_not_lose_it(queue, make_supervisor, monkeypatch):
    from gigq_mp.messages import Accepted, JobSucceeded

    done = queue.submit(Job("done", jobs.add, params={"a": 1, "b": 2}))
    supervisor = make_supervisor(executor=ScriptedJobs(), grace_period=1.0)
    enforce_limits = supervisor._enforce_limits
    interrupt = []

    def ctrl_c_once(now):
        if interrupt:
            interrupt.clear()
            raise KeyboardInterrupt  # the replies are in hand, not applied yet
        return enforce_limits(now)

    monkeypatch.setattr(supervisor, "_enforce_limits", ctrl_c_once)

    def started(executor):
        return [Accepted(run.job_id, run.attempt, 1) for run in executor.sent]

    def result(executor):
        interrupt.append(True)
        return [JobSucceeded(done, executor.sent[0].attempt, "3", None, None)]

    supervisor.executor.script = [started, result]
    with pytest.raises(KeyboardInterrupt):
        supervisor.run()
    status = queue.get_status(done)
    assert (status["status"], queue.get_result(done), status["attempts"]) == ("completed", 3, 1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["INSERT INTO job_executions", "SELECT id, result"])
def test_a_ctrl_c_inside_a_claim_leaves_no_job_running_unowned(queue, make_supervisor, where):
    # Between the claim's two statements, or after it while the parents' results are read.
    ids = [queue.submit(Job(f"j{i}", jobs.add, params={"a": i, "b": 1})) for i in range(3)]
    parent_of_one = queue.submit(Job("p", jobs.add, params={"a": 0, "b": 0}))
    queue.store._conn.execute("UPDATE jobs SET status = 'completed', result = '0' WHERE id = ?", (parent_of_one,))
    child = queue.submit(Job("child", jobs.sum_parents, dependencies=[parent_of_one]))
    supervisor = make_supervisor(executor=ScriptedJobs(), concurrency=4)
    real = supervisor.store._conn
    supervisor.store._conn = faulty = FaultyConnection(real, where, KeyboardInterrupt())
    faulty.armed = True
    with pytest.raises(KeyboardInterrupt):
        supervisor.run()
    supervisor.store._conn = real
    for job_id in ids + [child]:
        status = queue.get_status(job_id)
        assert (status["status"], status["attempts"], status["executions"]) == ("pending", 0, []), job_id


@pytest.mark.timeout(30)
@pytest.mark.parametrize("forgotten", [True, False], ids=["just-after-forgetting", "just-before"])
def test_a_ctrl_c_while_an_attempt_is_forgotten_keeps_its_result(queue, make_supervisor, monkeypatch, forgotten):
    from gigq_mp.messages import Accepted, JobSucceeded

    done = queue.submit(Job("done", jobs.add, params={"a": 1, "b": 2}))
    supervisor = make_supervisor(executor=ScriptedJobs(), grace_period=1.0)
    ended = supervisor._ended
    calls = []

    def ctrl_c_once(attempt, seconds=None):
        calls.append(attempt.job_id)
        if len(calls) > 1 or forgotten:
            ended(attempt, seconds)
        if len(calls) == 1:
            raise KeyboardInterrupt  # before: its event is applied again by the stop

    monkeypatch.setattr(supervisor, "_ended", ctrl_c_once)
    supervisor.executor.script = [
        lambda executor: [Accepted(run.job_id, run.attempt, 1) for run in executor.sent],
        lambda executor: [JobSucceeded(done, executor.sent[0].attempt, "3", None, None)],
    ]
    with pytest.raises(KeyboardInterrupt):
        supervisor.run()
    status = queue.get_status(done)
    assert (status["status"], queue.get_result(done)) == ("completed", 3)
    assert [e["status"] for e in status["executions"]] == ["completed"]
    assert supervisor.counts["completed"] == 1  # once, however often its event was applied


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["UPDATE job_executions", "\nWITH RECURSIVE"], ids=["before-the-cascade", "in-it"])
def test_a_ctrl_c_while_a_failure_is_recorded_keeps_the_job_and_its_children_consistent(
    queue, make_supervisor, where
):
    # A final failure and the cancelling of its descendants are one step: a Ctrl-C half-way
    # undoes both, and the stop that follows applies the failure again, whole; never a
    # failed parent whose children wait forever.
    from gigq_mp.messages import Accepted, JobFailed

    parent = queue.submit(Job("parent", jobs.add, params={"a": 1, "b": 2}, max_attempts=1))
    child = queue.submit(Job("child", jobs.sum_parents, dependencies=[parent]))
    supervisor = make_supervisor(executor=ScriptedJobs(), grace_period=0.1)
    real = supervisor.store._conn
    supervisor.store._conn = faulty = FaultyConnection(real, where, KeyboardInterrupt(), after=True)

    def fail(executor):
        faulty.armed = True
        return [JobFailed(parent, executor.sent[0].attempt, "ValueError", "boom")]

    supervisor.executor.script = [lambda executor: [Accepted(parent, executor.sent[0].attempt, 1)], fail]
    with pytest.raises(KeyboardInterrupt):
        supervisor.run()
    supervisor.store._conn = real
    statuses = (queue.get_status(parent)["status"], queue.get_status(child)["status"])
    assert statuses == ("failed", "cancelled"), statuses
    assert [e["status"] for e in queue.get_status(parent)["executions"]] == ["failed"]
    assert supervisor.counts["failed"] == 1


def finish(supervisor, runs, seconds):
    """Deliver a success for each of `runs`, each having run `seconds` (as a worker measures)."""
    from gigq_mp.messages import JobSucceeded

    deliver(supervisor, *[JobSucceeded(r.job_id, r.attempt, "null", None, None, "", "", seconds, 1) for r in runs])


class DepthRecorder(HeldJobs):
    """HeldJobs that notes the depth each batch was sent with."""

    def __init__(self):
        super().__init__()
        self.depths = []

    def dispatch(self, runs, depth, pickled, slow=()):
        self.depths.append(depth)
        super().dispatch(runs, depth, pickled, slow)


@pytest.mark.timeout(60)
def test_closures_of_one_function_share_its_run_times(queue, make_supervisor):
    """Run times are kept by the callable's module and name, not by its pickle: a workflow
    of lambdas made in a loop (each pickled apart) is sent as deep as its jobs are quick."""
    from gigq_mp.supervisor import MAX_DEPTH

    executor = DepthRecorder()
    supervisor = started(make_supervisor(executor=executor))
    for i in range(4):
        queue.submit(Job(f"c{i}", (lambda k: (lambda: k))(i)))
    catch_up(supervisor)
    claim_all(supervisor)
    assert executor.depths[-1] == 1 and len({run.function_key for run in executor.sent}) == 4
    finish(supervisor, executor.sent, 0.0001)
    for i in range(4, 8):
        queue.submit(Job(f"c{i}", (lambda k: (lambda: k))(i)))
    catch_up(supervisor)
    claim_all(supervisor)
    assert executor.depths[-1] == MAX_DEPTH


@pytest.mark.timeout(30)
def test_jobs_of_a_callable_not_timed_yet_are_sent_one_at_a_time_whatever_the_others_took(queue, make_supervisor):
    """How many jobs a worker may hold is judged by the slowest callable among those waiting
    to be sent, by its own run times: a stage of quick jobs that feeds slower ones must not
    have the slower ones queued deep (a job of higher priority would wait behind them)."""
    from gigq_mp.supervisor import MAX_DEPTH

    executor = DepthRecorder()
    supervisor = started(make_supervisor(executor=executor))
    for i in range(4):
        queue.submit(Job(f"q{i}", jobs.noop))
    catch_up(supervisor)
    claim_all(supervisor)
    assert executor.depths[-1] == 1  # noop has not been timed yet
    finish(supervisor, executor.sent, 0.0001)

    for i in range(4):
        queue.submit(Job(f"more{i}", jobs.noop))
    catch_up(supervisor)
    claim_all(supervisor)
    assert executor.depths[-1] == MAX_DEPTH  # only quick jobs wait
    finish(supervisor, executor.sent[-4:], 0.0001)

    for i in range(2):
        queue.submit(Job(f"quick{i}", jobs.noop))
        queue.submit(Job(f"slow{i}", jobs.sleep_for, params={"seconds": 0}))
    catch_up(supervisor)
    claim_all(supervisor)
    assert executor.depths[-1] == 1  # sleep_for has not been timed yet: noop's times do not count for it
    slow = [r for r in executor.sent[-4:] if r.function_name == "sleep_for"]
    finish(supervisor, executor.sent[-4:], 0.01)  # each took 10 ms

    queue.submit(Job("slow_again", jobs.sleep_for, params={"seconds": 0}))
    catch_up(supervisor)
    claim_all(supervisor)
    assert len(slow) == 2 and executor.depths[-1] == 2  # 20 ms of work per worker / 10 ms a job


@pytest.mark.timeout(60)
def test_a_retry_falling_due_while_no_claim_fits_does_not_make_the_supervisor_spin(queue, db_path):
    """process_one runs a 2 s job while a failed job's retry falls due: nothing may be
    claimed meanwhile (its one attempt is running), and the retry must still leave the
    delayed heap, or each wait would time out at once for it until the job ends."""
    from gigq_mp import Worker

    queue.submit(Job("fails", jobs.raise_value_error, priority=10, max_attempts=2, retry_delay=0.3))
    queue.submit(Job("runs", jobs.sleep_for, params={"seconds": 2}, priority=5))
    worker = Worker(db_path, concurrency=1, polling_interval=5)
    try:
        assert worker.process_one() is True  # the first attempt fails; the retry is due in 0.3 s
        cpu = time.process_time()
        assert worker.process_one() is True  # the 2 s job
        used = time.process_time() - cpu
    finally:
        worker.close()
    assert used < 0.5, f"the supervisor used {used:.2f} s of CPU while a job ran for 2 s"


@pytest.mark.timeout(60)
def test_a_worker_forgets_a_long_job_once_it_is_answered(queue, monkeypatch):
    """Jobs of ~12 ms go one at a time, marked long; the pool drops each mark with its
    reply, so a worker process's marks never outnumber the jobs it holds."""
    from gigq_mp import pool as pool_module

    most = [0]
    dispatch = pool_module.LocalPool.dispatch

    def noting(self, runs, depth, pickled, slow=()):
        dispatch(self, runs, depth, pickled, slow)
        most[0] = max([most[0]] + [len(w.slow) for w in self.workers])

    monkeypatch.setattr(pool_module.LocalPool, "dispatch", noting)
    wf = Workflow("12 ms jobs")
    for i in range(100):
        wf.add_job(Job(f"j{i}", jobs.sleep_for, params={"seconds": 0.012}))
    wf.run(queue, workers=2, progress=False)
    assert 1 <= most[0] <= 2, f"a worker process held {most[0]} marks of long jobs"
