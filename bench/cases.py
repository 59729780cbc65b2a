"""One measurement in a fresh process: `python bench/cases.py CASE TOOL 'JSON-ARGS'`.

Prints `RESULT {json}` as its last stdout line. bench/run.py runs every
(workload, tool) pair this way, so each starts cold (its pool included in the
time), one cannot disturb the next, and a run that hangs can be killed.

Timing convention, the same for every tool: the clock starts at the call that
starts the work (gigq_mp: JobQueue(...) + wf.run; GigQ: JobQueue(...) + submitting
+ starting its Worker; ProcessPoolExecutor / joblib: creating the pool) and
stops after the last result is in hand and the pool is shut down. Building
the job objects (Workflow.add_job) is outside the clock for both queues.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List

if __name__ == "__main__":  # run as a script: bench/ is sys.path[0]; the repo root comes from PYTHONPATH
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if _root not in sys.path:
        sys.path.append(_root)

from bench import jobs  # noqa: E402

clock = time.perf_counter


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / (1024.0 * 1024.0)


# -- job graphs, described tool-neutrally: [(name, func, params, [parent indices])] --------------


def graph(case: str, a: Dict[str, Any]) -> List[tuple]:
    n = a.get("n")
    if case == "a":
        return [(f"noop{i}", jobs.noop, {}, []) for i in range(n)]
    if case == "b":
        g = [("head", jobs.one, {}, [])]
        g += [(f"item{i}", jobs.fan_item, {"i": i}, [0]) for i in range(n)]
        g.append(("sink", jobs.fan_sum, {}, list(range(1, n + 1))))
        return g
    if case == "c":
        return [(f"hop{i}", jobs.hop, {"i": i}, [i - 1] if i else []) for i in range(n)]
    if case == "d":
        return [(f"spin{i}", jobs.spin, {"n": a["spin"]}, []) for i in range(n)]
    if case == "e":
        return random_dag(n, a.get("parents", 3), a.get("seed", 1))
    if case == "g":
        g = [("make", jobs.make_array, {"mb": a["mb"]}, [])]
        g += [(f"read{i}", jobs.read_array, {}, [0]) for i in range(4)]
        return g
    raise ValueError(case)


def random_dag(n: int, parents: int, seed: int) -> List[tuple]:
    """Job i depends on min(parents, i) distinct jobs drawn uniformly from jobs 0..i-1."""
    rng = random.Random(seed)
    return [(f"r{i}", jobs.noop, {}, rng.sample(range(i), min(parents, i)) if i else []) for i in range(n)]


def levels(g: List[tuple]) -> List[List[int]]:
    """Topological levels (phase by phase emulation of a DAG for pools without dependencies)."""
    depth = []
    for _, _, _, ps in g:
        depth.append(1 + max((depth[p] for p in ps), default=-1))
    out: List[List[int]] = [[] for _ in range(max(depth) + 1)] if depth else []
    for i, d in enumerate(depth):
        out[d].append(i)
    return out


def expected(case: str, a: Dict[str, Any], results: Dict[int, Any]) -> None:
    """Check the results that matter, so a fast wrong answer does not count."""
    if case == "b":
        n = a["n"]
        assert results[n + 1] == n * (n - 1) // 2, results[n + 1]
    elif case == "c":
        assert results[a["n"] - 1] == a["n"] - 1
    elif case == "g":
        want = float(int(a["mb"] * 1024 * 1024) // 8)
        for i in range(1, 5):
            assert results[i] == want, (results[i], want)


# -- gigq_mp -----------------------------------------------------------------------------------


def run_gigq_mp(case: str, a: Dict[str, Any], tmp: str) -> Dict[str, Any]:
    from gigq_mp import Job, JobQueue, Workflow

    g = graph(case, a) if case != "f" else timeout_graph(a)
    wf = Workflow(f"bench-{case}")
    objs: List[Any] = []
    for name, func, params, ps in g:
        kw = {"max_attempts": 1, "timeout": 1} if case == "f" else {}
        objs.append(wf.add_job(Job(name, func, params=params, **kw), depends_on=[objs[p] for p in ps]))
    rss_before = current_rss_mb()
    t0 = clock()  # JobQueue(...) below is inside the clock, as GigQ's is
    if case == "f":
        from gigq_mp.errors import WorkflowFailed

        try:
            wf.run(JobQueue(os.path.join(tmp, "q.db")), workers=2)
            statuses = {"completed": len(objs)}
        except WorkflowFailed as exc:
            statuses = {}
            for failure in exc.failures.values():
                statuses[failure["status"]] = statuses.get(failure["status"], 0) + 1
        return {"seconds": clock() - t0, "statuses": statuses}
    from gigq_mp.errors import WaitTimeout

    queue = JobQueue(os.path.join(tmp, "q.db"))
    try:
        out = wf.run(queue, workers=2, timeout=a.get("cap"))
    except WaitTimeout:
        stats = queue.stats()
        return {"capped": True, "cap": a.get("cap"), "done": stats["completed"], "total": len(objs),
                "rss_peak_mb": peak_rss_mb(), "rss_before_mb": rss_before}
    seconds = clock() - t0
    expected(case, a, {i: out[j.id] for i, j in enumerate(objs)})
    return {"seconds": seconds, "rss_peak_mb": peak_rss_mb(), "rss_before_mb": rss_before}


def timeout_graph(a: Dict[str, Any]) -> List[tuple]:
    return [
        (f"sleep{i}", jobs.sleeper, {"record_dir": a["record_dir"], "index": i, "grandchild": i % 2 == 1}, [])
        for i in range(a["n"])
    ]


# -- GigQ 0.5.1 ----------------------------------------------------------------------------------


def run_gigq(case: str, a: Dict[str, Any], tmp: str) -> Dict[str, Any]:
    import gigq

    g = graph(case, a)
    wf = gigq.Workflow(f"bench-{case}")
    objs: List[Any] = []
    for name, func, params, ps in g:
        objs.append(wf.add_job(gigq.Job(name, func, params=params), depends_on=[objs[p] for p in ps] or None))
    db = os.path.join(tmp, "gigq.db")
    cap = float(a["cap"])
    t0 = clock()
    wf.submit_all(gigq.JobQueue(db))
    worker = gigq.Worker(db, concurrency=2, polling_interval=1)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    watch = sqlite3.connect(db, timeout=30.0)
    total = len(objs)
    while True:
        (open_,) = watch.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('pending', 'running')").fetchone()
        if open_ == 0:
            break
        if clock() - t0 > cap:
            worker.stop()
            (done,) = watch.execute("SELECT COUNT(*) FROM jobs WHERE status = 'completed'").fetchone()
            return {"capped": True, "cap": cap, "done": done, "total": total}
        time.sleep(0.02)
    worker.stop()
    thread.join()
    seconds = clock() - t0
    rows = dict(watch.execute("SELECT id, status FROM jobs").fetchall())
    bad = [s for s in rows.values() if s != "completed"]
    assert not bad, f"{len(bad)} GigQ jobs did not complete: {sorted(set(bad))}"
    res = {i: json.loads(watch.execute("SELECT result FROM jobs WHERE id = ?", (j.id,)).fetchone()[0] or "null")
           for i, j in enumerate(objs) if case in ("b", "c") and i >= total - 1}
    expected(case, a, res)
    return {"seconds": seconds}


# -- concurrent.futures.ProcessPoolExecutor(2), calls submitted one by one -------------------------


def run_ppe(case: str, a: Dict[str, Any], tmp: str) -> Dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor

    n = a.get("n")
    lv = levels(graph("e", a)) if case == "e" else None
    t0 = clock()
    with ProcessPoolExecutor(2) as ex:
        if case == "a":
            futs = [ex.submit(jobs.noop) for _ in range(n)]
            for f in futs:
                f.result()
        elif case == "b":  # phase by phase: head, n items given the head's result, sink given theirs
            head = ex.submit(jobs.one).result()
            futs = [ex.submit(jobs.fan_item_plain, i, head) for i in range(n)]
            total = ex.submit(jobs.fan_sum_plain, [f.result() for f in futs]).result()
            assert total == n * (n - 1) // 2
        elif case == "c":  # each hop waits for the previous one
            v = None
            for i in range(n):
                v = ex.submit(jobs.hop, i).result()
            assert v == n - 1
        elif case == "d":
            futs = [ex.submit(jobs.spin, a["spin"]) for _ in range(n)]
            for f in futs:
                f.result()
        elif case == "e":  # topological level by level
            for level in lv:
                futs = [ex.submit(jobs.noop) for _ in level]
                for f in futs:
                    f.result()
        elif case == "g":  # the array comes back from one call and goes to 4 calls
            arr = ex.submit(jobs.make_array, a["mb"]).result()
            futs = [ex.submit(jobs.read_array_plain, arr) for _ in range(4)]
            want = float(arr.size)
            for f in futs:
                assert f.result() == want
        else:
            raise ValueError(case)
    return {"seconds": clock() - t0}


# -- joblib.Parallel(n_jobs=2) -------------------------------------------------------------------


def run_joblib(case: str, a: Dict[str, Any], tmp: str) -> Dict[str, Any]:
    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor

    n = a["n"]
    t0 = clock()
    if case == "a":
        Parallel(n_jobs=2)(delayed(jobs.noop)() for _ in range(n))
    elif case == "d":
        Parallel(n_jobs=2)(delayed(jobs.spin)(a["spin"]) for _ in range(n))
    else:
        raise ValueError(case)
    get_reusable_executor(max_workers=2).shutdown(wait=True)  # loky keeps its pool; shut it, as for the others
    return {"seconds": clock() - t0}


# -- serial, one process -------------------------------------------------------------------------


def run_serial(case: str, a: Dict[str, Any], tmp: str) -> Dict[str, Any]:
    assert case == "d"
    t0 = clock()
    for _ in range(a["n"]):
        jobs.spin(a["spin"])
    return {"seconds": clock() - t0}


TOOLS: Dict[str, Callable[[str, Dict[str, Any], str], Dict[str, Any]]] = {
    "gigq_mp": run_gigq_mp,
    "gigq": run_gigq,
    "ppe": run_ppe,
    "joblib": run_joblib,
    "serial": run_serial,
}


def main() -> None:
    case, tool, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    tmp = tempfile.mkdtemp(prefix=f"bench-{case}-{tool}-")
    try:
        result = TOOLS[tool](case, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    if result.get("capped"):
        os._exit(0)  # GigQ threads may be inside a job: do not wait for them


if __name__ == "__main__":
    main()
