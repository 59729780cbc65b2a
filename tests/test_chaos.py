"""Chaos: a 500-job DAG with parent_results while supervisors are SIGKILLed at
random moments (and restarted) and random worker processes are SIGKILLed.

At the end every job is completed with the right result, no job was completed
twice (one completed execution each, never a run started after the job was
recorded completed, never more runs than attempts), nothing is left running and
no process of the run survives."""

from __future__ import annotations

import collections
import datetime
import random
import signal
import sqlite3
import time

import psutil
import pytest

from gigq_mp import Job, Workflow

from . import jobs
from .jobs import read_lines
from .util import SupervisorProcess, kill_pids, supervisor_registered, wait_pids_gone, wait_until

N_JOBS = 500
MOD = 1_000_003
SUPERVISOR_KILLS = 6
SEED = 20240604


def build_dag(rng, log):
    """Jobs 0..N-1; job i depends on up to 3 random earlier jobs. Returns (workflow, jobs, expected)."""
    wf = Workflow("chaos")
    built = []
    expected = []
    for i in range(N_JOBS):
        parents = rng.sample(range(i), k=min(i, rng.choice([0, 1, 1, 2, 3]))) if i else []
        job = Job(
            f"c{i}", jobs.chaos_step,
            params={"log": log, "tag": f"c{i}", "index": i, "seconds": rng.choice([0.0, 0.01, 0.03, 0.08])},
            max_attempts=20, timeout=30,
        )
        wf.add_job(job, depends_on=[built[p] for p in parents])
        built.append(job)
        expected.append((i + sum(expected[p] for p in parents)) % MOD)
    return wf, built, expected


def progress(db_path):
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        return dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
    finally:
        conn.close()


def log_times(log):
    """{(kind, tag): [time, ...]} of chaos_step's start/done lines."""
    out = collections.defaultdict(list)
    for line in read_lines(log):
        kind, tag, t = line.split()
        out[kind, tag].append(float(t))
    return out


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_chaos_sigkill_supervisors_and_workers(queue, db_path, tmp_path):
    rng = random.Random(SEED)
    log = str(tmp_path / "chaos.log")
    wf, built, expected = build_dag(rng, log)
    wf.submit_all(queue)
    ids = [j.id for j in built]

    sups = []
    seen = set()
    supervisor_kills = worker_kills = 0
    t_start = time.monotonic()

    def start():
        sup = SupervisorProcess(db_path, tmp_path, concurrency=2, polling_interval=0.2)
        sups.append(sup)
        seen.add(sup.pid)
        return sup

    try:
        # Chaos phase: run, kill workers now and then, kill the supervisor, restart.
        while supervisor_kills < SUPERVISOR_KILLS and time.monotonic() - t_start < 40:
            sup = start()
            life_end = time.monotonic() + rng.uniform(0.8, 2.5)
            while time.monotonic() < life_end:
                time.sleep(rng.uniform(0.1, 0.4))
                assert sup.poll() is None, f"supervisor died on its own\n{sup.output()}"
                workers = sup.descendants()
                seen.update(workers)
                if workers and rng.random() < 0.4:
                    victim = rng.choice(workers)
                    try:
                        psutil.Process(victim).kill()
                        worker_kills += 1
                    except psutil.NoSuchProcess:
                        pass
            sup.kill()
            supervisor_kills += 1
            # its worker processes must notice and exit
            alive = wait_pids_gone(sorted(sup.seen), timeout=2.0)
            assert alive == [], f"processes {alive} outlived supervisor {sup.pid}"
        assert supervisor_kills >= 5, f"only {supervisor_kills} supervisor kills in the time budget"

        # Final supervisor runs to completion, then SIGTERM.
        final = start()
        deadline = time.monotonic() + 60
        while True:
            seen.update(final.descendants())
            counts = progress(db_path)
            if counts.get("pending", 0) == 0 and counts.get("running", 0) == 0:
                break
            assert final.poll() is None, f"final supervisor died\n{final.output()}"
            assert time.monotonic() < deadline, f"run unfinished 60 s after the chaos: {counts}"
            time.sleep(0.2)
        wait_until(lambda: supervisor_registered(db_path, final.pid) or final.poll() is not None, 20,
                   "the final supervisor to register")
        final.signal(signal.SIGTERM)
        assert final.wait(timeout=15) == 0, final.output()
        seen.update(final.seen)
    finally:
        for sup in sups:
            sup.cleanup()
            seen.update(sup.seen)
        survivors = wait_pids_gone(sorted(seen), timeout=2.0)
        kill_pids(survivors)

    assert survivors == [], f"processes of the run survived: {survivors}"
    assert worker_kills >= 1, "the chaos killed no worker process"

    counts = progress(db_path)
    assert counts == {"completed": N_JOBS}, counts

    conn = sqlite3.connect(db_path)
    try:
        executions = collections.defaultdict(list)
        for job_id, status in conn.execute("SELECT job_id, status FROM job_executions"):
            executions[job_id].append(status)
        completed_at = dict(conn.execute("SELECT id, completed_at FROM jobs"))
    finally:
        conn.close()

    times = log_times(log)
    summary = collections.Counter(s for statuses in executions.values() for s in statuses)
    print(f"chaos: {supervisor_kills} supervisor kills, {worker_kills} worker kills, executions {dict(summary)}")
    for i, job_id in enumerate(ids):
        tag = f"c{i}"
        assert queue.get_result(job_id) == expected[i], f"{tag}: wrong result"
        statuses = executions[job_id]
        assert statuses.count("completed") == 1, f"{tag}: executions {statuses}"
        assert set(statuses) <= {"completed", "interrupted", "failed"}, f"{tag}: executions {statuses}"
        starts, dones = times["start", tag], times["done", tag]
        assert dones, f"{tag} never logged its completion"
        # every run of the job is an attempt on record
        assert len(starts) <= len(statuses), f"{tag}: {len(starts)} runs but executions {statuses}"
        # a job recorded completed is never run again
        finished = datetime.datetime.fromisoformat(completed_at[job_id]).timestamp()
        late = [t for t in starts if t > finished]
        assert late == [], f"{tag} started again {[round(t - finished, 3) for t in late]} s after it completed"
