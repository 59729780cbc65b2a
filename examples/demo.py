"""gigq_mp demo: a CPU-bound fan-out/fan-in pipeline, parallel vs serial.

    split -> 16 x estimate_chunk (pure-Python Monte Carlo, ~0.3 s each) -> combine

The pipeline runs on the embedded SQLite store (a db file in a temporary
directory) with one worker process per core; then the very same functions run
one after another in this process, and the two wall times are compared.
Like the GigQ documentation's examples, this script has no
`if __name__ == "__main__":` guard: gigq_mp's workers never re-run it.
"""
import math
import os
import random
import tempfile
import time

from gigq_mp import JobQueue, Workflow, task

CHUNKS = 16
SAMPLES_PER_CHUNK = 2_500_000  # ~0.25-0.4 s of pure-Python work per chunk


@task()
def split(chunks, samples_per_chunk, seed):
    return {"chunks": chunks, "samples_per_chunk": samples_per_chunk, "seed": seed}


@task()
def estimate_chunk(chunk_id, parent_results):
    plan = next(iter(parent_results.values()))
    rng = random.Random(plan["seed"] + chunk_id)
    rand = rng.random
    inside = 0
    for _ in range(plan["samples_per_chunk"]):
        x = rand()
        y = rand()
        if x * x + y * y <= 1.0:
            inside += 1
    return {"chunk_id": chunk_id, "inside": inside, "samples": plan["samples_per_chunk"]}


@task()
def combine(parent_results):
    parts = list(parent_results.values())
    inside = sum(p["inside"] for p in parts)
    samples = sum(p["samples"] for p in parts)
    return {"chunks": len(parts), "samples": samples, "pi": 4.0 * inside / samples}


plan_params = {"chunks": CHUNKS, "samples_per_chunk": SAMPLES_PER_CHUNK, "seed": 2024}

wf = Workflow("monte_carlo_pi")
plan_job = wf.add_task(split, params=plan_params)
chunk_jobs = [
    wf.add_task(estimate_chunk, params={"chunk_id": i}, depends_on=[plan_job])
    for i in range(CHUNKS)
]
final_job = wf.add_task(combine, depends_on=chunk_jobs)

workers = os.cpu_count() or 1
print(f"gigq_mp demo: {len(wf.jobs)} jobs (split -> {CHUNKS} CPU-bound chunks -> combine), "
      f"{workers} worker processes")

# Parallel: gigq_mp, SQLite store in a temporary directory.
with tempfile.TemporaryDirectory() as tmp:
    queue = JobQueue(os.path.join(tmp, "demo.db"))
    t0 = time.perf_counter()
    results = wf.run(queue, workers=workers)
    parallel_s = time.perf_counter() - t0
    queue.close()
parallel = results[final_job.id]

# Serial: the same functions, one after another, in this process.
t0 = time.perf_counter()
plan = split(**plan_params)
parts = {i: estimate_chunk(i, parent_results={"split": plan}) for i in range(CHUNKS)}
serial = combine(parent_results=parts)
serial_s = time.perf_counter() - t0

assert parallel == serial, (parallel, serial)
print(f"result:   pi ~= {parallel['pi']:.5f} from {parallel['samples']:,} samples "
      f"in {parallel['chunks']} chunks (error {abs(parallel['pi'] - math.pi):.1e}); "
      f"serial result identical")
print(f"parallel: {parallel_s:6.2f} s  (gigq_mp, workers={workers})")
print(f"serial:   {serial_s:6.2f} s  (same functions, one process)")
print(f"speed-up: {serial_s / parallel_s:6.2f}x")
