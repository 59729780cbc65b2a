"""Workflows doc, "Multiple Dependencies": process + analyze -> generate_report.

The document reuses `process` and `analyze` from "Creating a Workflow", but
there they are `def process(parent_results)` / `def analyze(parent_results)`.
Here they are added with params={"input": ...} and no dependencies, so the
worker would call process(input="a") (no parent_results is injected for a job
without dependencies, as in GigQ 0.5), and the document's functions would fail
with "TypeError: process() got an unexpected keyword argument 'input'" (they
fail the same way under GigQ 0.5). So this file defines variants that take
`input` and an optional `parent_results`, keeping their bodies' spirit.
"""
from gigq_mp import Workflow, task


# Variants of the doc's process/analyze (see the module docstring).
@task()
def process(input, parent_results=None):
    return {"processed": input}


@task()
def analyze(input, parent_results=None):
    return {"analysis": f"Analyzed {input}"}


# From here on, exactly as in the document.
@task()
def generate_report(parent_results):
    # Receives results from both process and analyze steps
    return {"report": "done"}


wf = Workflow("multi_dep")
step_a = wf.add_task(process, params={"input": "a"})
step_b = wf.add_task(analyze, params={"input": "b"})
wf.add_task(generate_report, depends_on=[step_a, step_b])

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
