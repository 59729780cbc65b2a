"""Workflows doc, "Creating a Workflow": download -> process -> analyze.

The workflow is written exactly as in the document (with gigq_mp imports);
the lines after the marker run it so you can see the results.
"""
from gigq_mp import Workflow, task


@task()
def download(url):
    return {"file": "data.csv", "rows": 1000}


@task()
def process(parent_results):
    data = next(iter(parent_results.values()))
    return {"processed": data["file"], "rows": data["rows"]}


@task()
def analyze(parent_results):
    data = next(iter(parent_results.values()))
    return {"analysis": f"Processed {data['rows']} rows"}


wf = Workflow("data_processing_pipeline")
step1 = wf.add_task(download, params={"url": "https://example.com/data.csv"})
step2 = wf.add_task(process, depends_on=[step1])
wf.add_task(analyze, depends_on=[step2])

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
