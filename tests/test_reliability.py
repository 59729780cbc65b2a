"""Issue 4: surviving crashes, interrupts and concurrent supervisors.

Supervisor crash recovery (SIGKILL, reclaim), orphan-proof worker processes,
graceful shutdown (stop(), SIGTERM, SIGINT, a second SIGINT, KeyboardInterrupt
in Workflow.run), many supervisors on one database, a write-locked database,
memory limits, worker recycling, cancelling a running job, and hostile files.

Supervisors run in child processes (tests.util.SupervisorProcess) when a test
must kill or signal them; every pid seen under them is checked gone with psutil
because their orphans are not children of the test process.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time

import psutil
import pytest

from gigq_mp import Job, JobQueue, Worker, Workflow, task
from gigq_mp.errors import GigqMpError

from . import jobs
from .jobs import read_lines
from .util import (
    SupervisorProcess,
    WorkerThread,
    kill_pids,
    subprocess_env,
    wait_pids_gone,
    wait_terminal,
    wait_until,
)


# --- helpers -----------------------------------------------------------------

def submit_sleepers(queue, log, n, seconds, **job_options):
    """n jobs tagged s0..s{n-1} that log start/done around a sleep; {tag: id}."""
    ids = {}
    for i in range(n):
        tag = f"s{i}"
        ids[tag] = queue.submit(
            Job(tag, jobs.record_start_sleep_finish,
                params={"path": log, "tag": tag, "seconds": seconds}, **job_options)
        )
    return ids


def log_events(log, kind):
    """{tag: [pid, ...]} of the ``start`` or ``done`` lines of record_start_sleep_finish."""
    out = collections.defaultdict(list)
    for line in read_lines(log):
        what, tag, pid, _ = line.split()
        if what == kind:
            out[tag].append(int(pid))
    return out


def execution_statuses(queue, job_id):
    return [e["status"] for e in queue.get_status(job_id)["executions"]]


def raw_rows(db_path, sql, args=()):
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def wait_stats(queue, total, timeout, procs=()):
    """Wait until ``total`` jobs are terminal (by stats()); fail early if a supervisor dies."""
    deadline = time.monotonic() + timeout
    while True:
        st = queue.stats()
        if st.get("pending", 0) == 0 and st.get("running", 0) == 0 and st["total"] == total:
            return st
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise AssertionError(f"a supervisor exited early; stats={st}\n{dead[0].output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs unfinished after {timeout}s: {st}")
        time.sleep(0.1)


# --- 1. supervisor crash recovery and orphan-proof workers ----------------------

@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sigkilled_supervisor_loses_its_workers_and_a_new_one_reclaims_its_jobs(queue, db_path, tmp_path):
    log = str(tmp_path / "runs.log")
    ids = submit_sleepers(queue, log, 4, seconds=2.0)
    sup = SupervisorProcess(db_path, tmp_path, worker_id="sup-killed", concurrency=2, polling_interval=0.1)
    try:
        sup.wait_alive_until(lambda: len(log_events(log, "start")) >= 2, "two jobs to start")
        started = log_events(log, "start")
        workers = sup.descendants()
        job_pids = [p for pids in started.values() for p in pids]
        assert len(workers) >= 2, f"concurrency=2 but descendants are {workers}"
        assert set(job_pids) <= set(workers)
        sup.kill()
        alive = wait_pids_gone(sorted(sup.seen), timeout=2.0)
        assert alive == [], f"worker processes {alive} outlived their SIGKILLed supervisor by 2 s"
        # nobody reclaimed them yet: the dead supervisor's jobs still say running
        for tag in started:
            assert queue.get_status(ids[tag])["status"] == "running", tag
    finally:
        sup.cleanup()

    with WorkerThread(Worker(db_path, worker_id="sup-new", polling_interval=0.1, concurrency=2)):
        statuses = wait_terminal(queue, list(ids.values()), timeout=30)
    assert set(statuses.values()) == {"completed"}, statuses
    done = log_events(log, "done")
    for tag, job_id in ids.items():
        st = queue.get_status(job_id)
        assert st["result"] == tag
        assert st["attempts"] == 1, f"{tag}: interrupted attempt was counted: {st['attempts']}"
        assert len(done[tag]) == 1, f"{tag} completed {len(done[tag])} times"
        statuses = [e["status"] for e in st["executions"]]
        assert statuses[-1] == "completed" and statuses.count("completed") == 1, (tag, statuses)
        assert set(statuses[:-1]) <= {"interrupted"}, (tag, statuses)
        if tag in started:  # it was running in the killed supervisor
            assert statuses == ["interrupted", "completed"], (tag, statuses)
            interrupted = st["executions"][0]
            assert interrupted["worker_id"] == "sup-killed"
            assert "sup-killed" in (interrupted["error"] or "") or str(sup.pid) in (interrupted["error"] or ""), (
                f"the interrupted attempt's error does not name the dead supervisor: {interrupted['error']!r}"
            )
            assert st["executions"][1]["worker_id"] == "sup-new"


@pytest.mark.timeout(60)
def test_orphaned_worker_kills_the_jobs_own_children(queue, db_path, tmp_path):
    pidfile = str(tmp_path / "pids")
    queue.submit(Job("spawner", jobs.record_pids_with_grandchild_and_sleep,
                     params={"pidfile": pidfile, "seconds": 30}))
    sup = SupervisorProcess(db_path, tmp_path, concurrency=1, polling_interval=0.1)
    pids = []
    try:
        sup.wait_alive_until(lambda: read_lines(pidfile), "the job to start")
        pids = [int(p) for p in read_lines(pidfile)[0].split()]  # worker process, its child
        sup.kill()
        alive = wait_pids_gone(pids, timeout=2.0)
        assert alive == [], f"{alive} of worker/job child {pids} outlived the SIGKILLed supervisor by 2 s"
    finally:
        sup.cleanup()
        kill_pids(pids)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_supervisor_heartbeat_advances_while_it_runs(queue, db_path):
    def heartbeat():
        rows = raw_rows(db_path, "SELECT heartbeat FROM supervisors WHERE id = 'sup-beat'")
        return rows[0][0] if rows else None

    with WorkerThread(Worker(db_path, worker_id="sup-beat", polling_interval=0.1)):
        wait_until(lambda: heartbeat() is not None, 10, "the supervisor to register")
        first = heartbeat()
        wait_until(lambda: heartbeat() != first, 7.0, "a heartbeat within 5 s")
        assert heartbeat() > first


@pytest.mark.timeout(60)
def test_worker_processes_killed_as_they_start_do_not_crash_the_supervisor(queue, db_path, tmp_path):
    """An OOM killer (or the chaos test) may kill a worker process at any moment, even
    before it has read its first message: the supervisor replaces it and carries on."""
    ids = [queue.submit(Job(f"j{i}", jobs.sleep_for, params={"seconds": 0.1}, max_attempts=20))
           for i in range(10)]
    sup = SupervisorProcess(db_path, tmp_path, concurrency=2, polling_interval=0.1)
    killed = set()
    try:
        deadline = time.monotonic() + 20
        while len(killed) < 6 and time.monotonic() < deadline and sup.poll() is None:
            for pid in sup.descendants():
                if pid not in killed:
                    killed.add(pid)
                    try:
                        psutil.Process(pid).kill()
                    except psutil.NoSuchProcess:
                        pass
        assert sup.poll() is None, f"the supervisor died when its worker processes were killed\n{sup.output()}"
        wait_stats(queue, len(ids), timeout=30, procs=[sup])
        sup.signal(signal.SIGTERM)
        assert sup.wait(timeout=15) == 0, sup.output()
        assert wait_pids_gone(sorted(sup.seen), timeout=2.0) == []
    finally:
        sup.cleanup()
    assert len(killed) >= 2
    assert {queue.get_status(i)["status"] for i in ids} == {"completed"}


@pytest.mark.timeout(60)
def test_a_live_supervisors_running_job_is_never_reclaimed(queue, db_path, tmp_path):
    log = str(tmp_path / "runs.log")
    ids = submit_sleepers(queue, log, 1, seconds=30)
    sup = SupervisorProcess(db_path, tmp_path, worker_id="sup-alive", concurrency=1, polling_interval=0.1)
    try:
        sup.wait_alive_until(lambda: log_events(log, "start"), "the job to start")
        sup.descendants()
        # a second supervisor with nothing ready to run looks for dead supervisors' jobs
        with WorkerThread(Worker(db_path, worker_id="sup-other", polling_interval=0.1, concurrency=1)):
            time.sleep(2.0)
            st = queue.get_status(ids["s0"])
            assert st["status"] == "running"
            assert [e["status"] for e in st["executions"]] == ["running"], st["executions"]
            assert len(log_events(log, "start")["s0"]) == 1
        sup.signal(signal.SIGKILL)
        sup.wait(5)
    finally:
        sup.cleanup()
    assert wait_pids_gone(sorted(sup.seen), timeout=2.0) == []


def _fake_running_job(db_path, queue, supervisor_row):
    """A job left `running` by the supervisor described by ``supervisor_row`` (raw SQL)."""
    job_id = queue.submit(Job("orphan", jobs.add, params={"a": 2, "b": 3}))
    now = datetime.datetime.now().isoformat()
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        with conn:
            conn.execute(
                "INSERT INTO supervisors (id, pid, process_start, host, heartbeat, started_at) "
                "VALUES (:id, :pid, :process_start, :host, :heartbeat, :started_at)",
                supervisor_row,
            )
            conn.execute(
                "UPDATE jobs SET status = 'running', attempts = 1, worker_id = ?, started_at = ?, "
                "updated_at = ? WHERE id = ?",
                (supervisor_row["id"], now, now, job_id),
            )
            conn.execute(
                "INSERT INTO job_executions (id, job_id, worker_id, status, started_at, attempt) "
                "VALUES (?, ?, ?, 'running', ?, 1)",
                ("fake-execution", job_id, supervisor_row["id"], now),
            )
    finally:
        conn.close()
    return job_id


LONG_AGO = "2000-01-01T00:00:00"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "case, reclaimed",
    [
        ("same host, pid gone", True),
        ("same host, pid reused by another process", True),
        ("same host, alive", False),
        ("other host, stale heartbeat", True),
        ("other host, fresh heartbeat", False),
    ],
)
def test_reclaim_rule_for_jobs_of_other_supervisors(queue, db_path, case, reclaimed):
    me = psutil.Process()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    row = {
        "id": "sup-fake",
        "pid": me.pid,
        "process_start": me.create_time(),
        "host": socket.gethostname(),
        "heartbeat": datetime.datetime.now().isoformat(),
        "started_at": LONG_AGO,
    }
    if case == "same host, pid gone":
        row.update(pid=dead.pid, heartbeat=LONG_AGO)
    elif case == "same host, pid reused by another process":
        row.update(process_start=me.create_time() - 3600.0, heartbeat=LONG_AGO)
    elif case == "same host, alive":
        row.update(heartbeat=LONG_AGO)  # the pid test decides on this host, not the heartbeat
    elif case == "other host, stale heartbeat":
        row.update(host="some-other-host.invalid", pid=dead.pid, heartbeat=LONG_AGO)
    elif case == "other host, fresh heartbeat":
        row.update(host="some-other-host.invalid", pid=dead.pid)
    job_id = _fake_running_job(db_path, queue, row)
    with WorkerThread(Worker(db_path, worker_id="sup-new", polling_interval=0.1, heartbeat_timeout=60)):
        if reclaimed:
            assert wait_terminal(queue, [job_id], timeout=20) == {job_id: "completed"}
        else:
            time.sleep(2.0)
    st = queue.get_status(job_id)
    if reclaimed:
        assert st["result"] == 5
        assert st["attempts"] == 1, "the reclaimed attempt was counted"
        assert [e["status"] for e in st["executions"]] == ["interrupted", "completed"]
        assert st["executions"][0]["id"] == "fake-execution"
    else:
        assert st["status"] == "running", f"{case}: a live supervisor's job was taken"
        assert [e["status"] for e in st["executions"]] == ["running"]


# --- 2. graceful shutdown --------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sigterm_sends_running_jobs_back_to_pending_with_attempts_unchanged(queue, db_path, tmp_path):
    log = str(tmp_path / "runs.log")
    ids = submit_sleepers(queue, log, 3, seconds=30)
    grace = 0.5
    sup = SupervisorProcess(db_path, tmp_path, worker_id="sup-term", concurrency=2,
                            polling_interval=0.1, grace_period=grace)
    try:
        sup.wait_alive_until(lambda: len(log_events(log, "start")) >= 2, "two jobs to start")
        started = log_events(log, "start")
        t0 = time.monotonic()
        sup.signal(signal.SIGTERM)
        try:
            rc = sup.wait(timeout=grace + 10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisor still running 10 s past its grace period\n{sup.output()}")
        took = time.monotonic() - t0
        assert took < grace + 2.0, f"SIGTERM with grace_period={grace} took {took:.2f}s to exit"
        assert rc == 0, sup.output()
        assert sup.stdout().split() == ["READY", "STOPPED"], sup.output()
        assert wait_pids_gone(sorted(sup.seen), timeout=1.0) == [], "a job outlived the shutdown"
    finally:
        sup.cleanup()
    assert len(started) == 2
    for tag, job_id in ids.items():
        st = queue.get_status(job_id)
        assert st["status"] == "pending", (tag, st["status"])
        assert st["attempts"] == 0, f"{tag}: interrupted attempt was counted"
        statuses = [e["status"] for e in st["executions"]]
        if tag in started:
            assert statuses == ["interrupted"], (tag, statuses)
        else:
            assert set(statuses) <= {"interrupted"}, (tag, statuses)
    assert not log_events(log, "done")


@pytest.mark.timeout(60)
def test_sigterm_gives_running_jobs_their_grace_period_and_starts_no_more(queue, db_path, tmp_path):
    log = str(tmp_path / "runs.log")
    ids = submit_sleepers(queue, log, 3, seconds=1.5)
    sup = SupervisorProcess(db_path, tmp_path, concurrency=1, polling_interval=0.1, grace_period=10)
    try:
        sup.wait_alive_until(lambda: log_events(log, "start"), "a job to start")
        (first,) = log_events(log, "start")
        t0 = time.monotonic()
        sup.signal(signal.SIGTERM)
        rc = sup.wait(timeout=15)
        took = time.monotonic() - t0
        assert rc == 0, sup.output()
        assert wait_pids_gone(sorted(sup.seen), timeout=1.0) == []
    finally:
        sup.cleanup()
    assert took < 1.5 + 2.0, f"the supervisor waited {took:.1f}s although its job ended within 1.5s"
    assert queue.get_status(ids[first])["status"] == "completed"
    assert queue.get_status(ids[first])["attempts"] == 1
    assert list(log_events(log, "start")) == [first], "a job started after SIGTERM"
    for tag, job_id in ids.items():
        if tag != first:
            st = queue.get_status(job_id)
            assert (st["status"], st["attempts"]) == ("pending", 0), tag


@pytest.mark.timeout(60)
def test_worker_stop_interrupts_after_grace_period(queue, db_path, tmp_path):
    log = str(tmp_path / "runs.log")
    ids = submit_sleepers(queue, log, 1, seconds=30)
    grace = 0.3
    wt = WorkerThread(Worker(db_path, polling_interval=0.1, concurrency=1, grace_period=grace))
    with wt:
        wait_until(lambda: log_events(log, "start"), 20, "the job to start")
        took = wt.stop()
    assert took < grace + 1.5, f"stop() with grace_period={grace} took {took:.2f}s"
    (pid,) = log_events(log, "start")["s0"]
    assert wait_pids_gone([pid], timeout=1.0) == []
    st = queue.get_status(ids["s0"])
    assert (st["status"], st["attempts"]) == ("pending", 0)
    assert [e["status"] for e in st["executions"]] == ["interrupted"]


@pytest.mark.timeout(60)
def test_second_sigint_stops_at_once(queue, db_path, tmp_path):
    log = str(tmp_path / "runs.log")
    ids = submit_sleepers(queue, log, 1, seconds=30)
    sup = SupervisorProcess(db_path, tmp_path, concurrency=1, polling_interval=0.1, grace_period=30)
    try:
        sup.wait_alive_until(lambda: log_events(log, "start"), "the job to start")
        sup.signal(signal.SIGINT)
        time.sleep(0.5)
        assert sup.poll() is None, "the first SIGINT did not wait for the grace period"
        t0 = time.monotonic()
        sup.signal(signal.SIGINT)
        try:
            sup.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"a second SIGINT did not stop the supervisor\n{sup.output()}")
        took = time.monotonic() - t0
        assert took < 2.0, f"the second SIGINT took {took:.2f}s"
        assert wait_pids_gone(sorted(sup.seen), timeout=1.0) == []
    finally:
        sup.cleanup()
    st = queue.get_status(ids["s0"])
    assert (st["status"], st["attempts"]) == ("pending", 0)
    assert [e["status"] for e in st["executions"]] == ["interrupted"]


WORKFLOW_SCRIPT = """
import json, sys
from gigq_mp import Job, JobQueue, Workflow
from tests import jobs

db, log, flag = sys.argv[1], sys.argv[2], sys.argv[3]
queue = JobQueue(db)
wf = Workflow("interrupted")
first = [wf.add_job(Job(f"s{i}", jobs.wait_for_flag,
                        params={"path": log, "tag": f"s{i}", "flag": flag, "seconds": 60}))
         for i in range(3)]
wf.add_job(Job("sum", jobs.echo_parent_ids), depends_on=first)
print(json.dumps([j.id for j in wf.jobs]), flush=True)
try:
    wf.run(queue, workers=2)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    raise
print("FINISHED", flush=True)
"""

DEFAULT_GRACE = 5.0  # Workflow.run gives running jobs the default grace period


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sigints", [1, 2])
def test_keyboard_interrupt_in_workflow_run_leaves_a_consistent_database(db_path, tmp_path, sigints):
    log = str(tmp_path / "runs.log")
    flag = str(tmp_path / "flag")
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKFLOW_SCRIPT, db_path, log, flag],
        env=subprocess_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    seen = set()
    try:
        ids = json.loads(proc.stdout.readline())
        wait_until(lambda: len(log_events(log, "start")) >= 2 or proc.poll() is not None, 20,
                   "two jobs to start")
        assert proc.poll() is None, proc.communicate()
        seen.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
        assert len(seen) >= 2
        proc.send_signal(signal.SIGINT)
        if sigints == 2:
            time.sleep(0.3)
            assert proc.poll() is None, "the first Ctrl-C did not give the jobs a grace period"
            proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=DEFAULT_GRACE + 10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        leftover = wait_pids_gone(sorted(seen), timeout=2.0)
        kill_pids(leftover)
    limit = 2.0 if sigints == 2 else DEFAULT_GRACE + 2.0
    assert took < limit, f"{sigints} SIGINT(s): the run took {took:.1f}s to stop"
    assert proc.returncode != 0
    assert "INTERRUPTED" in out and "FINISHED" not in out, (out, err)
    assert "KeyboardInterrupt" in err, err
    assert leftover == [], "worker processes survived the KeyboardInterrupt"
    assert not log_events(log, "done"), "a job finished during the interrupt"

    with open(flag, "w"):
        pass
    queue = JobQueue(db_path)
    try:
        for job_id in ids:
            st = queue.get_status(job_id)
            assert st["status"] == "pending", (st["name"], st["status"])
            assert st["attempts"] == 0, (st["name"], st["attempts"])
            assert set(e["status"] for e in st["executions"]) <= {"interrupted"}
        with WorkerThread(Worker(db_path, polling_interval=0.1, concurrency=2)):
            statuses = wait_terminal(queue, ids, timeout=30)
        assert set(statuses.values()) == {"completed"}, statuses
        assert queue.get_result(ids[-1]) == ids[:3]
        assert {tag: len(p) for tag, p in log_events(log, "done").items()} == {"s0": 1, "s1": 1, "s2": 1}
    finally:
        queue.close()


# --- 4. many supervisors, a busy database ------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(120)
def test_three_supervisor_processes_run_2000_jobs_exactly_once(queue, db_path, tmp_path):
    n = 2000
    log = str(tmp_path / "runs.log")
    sups = [
        SupervisorProcess(db_path, tmp_path, worker_id=f"sup-{k}", concurrency=2, polling_interval=0.1)
        for k in range(3)
    ]
    try:
        wait_until(lambda: all("READY" in s.stdout() or s.poll() is not None for s in sups), 20,
                   "the supervisors to start")
        time.sleep(0.5)  # let them all reach their polling loop
        wf = Workflow("many")
        for i in range(n):
            # 5 ms each: long enough that one supervisor cannot finish them all alone
            # before the others look
            wf.add_job(Job(f"r{i}", jobs.record_run_and_sleep,
                           params={"path": log, "tag": f"t{i}", "seconds": 0.005}))
        t0 = time.monotonic()
        wf.submit_all(queue)
        wait_stats(queue, n, timeout=60, procs=sups)
        elapsed = time.monotonic() - t0
        for s in sups:
            s.descendants()
            s.signal(signal.SIGTERM)
        for s in sups:
            assert s.wait(timeout=15) == 0, s.output()
        for s in sups:
            assert wait_pids_gone(sorted(s.seen), timeout=2.0) == []
    finally:
        for s in sups:
            s.cleanup()
    assert elapsed < 60
    counts = collections.Counter(read_lines(log))
    assert len(counts) == n
    twice = {tag: c for tag, c in counts.items() if c != 1}
    assert twice == {}, f"{len(twice)} jobs ran more than once, e.g. {list(twice.items())[:5]}"
    statuses = collections.Counter(s for (s,) in raw_rows(db_path, "SELECT status FROM jobs"))
    assert statuses == {"completed": n}
    executions = raw_rows(db_path, "SELECT job_id, COUNT(*), MIN(status), MAX(status) FROM job_executions GROUP BY job_id")
    assert len(executions) == n
    bad = [row for row in executions if row[1:] != (1, "completed", "completed")]
    assert bad == [], f"jobs without exactly one completed execution: {bad[:5]}"
    used = {w for (w,) in raw_rows(db_path, "SELECT DISTINCT worker_id FROM job_executions")}
    assert len(used) >= 2, f"only {used} ran jobs: the supervisors did not compete"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_database_write_locked_for_seconds_while_jobs_run(queue, db_path):
    ids = [queue.submit(Job(f"j{i}", jobs.sleep_for, params={"seconds": 0.2})) for i in range(30)]
    lock_held = threading.Event()
    lock_errors = []

    def hold_write_lock(seconds):
        try:
            conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            lock_held.set()
            time.sleep(seconds)
            conn.execute("COMMIT")
            conn.close()
        except Exception as exc:  # surfaced below
            lock_errors.append(exc)
            lock_held.set()

    with WorkerThread(Worker(db_path, polling_interval=0.1, concurrency=2)) as wt:
        wait_until(lambda: queue.stats()["completed"] >= 2, 20, "two jobs to complete")
        locker = threading.Thread(target=hold_write_lock, args=(3.0,))
        locker.start()
        lock_held.wait(10)
        during = queue.stats()
        locker.join(10)
        assert not lock_errors, lock_errors
        statuses = wait_terminal(queue, ids, timeout=40)
        assert wt.thread.is_alive(), f"the supervisor ended: {wt.error!r}"
    assert set(statuses.values()) == {"completed"}, statuses
    assert during["completed"] < len(ids), "the lock was taken too late to matter"
    for job_id in ids:
        st = queue.get_status(job_id)
        assert st["attempts"] == 1
        assert [e["status"] for e in st["executions"]] == ["completed"]


@pytest.mark.timeout(60)
def test_supervisor_starting_on_a_write_locked_database_waits(queue, db_path):
    ids = [queue.submit(Job(f"j{i}", jobs.add, params={"a": i, "b": 1})) for i in range(5)]
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        with WorkerThread(Worker(db_path, polling_interval=0.1, concurrency=1)) as wt:
            time.sleep(2.5)
            conn.execute("COMMIT")
            statuses = wait_terminal(queue, ids, timeout=30)
            assert wt.thread.is_alive(), f"the supervisor ended: {wt.error!r}"
    finally:
        conn.close()
    assert set(statuses.values()) == {"completed"}
    assert [queue.get_result(i) for i in ids] == [1, 2, 3, 4, 5]


# --- 5. resource limits --------------------------------------------------------------

MEMORY_ERROR = re.compile(r"exceeded memory limit of 100 MB \(peak (\d+(?:\.\d+)?) MB\)")


def assert_memory_failure(st, attempts=1):
    assert st["status"] == "failed", st["status"]
    assert st["attempts"] == attempts
    match = MEMORY_ERROR.search(st["error"] or "")
    assert match, f"error does not report the memory limit: {st['error']!r}"
    assert float(match.group(1)) > 100
    assert [e["status"] for e in st["executions"]] == ["failed"] * attempts
    for e in st["executions"]:
        assert MEMORY_ERROR.search(e["error"] or ""), e["error"]


@pytest.mark.timeout(60)
def test_job_past_max_memory_mb_is_killed_with_that_error(queue, db_path):
    hog = queue.submit(Job("hog", jobs.hold_memory, params={"mb": 300, "seconds": 20},
                           max_memory_mb=100, max_attempts=1, timeout=40))
    after = queue.submit(Job("after hog", jobs.sum_parents, dependencies=[hog]))
    small = queue.submit(Job("small", jobs.hold_memory, params={"mb": 20, "seconds": 0.5},
                             max_memory_mb=200, max_attempts=1))
    t0 = time.monotonic()
    with WorkerThread(Worker(db_path, polling_interval=0.1, concurrency=2)):
        statuses = wait_terminal(queue, [hog, after, small], timeout=40)
    elapsed = time.monotonic() - t0
    assert elapsed < 15, f"the hog was killed only after {elapsed:.1f}s"
    st = queue.get_status(hog)
    assert_memory_failure(st)
    assert wait_pids_gone([st["executions"][0]["pid"]], timeout=1.0) == []
    assert statuses[after] == "cancelled"
    assert statuses[small] == "completed", queue.get_status(small)["error"]


@task(max_memory_mb=100, max_attempts=1, timeout=40)
def hog_task(mb, seconds):
    return jobs.hold_memory(mb, seconds)


@pytest.mark.timeout(60)
def test_task_max_memory_mb_applies(queue, db_path):
    job_id = hog_task.submit(queue, mb=300, seconds=20)
    with WorkerThread(Worker(db_path, polling_interval=0.1)):
        wait_terminal(queue, [job_id], timeout=40)
    assert_memory_failure(queue.get_status(job_id))


@pytest.mark.timeout(60)
def test_worker_max_memory_mb_is_a_default_for_jobs_without_one(queue, db_path):
    default = queue.submit(Job("default", jobs.hold_memory, params={"mb": 300, "seconds": 20},
                               max_attempts=2, timeout=40))
    own = queue.submit(Job("own limit", jobs.hold_memory, params={"mb": 300, "seconds": 0.5},
                           max_memory_mb=2000, max_attempts=1, timeout=40))
    with WorkerThread(Worker(db_path, polling_interval=0.1, concurrency=2, max_memory_mb=100)):
        wait_terminal(queue, [default, own], timeout=45)
    assert_memory_failure(queue.get_status(default), attempts=2)  # retried like any failure
    st = queue.get_status(own)
    assert st["status"] == "completed", st["error"]
    assert st["result"] == 300 * 1024 * 1024


@pytest.mark.timeout(60)
def test_memory_limit_counts_the_jobs_child_processes(queue, db_path, tmp_path):
    pidfile = str(tmp_path / "children")
    job_id = queue.submit(Job("tree hog", jobs.child_holds_memory,
                              params={"pidfile": pidfile, "mb": 300, "seconds": 20},
                              max_memory_mb=100, max_attempts=1, timeout=40))
    try:
        with WorkerThread(Worker(db_path, polling_interval=0.1)):
            wait_terminal(queue, [job_id], timeout=40)
        children = [int(p) for p in read_lines(pidfile)]
        assert len(children) == 1
        assert wait_pids_gone(children, timeout=1.0) == [], "the job's child survived the memory kill"
    finally:
        kill_pids([int(p) for p in read_lines(pidfile)])
    assert_memory_failure(queue.get_status(job_id))


@pytest.mark.timeout(60)
def test_max_tasks_per_worker_recycles_worker_processes(queue, db_path):
    ids = [queue.submit(Job(f"p{i}", jobs.getpid)) for i in range(10)]
    with WorkerThread(Worker(db_path, polling_interval=0.1, concurrency=2, max_tasks_per_worker=2)):
        assert set(wait_terminal(queue, ids, timeout=40).values()) == {"completed"}
    pids = [queue.get_result(i) for i in ids]
    assert [queue.get_status(i)["executions"][0]["pid"] for i in ids] == pids
    per_pid = collections.Counter(pids)
    assert max(per_pid.values()) <= 2, per_pid
    assert len(per_pid) >= 5, per_pid
    assert wait_pids_gone(pids, timeout=2.0) == []

    # without the option the same two processes run everything
    more = [queue.submit(Job(f"q{i}", jobs.getpid)) for i in range(10)]
    with WorkerThread(Worker(db_path, polling_interval=0.1, concurrency=2)):
        wait_terminal(queue, more, timeout=40)
    assert len({queue.get_result(i) for i in more}) <= 2


# --- 6. cancelling a running job -------------------------------------------------------

def _running_victim(queue, tmp_path):
    pidfile = str(tmp_path / "victim.pids")
    victim = Job("victim", jobs.record_pids_with_grandchild_and_sleep,
                 params={"pidfile": pidfile, "seconds": 30}, timeout=60)
    child = Job("child", jobs.sum_parents, dependencies=[victim.id])
    grandchild = Job("grandchild", jobs.sum_parents, dependencies=[child.id])
    for job in (victim, child, grandchild):
        queue.submit(job)
    return pidfile, victim.id, child.id, grandchild.id


def _assert_cancelled_with_cascade(queue, victim, child, grandchild):
    assert queue.get_status(victim)["status"] == "cancelled"
    for job_id in (child, grandchild):
        st = queue.get_status(job_id)
        assert st["status"] == "cancelled", (st["name"], st["status"])
        assert st["attempts"] == 0
    assert victim in (queue.get_status(child)["error"] or ""), "the cascade does not name the upstream job"


@pytest.mark.timeout(60)
def test_cancel_kill_stops_a_running_job_and_cascades(queue, db_path, tmp_path):
    pidfile, victim, child, grandchild = _running_victim(queue, tmp_path)
    pids = []
    try:
        with WorkerThread(Worker(db_path, polling_interval=0.1, concurrency=1)):
            wait_until(lambda: read_lines(pidfile), 20, "the victim to start")
            pids = [int(p) for p in read_lines(pidfile)[0].split()]
            assert queue.cancel(victim) is False, "plain cancel() took a running job"
            time.sleep(0.3)
            assert queue.get_status(victim)["status"] == "running"
            assert wait_pids_gone(pids, timeout=0.01) == pids
            t0 = time.monotonic()
            queue.cancel(victim, kill=True)
            wait_until(lambda: queue.get_status(victim)["status"] == "cancelled", 2.0,
                       "the running job to end cancelled")
            assert wait_pids_gone(pids, timeout=max(0.1, 2.0 - (time.monotonic() - t0))) == [], (
                "the cancelled job's process tree survived"
            )
            _assert_cancelled_with_cascade(queue, victim, child, grandchild)
            # the supervisor carries on with a replacement worker process
            later = queue.submit(Job("later", jobs.add, params={"a": 1, "b": 2}))
            assert wait_terminal(queue, [later], timeout=20) == {later: "completed"}
    finally:
        kill_pids(pids)
    assert len(read_lines(pidfile)) == 1, "the cancelled job was started again"


@pytest.mark.timeout(60)
def test_cancel_kill_reaches_a_supervisor_in_another_process(queue, db_path, tmp_path):
    pidfile, victim, child, grandchild = _running_victim(queue, tmp_path)
    sup = SupervisorProcess(db_path, tmp_path, concurrency=1, polling_interval=0.1)
    pids = []
    try:
        sup.wait_alive_until(lambda: read_lines(pidfile), "the victim to start")
        pids = [int(p) for p in read_lines(pidfile)[0].split()]
        sup.descendants()
        queue.cancel(victim, kill=True)
        wait_until(lambda: queue.get_status(victim)["status"] == "cancelled", 2.0,
                   "the running job to end cancelled")
        assert wait_pids_gone(pids, timeout=1.0) == []
        _assert_cancelled_with_cascade(queue, victim, child, grandchild)
        assert sup.poll() is None, sup.output()
        sup.signal(signal.SIGTERM)
        assert sup.wait(timeout=15) == 0, sup.output()
        assert wait_pids_gone(sorted(sup.seen), timeout=2.0) == []
    finally:
        sup.cleanup()
        kill_pids(pids)


@pytest.mark.timeout(30)
def test_cancel_kill_on_pending_and_finished_jobs(queue, db_path):
    pending = queue.submit(Job("pending", jobs.add, params={"a": 1, "b": 1}))
    dependent = queue.submit(Job("dependent", jobs.sum_parents, dependencies=[pending]))
    assert queue.cancel(pending, kill=True) is True
    assert queue.get_status(pending)["status"] == "cancelled"
    assert queue.get_status(dependent)["status"] == "cancelled"
    done = queue.submit(Job("done", jobs.add, params={"a": 1, "b": 1}))
    with WorkerThread(Worker(db_path, polling_interval=0.1)):
        wait_terminal(queue, [done], timeout=20)
    assert queue.cancel(done, kill=True) is False
    assert queue.cancel(done) is False
    assert queue.get_status(done)["status"] == "completed"
    assert queue.cancel("no-such-job", kill=True) is False


# --- 7. bad input and hostile files --------------------------------------------------------

JUNK = {
    "text": b"this is not a database\n" * 200,
    "random bytes": random.Random(4).randbytes(8192),
    "sqlite header, junk body": b"SQLite format 3\x00" + random.Random(5).randbytes(4080),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", sorted(JUNK))
def test_junk_file_is_refused_and_left_unchanged(tmp_path, kind):
    path = tmp_path / "junk.db"
    path.write_bytes(JUNK[kind])
    with pytest.raises(GigqMpError) as excinfo:
        JobQueue(str(path))
    assert str(path) in str(excinfo.value)
    assert path.read_bytes() == JUNK[kind]
    with pytest.raises(GigqMpError) as excinfo:
        worker = Worker(str(path), polling_interval=0.1)
        try:
            worker.process_one()
        finally:
            worker.close()
    assert str(path) in str(excinfo.value)
    assert path.read_bytes() == JUNK[kind]
    assert sorted(os.listdir(tmp_path)) == ["junk.db"], "files were created beside the junk"


@pytest.mark.timeout(30)
def test_existing_empty_file_is_a_new_database(tmp_path):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    q = JobQueue(str(path))
    try:
        job_id = q.submit(Job("x", jobs.add, params={"a": 1, "b": 1}))
        assert q.get_status(job_id)["status"] == "pending"
    finally:
        q.close()


def _make_db(path):
    q = JobQueue(str(path))
    job_id = q.submit(Job("x", jobs.add, params={"a": 1, "b": 1}))
    q.close()
    return job_id


READONLY_CHECK = """
import sys
from gigq_mp import JobQueue
from gigq_mp.errors import GigqMpError
try:
    JobQueue(sys.argv[1])
except GigqMpError as exc:
    print("REFUSED", exc)
else:
    print("OPENED")
"""


@pytest.mark.timeout(30)
def test_read_only_database_is_refused_and_unchanged(tmp_path):
    path = tmp_path / "ro.db"
    _make_db(path)
    before = path.read_bytes()
    os.chmod(path, 0o400)
    try:
        prefix = []
        if os.access(path, os.W_OK):  # root: drop the capability that bypasses permissions
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root and setpriv is not available")
            drop = "-dac_override,-dac_read_search"
            prefix = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}"]
        proc = subprocess.run(
            prefix + [sys.executable, "-c", READONLY_CHECK, str(path)],
            env=subprocess_env(), capture_output=True, text=True, timeout=20,
        )
        if prefix and "Operation not permitted" in proc.stderr:
            pytest.skip(f"setpriv cannot drop capabilities here: {proc.stderr.strip()}")
    finally:
        os.chmod(path, 0o600)
    assert proc.stdout.startswith("REFUSED"), (proc.stdout, proc.stderr)
    assert str(path) in proc.stdout
    assert path.read_bytes() == before


@pytest.mark.timeout(30)
def test_missing_parent_directory_is_refused(tmp_path):
    path = tmp_path / "missing" / "q.db"
    with pytest.raises(GigqMpError) as excinfo:
        JobQueue(str(path))
    assert str(path) in str(excinfo.value)
    assert not (tmp_path / "missing").exists(), "the missing directory was created"


@pytest.mark.timeout(30)
def test_newer_schema_version_is_refused_and_unchanged(tmp_path):
    path = tmp_path / "future.db"
    job_id = _make_db(path)
    conn = sqlite3.connect(str(path))
    with conn:
        conn.execute("UPDATE gigq_mp_meta SET value = '999' WHERE key = 'schema_version'")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(GigqMpError) as excinfo:
        JobQueue(str(path))
    message = str(excinfo.value)
    assert "999" in message and str(path) in message, message
    with pytest.raises(GigqMpError):
        worker = Worker(str(path), polling_interval=0.1)
        try:
            worker.process_one()
        finally:
            worker.close()
    assert path.read_bytes() == before
    conn = sqlite3.connect(str(path))
    try:
        assert conn.execute("SELECT value FROM gigq_mp_meta WHERE key = 'schema_version'").fetchone() == ("999",)
        assert conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone() == ("pending",)
    finally:
        conn.close()


@pytest.mark.timeout(30)
def test_new_database_files_are_private_to_their_owner(tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "new.db"
        q = JobQueue(str(path))
        try:
            q.submit(Job("x", jobs.add, params={"a": 1, "b": 1}))
            files = [f for f in os.listdir(tmp_path) if f.startswith("new.db")]
            assert "new.db" in files
            modes = {f: oct(stat.S_IMODE(os.stat(tmp_path / f).st_mode)) for f in files}
            assert modes == {f: oct(0o600) for f in files}, modes
        finally:
            q.close()
    finally:
        os.umask(old_umask)


def _interrupt_at(code, method: str):
    """A trace function raising KeyboardInterrupt once, in `code`, at the first call of
    `method` (a Ctrl-C landing at that bytecode)."""
    import dis

    target = next(ins.offset for ins in dis.get_instructions(code) if ins.argval == method)
    fired = []

    def tracer(frame, event, arg):
        if frame.f_code is not code:
            return None
        frame.f_trace_opcodes = True

        def local(frame, event, arg):
            if event == "opcode" and frame.f_lasti == target and not fired:
                fired.append(True)
                raise KeyboardInterrupt
            return local

        return local

    return tracer, fired


@pytest.mark.timeout(60)
def test_a_ctrl_c_between_a_claims_update_and_its_fetch_keeps_the_batch_committable(db_path):
    """The claim's UPDATE ... RETURNING ran, its rows were not fetched yet: the interrupt
    must come out as a KeyboardInterrupt, and the open batch (with a success recorded in it
    before) must still commit."""
    from gigq_mp.store import Store

    queue = JobQueue(db_path)
    done, later = (queue.submit(Job(name, jobs.add, params={"a": 1, "b": 2})) for name in ("done", "later"))
    store = queue.store
    seqs = dict(store._conn.execute("SELECT id, rowid FROM jobs").fetchall())
    store.begin_batch()
    store.claim([(done, seqs[done])], "w1")
    store._conn.execute("UPDATE jobs SET status = 'completed' WHERE id = ?", (done,))  # its success
    tracer, fired = _interrupt_at(Store._rows_as.__code__, "fetchall")  # the claim's statement
    sys.settrace(tracer)
    try:
        with pytest.raises(KeyboardInterrupt):
            store.claim([(later, seqs[later])], "w1")
    finally:
        sys.settrace(None)
    assert fired, "the interrupt was never raised: the test no longer reaches fetchall"
    store.commit_batch()
    other = sqlite3.connect(db_path)
    try:
        statuses = dict(other.execute("SELECT id, status FROM jobs").fetchall())
    finally:
        other.close()
    assert statuses[done] == "completed"
    assert statuses[later] == "pending"  # the interrupted claim was undone alone
    queue.close()
