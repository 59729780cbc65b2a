"""Workflows doc, "Passing Results Between Steps": two fetches -> summarize.

summarize receives parent_results, a dict {parent job id: parent result}
in the order of its dependencies.
"""
from gigq_mp import Workflow, JobQueue, task


@task()
def fetch(url):
    return {"url": url, "data": 1}  # example payload


@task()
def summarize(parent_results):
    # Values from all parent jobs, keyed by parent job id
    payloads = list(parent_results.values())
    return {"summary": len(payloads)}


wf = Workflow("pipeline")
job1 = wf.add_task(fetch, params={"url": "https://a.example"})
job2 = wf.add_task(fetch, params={"url": "https://b.example"})
job3 = wf.add_task(summarize, depends_on=[job1, job2])

# --- run it (not part of the document) -------------------------------------
import os
import tempfile

with tempfile.TemporaryDirectory() as tmp:
    queue = JobQueue(os.path.join(tmp, "workflow_jobs.db"))
    results = wf.run(queue, workers=2)
    print(f"fetch a.example   -> {results[job1.id]}")
    print(f"fetch b.example   -> {results[job2.id]}")
    print(f"summarize         -> {results[job3.id]}")
    queue.close()
