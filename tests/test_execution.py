"""Running jobs in worker processes: what travels, what is injected, in which
order they run, and how results and errors come back."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta

import psutil
import pytest

from gigq_mp import Job, Worker, Workflow, task
from gigq_mp.errors import WaitTimeout, WorkflowFailed

from . import jobs
from .jobs import Point, read_lines
from .util import drain, subprocess_env


def raw_result(db_path, job_id):
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    finally:
        conn.close()


def test_lambda_closure_and_nested_function_run_in_workers(queue):
    offset = 100

    def closure(x):
        return x + offset

    def make_nested():
        @task(name="nested")
        def nested(x):
            return [x, "nested"]

        return nested

    wf = Workflow("callables")
    lam = wf.add_job(Job("lambda", lambda x: x * 2, params={"x": 21}))
    clo = wf.add_job(Job("closure", closure, params={"x": 1}))
    nes = wf.add_task(make_nested(), params={"x": 7})
    lam_task = wf.add_task(task(lambda: "from a lambda task"))
    pid = wf.add_job(Job("pid", jobs.getpid))
    results = wf.run(queue, workers=2)
    assert results[lam.id] == 42
    assert results[clo.id] == 101
    assert results[nes.id] == [7, "nested"]
    assert results[lam_task.id] == "from a lambda task"
    assert isinstance(results[pid.id], int)
    assert results[pid.id] != os.getpid()
    assert queue.get_status(pid.id)["executions"][0]["pid"] == results[pid.id]


MAIN_SCRIPT = '''
import os, sys
from gigq_mp import Job, JobQueue, Workflow, task

MARKER, DB = sys.argv[1], sys.argv[2]
with open(MARKER, "a") as f:
    f.write(f"{os.getpid()}\\n")

def square(x):
    return x * x

def whoami():
    return os.getpid()

@task()
def total(parent_results):
    return sum(parent_results.values())

wf = Workflow("main_script")
parts = [wf.add_job(Job(f"sq{i}", square, params={"x": i})) for i in range(4)]
last = wf.add_task(total, depends_on=parts)
who = wf.add_job(Job("whoami", whoami))
results = wf.run(JobQueue(DB), workers=2)
print("RESULT", results[last.id])
print("SCRIPT_PID", os.getpid())
print("JOB_PID", results[who.id])
'''


@pytest.mark.timeout(60)
def test_functions_defined_in_main_script_without_guard(tmp_path):
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(MAIN_SCRIPT))
    marker = tmp_path / "toplevel.log"
    proc = subprocess.run(
        [sys.executable, str(script), str(marker), str(tmp_path / "main.db")],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert lines["RESULT"] == "14"
    assert lines["JOB_PID"] != lines["SCRIPT_PID"]
    # the script's top level ran once, in the script's own process
    assert read_lines(marker) == [lines["SCRIPT_PID"]]


def test_parent_results_follow_dependency_order(queue):
    wf = Workflow("order")
    parents = [wf.add_job(Job(f"p{i}", jobs.identity, params={"x": i})) for i in range(4)]
    order = [parents[2], parents[0], parents[3], parents[1]]
    child = wf.add_job(Job("child", jobs.echo_parent_ids), depends_on=order)
    values = wf.add_job(Job("values", jobs.parent_values_repr), depends_on=order)
    results = wf.run(queue, workers=2)
    assert results[child.id] == [p.id for p in order]
    assert results[values.id] == ["2", "0", "3", "1"]


def test_a_fan_in_gets_json_and_pickled_parent_results_alike_in_order(queue):
    """A fan-in whose many parents all returned JSON gets their results packed in one text;
    one pickled result among them sends each on its own. Either way the child sees the same
    dict, in the order of its dependencies."""
    wf = Workflow("fan-in")
    many = [wf.add_job(Job(f"j{i}", jobs.identity, params={"x": [i, {"k": str(i)}]})) for i in range(300)]
    mixed = many[:20] + [wf.add_job(Job("point", jobs.return_point, params={"x": 1, "y": 2}))]
    all_json = wf.add_job(Job("all_json", jobs.parent_values_repr), depends_on=list(reversed(many)))
    with_pickle = wf.add_job(Job("with_pickle", jobs.parent_values_repr), depends_on=mixed)
    results = wf.run(queue, workers=2)
    assert results[all_json.id] == [repr([i, {"k": str(i)}]) for i in reversed(range(300))]
    assert results[with_pickle.id] == [repr([i, {"k": str(i)}]) for i in range(20)] + [repr(Point(1, 2))]


def test_auto_injection_reads_the_signature_when_a_job_with_parents_first_needs_it(queue):
    """A worker reads whether a callable takes parent results only when a job of it has
    parents: one process runs the root job first, then the same callable with parents."""
    wf = Workflow("auto later")
    root = wf.add_job(Job("root", jobs.optional_parent_results))
    child = wf.add_job(Job("child", jobs.optional_parent_results), depends_on=[root])
    grandchild = wf.add_job(Job("grandchild", jobs.identity, params={"x": 5}), depends_on=[child])
    results = wf.run(queue, workers=1)
    assert (results[root.id], results[child.id], results[grandchild.id]) == ("absent", ["absent"], 5)


def _takes_parent_results_per_inspect(function):
    import inspect

    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "parent_results" or p.kind is p.VAR_KEYWORD for p in parameters)


def test_auto_injection_reads_a_plain_function_as_inspect_signature_does():
    """A worker reads a plain function's parameters from its code object (not importing
    inspect); it must decide as inspect.signature would, for every kind of callable."""
    import functools
    import inspect

    from gigq_mp.runner import wants_parent_results

    def keyword(x, parent_results=None): ...
    def keyword_only(x, *, parent_results): ...
    def star(*parent_results): ...
    def positional_only(parent_results, /, x): ...
    def kwargs(x, *args, y=1, **kw): ...
    def local_of_that_name(x, *args, y=1):
        parent_results = x
        return parent_results

    @functools.wraps(keyword)
    def wraps_one_that_takes_it(*a, **k): ...

    @functools.wraps(local_of_that_name)
    def wraps_one_that_does_not(*a, **k): ...

    def declared(x): ...
    declared.__signature__ = inspect.Signature([inspect.Parameter("parent_results", inspect.Parameter.KEYWORD_ONLY)])

    class Callable:
        def method(self, parent_results): ...
        def __call__(self, x): ...

    callables = [jobs.plain, keyword, keyword_only, star, positional_only, kwargs, local_of_that_name,
                 lambda parent_results: 1, wraps_one_that_takes_it, wraps_one_that_does_not, declared,
                 Callable().method, Callable, Callable(), functools.partial(keyword, 1), len]
    for function in callables:
        assert wants_parent_results(function) == _takes_parent_results_per_inspect(function), function
    assert [wants_parent_results(f) for f in callables[:8]] == [False, True, True, True, True, True, False, True]


def test_injection_modes(queue):
    wf = Workflow("modes")
    p1 = wf.add_job(Job("p1", jobs.identity, params={"x": 1}))
    p2 = wf.add_job(Job("p2", jobs.identity, params={"x": 2}))
    deps = [p1, p2]
    auto_param = wf.add_job(Job("auto_param", jobs.sum_parents), depends_on=deps)
    auto_kwargs = wf.add_job(Job("auto_kwargs", jobs.takes_kwargs, params={"k": 0}), depends_on=deps)
    auto_plain = wf.add_job(Job("auto_plain", jobs.plain), depends_on=deps)
    auto_root = wf.add_job(Job("auto_root", jobs.optional_parent_results))
    false_opt = wf.add_job(
        Job("false_opt", jobs.optional_parent_results, pass_parent_results=False), depends_on=deps
    )
    true_opt = wf.add_job(
        Job("true_opt", jobs.optional_parent_results, pass_parent_results=True), depends_on=deps
    )
    true_plain = wf.add_job(
        Job("true_plain", jobs.plain, pass_parent_results=True, max_attempts=1), depends_on=deps
    )
    with pytest.raises(WorkflowFailed) as excinfo:
        wf.run(queue, workers=2)
    results = excinfo.value.results
    assert results[auto_param.id] == 3
    assert results[auto_kwargs.id] == {"keys": ["k", "parent_results"], "parents": [1, 2]}
    assert results[auto_plain.id] == "plain"
    assert results[auto_root.id] == "absent"
    assert results[false_opt.id] == "absent"
    assert results[true_opt.id] == [1, 2]
    # True always injects: a function that takes no parent_results fails
    assert set(excinfo.value.failures) == {true_plain.id}
    failure = excinfo.value.failures[true_plain.id]
    assert failure["status"] == "failed"
    assert "TypeError" in failure["error"]
    assert "parent_results" in failure["error"]


def test_priority_orders_every_ready_job(queue, db_path, tmp_path):
    log = str(tmp_path / "order.log")

    def rec(tag, **kw):
        return Job(tag, jobs.record_run, params={"path": log, "tag": tag}, **kw)

    oldest_zero = queue.submit(rec("zero_old"))
    time.sleep(0.002)
    root = rec("root", priority=100)
    queue.submit(root)
    queue.submit(rec("child_high", priority=10, dependencies=[root.id]))
    queue.submit(rec("indep_mid", priority=5))
    queue.submit(rec("child_low", priority=1, dependencies=[root.id]))
    queue.submit(rec("indep_negative", priority=-3))
    time.sleep(0.002)
    queue.submit(rec("zero_new"))
    worker = Worker(db_path, concurrency=1)
    try:
        assert drain(worker) == 7
    finally:
        worker.close()
    assert read_lines(log) == [
        "root", "child_high", "indep_mid", "child_low", "zero_old", "zero_new", "indep_negative",
    ]
    assert queue.get_status(oldest_zero)["status"] == "completed"


def test_a_job_of_higher_priority_ready_late_waits_for_no_job_of_a_slower_stage(queue, tmp_path):
    """Each of a stage of quick jobs feeds a slower job; a priority-10 job becomes ready with
    the last quick one. A claim takes slower jobs only for free worker slots, so the
    priority-10 job overtakes nearly all of them (claims sized by the quick jobs' run times
    took dozens into the send buffer, and it waited behind those)."""
    log = str(tmp_path / "order.log")
    wf = Workflow("stage change")
    quick = [wf.add_job(Job(f"quick{i}", jobs.noop)) for i in range(200)]
    for i in range(150):
        params = {"path": log, "tag": f"slow{i}", "seconds": 0.02}
        wf.add_job(Job(f"slow{i}", jobs.record_run_and_sleep, params=params), depends_on=[quick[i]])
    urgent = Job("urgent", jobs.record_run, params={"path": log, "tag": "urgent"}, priority=10)
    wf.add_job(urgent, depends_on=[quick[-1]])
    wf.run(queue, workers=2)
    order = read_lines(log)
    assert sorted(order) == sorted(["urgent"] + [f"slow{i}" for i in range(150)])
    assert order.index("urgent") <= 8, order[:20]


@pytest.mark.parametrize("seconds", [0.03, 0.012, 0.004])
def test_a_job_of_higher_priority_waits_for_little_of_a_timed_slower_stage(queue, tmp_path, seconds):
    """A stage of slower jobs, timed already, runs while a priority-10 job waits for a gate
    job. Once the gate ends, the priority-10 job waits only for what the workers and the
    send buffer hold: about 20 ms of work per worker process each (jobs shorter than 20 ms
    were claimed 64 ahead: ~70 of them ran first)."""
    log = str(tmp_path / "order.log")
    wf = Workflow("timed stage")
    for i in range(200):
        params = {"path": log, "tag": f"slow{i}", "seconds": seconds}
        wf.add_job(Job(f"slow{i}", jobs.record_run_and_sleep, params=params))
    gate_params = {"path": log, "tag": "gate", "seconds": 0.4}
    gate = wf.add_job(Job("gate", jobs.record_start_sleep_finish, params=gate_params, priority=5))
    urgent = Job("urgent", jobs.record_run, params={"path": log, "tag": "urgent"}, priority=10)
    wf.add_job(urgent, depends_on=[gate])
    wf.run(queue, workers=2)
    order = read_lines(log)
    gate_done = next(i for i, line in enumerate(order) if line.startswith("done gate"))
    # Jobs of 4 ms: 5 queued per worker process and 10 claimed ahead, plus the 2 running, at
    # most; of 12-30 ms: one per worker process and up to 3 claimed ahead.
    assert order.index("urgent") - gate_done - 1 <= (24 if seconds < 0.01 else 6), order[gate_done:]


def test_no_short_job_queues_behind_a_long_one(queue):
    """A long job runs on one worker process; the short jobs beside it all go to the other
    (deep queues of short jobs are for workers whose jobs are all short)."""
    wf = Workflow("beside a long job")
    long = wf.add_job(Job("long", jobs.sleep_for, params={"seconds": 3}, priority=10))
    quick = [wf.add_job(Job(f"quick{i}", jobs.noop)) for i in range(400)]
    wf.run(queue, workers=2)
    long_started = datetime.fromisoformat(queue.get_status(long.id)["started_at"])
    long_done = datetime.fromisoformat(queue.get_status(long.id)["completed_at"])
    finished = {job.name: datetime.fromisoformat(queue.get_status(job.id)["completed_at"]) for job in quick}
    late = [name for name, at in finished.items() if at > long_done - timedelta(seconds=1)]
    assert (long_done - long_started).total_seconds() >= 2.9
    assert late == []


def test_raising_job_retries_then_fails_with_type_and_traceback(queue, tmp_path):
    log = str(tmp_path / "times.log")
    wf = Workflow("retry")
    job = wf.add_job(
        Job("fails", jobs.record_time_and_fail, params={"path": log}, max_attempts=3)
    )
    with pytest.raises(WorkflowFailed):
        wf.run(queue, workers=1)
    assert len(read_lines(log)) == 3
    st = queue.get_status(job.id)
    assert st["status"] == "failed"
    assert st["attempts"] == 3
    assert [e["attempt"] for e in st["executions"]] == [1, 2, 3]
    assert all(e["status"] == "failed" for e in st["executions"])
    error = st["error"]
    assert error.splitlines()[0] == "RuntimeError: failing on purpose"
    assert "Traceback (most recent call last):" in error
    assert "record_time_and_fail" in error  # the remote frame
    assert "RuntimeError: failing on purpose" in st["executions"][-1]["error"]


def test_value_error_message_and_traceback(queue):
    wf = Workflow("raise")
    job = wf.add_job(Job("bad", jobs.raise_value_error, params={"message": "kaboom"}, max_attempts=1))
    with pytest.raises(WorkflowFailed) as excinfo:
        wf.run(queue, workers=1)
    assert excinfo.value.failures[job.id]["error"].startswith("ValueError: kaboom")
    assert "ValueError: kaboom" in str(excinfo.value)
    error = queue.get_status(job.id)["error"]
    assert error.startswith("ValueError: kaboom")
    assert "Traceback (most recent call last):" in error
    assert 'in raise_value_error' in error


@pytest.mark.timeout(30)
def test_retry_delay_is_respected(queue, tmp_path):
    log = str(tmp_path / "times.log")
    wf = Workflow("delay")
    wf.add_job(
        Job("fails", jobs.record_time_and_fail, params={"path": log}, max_attempts=2, retry_delay=1)
    )
    with pytest.raises(WorkflowFailed):
        wf.run(queue, workers=1)
    times = [float(t) for t in read_lines(log)]
    assert len(times) == 2
    gap = times[1] - times[0]
    assert gap >= 0.95, f"retry ran {gap:.3f}s after the failure, before retry_delay=1"
    assert gap < 4, f"retry waited {gap:.3f}s"


@pytest.mark.slow
@pytest.mark.timeout(40)
def test_retry_backoff_doubles_the_delay(queue, tmp_path):
    log = str(tmp_path / "times.log")
    wf = Workflow("backoff")
    wf.add_job(
        Job(
            "fails", jobs.record_time_and_fail, params={"path": log},
            max_attempts=3, retry_delay=1, retry_backoff=True,
        )
    )
    with pytest.raises(WorkflowFailed):
        wf.run(queue, workers=1)
    times = [float(t) for t in read_lines(log)]
    assert len(times) == 3
    first, second = times[1] - times[0], times[2] - times[1]
    assert first >= 0.95
    assert second >= 1.9, f"second delay {second:.3f}s did not double"
    assert second < 8


def test_non_json_results_round_trip(queue, db_path):
    wf = Workflow("types")
    s = wf.add_job(Job("set", jobs.return_set))
    t = wf.add_job(Job("tuple", jobs.return_tuple))
    p = wf.add_job(Job("point", jobs.return_point, params={"x": 1, "y": 2}))
    k = wf.add_job(Job("int_keys", jobs.return_int_keys))
    child = wf.add_job(Job("child", jobs.parent_values_repr), depends_on=[s, t, p, k])
    results = wf.run(queue, workers=2)

    expected = {
        s.id: {1, 2, 3},
        t.id: (1, "a", 2.5),
        p.id: Point(1, 2),
        k.id: {1: "a", 2: "b"},
    }
    for job_id, value in expected.items():
        for got in (results[job_id], queue.get_result(job_id), queue.get_status(job_id)["result"]):
            assert got == value
            assert type(got) is type(value)
        # not JSON-exact: stored pickled, jobs.result left NULL
        assert raw_result(db_path, job_id) is None
    assert results[child.id] == [repr(v) for v in expected.values()]


def test_json_results_are_stored_as_json_text(queue, db_path):
    wf = Workflow("json")
    doc = wf.add_job(Job("doc", jobs.return_json_doc))
    num = wf.add_job(Job("num", jobs.add, params={"a": 2, "b": 3}))
    text = wf.add_job(Job("text", jobs.identity, params={"x": "hello"}))
    none = wf.add_job(Job("none", jobs.noop))
    results = wf.run(queue, workers=2)
    assert results[doc.id] == jobs.return_json_doc()
    assert json.loads(raw_result(db_path, doc.id)) == jobs.return_json_doc()
    assert json.loads(raw_result(db_path, num.id)) == 5
    assert json.loads(raw_result(db_path, text.id)) == "hello"
    assert results[none.id] is None
    assert queue.get_status(none.id)["status"] == "completed"
    assert queue.get_result(none.id) is None


def test_jobs_run_in_parallel_worker_processes(queue, tmp_path):
    log = str(tmp_path / "spans.log")

    def span(seconds):
        start = time.time()
        time.sleep(seconds)
        jobs.append_line(log, f"{os.getpid()} {start} {time.time()}")

    wf = Workflow("parallel")
    for i in range(2):
        wf.add_job(Job(f"s{i}", span, params={"seconds": 0.6}))
    wf.run(queue, workers=2)
    (pid_a, start_a, end_a), (pid_b, start_b, end_b) = [
        (int(a), float(b), float(c)) for a, b, c in (line.split() for line in read_lines(log))
    ]
    assert pid_a != pid_b
    assert start_a < end_b and start_b < end_a, "the two jobs did not overlap in time"


def test_run_without_queue_uses_throwaway_store():
    wf = Workflow("in memory")
    a = wf.add_job(Job("a", jobs.add, params={"a": 1, "b": 2}))
    b = wf.add_job(Job("b", jobs.sum_parents), depends_on=[a])
    assert wf.run(workers=2) == {a.id: 3, b.id: 3}


def test_run_leaves_other_pending_jobs_alone(queue, tmp_path):
    log = tmp_path / "other.log"
    other = queue.submit(Job("other", jobs.record_run, params={"path": str(log), "tag": "x"}, priority=50))
    wf = Workflow("mine")
    mine = wf.add_job(Job("mine", jobs.add, params={"a": 1, "b": 1}))
    assert wf.run(queue, workers=1) == {mine.id: 2}
    assert queue.get_status(other)["status"] == "pending"
    assert not log.exists()


def test_run_of_a_submitted_workflow_does_not_resubmit(queue):
    wf = Workflow("submitted")
    a = wf.add_job(Job("a", jobs.add, params={"a": 1, "b": 1}))
    b = wf.add_job(Job("b", jobs.sum_parents), depends_on=[a])
    assert wf.submit_all(queue) == [a.id, b.id]
    assert wf.run(queue, workers=2) == {a.id: 2, b.id: 2}
    assert queue.stats()["total"] == 2
    assert queue.stats()["completed"] == 2


def test_workflow_failed_keeps_completed_results(queue):
    wf = Workflow("partial")
    good = wf.add_job(Job("good", jobs.add, params={"a": 20, "b": 22}))
    bad = wf.add_job(Job("bad", jobs.raise_value_error, max_attempts=1))
    with pytest.raises(WorkflowFailed) as excinfo:
        wf.run(queue, workers=2)
    exc = excinfo.value
    assert exc.results == {good.id: 42}
    assert set(exc.failures) == {bad.id}
    assert exc.failures[bad.id]["name"] == "bad"
    assert exc.failures[bad.id]["status"] == "failed"
    assert "bad" in str(exc) and "failed" in str(exc) and "ValueError" in str(exc)


@pytest.mark.timeout(60)
def test_run_returns_only_once_its_processes_are_gone(queue):
    """The pool's idle workers end while the outcomes are read, but run() returns only after
    the fork server has reaped them and exited: at once, not "soon" (the autouse fixture
    would wait for that), whether the workflow completed or failed."""
    me = psutil.Process()
    for make_fail in (False, True):
        wf = Workflow(f"gone {make_fail}")
        wf.add_job(Job("a", jobs.add, params={"a": 1, "b": 2}))
        wf.add_job(Job("b", jobs.raise_value_error if make_fail else jobs.noop, max_attempts=1))
        if make_fail:
            with pytest.raises(WorkflowFailed):
                wf.run(queue, workers=2)
        else:
            wf.run(queue, workers=2)
        assert me.children(recursive=True) == []  # zombies count: nothing is left to reap


@pytest.mark.timeout(30)
def test_run_timeout_raises_wait_timeout_and_stops_workers(queue):
    wf = Workflow("too slow")
    wf.add_job(Job("sleeper", jobs.sleep_for, params={"seconds": 20}))
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout):
        wf.run(queue, workers=1, timeout=0.5)
    assert time.monotonic() - t0 < 10
    # the autouse fixture checks that the worker processes are gone


def test_worker_processes_import_the_supervisors_gigq_mp_not_one_in_the_cwd(tmp_path, monkeypatch):
    shadow = tmp_path / "gigq_mp"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('shadow copy of gigq_mp imported')\n")
    monkeypatch.chdir(tmp_path)
    wf = Workflow("shadow")
    job = wf.add_job(Job("add", jobs.add, params={"a": 2, "b": 3}, max_attempts=1))
    assert wf.run(workers=1, timeout=30) == {job.id: 5}


def big_bytes(size):
    return bytes(range(256)) * (size // 256)


def length_and_tail(parent_results):
    (blob,) = parent_results.values()
    return [len(blob), blob[-3:].hex()]


def test_large_results_go_to_a_file_not_the_database_and_reach_dependents(queue, db_path):
    size = 3 * 1024 * 1024
    wf = Workflow("large")
    big = wf.add_job(Job("big", big_bytes, params={"size": size}))
    readers = [wf.add_job(Job(f"read{i}", length_and_tail), depends_on=[big]) for i in range(3)]
    results = wf.run(queue, workers=2)
    assert [results[r.id] for r in readers] == [[size, "fdfeff"]] * 3
    conn = sqlite3.connect(db_path)
    try:
        blob, path = conn.execute("SELECT result_blob, result_path FROM jobs WHERE id = ?", (big.id,)).fetchone()
    finally:
        conn.close()
    assert blob is None and path is not None and os.path.getsize(path) > size
    assert queue.get_result(big.id) == big_bytes(size)
    assert queue.clear_completed() == 4
    assert not os.path.exists(path)


def test_a_job_whose_row_is_deleted_during_the_run_is_reported_missing(queue, db_path):
    wf = Workflow("rows deleted under it")
    parent = wf.add_job(Job("parent", jobs.add, params={"a": 1, "b": 1}))
    deleter = wf.add_job(Job("deleter", jobs.delete_parent_rows, params={"db_path": db_path}), depends_on=[parent])
    with pytest.raises(WorkflowFailed) as excinfo:
        wf.run(queue, workers=1)
    assert excinfo.value.results == {deleter.id: 1}
    assert excinfo.value.failures == {
        parent.id: {"name": "parent", "status": "missing", "error": "its row was deleted before the run ended"}
    }


def test_a_job_that_moves_fd_1_does_not_lose_the_next_jobs_output(queue):
    """Each job's capture starts afresh: a job that points fd 1 at /dev/null (and never
    points it back) does not silence the job after it in the same worker process."""
    wf = Workflow("fds")
    quiet = wf.add_job(Job("quiet", jobs.silence_stdout))
    loud = wf.add_job(Job("loud", jobs.print_both, params={"tag": "after"}), depends_on=[quiet])
    assert wf.run(queue, workers=1, progress=False) == {quiet.id: "silenced", loud.id: "after"}
    execution = queue.get_status(loud.id)["executions"][-1]
    assert "py-out-after" in execution["stdout"] and "child-out-after" in execution["stdout"], execution


def test_running_a_finished_workflow_again_starts_no_worker_process(queue, monkeypatch):
    from gigq_mp import pool as pool_module

    started = []
    real_init = pool_module.LocalPool.__init__

    def counting_init(self, *args, **kwargs):
        started.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(pool_module.LocalPool, "__init__", counting_init)

    def build():
        wf = Workflow("again")
        first = wf.add_job(Job("first", jobs.add, params={"a": 1, "b": 2}))
        wf.add_job(Job("second", jobs.sum_parents), depends_on=[first])
        return wf

    assert sorted(build().run(queue, workers=2, progress=False).values()) == [3, 3]
    assert len(started) == 1
    again = build()  # built anew (a script run again): its jobs are found by key and reused
    assert sorted(again.run(queue, workers=2, progress=False).values()) == [3, 3]
    assert again.last_run == {"total": 2, "reused": 2, "attempts": 0}
    assert len(started) == 1  # nothing to run: no pool


def test_a_run_leaves_its_submission_out_of_cyclic_gc_while_it_runs_and_thaws_it_after(queue):
    import gc

    frozen_while_running = []

    def progress(counts):
        frozen_while_running.append(gc.get_freeze_count())

    wf = Workflow("frozen")
    wf.add_job(Job("one", jobs.add, params={"a": 1, "b": 1}))
    wf.add_job(Job("bad", jobs.os_exit, params={"code": 3}, max_attempts=1))
    with pytest.raises(WorkflowFailed):
        wf.run(queue, workers=1, progress=progress)
    assert frozen_while_running and frozen_while_running[-1] > 0
    assert gc.get_freeze_count() == 0  # thawed, a failed run included


def test_a_run_leaves_objects_the_application_froze_frozen(queue):
    import gc

    gc.freeze()  # as an application that forks would, to spare copy-on-write
    try:
        frozen = gc.get_freeze_count()
        wf = Workflow("app froze first")
        wf.add_job(Job("one", jobs.add, params={"a": 1, "b": 1}))
        wf.run(queue, workers=1, progress=False)
        assert gc.get_freeze_count() >= frozen  # not thawed by the run
    finally:
        gc.unfreeze()
