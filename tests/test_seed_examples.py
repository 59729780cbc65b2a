"""Every example of seed/workflows-doc.txt, with gigq_mp imports, run for real
and its results checked exactly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from gigq_mp import JobQueue, Worker, Workflow, task
from gigq_mp.errors import WorkflowFailed

from .util import WorkerThread, subprocess_env, wait_terminal


def _pipeline_tasks():
    # "Creating a Workflow"
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

    return download, process, analyze


def test_creating_a_workflow(db_path):
    download, process, analyze = _pipeline_tasks()
    wf = Workflow("data_processing_pipeline")
    step1 = wf.add_task(download, params={"url": "https://example.com/data.csv"})
    step2 = wf.add_task(process, depends_on=[step1])
    step3 = wf.add_task(analyze, depends_on=[step2])

    assert step2.dependencies == [step1.id]
    assert step3.dependencies == [step2.id]
    assert [j.id for j in wf.jobs] == [step1.id, step2.id, step3.id]
    assert set(wf.job_map) == {step1.id, step2.id, step3.id}

    queue = JobQueue(db_path)
    results = wf.run(queue, workers=2)
    assert results == {
        step1.id: {"file": "data.csv", "rows": 1000},
        step2.id: {"processed": "data.csv", "rows": 1000},
        step3.id: {"analysis": "Processed 1000 rows"},
    }
    for job in (step1, step2, step3):
        assert queue.get_status(job.id)["status"] == "completed"
    assert queue.get_result(step3.id) == {"analysis": "Processed 1000 rows"}
    queue.close()


def test_passing_results_between_steps(db_path):
    @task()
    def fetch(url):
        return {"url": url, "data": 1}  # example payload

    @task()
    def summarize(parent_results):
        payloads = list(parent_results.values())
        return {"summary": len(payloads)}

    wf = Workflow("pipeline")
    job1 = wf.add_task(fetch, params={"url": "https://a.example"})
    job2 = wf.add_task(fetch, params={"url": "https://b.example"})
    job3 = wf.add_task(summarize, depends_on=[job1, job2])

    queue = JobQueue(db_path)
    results = wf.run(queue, workers=2)
    assert results == {
        job1.id: {"url": "https://a.example", "data": 1},
        job2.id: {"url": "https://b.example", "data": 1},
        job3.id: {"summary": 2},
    }
    queue.close()


def test_auto_vs_explicit_pass_parent_results_false(db_path):
    """'Set pass_parent_results=False on Workflow.add_task() to disable injection.'"""

    @task()
    def fetch(url):
        return {"url": url, "data": 1}

    @task()
    def count(parent_results=None):
        return "not injected" if parent_results is None else len(parent_results)

    wf = Workflow("explicit")
    a = wf.add_task(fetch, params={"url": "https://a.example"})
    off = wf.add_task(count, depends_on=[a], pass_parent_results=False)
    auto = wf.add_task(count, depends_on=[a])
    queue = JobQueue(db_path)
    results = wf.run(queue, workers=2)
    assert results[off.id] == "not injected"
    assert results[auto.id] == 1
    queue.close()


def _fan_out():
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
    return wf, split, chunks


def test_fan_out(db_path):
    wf, split, chunks = _fan_out()
    queue = JobQueue(db_path)
    results = wf.run(queue, workers=2)
    expected = {split.id: {"chunks": 5}}
    for i, chunk in enumerate(chunks):
        expected[chunk.id] = {"chunk_id": i, "total": 5}
    assert results == expected
    queue.close()


def test_fan_in_diamond(db_path):
    wf, split, chunks = _fan_out()

    @task()
    def combine(parent_results):
        results = list(parent_results.values())
        return {"total_chunks": len(results)}

    final = wf.add_task(combine, depends_on=chunks)
    assert final.dependencies == [c.id for c in chunks]

    queue = JobQueue(db_path)
    results = wf.run(queue, workers=2)
    assert len(results) == 7
    assert results[final.id] == {"total_chunks": 5}
    assert [results[c.id] for c in chunks] == [
        {"chunk_id": i, "total": 5} for i in range(5)
    ]
    queue.close()


def test_multiple_dependencies_as_written(db_path):
    """The seed's multi_dep example passes {"input": ...} to process/analyze,
    which only take parent_results and have no parents: each call raises
    TypeError, so both fail (after their 3 default attempts) and
    generate_report is cancelled naming its upstream job, and run() reports
    all three."""
    _, process, analyze = _pipeline_tasks()

    @task()
    def generate_report(parent_results):
        return {"report": "done"}

    wf = Workflow("multi_dep")
    step_a = wf.add_task(process, params={"input": "a"})
    step_b = wf.add_task(analyze, params={"input": "b"})
    report = wf.add_task(generate_report, depends_on=[step_a, step_b])
    assert report.dependencies == [step_a.id, step_b.id]

    queue = JobQueue(db_path)
    with pytest.raises(WorkflowFailed) as excinfo:
        wf.run(queue, workers=2)
    exc = excinfo.value
    assert exc.results == {}
    assert set(exc.failures) == {step_a.id, step_b.id, report.id}
    assert exc.failures[step_a.id]["status"] == "failed"
    assert exc.failures[step_a.id]["name"] == "process"
    assert "TypeError" in exc.failures[step_a.id]["error"]
    assert exc.failures[step_b.id]["status"] == "failed"
    assert exc.failures[report.id]["status"] == "cancelled"
    assert "upstream job" in exc.failures[report.id]["error"]
    message = str(exc)
    for name in ("process", "analyze", "generate_report"):
        assert name in message
    assert queue.get_status(step_a.id)["attempts"] == 3
    assert len(queue.get_status(step_a.id)["executions"]) == 3
    queue.close()


def test_multiple_dependencies_with_working_parents(db_path):
    """The same graph shape with parents that accept their params."""

    @task()
    def process(input):
        return {"processed": input}

    @task()
    def analyze(input):
        return {"analyzed": input}

    @task()
    def generate_report(parent_results):
        return {"report": "done", "parents": list(parent_results.values())}

    wf = Workflow("multi_dep")
    step_a = wf.add_task(process, params={"input": "a"})
    step_b = wf.add_task(analyze, params={"input": "b"})
    report = wf.add_task(generate_report, depends_on=[step_a, step_b])
    queue = JobQueue(db_path)
    results = wf.run(queue, workers=2)
    assert results[report.id] == {
        "report": "done",
        "parents": [{"processed": "a"}, {"analyzed": "b"}],
    }
    queue.close()


@pytest.mark.timeout(60)
def test_submitting_and_monitoring_with_a_worker(db_path, capsys):
    """'Submitting a Workflow' + 'Monitoring Workflow Progress': submit_all,
    then a Worker (in a background thread) processes in dependency order."""
    download, process, analyze = _pipeline_tasks()
    wf = Workflow("data_processing_pipeline")
    step1 = wf.add_task(download, params={"url": "https://example.com/data.csv"})
    step2 = wf.add_task(process, depends_on=[step1])
    step3 = wf.add_task(analyze, depends_on=[step2])

    queue = JobQueue(db_path)
    job_ids = wf.submit_all(queue)
    print(f"Submitted {len(job_ids)} jobs")
    assert job_ids == [step1.id, step2.id, step3.id]

    def check_workflow_status(queue, job_ids):
        for job_id in job_ids:
            status = queue.get_status(job_id)
            print(f"{status['name']}: {status['status']}")

    check_workflow_status(queue, job_ids)
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "Submitted 3 jobs",
        "download: pending",
        "process: pending",
        "analyze: pending",
    ]

    with WorkerThread(Worker(db_path, concurrency=2, polling_interval=0.1)):
        wait_terminal(queue, job_ids, timeout=30)

    check_workflow_status(queue, job_ids)
    assert capsys.readouterr().out.splitlines() == [
        "download: completed",
        "process: completed",
        "analyze: completed",
    ]
    assert queue.get_result(step3.id) == {"analysis": "Processed 1000 rows"}
    # Dependency order: each job started after its parent completed.
    s1, s2, s3 = (queue.get_status(i) for i in job_ids)
    assert s1["completed_at"] <= s2["started_at"]
    assert s2["completed_at"] <= s3["started_at"]
    queue.close()


SEED_SCRIPT = '''
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

from gigq_mp import Workflow, JobQueue, task

@task()
def fetch(url):
    return {"url": url, "data": 1} # example payload

@task()
def summarize(parent_results):
    # Values from all parent jobs, keyed by parent job id
    payloads = list(parent_results.values())
    return {"summary": len(payloads)}

wf = Workflow("pipeline")
job1 = wf.add_task(fetch, params={"url": "https://a.example"})
job2 = wf.add_task(fetch, params={"url": "https://b.example"})
job3 = wf.add_task(summarize, depends_on=[job1, job2])

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

@task()
def combine(parent_results):
    results = list(parent_results.values())
    return {"total_chunks": len(results)}

# Continues from fan-out above
wf.add_task(combine, depends_on=chunks)

@task()
def generate_report(parent_results):
    # Receives results from both process and analyze steps
    return {"report": "done"}

wf = Workflow("multi_dep")
step_a = wf.add_task(process, params={"input": "a"})
step_b = wf.add_task(analyze, params={"input": "b"})
wf.add_task(generate_report, depends_on=[step_a, step_b])

from gigq_mp import JobQueue

queue = JobQueue("workflow_jobs.db")
job_ids = wf.submit_all(queue)
print(f"Submitted {len(job_ids)} jobs")

def check_workflow_status(queue, job_ids):
    for job_id in job_ids:
        status = queue.get_status(job_id)
        print(f"{status['name']}: {status['status']}")

check_workflow_status(queue, job_ids)
'''


@pytest.mark.timeout(60)
def test_seed_document_runs_as_a_script(tmp_path):
    """The seed's code, top to bottom, as one script without a __main__ guard."""
    script = tmp_path / "seed_examples.py"
    script.write_text(textwrap.dedent(SEED_SCRIPT))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "Submitted 3 jobs",
        "process: pending",
        "analyze: pending",
        "generate_report: pending",
    ]
    assert (tmp_path / "workflow_jobs.db").exists()
    queue = JobQueue(str(tmp_path / "workflow_jobs.db"))
    assert queue.stats()["pending"] == 3
    assert queue.stats()["total"] == 3
    queue.close()
