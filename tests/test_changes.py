"""A running supervisor follows other processes' writes through the change log, not by
rescanning every pending job: submissions, requeues and cancellations are all seen."""

from __future__ import annotations

import pytest

from gigq_mp import Job, JobQueue, Worker
from gigq_mp.store import Store

from . import jobs
from .util import WorkerThread, wait_terminal

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
