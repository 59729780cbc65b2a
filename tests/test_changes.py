"""A running supervisor follows other processes' writes through the change log, not by
rescanning every pending job: submissions, requeues and cancellations are all seen."""

from __future__ import annotations

import threading
import time

import pytest

from gigq_mp import Job, JobQueue, Worker, Workflow
from gigq_mp.errors import WorkflowFailed
from gigq_mp.store import Store

from . import jobs
from .util import WorkerThread, wait_terminal, wait_until

pytestmark = pytest.mark.timeout(60)


def count_calls(monkeypatch, cls, name):
    calls = []
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


def test_jobs_submitted_while_running_are_found_without_rescans(monkeypatch, db_path):
    rescans = count_calls(monkeypatch, Store, "pending_ids")
    queue = JobQueue(db_path)
    with WorkerThread(Worker(db_path, polling_interval=0.05, concurrency=2)):
        ids = []
        for i in range(30):
            ids.append(queue.submit(Job(f"add{i}", jobs.add, params={"a": i, "b": 1})))
        statuses = wait_terminal(queue, ids, timeout=30)
    assert set(statuses.values()) == {"completed"}
    assert [queue.get_result(i) for i in ids] == [i + 1 for i in range(30)]
    assert len(rescans) == 1  # the start-up scan only


def test_requeue_and_cancel_from_another_process_reach_a_running_supervisor(db_path, tmp_path):
    queue = JobQueue(db_path)
    flag = str(tmp_path / "flag")
    failing = queue.submit(Job("needs-flag", jobs.fail_unless_flag, params={"flag_path": flag}, max_attempts=1))
    child = queue.submit(Job("child", jobs.add, params={"a": 1, "b": 2}, dependencies=[failing]))
    gate = queue.submit(Job("gate", jobs.sleep_for, params={"seconds": 30}))
    waiting = queue.submit(Job("waits-for-gate", jobs.add, params={"a": 0, "b": 0}, dependencies=[gate]))
    with WorkerThread(Worker(db_path, polling_interval=0.2, concurrency=2, grace_period=0.5)):
        wait_terminal(queue, [failing, child], timeout=20)
        assert queue.get_status(child)["status"] == "cancelled"
        open(flag, "w").close()
        assert queue.requeue_job(failing)
        assert wait_terminal(queue, [failing, child], timeout=20) == {failing: "completed", child: "completed"}
        assert queue.cancel(waiting)
        assert queue.get_status(waiting)["status"] == "cancelled"
    assert queue.get_result(child) == 3
    assert queue.get_status(gate)["status"] == "pending"  # interrupted by the stop, attempt not counted
    assert queue.get_status(gate)["attempts"] == 0


def test_jobs_submitted_after_clear_completed_are_still_found(db_path):
    queue = JobQueue(db_path)
    with WorkerThread(Worker(db_path, polling_interval=0.05, concurrency=1)):
        first = [queue.submit(Job(f"a{i}", jobs.add, params={"a": i, "b": 0})) for i in range(3)]
        wait_terminal(queue, first, timeout=20)
        assert queue.clear_completed() == 3  # deletes the highest rowids: new rows may reuse them
        later = [queue.submit(Job(f"b{i}", jobs.add, params={"a": i, "b": 10})) for i in range(3)]
        statuses = wait_terminal(queue, later, timeout=20)
    assert set(statuses.values()) == {"completed"}
    assert [queue.get_result(i) for i in later] == [10, 11, 12]


def test_workflow_run_starts_from_its_own_submission_without_reading_it_back(monkeypatch, db_path):
    queue = JobQueue(db_path)
    outside = queue.submit(Job("outside", jobs.add, params={"a": 100, "b": 0}))  # not in the workflow
    with WorkerThread(Worker(db_path, polling_interval=0.05)):
        wait_terminal(queue, [outside], timeout=20)
    wf = Workflow("seeded")
    early = wf.add_job(Job("early", jobs.add, params={"a": 1, "b": 0}))
    wf.submit_all(queue)  # submitted before run(): read from the store, not the submission
    late = wf.add_job(Job("late", jobs.sum_parents), depends_on=[early, outside])
    tail = wf.add_job(Job("tail", jobs.sum_parents), depends_on=[late])
    rescans = count_calls(monkeypatch, Store, "pending_ids")
    read = count_calls(monkeypatch, Store, "job_states")
    results = wf.run(queue, workers=2, progress=False)
    assert results == {early.id: 1, late.id: 101, tail.id: 101}
    assert rescans == []  # no supervisor of the run read every pending job
    assert [sorted(ids) for (ids,) in read[:1]] == [sorted([early.id, outside])]  # only the rest of its scope


def test_a_change_between_submission_and_the_first_sync_is_seen(monkeypatch, db_path):
    queue = JobQueue(db_path)
    wf = Workflow("raced")
    first = wf.add_job(Job("first", jobs.add, params={"a": 1, "b": 1}))
    doomed = wf.add_job(Job("doomed", jobs.add, params={"a": 2, "b": 2}))
    below = wf.add_job(Job("below", jobs.sum_parents), depends_on=[doomed])
    prepare = Workflow._prepare  # what Workflow.run submits with

    def prepare_then_cancel(self, queue, force=False, before_insert=None):
        plan = prepare(self, queue, force, before_insert)
        other = JobQueue(db_path)  # another connection, as another process would write
        assert other.cancel(doomed.id)
        other.close()
        return plan

    monkeypatch.setattr(Workflow, "_prepare", prepare_then_cancel)
    with pytest.raises(WorkflowFailed) as caught:
        wf.run(queue, workers=1, progress=False)
    assert caught.value.results == {first.id: 2}
    assert {i: f["status"] for i, f in caught.value.failures.items()} == {doomed.id: "cancelled", below.id: "cancelled"}
    assert queue.get_status(doomed.id)["attempts"] == 0


def test_a_cancel_through_the_same_queue_from_another_thread_reaches_a_running_workflow(db_path):
    # SQLite's data_version ignores the connection's own writes; the run must see them anyway.
    queue = JobQueue(db_path)
    wf = Workflow("cancelled-from-a-notebook-thread")
    first = wf.add_job(Job("first", jobs.sleep_for, params={"seconds": 1.5}))
    after = wf.add_job(Job("after", jobs.add, params={"a": 1, "b": 2}), depends_on=[first])
    slow = wf.add_job(Job("slow", jobs.sleep_for, params={"seconds": 60}))
    cancelled = []

    def cancel_soon():
        wait_until(lambda: queue.get_status(slow.id).get("status") == "running", timeout=20, what="slow to start")
        cancelled.extend([queue.cancel(after.id), queue.cancel(slow.id, kill=True)])

    thread = threading.Thread(target=cancel_soon)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(WorkflowFailed) as caught:
            wf.run(queue, workers=2, timeout=30, progress=False)
    finally:
        thread.join()
    assert time.monotonic() - started < 15  # ended by the cancels, not by its timeout
    assert cancelled == [True, True]
    assert caught.value.results == {first.id: 1.5}
    assert {i: f["status"] for i, f in caught.value.failures.items()} == {after.id: "cancelled", slow.id: "cancelled"}


def test_a_cancel_from_the_runs_own_progress_callback_is_seen(queue):
    # The callback runs inside the supervisor's open write batch: the cancel joins it.
    wf = Workflow("cancel-in-callback")
    first = wf.add_job(Job("first", jobs.sleep_for, params={"seconds": 1.0}))
    after = wf.add_job(Job("after", jobs.add, params={"a": 1, "b": 2}), depends_on=[first])
    cancelled = []

    def progress(counts):
        if counts["running"] and not cancelled:
            cancelled.append(queue.cancel(after.id))

    started = time.monotonic()
    with pytest.raises(WorkflowFailed) as caught:
        wf.run(queue, workers=1, timeout=30, progress=progress)
    assert time.monotonic() - started < 15  # ended by the cancel, not by its timeout
    assert cancelled == [True]
    assert {i: f["status"] for i, f in caught.value.failures.items()} == {after.id: "cancelled"}
