"""Issue 5: the `gigq-mp` command line, driven as a user would drive it.

Every test runs `python -m gigq_mp ...` in a subprocess with cwd=tmp_path (so
a relative `--db` and the default `gigq.db` land there) and checks exit
statuses, GigQ's plain-text layout, `--json`, and the one-line errors of bad
input. `run` is driven on pipeline files written into tmp_path whose functions
append one line per execution to a log file, so a test counts which jobs ran.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from .jobs import read_lines
from .util import REPO_ROOT, kill_pids, subprocess_env, wait_pids_gone, wait_until

ENV = subprocess_env()
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ANSI = "\x1b"


# --- helpers -----------------------------------------------------------------

def gmp(cwd, *args, db="q.db", timeout=60):
    """Run `python -m gigq_mp [--db DB] ARGS...` in ``cwd``; the CompletedProcess."""
    argv = [sys.executable, "-m", "gigq_mp"]
    if db is not None:
        argv += ["--db", str(db)]
    argv += [str(a) for a in args]
    return subprocess.run(
        argv, cwd=str(cwd), env=ENV, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout,
    )


def show(proc):
    return (
        f"argv={proc.args[3:]!r} rc={proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    )


def ok(proc):
    assert proc.returncode == 0, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    return proc


def user_error(proc, code=1):
    """Exit ``code``, no traceback; for exit 1 exactly one stderr line 'gigq-mp: error: ...'."""
    assert proc.returncode == code, show(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, show(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, f"no error message on stderr\n{show(proc)}"
    if code == 1:
        assert len(lines) == 1, f"expected one stderr line\n{show(proc)}"
        assert lines[0].startswith("gigq-mp: error: "), show(proc)
    else:  # argparse-style usage error: usage lines, then the error line
        assert "error" in lines[-1], show(proc)
    return lines[-1]


def submit(cwd, function, name, *extra, db="q.db"):
    proc = ok(gmp(cwd, "submit", function, "--name", name, *extra, db=db))
    m = re.search(rf"^Job submitted: ({UUID})$", proc.stdout, re.M)
    assert m, show(proc)
    return m.group(1)


def status_json(cwd, job_id, db="q.db"):
    proc = ok(gmp(cwd, "status", job_id, "--json", db=db))
    return json.loads(proc.stdout)


def list_json(cwd, *extra, db="q.db"):
    return json.loads(ok(gmp(cwd, "list", "--json", *extra, db=db)).stdout)


def table_rows(text):
    """Rows of a boxed table as lists of stripped cells (header row first).

    Also checks the box: every +---+ and | row line has the same width."""
    lines = [line for line in text.splitlines() if line.startswith(("+", "|"))]
    assert lines, f"no boxed table in:\n{text}"
    assert lines[0].startswith("+-") and lines[-1].startswith("+-"), text
    widths = {len(line.rstrip()) for line in lines}
    assert len(widths) == 1, f"table lines are not aligned:\n{text}"
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in lines if line.startswith("|")]


def summary_counts(out):
    """(total, ran, reused) from the run summary 'N jobs: X ran, Y reused ...'."""
    m = re.search(r"(\d+) jobs?: (\d+) ran, (\d+) reused", out)
    assert m, f"no 'N jobs: X ran, Y reused' summary in:\n{out}"
    return tuple(int(g) for g in m.groups())


def counts(log):
    return collections.Counter(read_lines(log))


def sections(text):
    """{'stdout': ..., 'stderr': ..., 'error': ...} from `logs` output headed '--- NAME ---'."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^--- (\w+) ---$", line.strip())
        if m:
            current = m.group(1)
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


# A five-job pipeline: a -> b -> c, a -> d, and e alone. Every function logs its
# name once per execution. Placeholders never change the number of lines, so
# editing one function leaves the others' code (line numbers included) alone.
PIPELINE = '''\
import os
from gigq_mp import Workflow, task

LOG = {log!r}


def _log(tag):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (tag + "\\n").encode())
    finally:
        os.close(fd)


@task
def a(n):
    _log("a")
    return n + {a_add}


@task
def b(parent_results):
    _log("b")
    return sum(parent_results.values()) * {b_mul}


@task
def c(parent_results):
    _log("c")
    return sum(parent_results.values()) + 1


@task
def d(parent_results, k):
    _log("d")
    return sum(parent_results.values()) + k


@task
def e(m):
    _log("e")
    return m


wf = Workflow("pipe")
ja = wf.add_task(a, params={{"n": {n}}})
jb = wf.add_task(b, depends_on=[ja])
jc = wf.add_task(c, depends_on=[jb])
jd = wf.add_task(d, params={{"k": {k}}}, depends_on=[ja])
je = wf.add_task(e, params={{"m": 1}})

if __name__ == "__main__":
    _log("MAIN")
'''
PIPELINE_EDGES = {("a", "b"), ("b", "c"), ("a", "d")}
PIPELINE_NAMES = {"a", "b", "c", "d", "e"}


def write_pipeline(tmp_path, name="pipe.py", a_add=0, b_mul=2, n=1, k=10):
    log = tmp_path / "runs.log"
    (tmp_path / name).write_text(PIPELINE.format(log=str(log), a_add=a_add, b_mul=b_mul, n=n, k=k))
    return log


def dry_run_plan(out):
    """{name: 'run' | 'skip'} from the `run --dry-run` lines."""
    plan = {}
    for line in out.splitlines():
        m = re.match(r"^\s*(run|skip) (\w+)\b(.*)$", line)
        if m:
            plan[m.group(2)] = m.group(1)
    return plan


NODE = re.compile(r'^\s+(j\d+)\["(\w+): ([\w ]+)"\]$')
EDGE = re.compile(r"^\s+(j\d+) --> (j\d+)$")


def parse_mermaid(text):
    """({name: status}, {(parent_name, child_name)}) from Mermaid text; checks every line."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and lines[0] == "graph TD", f"first line is not 'graph TD':\n{text}"
    nodes, edges = {}, []
    for line in lines[1:]:
        if m := NODE.match(line):
            assert m.group(1) not in nodes, f"node {m.group(1)} twice:\n{text}"
            nodes[m.group(1)] = (m.group(2), m.group(3))
        elif m := EDGE.match(line):
            edges.append((m.group(1), m.group(2)))
        else:
            raise AssertionError(f"not a Mermaid node or edge line: {line!r}\n{text}")
    for src, dst in edges:
        assert src in nodes and dst in nodes, f"edge {src} --> {dst} to an unknown node:\n{text}"
    names = [name for name, _ in nodes.values()]
    assert len(names) == len(set(names)), f"one node per job expected:\n{text}"
    by_name = {name: status for name, status in nodes.values()}
    named_edges = {(nodes[s][0], nodes[d][0]) for s, d in edges}
    assert len(named_edges) == len(edges), f"duplicate edges:\n{text}"
    return by_name, named_edges


def descendants(pid):
    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


# --- entry points --------------------------------------------------------------

@pytest.mark.timeout(30)
def test_help_lists_every_command_and_console_script_is_declared(tmp_path):
    proc = ok(gmp(tmp_path, "--help", db=None))
    for command in ("submit", "status", "list", "stats", "cancel", "requeue", "clear",
                    "worker", "run", "logs", "graph"):
        assert re.search(rf"\b{command}\b", proc.stdout), f"{command} missing from --help\n{proc.stdout}"
    with open(os.path.join(REPO_ROOT, "pyproject.toml")) as f:
        pyproject = f.read()
    assert re.search(r'^\[project\.scripts\]\s*\n(?:.*\n)*?gigq-mp\s*=\s*"gigq_mp\.cli:(main|entry_point)"',
                     pyproject, re.M), "pyproject.toml does not declare the gigq-mp console script"
    if shutil.which("gigq-mp"):  # installed with pip install -e .
        script = subprocess.run(["gigq-mp", "--db", "s.db", "submit", "tests.jobs.noop", "--name", "n"],
                                cwd=str(tmp_path), env=ENV, capture_output=True, text=True, timeout=30)
        assert script.returncode == 0 and "Job submitted:" in script.stdout, script.stderr


@pytest.mark.timeout(30)
def test_main_returns_exit_status_and_prints_to_stdout(tmp_path, capsys):
    from gigq_mp.cli import main

    db = str(tmp_path / "m.db")
    assert main(["--db", db, "submit", "tests.jobs.noop", "--name", "in-process"]) == 0
    assert re.search(rf"^Job submitted: {UUID}$", capsys.readouterr().out, re.M)
    assert main(["--db", db, "stats"]) == 0
    out = capsys.readouterr().out
    assert table_rows(out)[0] == ["Status", "Count"], out
    assert main(["--db", str(tmp_path / "absent.db"), "stats"]) == 1
    assert not (tmp_path / "absent.db").exists()


# --- submit / status ---------------------------------------------------------

@pytest.mark.timeout(40)
def test_submit_parses_params_as_json_or_strings(tmp_path):
    job_id = submit(
        tmp_path, "tests.jobs.echo_params", "params",
        "-p", "n=3", "-p", "f=2.5", "-p", "s=hello", "-p", "l=[1, 2]", "-p", "b=true",
        "-p", 'o={"k": "v"}', "-p", 'quoted="7"', "-p", "nothing=null", "-p", "eq=x=y",
        "-p", "path=/tmp/some file.txt",
        "--priority", "5", "--max-attempts", "2", "--timeout", "30",
        "--description", "a described job", "--retry-delay", "1",
    )
    expected = {"n": 3, "f": 2.5, "s": "hello", "l": [1, 2], "b": True, "o": {"k": "v"},
                "quoted": "7", "nothing": None, "eq": "x=y", "path": "/tmp/some file.txt"}

    st = status_json(tmp_path, job_id)
    assert st["id"] == job_id and st["name"] == "params" and st["status"] == "pending"
    assert st["params"] == expected
    assert (st["priority"], st["max_attempts"], st["timeout"]) == (5, 2, 30)
    assert st["description"] == "a described job"
    assert st["retry_delay"] == 1

    plain = ok(gmp(tmp_path, "status", job_id, "--show-params")).stdout
    lines = plain.splitlines()
    assert f"Job: params ({job_id})" in lines, plain
    assert "Status: pending" in lines, plain
    assert "Attempts: 0 / 2" in lines, plain
    assert "  n: 3" in lines and "  s: hello" in lines and "  eq: x=y" in lines, plain
    assert "  path: /tmp/some file.txt" in lines, plain

    # The job runs with those params.
    assert "Processed one job." in ok(gmp(tmp_path, "worker", "--once")).stdout
    st = status_json(tmp_path, job_id)
    assert st["status"] == "completed", st
    assert {k: v for k, v in st["result"].items() if k != "parent_results"} == expected, st


@pytest.mark.timeout(40)
def test_worker_once_then_status_result_and_executions(tmp_path):
    job_id = submit(tmp_path, "tests.jobs.identity", "ident", "-p", 'x={"total": 5, "label": "five"}')
    other = submit(tmp_path, "tests.jobs.add", "adder", "-p", "a=2", "-p", "b=3", "--priority", "-1")

    out = ok(gmp(tmp_path, "worker", "--once")).stdout
    assert "Processed one job." in out, out
    lines = ok(gmp(tmp_path, "status", job_id, "--show-result", "--show-executions")).stdout.splitlines()
    assert "Status: completed" in lines and "Attempts: 1 / 3" in lines, lines
    result_at = lines.index("Result:")
    assert "  total: 5" in lines[result_at + 1:result_at + 3], lines
    assert "  label: five" in lines[result_at + 1:result_at + 3], lines
    assert any(line.startswith("Executions") for line in lines), lines
    assert any("completed" in line for line in lines[lines.index("Result:"):]), lines

    ok(gmp(tmp_path, "worker", "--once"))
    lines = ok(gmp(tmp_path, "status", other, "--show-result")).stdout.splitlines()
    assert lines[lines.index("Result:") + 1] == "  5", lines

    out = ok(gmp(tmp_path, "worker", "--once")).stdout
    assert "No jobs available to process." in out, out


# --- list / stats / cancel / requeue / clear ----------------------------------

@pytest.mark.timeout(60)
def test_list_and_stats_tables_filters_and_json(tmp_path):
    done = submit(tmp_path, "tests.jobs.add", "done-job", "-p", "a=1", "-p", "b=2", "--priority", "10")
    fail = submit(tmp_path, "tests.jobs.raise_value_error", "fail-job", "-p", "message=boom here",
                  "--max-attempts", "1", "--priority", "5")
    gone = submit(tmp_path, "tests.jobs.noop", "cancel-job")
    wait = submit(tmp_path, "tests.jobs.noop", "pending-job", "--priority", "-5")

    assert ok(gmp(tmp_path, "cancel", gone)).stdout.strip() == f"Job {gone} cancelled."
    ok(gmp(tmp_path, "worker", "--once"))  # done-job (priority 10)
    ok(gmp(tmp_path, "worker", "--once"))  # fail-job (priority 5)

    lines = ok(gmp(tmp_path, "status", fail)).stdout.splitlines()
    assert "Status: failed" in lines, lines
    assert any(line.startswith("Error: ") and "boom here" in line for line in lines), lines

    # list: boxed table, every job, GigQ's headers.
    rows = table_rows(ok(gmp(tmp_path, "list")).stdout)
    assert rows[0] == ["ID", "Name", "Status", "Priority", "Created", "Updated"], rows
    by_name = {r[1]: r for r in rows[1:]}
    assert set(by_name) == {"done-job", "fail-job", "cancel-job", "pending-job"}, rows
    assert by_name["done-job"][2] == "completed" and by_name["done-job"][3] == "10"
    assert by_name["fail-job"][2] == "failed"
    assert by_name["cancel-job"][2] == "cancelled"
    assert by_name["pending-job"][2] == "pending" and by_name["pending-job"][3] == "-5"

    rows = table_rows(ok(gmp(tmp_path, "list", "--status", "failed")).stdout)
    assert [r[1] for r in rows[1:]] == ["fail-job"], rows
    assert len(table_rows(ok(gmp(tmp_path, "list", "--limit", "2")).stdout)) == 3
    assert "No jobs found." in ok(gmp(tmp_path, "list", "--status", "timeout")).stdout

    listed = list_json(tmp_path)
    assert [j["id"] for j in listed] == [wait, gone, fail, done], "list --json: newest first"
    assert {j["id"]: j["status"] for j in listed} == {
        done: "completed", fail: "failed", gone: "cancelled", wait: "pending"}
    assert [j["id"] for j in list_json(tmp_path, "--status", "completed")] == [done]
    assert len(list_json(tmp_path, "--limit", "1")) == 1

    # stats: table headed Status / Count, every status then total, counts that match.
    expected = {"pending": 1, "running": 0, "completed": 1, "failed": 1, "cancelled": 1,
                "timeout": 0, "total": 4}
    rows = table_rows(ok(gmp(tmp_path, "stats")).stdout)
    assert rows[0] == ["Status", "Count"], rows
    assert rows[-1][0] == "total", rows
    assert {r[0]: int(r[1]) for r in rows[1:]} == expected, rows
    assert len(rows) == 1 + len(expected), rows
    stats = json.loads(ok(gmp(tmp_path, "stats", "--json")).stdout)
    assert {k: stats[k] for k in expected} == expected, stats

    # requeue the failed job: pending again, attempts reset, error cleared.
    assert ok(gmp(tmp_path, "requeue", fail)).stdout.strip() == f"Job {fail} requeued."
    lines = ok(gmp(tmp_path, "status", fail)).stdout.splitlines()
    assert "Status: pending" in lines and "Attempts: 0 / 1" in lines, lines
    assert not any(line.startswith("Error:") for line in lines), lines
    assert json.loads(ok(gmp(tmp_path, "stats", "--json")).stdout)["pending"] == 2


@pytest.mark.timeout(40)
def test_cancel_requeue_exit_statuses(tmp_path):
    job_id = submit(tmp_path, "tests.jobs.noop", "n1")
    proc = ok(gmp(tmp_path, "cancel", job_id))
    assert proc.stdout.strip() == f"Job {job_id} cancelled."
    assert "Status: cancelled" in ok(gmp(tmp_path, "status", job_id)).stdout

    again = gmp(tmp_path, "cancel", job_id)  # not pending any more
    assert again.returncode == 1, show(again)
    assert "Traceback" not in again.stdout + again.stderr

    assert ok(gmp(tmp_path, "requeue", job_id)).stdout.strip() == f"Job {job_id} requeued."
    assert "Status: pending" in ok(gmp(tmp_path, "status", job_id)).stdout
    again = gmp(tmp_path, "requeue", job_id)  # pending: nothing to requeue
    assert again.returncode == 1, show(again)
    assert "Traceback" not in again.stdout + again.stderr

    ok(gmp(tmp_path, "worker", "--once"))
    done = gmp(tmp_path, "cancel", job_id)  # completed: cannot cancel
    assert done.returncode == 1, show(done)
    assert "Status: completed" in ok(gmp(tmp_path, "status", job_id)).stdout


@pytest.mark.timeout(40)
def test_clear_before_days(tmp_path):
    done = submit(tmp_path, "tests.jobs.noop", "done", "--priority", "1")
    cancelled = submit(tmp_path, "tests.jobs.noop", "cancelled")
    pending = submit(tmp_path, "tests.jobs.noop", "pending", "--priority", "-1")
    ok(gmp(tmp_path, "cancel", cancelled))
    assert "Processed one job." in ok(gmp(tmp_path, "worker", "--once")).stdout

    assert ok(gmp(tmp_path, "clear", "--before", "1")).stdout.strip() == "Cleared 0 completed jobs."
    assert len(list_json(tmp_path)) == 3
    assert ok(gmp(tmp_path, "clear")).stdout.strip() == "Cleared 2 completed jobs."
    assert [j["id"] for j in list_json(tmp_path)] == [pending]
    user_error(gmp(tmp_path, "status", done), 1)
    assert "Status: pending" in ok(gmp(tmp_path, "status", pending)).stdout


# --- worker in the background ----------------------------------------------------

@pytest.mark.timeout(60)
def test_worker_concurrency_two_in_background_then_sigterm(tmp_path):
    log = tmp_path / "work.log"
    for tag in ("s0", "s1"):
        submit(tmp_path, "tests.jobs.record_start_sleep_finish", tag,
               "-p", f"path={log}", "-p", f"tag={tag}", "-p", "seconds=1.0")
    out, err = open(tmp_path / "worker.out", "w"), open(tmp_path / "worker.err", "w")
    popen = subprocess.Popen(
        [sys.executable, "-m", "gigq_mp", "--db", "q.db", "worker", "--concurrency", "2",
         "--polling-interval", "1", "--quiet"],
        cwd=str(tmp_path), env=ENV, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
    )
    seen = set()

    def output():
        return (f"rc={popen.poll()}\nstdout:\n{(tmp_path / 'worker.out').read_text()}\n"
                f"stderr:\n{(tmp_path / 'worker.err').read_text()[-3000:]}\nlog:\n{read_lines(log)}")

    def done_count():
        seen.update(descendants(popen.pid))
        return sum(line.startswith("done ") for line in read_lines(log))

    try:
        wait_until(lambda: done_count() >= 2, 20, "both jobs to finish")
        # Two worker processes: both jobs ran at once, in different processes.
        lines = [line.split() for line in read_lines(log)]
        starts = {tag: (pid, float(t)) for kind, tag, pid, t in lines if kind == "start"}
        dones = {tag: float(t) for kind, tag, pid, t in lines if kind == "done"}
        assert starts["s0"][0] != starts["s1"][0], lines
        assert max(s for _, s in starts.values()) < min(dones.values()), f"jobs did not overlap: {lines}"

        # A job submitted while the worker runs is picked up.
        late = submit(tmp_path, "tests.jobs.record_start_sleep_finish", "late",
                      "-p", f"path={log}", "-p", "tag=late", "-p", "seconds=0.1")
        wait_until(lambda: done_count() >= 3, 20, "the job submitted later to finish")
        wait_until(lambda: status_json(tmp_path, late)["status"] == "completed", 20, "late completed")
        stats = json.loads(ok(gmp(tmp_path, "stats", "--json")).stdout)
        assert stats["completed"] == 3 and stats["total"] == 3, stats

        seen.update(descendants(popen.pid))
        assert popen.poll() is None, output()
        popen.send_signal(signal.SIGTERM)
        rc = popen.wait(timeout=20)
        assert rc == 0, f"worker exit status after SIGTERM: {rc}\n{output()}"
        assert "Traceback" not in (tmp_path / "worker.err").read_text(), output()
        assert wait_pids_gone(sorted(seen), timeout=5) == [], "worker processes survived SIGTERM"
    finally:
        if popen.poll() is None:
            seen.update(descendants(popen.pid))
            popen.kill()
        popen.wait()
        out.close()
        err.close()
        kill_pids(wait_pids_gone(sorted(seen), timeout=0.5))


# --- bad input -------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_unknown_job_id_is_one_line_exit_1(tmp_path):
    submit(tmp_path, "tests.jobs.noop", "exists")  # the database exists
    unknown = "00000000-0000-4000-8000-000000000000"
    for command in ("status", "logs", "cancel", "requeue"):
        line = user_error(gmp(tmp_path, command, unknown), 1)
        assert unknown in line, line


@pytest.mark.timeout(60)
def test_malformed_input_to_submit_and_list(tmp_path):
    submit(tmp_path, "tests.jobs.noop", "exists")
    user_error(gmp(tmp_path, "submit", "tests.jobs.add", "--name", "x", "-p", "a=1", "-p", "novalue"), 2)
    user_error(gmp(tmp_path, "list", "--status", "sleeping"), 2)
    user_error(gmp(tmp_path, "submit", "tests.jobs.noop"), 2)  # --name is required
    line = user_error(gmp(tmp_path, "submit", "no_such_module_xyz.func", "--name", "x"), 1)
    assert "no_such_module_xyz" in line, line
    line = user_error(gmp(tmp_path, "submit", "tests.jobs.no_such_function", "--name", "x"), 1)
    assert "no_such_function" in line, line
    stats = json.loads(ok(gmp(tmp_path, "stats", "--json")).stdout)
    assert stats["total"] == 1, f"a refused submit wrote a job: {stats}"


@pytest.mark.timeout(60)
def test_missing_database_is_not_created(tmp_path):
    for args in (("status", "00000000-0000-4000-8000-000000000000"), ("list",), ("stats",),
                 ("logs", "00000000-0000-4000-8000-000000000000"), ("graph",)):
        line = user_error(gmp(tmp_path, *args, db="absent.db"), 1)
        assert "absent.db" in line, line
        assert not (tmp_path / "absent.db").exists(), f"{args[0]} created the database"
    for args in (("stats",), ("list",)):  # the default gigq.db
        line = user_error(gmp(tmp_path, *args, db=None), 1)
        assert "gigq.db" in line, line
        assert not (tmp_path / "gigq.db").exists(), f"{args[0]} created gigq.db"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())


@pytest.mark.timeout(60)
def test_run_file_without_or_with_several_workflows(tmp_path):
    log = tmp_path / "runs.log"
    (tmp_path / "none.py").write_text("X = 1\n")
    line = user_error(gmp(tmp_path, "run", "none.py"), 1)
    assert "none.py" in line or "Workflow" in line, line

    missing = gmp(tmp_path, "run", "missing.py")
    assert missing.returncode in (1, 2), show(missing)
    assert "Traceback" not in missing.stderr and "missing.py" in missing.stderr, show(missing)

    (tmp_path / "two.py").write_text(textwrap.dedent(f'''\
        from gigq_mp import Workflow, task
        from tests.jobs import append_line

        @task
        def one():
            append_line({str(log)!r}, "one")

        @task
        def two():
            append_line({str(log)!r}, "two")

        wf_first = Workflow("first")
        wf_first.add_task(one)
        wf_second = Workflow("second")
        wf_second.add_task(two)
        '''))
    line = user_error(gmp(tmp_path, "run", "two.py"), 1)
    assert "--workflow" in line or ("first" in line and "second" in line), line
    assert read_lines(log) == []

    ok(gmp(tmp_path, "run", "two.py", "--workflow", "second", "-j", "1"))
    assert read_lines(log) == ["two"]
    ok(gmp(tmp_path, "run", "two.py", "--workflow", "wf_first", "-j", "1"))  # by variable name
    assert read_lines(log) == ["two", "one"]
    user_error(gmp(tmp_path, "run", "two.py", "--workflow", "third"), 1)


# --- run and resume ----------------------------------------------------------------

@pytest.mark.timeout(60)
def test_run_twice_second_run_executes_nothing(tmp_path):
    log = write_pipeline(tmp_path)
    first = ok(gmp(tmp_path, "run", "pipe.py", "-j", "2", db=None))
    assert (tmp_path / "gigq.db").exists(), "run without --db uses gigq.db"
    assert counts(log) == {name: 1 for name in PIPELINE_NAMES}, read_lines(log)
    assert summary_counts(first.stdout) == (5, 5, 0), first.stdout

    # The results are in the database under the workflow's job names.
    jobs = {j["name"]: j for j in list_json(tmp_path, db="gigq.db")}
    assert set(jobs) == PIPELINE_NAMES and all(j["status"] == "completed" for j in jobs.values())
    assert status_json(tmp_path, jobs["c"]["id"], db="gigq.db")["result"] == 3  # (1 + 0) * 2 + 1
    assert status_json(tmp_path, jobs["d"]["id"], db="gigq.db")["result"] == 11

    second = ok(gmp(tmp_path, "run", "pipe.py", "-j", "2", db=None))
    assert counts(log) == {name: 1 for name in PIPELINE_NAMES}, "second run executed jobs"
    assert summary_counts(second.stdout) == (5, 0, 5), second.stdout
    assert re.search(r"\b0 ran\b", second.stdout), second.stdout
    # A reused job keeps its row: still five jobs.
    assert {j["id"] for j in list_json(tmp_path, db="gigq.db")} == {j["id"] for j in jobs.values()}


@pytest.mark.timeout(90)
def test_run_after_edit_or_param_change_reruns_job_and_descendants(tmp_path):
    log = write_pipeline(tmp_path)
    ok(gmp(tmp_path, "run", "pipe.py", "-j", "2"))
    assert counts(log) == {name: 1 for name in PIPELINE_NAMES}

    # Edit b's body: b and c (its descendant) would run; dry-run runs nothing.
    write_pipeline(tmp_path, b_mul=3)
    dry = ok(gmp(tmp_path, "run", "pipe.py", "--dry-run"))
    assert dry_run_plan(dry.stdout) == {"a": "skip", "b": "run", "c": "run", "d": "skip", "e": "skip"}, dry.stdout
    assert all(re.search(rf"^\s*skip {n} \(completed\)", dry.stdout, re.M) for n in "ade"), dry.stdout
    assert counts(log) == {name: 1 for name in PIPELINE_NAMES}, "--dry-run executed jobs"

    before = len(read_lines(log))
    proc = ok(gmp(tmp_path, "run", "pipe.py", "-j", "2"))
    assert collections.Counter(read_lines(log)[before:]) == {"b": 1, "c": 1}, read_lines(log)
    assert summary_counts(proc.stdout) == (5, 2, 3), proc.stdout
    c_results = {status_json(tmp_path, j["id"])["result"] for j in list_json(tmp_path) if j["name"] == "c"}
    assert 4 in c_results, c_results  # (1 + 0) * 3 + 1 from the edited b
    assert "MAIN" not in read_lines(log), "run executed the file's __main__ block"

    # Change d's param: only d.
    write_pipeline(tmp_path, b_mul=3, k=20)
    before = len(read_lines(log))
    proc = ok(gmp(tmp_path, "run", "pipe.py", "-j", "2"))
    assert read_lines(log)[before:] == ["d"], read_lines(log)
    assert summary_counts(proc.stdout) == (5, 1, 4), proc.stdout

    # Change a's param: a and everything below it, not e.
    write_pipeline(tmp_path, b_mul=3, k=20, n=2)
    before = len(read_lines(log))
    ok(gmp(tmp_path, "run", "pipe.py", "-j", "2"))
    assert collections.Counter(read_lines(log)[before:]) == {"a": 1, "b": 1, "c": 1, "d": 1}, read_lines(log)

    # Unchanged file: nothing.
    before = len(read_lines(log))
    proc = ok(gmp(tmp_path, "run", "pipe.py", "-j", "2"))
    assert read_lines(log)[before:] == [] and summary_counts(proc.stdout) == (5, 0, 5), proc.stdout


@pytest.mark.timeout(60)
def test_run_force_reruns_everything_and_dry_run_on_fresh_db(tmp_path):
    log = write_pipeline(tmp_path)
    dry = ok(gmp(tmp_path, "run", "pipe.py", "--dry-run"))
    assert dry_run_plan(dry.stdout) == {n: "run" for n in PIPELINE_NAMES}, dry.stdout
    assert read_lines(log) == []

    ok(gmp(tmp_path, "run", "pipe.py", "--db", "after.db", "-j", "2", db=None))  # --db after run
    assert counts(log) == {name: 1 for name in PIPELINE_NAMES}
    assert (tmp_path / "after.db").exists()

    dry = ok(gmp(tmp_path, "run", "pipe.py", "--dry-run", "--force", db="after.db"))
    assert dry_run_plan(dry.stdout) == {n: "run" for n in PIPELINE_NAMES}, dry.stdout
    proc = ok(gmp(tmp_path, "run", "pipe.py", "--force", "-j", "2", db="after.db"))
    assert counts(log) == {name: 2 for name in PIPELINE_NAMES}, read_lines(log)
    assert summary_counts(proc.stdout) == (5, 5, 0), proc.stdout


FAILING = '''\
from gigq_mp import Workflow, task
from tests.jobs import append_line

LOG = {log!r}


@task
def ok():
    append_line(LOG, "ok")
    return 1


@task(max_attempts=1)
def bad(parent_results):
    append_line(LOG, "bad")
    raise ValueError("bad thing happened")


@task
def child(parent_results):
    append_line(LOG, "child")
    return 3


wf = Workflow("failing")
j_ok = wf.add_task(ok)
j_bad = wf.add_task(bad, depends_on=[j_ok])
j_child = wf.add_task(child, depends_on=[j_bad])
'''


@pytest.mark.timeout(60)
def test_run_with_failing_job_exits_1_with_summary_and_graph(tmp_path):
    log = tmp_path / "runs.log"
    (tmp_path / "failing.py").write_text(FAILING.format(log=str(log)))
    proc = gmp(tmp_path, "run", "failing.py", "-j", "2")
    assert proc.returncode == 1, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    assert counts(log) == {"ok": 1, "bad": 1}, read_lines(log)

    bad = re.search(rf"^\s*bad \(({UUID})\) failed: (.*)$", proc.stdout, re.M)
    assert bad and "bad thing happened" in bad.group(2), show(proc)
    child = re.search(rf"^\s*child \(({UUID})\) cancelled: (.*)$", proc.stdout, re.M)
    assert child, show(proc)
    assert "bad" in child.group(2) or bad.group(1) in child.group(2), "the cascade names its upstream job"
    assert not re.search(r"^\s*ok \(", proc.stdout, re.M), "a completed job is listed as not completed"
    assert "ValueError" in status_json(tmp_path, bad.group(1))["error"]

    statuses, edges = parse_mermaid(ok(gmp(tmp_path, "graph")).stdout)
    assert statuses == {"ok": "completed", "bad": "failed", "child": "cancelled"}, statuses
    assert edges == {("ok", "bad"), ("bad", "child")}, edges


SIGINT_PIPELINE = '''\
import os
import time
from gigq_mp import Workflow, task
from tests.jobs import append_line

LOG = {log!r}
FLAG = {flag!r}


@task
def a():
    append_line(LOG, "a")
    return 1


@task
def b(parent_results):
    append_line(LOG, "b")
    return 2


@task
def s(parent_results):
    append_line(LOG, "s-start")
    deadline = time.monotonic() + 60
    while not os.path.exists(FLAG) and time.monotonic() < deadline:
        time.sleep(0.05)
    append_line(LOG, "s-done")
    return 3


@task
def t(parent_results):
    append_line(LOG, "t")
    return 4


wf = Workflow("interrupted")
ja = wf.add_task(a)
jb = wf.add_task(b, depends_on=[ja])
js = wf.add_task(s, depends_on=[ja])
jt = wf.add_task(t, depends_on=[js])
'''


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
def test_interrupted_run_then_run_again_finishes_the_rest(tmp_path, how):
    """ctrl-c: SIGINT to the whole process group (a terminal's Ctrl-C);
    kill: SIGTERM to the `run` process alone (its workers must not survive it)."""
    log, flag = tmp_path / "runs.log", tmp_path / "flag"
    (tmp_path / "slow.py").write_text(SIGINT_PIPELINE.format(log=str(log), flag=str(flag)))
    out, err = open(tmp_path / "run.out", "w"), open(tmp_path / "run.err", "w")
    # Its own session, so that SIGINT to the group is a terminal's Ctrl-C.
    popen = subprocess.Popen(
        [sys.executable, "-m", "gigq_mp", "--db", "q.db", "run", "slow.py", "-j", "2"],
        cwd=str(tmp_path), env=ENV, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        start_new_session=True,
    )
    seen = set()

    def output():
        return (f"rc={popen.poll()}\nstdout:\n{(tmp_path / 'run.out').read_text()}\n"
                f"stderr:\n{(tmp_path / 'run.err').read_text()[-3000:]}\nlog:\n{read_lines(log)}")

    def completed_names():
        seen.update(descendants(popen.pid))
        proc = gmp(tmp_path, "list", "--json", "--status", "completed")
        return {j["name"] for j in json.loads(proc.stdout)} if proc.returncode == 0 else set()

    try:
        wait_until(lambda: "s-start" in read_lines(log) and {"a", "b"} <= completed_names(),
                   30, "a and b completed while s runs")
        assert popen.poll() is None, output()
        seen.update(descendants(popen.pid))
        if how == "ctrl-c":
            os.killpg(popen.pid, signal.SIGINT)
        else:
            popen.send_signal(signal.SIGTERM)
        rc = popen.wait(timeout=30)
        assert rc != 0, f"an interrupted run exited 0\n{output()}"
        assert "Traceback" not in (tmp_path / "run.err").read_text(), output()
        assert wait_pids_gone(sorted(seen), timeout=5) == [], f"processes survived {how}\n{output()}"
        assert "t" not in read_lines(log)
    finally:
        if popen.poll() is None:
            seen.update(descendants(popen.pid))
            popen.kill()
        popen.wait()
        out.close()
        err.close()
        kill_pids(wait_pids_gone(sorted(seen), timeout=0.5))

    flag.write_text("go")
    proc = ok(gmp(tmp_path, "run", "slow.py", "-j", "2", timeout=60))
    c = counts(log)
    assert (c["a"], c["b"], c["t"], c["s-done"]) == (1, 1, 1, 1), read_lines(log)
    assert summary_counts(proc.stdout) == (4, 2, 2), proc.stdout
    assert {j["name"]: j["status"] for j in list_json(tmp_path, "--status", "completed")}.keys() >= {"a", "b", "s", "t"}
    assert json.loads(ok(gmp(tmp_path, "stats", "--json")).stdout)["running"] == 0


# --- logs --------------------------------------------------------------------------

@pytest.mark.timeout(40)
def test_logs_show_stdout_and_stderr_of_job_and_its_children(tmp_path):
    job_id = submit(tmp_path, "tests.jobs.print_both", "printer", "-p", "tag=xyz")
    assert "Processed one job." in ok(gmp(tmp_path, "worker", "--once")).stdout
    out = ok(gmp(tmp_path, "logs", job_id)).stdout
    parts = sections(out)
    assert "stdout" in parts and "stderr" in parts, out
    assert "py-out-xyz" in parts["stdout"] and "child-out-xyz" in parts["stdout"], out
    assert "py-err-xyz" in parts["stderr"] and "child-err-xyz" in parts["stderr"], out
    assert "py-err-xyz" not in parts["stdout"] and "py-out-xyz" not in parts["stderr"], out
    assert "error" not in parts or not parts["error"].strip(), out

    execution = status_json(tmp_path, job_id)["executions"][-1]
    assert "child-out-xyz" in execution["stdout"] and "child-err-xyz" in execution["stderr"], execution


@pytest.mark.timeout(40)
def test_logs_headers_stay_on_their_own_lines_after_output_without_newline(tmp_path):
    job_id = submit(tmp_path, "tests.jobs.print_without_newline", "no-newline", "-p", "tag=abc")
    ok(gmp(tmp_path, "worker", "--once"))
    out = ok(gmp(tmp_path, "logs", job_id)).stdout
    lines = out.splitlines()
    assert "--- stdout ---" in lines and "--- stderr ---" in lines, out
    parts = sections(out)
    assert parts["stdout"].strip() == "out-abc" and parts["stderr"].strip() == "err-abc", out


@pytest.mark.timeout(40)
def test_logs_attempt_shows_that_attempts_output_and_traceback(tmp_path):
    marker = tmp_path / "failed-once"
    job_id = submit(tmp_path, "tests.jobs.fail_once_with_output", "flaky",
                    "-p", f"marker={marker}", "--max-attempts", "2")
    ok(gmp(tmp_path, "worker", "--once"))
    assert "Status: pending" in ok(gmp(tmp_path, "status", job_id)).stdout
    ok(gmp(tmp_path, "worker", "--once"))
    lines = ok(gmp(tmp_path, "status", job_id, "--show-executions")).stdout.splitlines()
    assert "Status: completed" in lines and "Attempts: 2 / 2" in lines, lines

    first = ok(gmp(tmp_path, "logs", job_id, "--attempt", "1")).stdout
    parts = sections(first)
    assert "first-attempt-stdout" in parts.get("stdout", ""), first
    assert "first-attempt-stderr" in parts.get("stderr", ""), first
    assert "Traceback (most recent call last)" in parts.get("error", ""), first
    assert "RuntimeError: first attempt fails" in parts["error"], first
    assert "fail_once_with_output" in parts["error"], "the traceback names the job's function"
    assert "second-attempt" not in first, first

    last = ok(gmp(tmp_path, "logs", job_id)).stdout
    assert "second-attempt-stdout" in sections(last).get("stdout", ""), last
    assert "first-attempt" not in last and "first attempt fails" not in last, last

    proc = gmp(tmp_path, "logs", job_id, "--attempt", "3")
    assert proc.returncode in (1, 2), show(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, show(proc)


# --- graph ---------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_graph_of_database_and_workflow_to_mermaid(tmp_path):
    from gigq_mp import JobQueue, Workflow, task

    write_pipeline(tmp_path)
    ok(gmp(tmp_path, "run", "pipe.py", "-j", "2"))
    statuses, edges = parse_mermaid(ok(gmp(tmp_path, "graph")).stdout)
    assert statuses == {n: "completed" for n in PIPELINE_NAMES}, statuses
    assert edges == PIPELINE_EDGES, edges

    # --workflow NAME: only that workflow's jobs of a database holding two.
    (tmp_path / "failing.py").write_text(FAILING.format(log=str(tmp_path / "failing.log")))
    assert gmp(tmp_path, "run", "failing.py", "-j", "2").returncode == 1
    statuses, edges = parse_mermaid(ok(gmp(tmp_path, "graph", "--workflow", "pipe")).stdout)
    assert statuses == {n: "completed" for n in PIPELINE_NAMES}, statuses
    assert edges == PIPELINE_EDGES, edges
    statuses, _ = parse_mermaid(ok(gmp(tmp_path, "graph", "--workflow", "failing")).stdout)
    assert statuses == {"ok": "completed", "bad": "failed", "child": "cancelled"}, statuses
    user_error(gmp(tmp_path, "graph", "--workflow", "no-such-workflow"), 1)

    # Workflow.to_mermaid(): same lines, "not submitted" before, statuses after.
    wf = Workflow("mermaid")
    first = wf.add_task(task(name="first")(lambda: 1))
    second = wf.add_task(task(name="second")(lambda parent_results: 2), depends_on=[first])
    wf.add_task(task(name="third")(lambda parent_results: 3), depends_on=[first, second])
    before, before_edges = parse_mermaid(wf.to_mermaid())
    assert before == {"first": "not submitted", "second": "not submitted", "third": "not submitted"}
    assert before_edges == {("first", "second"), ("first", "third"), ("second", "third")}

    db = str(tmp_path / "mermaid.db")
    queue = JobQueue(db)
    try:
        wf.run(queue, workers=1)
        after_text = wf.to_mermaid(queue)
    finally:
        queue.close()
    after, after_edges = parse_mermaid(after_text)
    assert after == {"first": "completed", "second": "completed", "third": "completed"}
    assert after_edges == before_edges
    cli_statuses, cli_edges = parse_mermaid(ok(gmp(tmp_path, "graph", db="mermaid.db")).stdout)
    assert (cli_statuses, cli_edges) == (after, after_edges), "graph --db and to_mermaid(queue) differ"


# --- progress ------------------------------------------------------------------------

PROGRESS = '''\
import time
from gigq_mp import Workflow, task


@task
def step(i, parent_results=None):
    time.sleep(0.8)
    return i


wf = Workflow("progress")
prev = None
for i in range(3):
    prev = wf.add_task(step, params={"i": i}, depends_on=None if prev is None else [prev])
'''


@pytest.mark.timeout(60)
def test_progress_not_a_tty_has_no_control_codes_and_quiet_is_silent(tmp_path):
    (tmp_path / "progress.py").write_text(PROGRESS)
    proc = ok(gmp(tmp_path, "run", "progress.py", "-j", "1"))
    assert ANSI not in proc.stdout and "\r" not in proc.stdout, repr(proc.stdout)
    assert ANSI not in proc.stderr and "\r" not in proc.stderr, f"control codes on a non-TTY stderr: {proc.stderr!r}"
    assert re.search(r"^progress: 3/3 done\b", proc.stderr, re.M), f"no plain progress line: {proc.stderr!r}"
    assert summary_counts(proc.stdout) == (3, 3, 0), proc.stdout

    quiet = ok(gmp(tmp_path, "run", "progress.py", "-j", "1", "--force", "--quiet"))
    assert quiet.stderr.strip() == "", f"--quiet printed on stderr: {quiet.stderr!r}"
    assert ANSI not in quiet.stdout
    assert summary_counts(quiet.stdout) == (3, 3, 0), quiet.stdout


@pytest.mark.timeout(60)
def test_progress_on_a_terminal_is_one_live_line(tmp_path):
    import pty

    (tmp_path / "progress.py").write_text(PROGRESS)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gigq_mp", "--db", "q.db", "run", "progress.py", "-j", "1"],
            cwd=str(tmp_path), env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
        )
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not data:
                break
            chunks.append(data)
        stdout = proc.stdout.read().decode()
        assert proc.wait(timeout=30) == 0, stdout
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    terminal = b"".join(chunks).decode(errors="replace")
    assert "\r" in terminal and re.search(r"\d+/3 done", terminal), repr(terminal)
    # Updated in place: the progress never takes a line per update.
    assert len([line for line in terminal.split("\n") if "done" in line]) <= 2, repr(terminal)
    assert ANSI not in stdout and summary_counts(stdout) == (3, 3, 0), stdout


@pytest.mark.timeout(60)
def test_graph_of_a_pipeline_file(tmp_path):
    write_pipeline(tmp_path)
    statuses, edges = parse_mermaid(ok(gmp(tmp_path, "graph", "pipe.py")).stdout)
    assert statuses == {n: "not submitted" for n in PIPELINE_NAMES}, statuses
    assert edges == PIPELINE_EDGES, edges
    assert not (tmp_path / "q.db").exists(), "graph of a file created the database"

    ok(gmp(tmp_path, "run", "pipe.py", "-j", "2"))
    # After a run, the file's jobs are the completed ones (resume): graph says so.
    statuses, edges = parse_mermaid(ok(gmp(tmp_path, "graph", "pipe.py")).stdout)
    assert statuses == {n: "completed" for n in PIPELINE_NAMES}, statuses
    assert edges == PIPELINE_EDGES, edges
