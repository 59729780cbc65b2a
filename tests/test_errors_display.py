"""What a failed run shows: the remote traceback chained as the cause, a table for
notebooks, the DAG with its final states; and clear refusals instead of hangs."""

from __future__ import annotations

import pytest

from gigq_mp import Job, JobQueue, Workflow
from gigq_mp.errors import GigqMpError, RemoteTraceback, WorkflowFailed

from . import jobs

pytestmark = pytest.mark.timeout(60)


def test_a_failed_run_chains_the_remote_traceback_and_renders_a_table():
    wf = Workflow("broken")
    bad = wf.add_job(Job("bad", jobs.raise_value_error, params={"message": "no luck"}, max_attempts=1))
    child = wf.add_job(Job("child", jobs.add, params={"a": 1, "b": 2}), depends_on=[bad])
    with pytest.raises(WorkflowFailed) as caught:
        wf.run(workers=1)
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert cause.job_name == "bad" and cause.job_id == bad.id
    assert "ValueError: no luck" in str(cause) and "Traceback (most recent call last)" in str(cause)
    assert caught.value.failures[child.id]["status"] == "cancelled"
    table = caught.value._repr_markdown_()
    assert "| bad (" in table and "ValueError: no luck" in table and "| child (" in table
    assert '"bad: failed"' in wf.to_mermaid() and '"child: cancelled"' in wf.to_mermaid()
    assert "```mermaid" in wf._repr_markdown_()


def nested_run():
    inner = Workflow("inner")
    inner.add_job(Job("add", jobs.add, params={"a": 1, "b": 1}))
    return inner.run(workers=1)


def test_a_run_inside_a_job_is_refused_not_hung():
    wf = Workflow("outer")
    job = wf.add_job(Job("nested", nested_run, max_attempts=1))
    with pytest.raises(WorkflowFailed) as caught:
        wf.run(workers=1, timeout=30)
    error = caught.value.failures[job.id]["error"]
    assert "called from inside a running job" in error


def test_running_on_a_closed_queue_names_it(db_path):
    queue = JobQueue(db_path)
    queue.close()
    wf = Workflow("w")
    wf.add_job(Job("add", jobs.add, params={"a": 1, "b": 1}))
    with pytest.raises(GigqMpError, match="is closed"):
        wf.run(queue, workers=1)


def test_progress_false_and_callbacks(db_path):
    seen = []
    wf = Workflow("w")
    for i in range(3):
        wf.add_job(Job(f"add{i}", jobs.add, params={"a": i, "b": 1}))
    wf.run(JobQueue(db_path), workers=1, progress=seen.append)
    assert seen and seen[-1]["final"] and seen[-1]["done"] == seen[-1]["total"] == 3
    wf2 = Workflow("quiet")
    wf2.add_job(Job("add", jobs.add, params={"a": 1, "b": 1}))
    assert list(wf2.run(workers=1, progress=False).values()) == [2]
