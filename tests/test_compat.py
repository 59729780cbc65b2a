"""A database written by GigQ 0.5 opens and runs."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import datetime, timedelta

from gigq_mp import JobQueue, Worker

# GigQ 0.5's schema, column for column.
GIGQ_05_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    function_name TEXT NOT NULL,
    function_module TEXT NOT NULL,
    params TEXT,
    priority INTEGER DEFAULT 0,
    dependencies TEXT,
    max_attempts INTEGER DEFAULT 3,
    timeout INTEGER DEFAULT 300,
    description TEXT,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    attempts INTEGER DEFAULT 0,
    result TEXT,
    error TEXT,
    started_at TEXT,
    completed_at TEXT,
    worker_id TEXT,
    pass_parent_results INTEGER,
    retry_delay INTEGER DEFAULT 0,
    retry_after TEXT
);
CREATE INDEX IF NOT EXISTS idx_jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS idx_jobs_priority ON jobs (priority);
CREATE TABLE IF NOT EXISTS job_executions (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    completed_at TEXT,
    result TEXT,
    error TEXT,
    FOREIGN KEY (job_id) REFERENCES jobs (id)
);
"""

INSERT_JOB = """
INSERT INTO jobs (id, name, function_name, function_module, params, priority,
    dependencies, max_attempts, timeout, description, status, created_at,
    updated_at, attempts, result, error, started_at, completed_at, worker_id,
    pass_parent_results, retry_delay, retry_after)
VALUES (:id, :name, :function_name, :function_module, :params, :priority,
    :dependencies, :max_attempts, :timeout, :description, :status, :created_at,
    :updated_at, :attempts, :result, :error, :started_at, :completed_at, :worker_id,
    :pass_parent_results, :retry_delay, :retry_after)
"""


def gigq_row(name, function_name, params, created, **overrides):
    row = dict(
        id=str(uuid.uuid4()), name=name, function_name=function_name,
        function_module="tests.jobs", params=json.dumps(params), priority=0,
        dependencies="[]", max_attempts=3, timeout=300, description="",
        status="pending", created_at=created.isoformat(), updated_at=created.isoformat(),
        attempts=0, result=None, error=None, started_at=None, completed_at=None,
        worker_id=None, pass_parent_results=None, retry_delay=0, retry_after=None,
    )
    row.update(overrides)
    return row


def build_gigq_database(path):
    t0 = datetime.now() - timedelta(minutes=5)
    add = gigq_row("add", "add", {"a": 2, "b": 3}, t0)
    total = gigq_row("total", "sum_parents", {}, t0 + timedelta(seconds=1),
                     dependencies=json.dumps([add["id"]]))
    done = gigq_row("done earlier", "add", {"a": 0, "b": 1}, t0 - timedelta(minutes=1),
                    status="completed", attempts=1, result=json.dumps({"x": 1}),
                    started_at=t0.isoformat(), completed_at=t0.isoformat())
    failed = gigq_row("failed earlier", "raise_value_error", {}, t0 - timedelta(minutes=2),
                      status="failed", attempts=3, error="boom")
    conn = sqlite3.connect(path)
    try:
        conn.executescript(GIGQ_05_SCHEMA)
        for row in (add, total, done, failed):
            conn.execute(INSERT_JOB, row)
        conn.execute(
            "INSERT INTO job_executions (id, job_id, worker_id, status, started_at, completed_at, result, error)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (str(uuid.uuid4()), done["id"], "worker-old", "completed", t0.isoformat(),
             t0.isoformat(), json.dumps({"x": 1}), None),
        )
        conn.commit()
    finally:
        conn.close()
    return add, total, done, failed


def test_gigq_database_opens_and_runs(db_path):
    add, total, done, failed = build_gigq_database(db_path)

    queue = JobQueue(db_path)
    assert queue.stats() == {
        "pending": 2, "running": 0, "completed": 1, "failed": 1,
        "cancelled": 0, "timeout": 0, "total": 4,
    }
    st = queue.get_status(done["id"])
    assert st["exists"] is True
    assert st["name"] == "done earlier"
    assert st["result"] == {"x": 1}
    assert queue.get_result(done["id"]) == {"x": 1}
    assert len(st["executions"]) == 1
    assert st["executions"][0]["worker_id"] == "worker-old"
    assert queue.get_status(add["id"])["params"] == {"a": 2, "b": 3}
    assert queue.get_status(total["id"])["dependencies"] == [add["id"]]

    worker = Worker(db_path)
    try:
        assert worker.process_one() is True
        assert queue.get_result(add["id"]) == 5
        assert worker.process_one() is True
        assert queue.get_result(total["id"]) == 5
        assert worker.process_one() is False
    finally:
        worker.close()

    # GigQ's own columns still hold what GigQ tools read
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (add["id"],)).fetchone()
        assert row["status"] == "completed"
        assert json.loads(row["result"]) == 5
        assert row["attempts"] == 1
        assert row["function_module"] == "tests.jobs"
        assert row["function_name"] == "add"
        assert row["completed_at"]
        executions = conn.execute(
            "SELECT * FROM job_executions WHERE job_id = ?", (add["id"],)
        ).fetchall()
        assert [e["status"] for e in executions] == ["completed"]
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 4
    finally:
        conn.close()

    assert queue.requeue_job(failed["id"]) is True
    assert queue.get_status(failed["id"])["status"] == "pending"
    queue.close()


def test_gigq_job_with_explicit_pass_parent_results_off(db_path):
    t0 = datetime.now() - timedelta(minutes=1)
    parent = gigq_row("p", "identity", {"x": 4}, t0)
    child = gigq_row("c", "optional_parent_results", {}, t0 + timedelta(seconds=1),
                     dependencies=json.dumps([parent["id"]]), pass_parent_results=0)
    conn = sqlite3.connect(db_path)
    try:
        conn.executescript(GIGQ_05_SCHEMA)
        conn.execute(INSERT_JOB, parent)
        conn.execute(INSERT_JOB, child)
        conn.commit()
    finally:
        conn.close()
    queue = JobQueue(db_path)
    worker = Worker(db_path)
    try:
        assert worker.process_one() is True
        assert worker.process_one() is True
    finally:
        worker.close()
    assert queue.get_result(parent["id"]) == 4
    assert queue.get_result(child["id"]) == "absent"
    queue.close()


def test_attempts_written_by_gigq_and_by_us_are_found_and_cleared_together(db_path):
    """GigQ's execution rows have no job_seq: they are found by job id, ours by the job's rowid,
    and clear_completed removes both."""
    add, total, done, failed = build_gigq_database(db_path)
    queue = JobQueue(db_path)
    worker = Worker(db_path)
    try:
        assert worker.process_one() is True  # `add` runs here: an attempt row of ours
    finally:
        worker.close()
    conn = sqlite3.connect(db_path)
    try:
        seqs = dict(conn.execute("SELECT job_id, job_seq FROM job_executions").fetchall())
        (add_rowid,) = conn.execute("SELECT rowid FROM jobs WHERE id = ?", (add["id"],)).fetchone()
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()
    assert seqs == {done["id"]: None, add["id"]: add_rowid}
    assert "idx_job_executions_seq" in indexes and "idx_job_executions_job" not in indexes
    assert [e["worker_id"] for e in queue.get_status(done["id"])["executions"]] == ["worker-old"]
    assert [e["status"] for e in queue.get_status(add["id"])["executions"]] == ["completed"]

    assert queue.clear_completed() == 2  # `done earlier` and `add`
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM job_executions").fetchone()[0] == 0
    finally:
        conn.close()
    queue.close()


def test_a_reused_rowid_does_not_inherit_the_attempts_of_a_deleted_job(db_path):
    """GigQ's clear_completed deletes jobs but leaves their attempt rows; a new job that
    gets the same rowid must not show them as its own."""
    from gigq_mp import Job

    from . import jobs

    queue = JobQueue(db_path)
    old = queue.submit(Job("old", jobs.add, params={"a": 1, "b": 1}))
    worker = Worker(db_path)
    try:
        assert worker.process_one() is True
    finally:
        worker.close()
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            (old_rowid,) = conn.execute("SELECT rowid FROM jobs WHERE id = ?", (old,)).fetchone()
            conn.execute("DELETE FROM jobs WHERE id = ?", (old,))  # as GigQ's clear_completed does
    finally:
        conn.close()
    new = queue.submit(Job("new", jobs.add, params={"a": 2, "b": 2}))
    conn = sqlite3.connect(db_path)
    try:
        (new_rowid,) = conn.execute("SELECT rowid FROM jobs WHERE id = ?", (new,)).fetchone()
    finally:
        conn.close()
    assert new_rowid == old_rowid  # the case this test is about
    assert queue.get_status(new)["executions"] == []
    queue.close()
