"""Supervisors: Worker.start() in threads and processes, several on one
database, stopping, and picking up jobs submitted while running."""

from __future__ import annotations

import collections
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from gigq_mp import Job, Worker

from . import jobs
from .jobs import read_lines
from .util import WorkerThread, kill_pids, subprocess_env, wait_pids_gone, wait_terminal, wait_until

N_JOBS = 200


def submit_records(queue, log, n=N_JOBS):
    return [
        queue.submit(Job(f"r{i}", jobs.record_run, params={"path": log, "tag": f"t{i}"}))
        for i in range(n)
    ]


def assert_each_ran_once(db_path, log, ids):
    counts = collections.Counter(read_lines(log))
    assert counts == {f"t{i}": 1 for i in range(len(ids))}
    conn = sqlite3.connect(db_path)
    try:
        statuses = collections.Counter(
            s for (s,) in conn.execute("SELECT status FROM jobs").fetchall()
        )
        executions = dict(
            conn.execute("SELECT job_id, COUNT(*) FROM job_executions GROUP BY job_id").fetchall()
        )
    finally:
        conn.close()
    assert statuses == {"completed": len(ids)}
    assert executions == {i: 1 for i in ids}


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_two_supervisors_in_threads_run_each_job_once(queue, db_path, tmp_path):
    log = str(tmp_path / "runs.log")
    ids = submit_records(queue, log)
    with WorkerThread(Worker(db_path, worker_id="sup-a", polling_interval=0.1, concurrency=2)), \
         WorkerThread(Worker(db_path, worker_id="sup-b", polling_interval=0.1, concurrency=2)):
        wait_terminal(queue, ids, timeout=75)
    assert_each_ran_once(db_path, log, ids)


SUPERVISOR_SCRIPT = """
import sys
from gigq_mp import Worker
worker = Worker(sys.argv[1], worker_id=sys.argv[2], polling_interval=0.1, concurrency=2)
print("READY", flush=True)
worker.start()
worker.close()
print("STOPPED", flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_two_supervisor_processes_run_each_job_once_and_stop_on_sigterm(queue, db_path, tmp_path):
    log = str(tmp_path / "runs.log")
    ids = submit_records(queue, log)
    script = tmp_path / "supervisor.py"
    script.write_text(textwrap.dedent(SUPERVISOR_SCRIPT))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), db_path, name],
            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name in ("sup-a", "sup-b")
    ]
    pool_pids = []
    try:
        deadline = time.monotonic() + 75
        while True:
            try:
                wait_terminal(queue, ids, timeout=0.5)
                break
            except AssertionError:
                exited = [p for p in procs if p.poll() is not None]
                if exited or time.monotonic() > deadline:
                    for p in procs:
                        if p.poll() is None:
                            p.kill()
                    details = [(p.args[-1], p.returncode, p.communicate()) for p in procs]
                    raise AssertionError(
                        f"stats={queue.stats()}; supervisors (name, rc, (out, err)): {details}"
                    )
        for proc in procs:
            pool_pids += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=20) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        leftover = wait_pids_gone(pool_pids, timeout=2.0)
        kill_pids(leftover)
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert out.split() == ["READY", "STOPPED"], (out, err)
    assert leftover == [], "worker processes outlived their supervisor"
    assert_each_ran_once(db_path, log, ids)


@pytest.mark.timeout(60)
def test_worker_thread_picks_up_jobs_submitted_while_running(queue, db_path):
    with WorkerThread(Worker(db_path, polling_interval=0.2, concurrency=1)):
        time.sleep(0.5)  # the supervisor is idle, polling
        first = queue.submit(Job("first", jobs.add, params={"a": 1, "b": 1}))
        assert wait_terminal(queue, [first], timeout=20) == {first: "completed"}
        time.sleep(0.3)
        second = queue.submit(Job("second", jobs.add, params={"a": 2, "b": 2}))
        assert wait_terminal(queue, [second], timeout=20) == {second: "completed"}
    assert queue.get_result(first) == 2
    assert queue.get_result(second) == 4


@pytest.mark.timeout(60)
def test_own_completions_start_dependents_without_polling(queue, db_path):
    """polling_interval only bounds waiting for other processes' submissions."""
    chain = [Job("c0", jobs.add, params={"a": 1, "b": 0})]
    for i in range(1, 5):
        chain.append(Job(f"c{i}", jobs.sum_parents, dependencies=[chain[-1].id]))
    for job in chain:
        queue.submit(job)
    t0 = time.monotonic()
    with WorkerThread(Worker(db_path, polling_interval=30, concurrency=1)):
        wait_terminal(queue, [j.id for j in chain], timeout=25)
        elapsed = time.monotonic() - t0
    assert elapsed < 10, f"a 5-job chain took {elapsed:.1f}s with polling_interval=30"
    assert queue.get_result(chain[-1].id) == 1


@pytest.mark.timeout(60)
def test_stop_kills_a_running_job_after_the_grace_period(queue, db_path, tmp_path):
    pidfile = str(tmp_path / "pids")
    job_id = queue.submit(
        Job("stubborn", jobs.ignore_sigterm_and_sleep, params={"seconds": 30, "pidfile": pidfile})
    )
    runner = WorkerThread(Worker(db_path, polling_interval=0.1, grace_period=0.5))
    try:
        with runner:
            deadline = time.monotonic() + 20
            while not read_lines(pidfile) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert read_lines(pidfile), "the job never started"
            took = runner.stop()
        assert took < 8, f"stop() took {took:.1f}s with grace_period=0.5"
        assert wait_pids_gone([int(p) for p in read_lines(pidfile)], timeout=1.0) == []
    finally:
        kill_pids([int(p) for p in read_lines(pidfile)])
    # the interrupted attempt is not left 'running'
    assert queue.get_status(job_id)["status"] != "running"


def test_start_from_a_background_thread_and_stop_when_idle(db_path):
    worker = Worker(db_path, polling_interval=0.1, concurrency=2)
    with WorkerThread(worker) as runner:
        time.sleep(0.3)
        took = runner.stop()
    assert took < 5


def test_process_one_from_a_background_thread(queue, db_path):
    job_id = queue.submit(Job("t", jobs.add, params={"a": 3, "b": 4}))
    outcome = {}

    def run():
        worker = Worker(db_path)
        try:
            outcome["processed"] = worker.process_one()
        finally:
            worker.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert outcome == {"processed": True}
    assert queue.get_result(job_id) == 7


@pytest.mark.timeout(60)
def test_a_retry_falling_due_while_stopping_does_not_make_the_supervisor_spin(queue, db_path):
    """stop() while a 3 s job runs and a failed job's retry falls due: the grace period
    waits for the running job without counting the due retry as a deadline passed."""
    queue.submit(Job("runs", jobs.sleep_for, params={"seconds": 3}, priority=5))
    fails = queue.submit(Job("fails", jobs.raise_value_error, priority=10, max_attempts=3, retry_delay=0.3))
    worker = Worker(db_path, concurrency=2, polling_interval=5, grace_period=10)
    with WorkerThread(worker) as thread:
        wait_until(lambda: queue.get_status(fails)["attempts"] >= 1 and queue.get_status(fails)["status"] == "pending",
                   10, "the first failure")
        cpu = time.process_time()
        took = thread.stop()
        used = time.process_time() - cpu
    assert took > 2.0  # the 3 s job was let finish
    assert used < 0.5, f"the supervisor used {used:.2f} s of CPU over a {took:.1f} s grace period"


@pytest.mark.timeout(60)
def test_a_job_cancelled_and_requeued_while_it_runs_runs_again(queue, db_path, tmp_path):
    """cancel(kill=True), then requeue_job(), both before the supervisor looks: it sees its
    running job pending, kills it, and must track it again to run it."""
    log = str(tmp_path / "runs.log")
    job = queue.submit(Job("long", jobs.record_run_and_sleep, params={"path": log, "tag": "long", "seconds": 2}))
    worker = Worker(db_path, concurrency=1, polling_interval=1)
    with WorkerThread(worker):
        wait_until(lambda: queue.get_status(job)["status"] == "running", 10, "the job to run")
        time.sleep(0.3)
        assert queue.cancel(job, kill=True)
        assert queue.requeue_job(job)
        wait_until(lambda: queue.get_status(job)["status"] == "completed", 20, "the requeued job to complete")
    assert read_lines(log) == ["long", "long"]


@pytest.mark.timeout(60)
def test_workflow_run_ends_when_its_running_job_is_cancelled_and_requeued(db_path, tmp_path):
    from gigq_mp import JobQueue, Workflow

    log = str(tmp_path / "runs.log")
    wf = Workflow("requeued")
    long = wf.add_job(Job("long", jobs.record_run_and_sleep, params={"path": log, "tag": "long", "seconds": 2}))
    run_queue, other = JobQueue(db_path), JobQueue(db_path)
    outcome = {}

    def run():
        try:
            outcome["results"] = wf.run(run_queue, workers=1, timeout=20, progress=False)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_until(lambda: other.get_status(long.id).get("status") == "running", 10, "the job to run")
        time.sleep(0.3)
        assert other.cancel(long.id, kill=True) and other.requeue_job(long.id)
    finally:
        thread.join(40)
        run_queue.close()
        other.close()
    assert "error" not in outcome, repr(outcome.get("error"))
    assert outcome["results"] == {long.id: "long"}
    assert read_lines(log) == ["long", "long"]
