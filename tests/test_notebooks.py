"""Notebooks executed in a real Jupyter kernel (nbclient + ipykernel): the example,
editing a function and running again, and interrupting a running wf.run."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
np = pytest.importorskip("numpy")

from .util import subprocess_env  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(os.path.dirname(HERE), "examples", "pipeline.ipynb")


def notebook(*sources):
    from nbformat.v4 import new_code_cell, new_notebook

    return new_notebook(
        cells=[new_code_cell(s) for s in sources],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )


def client_for(nb, tmp_path, **options):
    return nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}, **options
    )


def text_of(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


@pytest.fixture(autouse=True)
def kernel_imports_this_checkout(monkeypatch):
    # The kernel is a child process: give it the same import path as the tests.
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])


def test_the_example_notebook_runs_top_to_bottom_with_its_results(tmp_path):
    nb = nbformat.read(EXAMPLE, as_version=4)
    client_for(nb, tmp_path).execute()
    printed = [text_of(c) for c in nb.cells if c.cell_type == "code" and text_of(c)]
    expected_total = sum(np.random.default_rng(seed).random(1000).sum() for seed in range(4))
    assert printed == [f"[49, 42, 15]\n{round(float(expected_total), 6)}\n"]
    picture = nb.cells[-1]["outputs"][0]["data"]["text/markdown"]
    assert picture.startswith("```mermaid\ngraph TD") and picture.count(": completed") == 8
    progress = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "display_data"]
    assert any("8/8 done" in o["data"].get("text/html", "") for o in progress)


def test_editing_a_function_reruns_it_and_reuses_the_rest(tmp_path):
    db = str(tmp_path / "nb.db")
    build = (
        "def pipeline():\n"
        "    wf = Workflow('edit')\n"
        "    a = wf.add_job(Job('base', base, params={'x': 4}))\n"
        "    b = wf.add_job(Job('step', step), depends_on=[a])\n"
        "    return wf, b\n"
    )
    nb = notebook(
        f"from gigq_mp import Job, JobQueue, Workflow\nqueue = JobQueue({db!r})",
        "def base(x):\n    return x * 10\n\ndef step(parent_results):\n    return sum(parent_results.values()) + 1",
        build,
        "wf, last = pipeline()\nprint(wf.run(queue, workers=2, progress=False)[last.id], wf.last_run['reused'])",
        "def step(parent_results):\n    return sum(parent_results.values()) + 2",
        "wf, last = pipeline()\nprint(wf.run(queue, workers=2, progress=False)[last.id], wf.last_run['reused'])",
    )
    client_for(nb, tmp_path).execute()
    assert text_of(nb.cells[3]) == "41 0\n"
    assert text_of(nb.cells[5]) == "42 1\n"  # the new body ran; `base` was reused


def test_interrupting_a_running_workflow_leaves_nothing_behind(tmp_path):
    db, flag = str(tmp_path / "nb.db"), str(tmp_path / "flag")
    nb = notebook(
        "import os, time, psutil\nfrom gigq_mp import Job, JobQueue, Workflow\n"
        f"queue = JobQueue({db!r})\n"
        "def waits(flag):\n"
        "    deadline = time.monotonic() + 60\n"
        "    while not os.path.exists(flag) and time.monotonic() < deadline:\n"
        "        time.sleep(0.05)\n"
        "    return 'done'\n"
        "wf = Workflow('interrupted')\n"
        f"jobs = [wf.add_job(Job(f'w{{i}}', waits, params={{'flag': {flag!r}}})) for i in range(2)]",
        "print('started', flush=True)\nwf.run(queue, workers=2, progress=False)",
        "print(queue.stats()['running'], len(psutil.Process().children(recursive=True)))",
        f"open({flag!r}, 'w').close()\nprint(sorted(wf.run(queue, workers=2, progress=False).values()))",
    )
    client = client_for(nb, tmp_path, allow_errors=True)
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        kernel_pid = client.km.provisioner.process.pid
        timer = threading.Timer(3.0, os.kill, args=(kernel_pid, signal.SIGINT))  # Jupyter's "interrupt"
        timer.start()
        started = time.monotonic()
        client.execute_cell(nb.cells[1], 1)
        took = time.monotonic() - started
        timer.cancel()
        for index in (2, 3):
            client.execute_cell(nb.cells[index], index)
    errors = [o for o in nb.cells[1]["outputs"] if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "KeyboardInterrupt", nb.cells[1]["outputs"]
    assert took < 3.0 + 5.0 + 5.0  # the default grace period, then killed
    assert text_of(nb.cells[2]) == "0 0\n"  # no job left running, no worker process left
    assert text_of(nb.cells[3]) == "['done', 'done']\n"
