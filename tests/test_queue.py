"""JobQueue: the GigQ 0.5 API on one SQLite file."""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
import uuid
from datetime import datetime

import pytest

import gigq_mp
from gigq_mp import Job, JobQueue, JobStatus, Worker, close_connections, setup_logging
from gigq_mp import store as store_module
from gigq_mp.errors import ValidationError, WaitTimeout

from . import jobs
from .util import WorkerThread, drain

STATUSES = ["pending", "running", "completed", "failed", "cancelled", "timeout"]


def make_job(name="j", **kw):
    return Job(name=name, function=jobs.add, params={"a": 1, "b": 2}, **kw)


def test_public_names():
    assert isinstance(gigq_mp.__version__, str) and gigq_mp.__version__
    assert [s.value for s in JobStatus] == STATUSES
    assert JobStatus("timeout") is JobStatus.TIMEOUT
    close_connections()  # callable, no error
    assert callable(setup_logging)


def test_job_defaults():
    job = Job("name", jobs.add)
    uuid.UUID(job.id, version=4)
    datetime.fromisoformat(job.created_at)
    assert job.params == {}
    assert job.dependencies == []
    assert (job.priority, job.max_attempts, job.timeout, job.description) == (0, 3, 300, "")
    assert job.pass_parent_results is None
    assert job.retry_delay == 0


def test_submit_and_get_status(queue):
    job = make_job("first", priority=4, description="desc", max_attempts=2, timeout=9)
    assert queue.submit(job) == job.id
    st = queue.get_status(job.id)
    assert st["exists"] is True
    assert st["id"] == job.id
    assert st["name"] == "first"
    assert st["status"] == "pending"
    assert st["params"] == {"a": 1, "b": 2}
    assert st["dependencies"] == []
    assert st["priority"] == 4
    assert st["description"] == "desc"
    assert st["max_attempts"] == 2
    assert st["timeout"] == 9
    assert st["attempts"] == 0
    assert st["result"] is None
    assert st["executions"] == []
    assert queue.get_result(job.id) is None


def test_unknown_id(queue):
    assert queue.get_status("no-such-id") == {"exists": False}
    with pytest.raises(KeyError):
        queue.get_result("no-such-id")
    assert queue.cancel("no-such-id") is False
    assert queue.requeue_job("no-such-id") is False


def test_database_persists_across_queue_objects(db_path):
    q1 = JobQueue(db_path)
    job_id = q1.submit(make_job())
    q1.close()
    q2 = JobQueue(db_path)
    assert q2.get_status(job_id)["status"] == "pending"
    q2.close()


def test_existing_empty_file_is_a_valid_database():
    fd, path = tempfile.mkstemp(suffix=".db")
    os.close(fd)
    try:
        assert os.path.getsize(path) == 0
        queue = JobQueue(path)
        job_id = queue.submit(make_job())
        assert queue.get_status(job_id)["exists"] is True
        worker = Worker(path)
        try:
            assert worker.process_one() is True
        finally:
            worker.close()
        assert queue.get_result(job_id) == 3
        queue.close()
    finally:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)


def test_list_jobs_newest_first_and_status_filter(queue):
    ids = []
    for i in range(5):
        ids.append(queue.submit(make_job(f"job{i}")))
        time.sleep(0.002)
    listed = queue.list_jobs()
    assert [j["id"] for j in listed] == ids[::-1]
    assert listed[0]["params"] == {"a": 1, "b": 2}
    assert [j["id"] for j in queue.list_jobs(limit=2)] == [ids[4], ids[3]]

    assert queue.cancel(ids[1]) is True
    assert queue.cancel(ids[3]) is True
    assert [j["id"] for j in queue.list_jobs(status=JobStatus.CANCELLED)] == [ids[3], ids[1]]
    assert [j["id"] for j in queue.list_jobs(status="cancelled")] == [ids[3], ids[1]]
    assert [j["id"] for j in queue.list_jobs(status="pending")] == [ids[4], ids[2], ids[0]]
    assert queue.list_jobs(status="failed") == []


def test_stats_counts_every_status(queue, db_path):
    assert queue.stats() == {**{s: 0 for s in STATUSES}, "total": 0}
    ids = [queue.submit(make_job(f"j{i}")) for i in range(4)]
    bad = queue.submit(Job("bad", jobs.raise_value_error, max_attempts=1))
    queue.cancel(ids[0])
    worker = Worker(db_path)
    try:
        # one completes
        assert worker.process_one() is True
    finally:
        worker.close()
    # oldest first among equal priorities: ids[0] is cancelled, so ids[1] ran
    assert queue.get_status(ids[1])["status"] == "completed"
    assert queue.get_status(bad)["status"] == "pending"
    assert queue.stats() == {
        "pending": 3, "running": 0, "completed": 1, "failed": 0,
        "cancelled": 1, "timeout": 0, "total": 5,
    }


def test_cancel_pending_only(queue, db_path):
    done = queue.submit(make_job("done"))
    worker = Worker(db_path)
    try:
        assert worker.process_one() is True
    finally:
        worker.close()
    assert queue.get_status(done)["status"] == "completed"
    assert queue.cancel(done) is False
    assert queue.get_status(done)["status"] == "completed"

    pending = queue.submit(make_job("pending"))
    assert queue.cancel(pending) is True
    assert queue.get_status(pending)["status"] == "cancelled"
    assert queue.cancel(pending) is False


def test_cancelled_job_is_not_run(queue, db_path, tmp_path):
    log = tmp_path / "runs.log"
    job_id = queue.submit(Job("r", jobs.record_run, params={"path": str(log), "tag": "x"}))
    assert queue.cancel(job_id)
    worker = Worker(db_path)
    try:
        assert worker.process_one() is False
    finally:
        worker.close()
    assert not log.exists()


def test_get_result_completed_and_not(queue, db_path):
    a = queue.submit(make_job("a"))
    b = queue.submit(Job("b", jobs.add, params={"a": 10, "b": 5}, priority=-1))
    worker = Worker(db_path)
    try:
        assert worker.process_one() is True
        assert queue.get_result(a) == 3
        assert queue.get_result(b) is None
        assert worker.process_one() is True
    finally:
        worker.close()
    assert queue.get_result(b) == 15
    st = queue.get_status(b)
    assert st["result"] == 15
    assert st["status"] == "completed"
    assert st["attempts"] == 1
    [execution] = st["executions"]
    assert execution["job_id"] == b
    assert execution["status"] == "completed"
    assert execution["attempt"] == 1
    assert execution["started_at"] and execution["completed_at"]
    assert isinstance(execution["pid"], int) and execution["pid"] != os.getpid()


def test_clear_completed(queue, db_path):
    done = [queue.submit(make_job(f"d{i}")) for i in range(2)]
    failed = queue.submit(Job("f", jobs.raise_value_error, max_attempts=1, priority=-5))
    cancelled = queue.submit(make_job("c"))
    queue.cancel(cancelled)
    pending = queue.submit(make_job("p", priority=-10))
    worker = Worker(db_path)
    try:
        for _ in range(3):
            assert worker.process_one() is True
    finally:
        worker.close()
    # three process_one calls ran d0, d1 and f: p has the lowest priority
    assert queue.get_status(pending)["status"] == "pending"
    assert queue.get_status(failed)["status"] == "failed"

    assert queue.clear_completed(before_timestamp="2000-01-01T00:00:00") == 0
    assert queue.stats()["total"] == 5
    assert queue.clear_completed() == 3
    for job_id in done + [cancelled]:
        assert queue.get_status(job_id) == {"exists": False}
    assert queue.get_status(failed)["status"] == "failed"
    assert queue.get_status(pending)["status"] == "pending"
    assert queue.stats()["total"] == 2
    assert queue.clear_completed() == 0


def test_clear_completed_before_a_future_timestamp(queue, db_path):
    job_id = queue.submit(make_job())
    worker = Worker(db_path)
    try:
        assert worker.process_one() is True
    finally:
        worker.close()
    assert queue.clear_completed(before_timestamp="9999-01-01T00:00:00") == 1
    assert queue.get_status(job_id) == {"exists": False}


def test_requeue_job(queue, db_path):
    job_id = queue.submit(Job("bad", jobs.raise_value_error, max_attempts=2))
    ok = queue.submit(make_job("ok", priority=-1))
    assert queue.requeue_job(job_id) is False  # pending
    worker = Worker(db_path)
    try:
        drain(worker)
    finally:
        worker.close()
    st = queue.get_status(job_id)
    assert st["status"] == "failed"
    assert st["attempts"] == 2
    assert st["error"]
    assert queue.requeue_job(ok) is False  # completed

    assert queue.requeue_job(job_id) is True
    st = queue.get_status(job_id)
    assert st["status"] == "pending"
    assert st["attempts"] == 0
    assert st["error"] is None
    # the execution history is kept
    assert len(st["executions"]) == 2
    assert queue.requeue_job(job_id) is False  # pending again


def test_requeue_cancelled_job(queue):
    job_id = queue.submit(make_job())
    queue.cancel(job_id)
    assert queue.requeue_job(job_id) is True
    assert queue.get_status(job_id)["status"] == "pending"


def test_wait_returns_statuses(queue, db_path):
    ids = [queue.submit(make_job(f"w{i}")) for i in range(3)]
    queue.cancel(ids[2])
    with WorkerThread(Worker(db_path, polling_interval=0.1)):
        statuses = queue.wait(ids, timeout=30)
    assert statuses == {ids[0]: "completed", ids[1]: "completed", ids[2]: "cancelled"}


def test_wait_timeout(queue):
    job_id = queue.submit(make_job())
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout):
        queue.wait([job_id], timeout=0.3)
    assert time.monotonic() - t0 < 3
    assert issubclass(WaitTimeout, TimeoutError)


def test_raw_tables_keep_gigq_columns(queue, db_path):
    queue.submit(make_job())
    conn = sqlite3.connect(db_path)
    try:
        job_cols = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        exec_cols = {row[1] for row in conn.execute("PRAGMA table_info(job_executions)")}
    finally:
        conn.close()
    assert {
        "id", "name", "function_name", "function_module", "params", "priority",
        "dependencies", "max_attempts", "timeout", "description", "status",
        "created_at", "updated_at", "attempts", "result", "error", "started_at",
        "completed_at", "worker_id", "pass_parent_results", "retry_delay", "retry_after",
    } <= job_cols
    assert {
        "id", "job_id", "worker_id", "status", "started_at", "completed_at", "result", "error",
    } <= exec_cols


def test_a_submission_says_where_its_jobs_landed_and_their_outcomes_are_read_from_there(queue):
    before = queue.submit(make_job("before"))
    batch = [make_job(f"b{i}") for i in range(3)]
    submission = queue.insert(batch)
    assert [row.id for row in submission.rows] == [job.id for job in batch]
    rowids = dict(queue.store._conn.execute("SELECT id, rowid FROM jobs").fetchall())
    assert [rowids[job.id] for job in batch] == list(submission.seqs)
    queue.store._conn.execute("DELETE FROM jobs WHERE id = ?", (batch[1].id,))
    wanted = [batch[0].id, batch[1].id, batch[2].id, before]
    rows = queue.store.outcomes(wanted, submission.seqs)
    assert sorted(rows) == sorted([batch[0].id, batch[2].id, before])  # the deleted one is missing
    assert {row.status for row in rows.values()} == {"pending"}
    assert queue.insert([]).rows == []


def test_submitting_a_job_twice_is_refused_and_writes_nothing(tmp_path):
    queue = JobQueue(str(tmp_path / "q.db"))
    first = Job("first", jobs.add, params={"a": 1, "b": 2})
    queue.submit(first)
    fresh = [Job(f"fresh{i}", jobs.add, params={"a": i, "b": 0}) for i in range(3)]
    with pytest.raises(ValidationError, match=f"already submitted: {first.id}"):
        queue.submit_many(fresh[:2] + [first] + fresh[2:])
    assert queue.stats()["total"] == 1
    assert [queue.get_status(job.id)["exists"] for job in fresh] == [False, False, False]
    queue.close()


def test_a_refused_submission_inside_an_open_batch_leaves_the_batch_clean(tmp_path):
    """A progress callback of a run submits inside the supervisor's open batch: a refused
    submission must not leave its first rows there, to be committed with the batch."""
    queue = JobQueue(str(tmp_path / "q.db"))
    first = Job("first", jobs.add, params={"a": 1, "b": 2})
    queue.submit(first)
    fresh = Job("fresh", jobs.add, params={"a": 3, "b": 4})
    queue.store.begin_batch()
    with pytest.raises(ValidationError, match="already submitted"):
        queue.submit_many([fresh, first])
    queue.store.commit_batch()
    assert queue.stats()["total"] == 1
    assert not queue.get_status(fresh.id)["exists"]
    queue.close()


@pytest.mark.parametrize("refused", [False, True])
def test_a_large_submission_gives_its_extra_page_cache_back(tmp_path, monkeypatch, refused):
    monkeypatch.setattr(store_module, "BULK_ROWS", 2)
    queue = JobQueue(str(tmp_path / "q.db"))
    first = Job("first", jobs.add, params={"a": 1, "b": 2})
    if refused:
        queue.submit(first)
    batch = [Job(f"j{i}", jobs.add, params={"a": i, "b": 0}) for i in range(4)] + ([first] if refused else [])
    if refused:
        with pytest.raises(ValidationError, match="already submitted"):
            queue.submit_many(batch)
    else:
        queue.submit_many(batch)
    assert queue.stats()["total"] == (1 if refused else 4)
    (cache,) = queue.store._conn.execute("PRAGMA cache_size").fetchone()
    assert cache == -store_module.CACHE_KIB
    queue.close()


@pytest.mark.timeout(60)
def test_a_claim_of_more_jobs_than_one_statement_binds_takes_each_once_in_order(queue):
    """A claim binds two variables a job, so a large one goes in several statements (old
    SQLite builds allow 999 variables); it returns the jobs in the order given, skips the
    one no longer pending, and opens one attempt for each job it took."""
    ids = queue.submit_many([make_job(f"j{i}") for i in range(1000)])
    store = queue.store
    store._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # as SQLite before 3.32
    seqs = dict(store._conn.execute("SELECT id, rowid FROM jobs").fetchall())
    store._conn.execute("UPDATE jobs SET status = 'cancelled' WHERE id = ?", (ids[700],))
    wanted = list(reversed(ids))
    with store.transaction():
        claimed = store.claim([(i, seqs[i]) for i in wanted], "w1")
    assert [row.id for row, _ in claimed] == [i for i in wanted if i != ids[700]]
    assert {row.attempts for row, _ in claimed} == {1}
    assert store.count_by_status() == {"running": 999, "cancelled": 1}
    (executions,) = store._conn.execute("SELECT COUNT(*) FROM job_executions").fetchone()
    assert executions == 999
