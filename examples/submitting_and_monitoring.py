"""Workflows doc, "Submitting a Workflow" + "Monitoring Workflow Progress".

The workflow is the one of "Creating a Workflow". It is submitted with
wf.submit_all(queue) as in the document, then run (Workflow.run does not
submit it a second time), then check_workflow_status prints each job's status.
The document opens JobQueue("workflow_jobs.db") in the current directory;
here that file lives in a temporary directory so the example leaves nothing
behind.
"""
import os
import tempfile

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


# Monitoring Workflow Progress (as in the document)
def check_workflow_status(queue, job_ids):
    for job_id in job_ids:
        status = queue.get_status(job_id)
        print(f"{status['name']}: {status['status']}")


here = os.getcwd()
tmp = tempfile.TemporaryDirectory()
os.chdir(tmp.name)  # so "workflow_jobs.db" below lands in the temp directory

# Submitting a Workflow (as in the document)
from gigq_mp import JobQueue

queue = JobQueue("workflow_jobs.db")
job_ids = wf.submit_all(queue)
print(f"Submitted {len(job_ids)} jobs")

print("Before running:")
check_workflow_status(queue, job_ids)

# Workers process jobs in dependency order automatically.
results = wf.run(queue, workers=2)

print("After running:")
check_workflow_status(queue, job_ids)
print(f"Final result: {results[job_ids[-1]]}")

queue.close()
os.chdir(here)
tmp.cleanup()
