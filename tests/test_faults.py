"""Jobs that hang, crash, spawn children or return garbage: each fails only
itself (and cancels its descendants), and nothing is left running."""

from __future__ import annotations

import time

import pytest

from gigq_mp import Job, Worker, Workflow
from gigq_mp.errors import WorkflowFailed

from . import jobs
from .jobs import read_lines
from .util import drain, kill_pids, wait_pids_gone


def pids_in(path):
    return [int(p) for p in read_lines(path)]


@pytest.mark.slow
@pytest.mark.timeout(40)
def test_job_sleeping_past_timeout_is_killed_and_ends_timeout(queue, tmp_path):
    pidfile = str(tmp_path / "pids")
    wf = Workflow("timeouts")
    sleeper = wf.add_job(
        Job("sleeper", jobs.record_pid_and_sleep, params={"pidfile": pidfile, "seconds": 30},
            timeout=1, max_attempts=2)
    )
    dependent = wf.add_job(Job("after sleeper", jobs.sum_parents), depends_on=[sleeper])
    fine = wf.add_job(Job("fine", jobs.add, params={"a": 1, "b": 2}))
    t0 = time.monotonic()
    try:
        with pytest.raises(WorkflowFailed) as excinfo:
            wf.run(queue, workers=2)
        elapsed = time.monotonic() - t0
        pids = pids_in(pidfile)
        assert len(pids) == 2, "expected one worker process per attempt"
        assert wait_pids_gone(pids, timeout=1.0) == []
    finally:
        kill_pids(pids_in(pidfile))
    assert elapsed < 12, f"two 1-second attempts took {elapsed:.1f}s"
    exc = excinfo.value
    assert exc.results == {fine.id: 3}
    assert exc.failures[sleeper.id]["status"] == "timeout"
    st = queue.get_status(sleeper.id)
    assert st["status"] == "timeout"
    assert st["attempts"] == 2
    assert st["error"].startswith("timed out after")
    assert [e["status"] for e in st["executions"]] == ["timeout", "timeout"]
    assert sorted(e["pid"] for e in st["executions"]) == sorted(pids)
    # its descendant does not wait forever
    dep = queue.get_status(dependent.id)
    assert dep["status"] == "cancelled"
    assert "upstream job" in dep["error"]
    assert sleeper.id in dep["error"]
    assert "timeout" in dep["error"]


@pytest.mark.slow
@pytest.mark.timeout(40)
def test_timeout_kills_the_jobs_child_processes(queue, tmp_path):
    pidfile = str(tmp_path / "grandchildren")
    wf = Workflow("grandchildren")
    job = wf.add_job(
        Job("spawner", jobs.spawn_grandchild_and_sleep,
            params={"pidfile": pidfile, "seconds": 30}, timeout=1, max_attempts=2)
    )
    try:
        with pytest.raises(WorkflowFailed):
            wf.run(queue, workers=1)
        grandchildren = pids_in(pidfile)
        assert len(grandchildren) == 2
        assert wait_pids_gone(grandchildren, timeout=1.0) == [], "grandchild survived the timeout"
        worker_pids = [e["pid"] for e in queue.get_status(job.id)["executions"]]
        assert wait_pids_gone(worker_pids, timeout=1.0) == []
    finally:
        kill_pids(pids_in(pidfile))
    st = queue.get_status(job.id)
    assert st["status"] == "timeout"
    assert st["attempts"] == 2


@pytest.mark.slow
@pytest.mark.timeout(40)
def test_timeout_kills_a_job_that_ignores_sigterm(queue, tmp_path):
    pidfile = str(tmp_path / "pids")
    wf = Workflow("stubborn")
    job = wf.add_job(
        Job("stubborn", jobs.ignore_sigterm_and_sleep,
            params={"seconds": 30, "pidfile": pidfile}, timeout=1, max_attempts=1)
    )
    try:
        with pytest.raises(WorkflowFailed):
            wf.run(queue, workers=1)
        assert wait_pids_gone(pids_in(pidfile), timeout=1.0) == []
    finally:
        kill_pids(pids_in(pidfile))
    assert queue.get_status(job.id)["status"] == "timeout"


CRASHES = [
    pytest.param(jobs.os_exit, {"code": 1}, ["exited with code 1"], id="os._exit(1)"),
    pytest.param(jobs.sigkill_self, {}, ["signal 9", "SIGKILL"], id="SIGKILL"),
    pytest.param(jobs.segfault, {}, ["signal 11", "SIGSEGV"], id="segfault"),
]


@pytest.mark.parametrize("function, params, evidence", CRASHES)
def test_worker_death_fails_only_that_job(queue, function, params, evidence):
    wf = Workflow("crash")
    crasher = wf.add_job(Job("crasher", function, params=params, max_attempts=2))
    independent = [wf.add_job(Job(f"ok{i}", jobs.add, params={"a": i, "b": 1})) for i in range(6)]
    total = wf.add_job(Job("total", jobs.sum_parents), depends_on=independent)
    with pytest.raises(WorkflowFailed) as excinfo:
        wf.run(queue, workers=2)
    exc = excinfo.value
    assert set(exc.failures) == {crasher.id}
    assert exc.results[total.id] == sum(i + 1 for i in range(6))
    st = queue.get_status(crasher.id)
    assert st["status"] == "failed"
    assert st["attempts"] == 2
    assert len(st["executions"]) == 2
    for text in [st["error"]] + [e["error"] for e in st["executions"]]:
        assert "worker process" in text
        for word in evidence:
            assert word in text, f"{word!r} not in {text!r}"
    for word in evidence:
        assert word in exc.failures[crasher.id]["error"]


@pytest.mark.parametrize("kind", ["generator", "lock"])
def test_unpicklable_result_fails_with_its_type(queue, kind):
    wf = Workflow("unpicklable")
    bad = wf.add_job(Job("bad", jobs.return_unpicklable, params={"kind": kind}, max_attempts=1))
    good = wf.add_job(Job("good", jobs.add, params={"a": 1, "b": 1}))
    after_good = wf.add_job(Job("after", jobs.sum_parents), depends_on=[good])
    with pytest.raises(WorkflowFailed) as excinfo:
        wf.run(queue, workers=1)
    assert excinfo.value.results == {good.id: 2, after_good.id: 2}
    st = queue.get_status(bad.id)
    assert st["status"] == "failed"
    assert kind in st["error"].lower()


def test_failure_cascades_and_requeue_revives(queue, db_path, tmp_path):
    flag = tmp_path / "flag"
    wf = Workflow("cascade")
    up = wf.add_job(
        Job("source_step", jobs.fail_unless_flag, params={"flag_path": str(flag), "result": "A"},
            max_attempts=1)
    )
    middle = wf.add_job(Job("middle", jobs.optional_parent_results), depends_on=[up])
    leaf = wf.add_job(Job("leaf", jobs.parent_values_repr), depends_on=[middle])
    sibling = wf.add_job(Job("sibling", jobs.identity, params={"x": "D"}))
    join = wf.add_job(Job("join", jobs.parent_values_repr), depends_on=[sibling, up])

    with pytest.raises(WorkflowFailed) as excinfo:
        wf.run(queue, workers=2)
    exc = excinfo.value
    assert exc.results == {sibling.id: "D"}
    assert exc.failures[up.id]["status"] == "failed"
    for job in (middle, leaf, join):
        st = queue.get_status(job.id)
        assert st["status"] == "cancelled", job.name
        assert st["attempts"] == 0
        assert st["executions"] == []
        assert "upstream job" in st["error"]
        assert exc.failures[job.id]["status"] == "cancelled"
    for job in (middle, join):
        error = queue.get_status(job.id)["error"]
        assert "source_step" in error, error
        assert up.id in error and "failed" in error
    leaf_error = queue.get_status(leaf.id)["error"]
    assert up.id in leaf_error or middle.id in leaf_error

    flag.touch()
    assert queue.requeue_job(up.id) is True
    for job in (up, middle, leaf, join):
        assert queue.get_status(job.id)["status"] == "pending", job.name
    assert queue.get_status(sibling.id)["status"] == "completed"

    worker = Worker(db_path, concurrency=1)
    try:
        assert drain(worker) == 4
    finally:
        worker.close()
    assert queue.get_result(up.id) == "A"
    assert queue.get_result(middle.id) == ["A"]
    assert queue.get_result(leaf.id) == [repr(["A"])]
    assert queue.get_result(join.id) == [repr("D"), repr("A")]
    assert queue.stats()["completed"] == 5


def test_cancel_cascades_to_pending_descendants(queue):
    up = Job("up", jobs.noop)
    down = Job("down", jobs.noop, dependencies=[up.id])
    further = Job("further", jobs.noop, dependencies=[down.id])
    for job in (up, down, further):
        queue.submit(job)
    assert queue.cancel(up.id) is True
    for job in (down, further):
        st = queue.get_status(job.id)
        assert st["status"] == "cancelled", job.name
        assert "upstream job" in st["error"]
    assert "up" in queue.get_status(down.id)["error"]
    assert up.id in queue.get_status(down.id)["error"]
    assert queue.requeue_job(up.id) is True
    assert [queue.get_status(j.id)["status"] for j in (up, down, further)] == ["pending"] * 3
