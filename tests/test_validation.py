"""Bad input is refused with a clear exception before anything is written."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from gigq_mp import Job, JobQueue, Workflow, task
from gigq_mp.errors import GigqMpError, SerializationError, ValidationError

from . import jobs


def snapshot(db_path):
    conn = sqlite3.connect(db_path)
    try:
        return (
            sorted(map(tuple, conn.execute("SELECT * FROM jobs").fetchall())),
            sorted(map(tuple, conn.execute("SELECT * FROM job_executions").fetchall())),
        )
    finally:
        conn.close()


@pytest.fixture
def populated(db_path):
    """A queue holding one existing job, and the database's state."""
    queue = JobQueue(db_path)
    queue.submit(Job("existing", jobs.add, params={"a": 1, "b": 1}))
    before = (queue.stats(), snapshot(db_path))
    assert before[0]["total"] == 1
    yield queue, before
    queue.close()


def assert_unchanged(queue, db_path, before):
    assert queue.stats() == before[0]
    assert snapshot(db_path) == before[1]


def test_error_hierarchy():
    assert issubclass(ValidationError, GigqMpError)
    assert issubclass(ValidationError, ValueError)
    assert issubclass(SerializationError, GigqMpError)
    assert issubclass(SerializationError, TypeError)


def test_unknown_dependency_id(populated, db_path):
    queue, before = populated
    job = Job("orphan", jobs.noop, dependencies=["no-such-job-id"])
    with pytest.raises(ValidationError, match="no-such-job-id"):
        queue.submit(job)
    assert_unchanged(queue, db_path, before)


def test_unknown_dependency_in_workflow_writes_nothing(populated, db_path):
    queue, before = populated
    wf = Workflow("wf")
    a = wf.add_job(Job("a", jobs.noop))
    wf.add_job(Job("b", jobs.noop), depends_on=[a])
    wf.add_job(Job("c", jobs.noop, dependencies=["missing-id"]))
    with pytest.raises(ValidationError, match="missing-id"):
        wf.submit_all(queue)
    assert_unchanged(queue, db_path, before)


def test_dependency_cycle(populated, db_path):
    queue, before = populated
    a = Job("a", jobs.noop)
    b = Job("b", jobs.noop, dependencies=[a.id])
    c = Job("c", jobs.noop, dependencies=[b.id])
    a.dependencies = [c.id]
    wf = Workflow("cyclic")
    for job in (a, b, c):
        wf.add_job(job)
    with pytest.raises(ValidationError, match=r"(?i)cycl"):
        wf.submit_all(queue)
    assert_unchanged(queue, db_path, before)
    with pytest.raises(ValidationError, match=r"(?i)cycl"):
        wf.run(queue, workers=1)
    assert_unchanged(queue, db_path, before)


def test_self_dependency(populated, db_path):
    queue, before = populated
    job = Job("self", jobs.noop)
    job.dependencies = [job.id]
    with pytest.raises(ValidationError):
        queue.submit(job)
    assert_unchanged(queue, db_path, before)


def test_unserializable_params(populated, db_path):
    queue, before = populated
    job = Job("locked", jobs.identity, params={"x": threading.Lock()})
    with pytest.raises(SerializationError, match=r"(?i)lock"):
        queue.submit(job)
    assert_unchanged(queue, db_path, before)


def test_unserializable_params_in_workflow_writes_nothing(populated, db_path):
    queue, before = populated
    wf = Workflow("wf")
    a = wf.add_job(Job("a", jobs.noop))
    wf.add_job(Job("b", jobs.identity, params={"x": threading.Lock()}), depends_on=[a])
    with pytest.raises(SerializationError):
        wf.submit_all(queue)
    assert_unchanged(queue, db_path, before)


def test_unserializable_callable(populated, db_path):
    queue, before = populated
    lock = threading.Lock()

    def uses_lock():
        return lock.locked()

    with pytest.raises(SerializationError, match=r"(?i)lock|uses_lock"):
        queue.submit(Job("closure over a lock", uses_lock))
    assert_unchanged(queue, db_path, before)


def test_negative_timeout(populated, db_path):
    queue, before = populated
    with pytest.raises(ValidationError, match="timeout"):
        queue.submit(Job("neg", jobs.noop, timeout=-1))
    assert_unchanged(queue, db_path, before)


def test_max_attempts_below_one(populated, db_path):
    queue, before = populated
    with pytest.raises(ValidationError, match="max_attempts"):
        queue.submit(Job("zero", jobs.noop, max_attempts=0))
    assert_unchanged(queue, db_path, before)


def test_params_not_a_mapping(populated, db_path):
    queue, before = populated
    with pytest.raises(ValidationError, match="params"):
        queue.submit(Job("bad params", jobs.add, params=[1, 2]))
    assert_unchanged(queue, db_path, before)


def test_task_with_negative_timeout(populated, db_path):
    queue, before = populated
    with pytest.raises(ValidationError, match="timeout"):
        @task(timeout=-5)
        def f():
            return 1

        f.submit(queue)
    assert_unchanged(queue, db_path, before)


def test_valid_submission_after_refusals_still_works(populated, db_path):
    queue, before = populated
    with pytest.raises(ValidationError):
        queue.submit(Job("zero", jobs.noop, max_attempts=0))
    job_id = queue.submit(Job("fine", jobs.noop))
    assert queue.get_status(job_id)["status"] == "pending"
    assert queue.stats()["total"] == 2


def test_jobs_listed_before_their_parents_are_stored_parents_first(queue):
    from gigq_mp.jobqueue import topological_order

    parent, child, grandchild = Job("parent", jobs.noop), Job("child", jobs.noop), Job("grandchild", jobs.noop)
    child.dependencies = [parent.id]
    grandchild.dependencies = [child.id, parent.id]
    assert topological_order([grandchild, child, parent]) == [parent, child, grandchild]
    assert topological_order([parent, child, grandchild]) == [parent, child, grandchild]
    submission = queue.insert([grandchild, child, parent])
    assert [row.id for row in submission.rows] == [parent.id, child.id, grandchild.id]
