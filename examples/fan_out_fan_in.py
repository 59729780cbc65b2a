"""Workflows doc, "Fan-Out Pattern" + "Fan-In Pattern": the diamond.

split_data -> 5 x process_chunk (in parallel) -> combine.
"""
from gigq_mp import Workflow, task


@task()
def split_data():
    return {"chunks": 5}


@task()
def process_chunk(chunk_id, parent_results):
    source = next(iter(parent_results.values()))
    return {"chunk_id": chunk_id, "total": source["chunks"]}


wf = Workflow("fan_out")
split = wf.add_task(split_data)
chunks = []
for i in range(5):
    chunk = wf.add_task(process_chunk, params={"chunk_id": i}, depends_on=[split])
    chunks.append(chunk)


# Fan-in


@task()
def combine(parent_results):
    results = list(parent_results.values())
    return {"total_chunks": len(results)}


# Continues from fan-out above
wf.add_task(combine, depends_on=chunks)

# --- run it (not part of the document) -------------------------------------
import os
import tempfile

from gigq_mp import JobQueue

with tempfile.TemporaryDirectory() as tmp:
    queue = JobQueue(os.path.join(tmp, "workflow_jobs.db"))
    results = wf.run(queue, workers=2)
    for job in wf.jobs:
        print(f"{job.name}: {results[job.id]}")
    queue.close()
