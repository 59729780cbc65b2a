"""The `gigq-mp` command line: GigQ's commands and layout, plus `run`, `logs` and `graph`.

`main(argv=None)` parses the arguments, prints to stdout and returns the exit
status: 0 success, 1 failure, 2 usage. User errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import sys
from datetime import datetime, timedelta
from typing import Any, Dict, List, Optional, Sequence

from . import JobQueue, JobStatus, Worker, Workflow, setup_logging
from .errors import GigqMpError, WorkflowFailed
from .model import Job
from .progress import ProgressLine
from .resume import plan_resume
from .serialize import describe_callable


class UserError(Exception):
    """A problem with what the user asked for: printed as one line, exit status `status`."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit status 2, as argparse does
        raise UserError(message, status=2)


# -- output --------------------------------------------------------------------------------------


def format_time(timestamp: Optional[str]) -> str:
    if not timestamp:
        return "-"
    try:
        return datetime.fromisoformat(timestamp).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):
        return str(timestamp)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """GigQ's boxed table: +---+ rules, a header row, left-aligned cells."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) + 2 for i in range(len(headers))]
    rule = "+" + "+".join("-" * w for w in widths) + "+"

    def line(row: List[str]) -> str:
        return "|" + "|".join(f" {cell.ljust(w - 2)} " for cell, w in zip(row, widths)) + "|"

    return "\n".join([rule, line(cells[0]), rule, *(line(row) for row in cells[1:]), rule])


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=repr))


# -- opening things ------------------------------------------------------------------------------


def existing_queue(path: str) -> JobQueue:
    """Open a database that must already exist (read-only commands never create one)."""
    if not os.path.exists(path):
        raise UserError(f"database {path} does not exist")
    return open_queue(path)


def open_queue(path: str) -> JobQueue:
    try:
        return JobQueue(path)
    except GigqMpError as exc:
        raise UserError(str(exc)) from exc


def job_status(queue: JobQueue, job_id: str) -> Dict[str, Any]:
    status = queue.get_status(job_id)
    if not status.get("exists"):
        raise UserError(f"job {job_id} not found")
    return status


def import_function(dotted: str):
    module_name, _, name = dotted.rpartition(".")
    if not module_name:
        raise UserError(f"{dotted!r} is not MODULE.FUNCTION", status=2)
    sys.path.insert(0, os.getcwd())
    try:
        module = __import__(module_name, fromlist=[name])
        return getattr(module, name)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot import {dotted}: {exc}") from exc


def parse_params(items: Optional[List[str]]) -> Dict[str, Any]:
    params: Dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"parameter {item!r} is not KEY=VALUE", status=2)
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def load_workflow(path: str, name: Optional[str]) -> Workflow:
    """Run a pipeline file (not as __main__) and pick its Workflow."""
    if not os.path.isfile(path):
        raise UserError(f"no such file: {path}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        namespace = runpy.run_path(path, run_name="__gigq_mp_pipeline__")
    except Exception as exc:
        raise UserError(f"{path} failed to load: {type(exc).__name__}: {exc}") from exc
    found = {var: wf for var, wf in namespace.items() if isinstance(wf, Workflow)}
    if name is not None:
        matches = [wf for var, wf in found.items() if name in (var, wf.name)]
        if not matches:
            raise UserError(f"{path} has no workflow named {name!r} (found: {', '.join(found) or 'none'})")
        return matches[0]
    unique = list({id(wf): wf for wf in found.values()}.values())
    if not unique:
        raise UserError(f"{path} defines no Workflow")
    if len(unique) > 1:
        names = ", ".join(sorted(wf.name for wf in unique))
        raise UserError(f"{path} defines several workflows ({names}); choose one with --workflow")
    return unique[0]


# -- commands ------------------------------------------------------------------------------------


def cmd_submit(args) -> int:
    function = import_function(args.function)
    params = parse_params(args.param)
    queue = open_queue(args.db)
    try:
        job = Job(
            name=args.name,
            function=function,
            params=params,
            priority=args.priority,
            max_attempts=args.max_attempts,
            timeout=args.timeout,
            description=args.description or "",
            retry_delay=args.retry_delay,
        )
        job_id = queue.submit(job)
    except (GigqMpError, TypeError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    print(f"Job submitted: {job_id}")
    return 0


def cmd_status(args) -> int:
    status = job_status(existing_queue(args.db), args.job_id)
    if args.json:
        print_json(status)
        return 0
    print(f"Job: {status['name']} ({status['id']})")
    print(f"Status: {status['status']}")
    print(f"Created: {format_time(status['created_at'])}")
    print(f"Updated: {format_time(status['updated_at'])}")
    print(f"Started: {format_time(status.get('started_at'))}")
    print(f"Completed: {format_time(status.get('completed_at'))}")
    print(f"Attempts: {status['attempts']} / {status['max_attempts']}")
    if status.get("worker_id"):
        print(f"Worker: {status['worker_id']}")
    if status.get("error"):
        print(f"Error: {status['error']}")
    if args.show_params and status.get("params"):
        print("\nParameters:")
        for key, value in status["params"].items():
            print(f"  {key}: {value}")
    if args.show_result and status.get("result") is not None:
        print("\nResult:")
        if isinstance(status["result"], dict):
            for key, value in status["result"].items():
                print(f"  {key}: {value}")
        else:
            print(f"  {status['result']}")
    if args.show_executions and status.get("executions"):
        print("\nExecutions:")
        rows = [
            [e["id"], format_time(e["started_at"]), format_time(e.get("completed_at")), e["status"]]
            for e in status["executions"]
        ]
        print(format_table(rows, ["ID", "Started", "Completed", "Status"]))
    return 0


def cmd_list(args) -> int:
    if args.status is not None and args.status not in {s.value for s in JobStatus}:
        raise UserError(
            f"invalid status {args.status!r}; valid: {', '.join(s.value for s in JobStatus)}", status=2
        )
    jobs = existing_queue(args.db).list_jobs(status=args.status, limit=args.limit)
    if args.json:
        print_json(jobs)
        return 0
    if not jobs:
        print("No jobs found.")
        return 0
    rows = [
        [j["id"], j["name"], j["status"], j["priority"], format_time(j["created_at"]), format_time(j["updated_at"])]
        for j in jobs
    ]
    print(format_table(rows, ["ID", "Name", "Status", "Priority", "Created", "Updated"]))
    return 0


def cmd_stats(args) -> int:
    stats = existing_queue(args.db).stats()
    if args.json:
        print_json(stats)
        return 0
    rows = [[s.value, stats.get(s.value, 0)] for s in JobStatus] + [["total", stats["total"]]]
    print(format_table(rows, ["Status", "Count"]))
    return 0


def cmd_cancel(args) -> int:
    queue = existing_queue(args.db)
    job_status(queue, args.job_id)  # an unknown id is an error, not "could not cancel"
    if queue.cancel(args.job_id, kill=args.kill):
        print(f"Job {args.job_id} cancelled.")
        return 0
    print(f"Could not cancel job {args.job_id}. It might not be in pending state.")
    return 1


def cmd_requeue(args) -> int:
    queue = existing_queue(args.db)
    job_status(queue, args.job_id)
    if queue.requeue_job(args.job_id):
        print(f"Job {args.job_id} requeued.")
        return 0
    print(f"Could not requeue job {args.job_id}. Only failed, timeout or cancelled jobs can be requeued.")
    return 1


def cmd_clear(args) -> int:
    before = None if args.before is None else (datetime.now() - timedelta(days=args.before)).isoformat()
    count = existing_queue(args.db).clear_completed(before_timestamp=before)
    print(f"Cleared {count} completed jobs.")
    return 0


def cmd_worker(args) -> int:
    if not args.quiet:
        setup_logging(logging.INFO)
    open_queue(args.db).close()  # a clear error for a bad database before anything starts
    worker = Worker(
        args.db,
        worker_id=args.worker_id,
        polling_interval=args.polling_interval,
        concurrency=args.concurrency,
        progress=None if args.quiet or args.once else ProgressLine(sys.stderr, "worker"),
    )
    if args.once:
        ran = worker.process_one()
        worker.close()
        print("Processed one job." if ran else "No jobs available to process.")
        return 0
    print(f"Starting worker {worker.worker_id} with {args.concurrency} worker processes...", flush=True)
    worker.start()
    return 0


def cmd_run(args) -> int:
    workflow = load_workflow(args.file, args.workflow)
    queue = open_queue(args.db)
    if args.dry_run:
        return dry_run(workflow, queue, args.force)
    progress = None if args.quiet else ProgressLine(sys.stderr, workflow.name)
    try:
        workflow.run(queue, workers=args.jobs, force=args.force, progress=progress)
        failures: Dict[str, Any] = {}
    except WorkflowFailed as exc:
        failures = exc.failures
    except (GigqMpError, TypeError) as exc:
        raise UserError(str(exc)) from exc
    summary = workflow.last_run
    ran = summary["total"] - summary["reused"]
    for job_id, info in failures.items():
        first = (info.get("error") or "").strip().splitlines()[:1]
        print(f"  {info['name']} ({job_id}) {info['status']}: {first[0] if first else ''}")
    print(
        f"{workflow.name}: {summary['total']} jobs: {ran} ran, {summary['reused']} reused "
        f"(already completed), {len(failures)} failed"
    )
    return 1 if failures else 0


def dry_run(workflow: Workflow, queue: JobQueue, force: bool) -> int:
    present = queue.store.existing_ids([job.id for job in workflow.jobs])
    plan = plan_resume(queue.store, [job for job in workflow.jobs if job.id not in present], force)
    for job in workflow.jobs:
        if job.id in present or plan.status.get(job.id) == "completed":
            print(f"skip {job.name} (completed)")
        else:
            print(f"run {job.name} ({describe_callable(job.function)})")
    return 0


def cmd_logs(args) -> int:
    status = job_status(existing_queue(args.db), args.job_id)
    executions = status["executions"]
    if not executions:
        raise UserError(f"job {args.job_id} has not run yet")
    if args.attempt is None:
        execution = executions[-1]
    else:
        matching = [e for e in executions if e.get("attempt") == args.attempt]
        if not matching:
            raise UserError(f"job {args.job_id} has no attempt {args.attempt} (it has {len(executions)})")
        execution = matching[-1]
    print(f"Job: {status['name']} ({status['id']}), attempt {execution.get('attempt')}: {execution['status']}")
    for stream in ("stdout", "stderr"):
        text = execution.get(stream) or ""
        print(f"--- {stream} ---")
        print(text, end="" if not text or text.endswith("\n") else "\n")
    if execution.get("error"):
        print("--- error ---")
        print(execution["error"])
    return 0


def cmd_graph(args) -> int:
    from .workflow import mermaid

    if args.file:
        workflow = load_workflow(args.file, args.workflow)
        queue = open_queue(args.db) if os.path.exists(args.db) else None
        print(workflow.to_mermaid(queue))
        return 0
    rows = existing_queue(args.db).store.jobs_of(args.workflow)
    if args.workflow and not rows:
        raise UserError(f"no jobs of workflow {args.workflow!r} in {args.db}")
    print(mermaid([(r["id"], r["name"], r["status"], json.loads(r["dependencies"] or "[]")) for r in rows]))
    return 0


# -- parsing -------------------------------------------------------------------------------------


def build_parser() -> Parser:
    parser = Parser(prog="gigq-mp", description="Run GigQ job graphs on a pool of worker processes.")
    parser.add_argument("--db", default="gigq.db", help="path to the SQLite database (default gigq.db)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    db_here = argparse.SUPPRESS  # `--db` also accepted after the command

    p = commands.add_parser("submit", help="submit a job")
    p.add_argument("function", help="MODULE.FUNCTION")
    p.add_argument("--name", required=True)
    p.add_argument("--param", "-p", action="append", help="KEY=VALUE (VALUE parsed as JSON when it parses)")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--description")
    p.add_argument("--retry-delay", type=float, default=0)
    p.set_defaults(func=cmd_submit)

    p = commands.add_parser("status", help="show a job")
    p.add_argument("job_id")
    p.add_argument("--show-params", action="store_true")
    p.add_argument("--show-result", action="store_true")
    p.add_argument("--show-executions", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = commands.add_parser("list", help="list jobs, newest first")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("stats", help="count jobs per status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = commands.add_parser("cancel", help="cancel a pending job (--kill: a running one too)")
    p.add_argument("job_id")
    p.add_argument("--kill", action="store_true")
    p.set_defaults(func=cmd_cancel)

    p = commands.add_parser("requeue", help="requeue a failed, timed out or cancelled job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_requeue)

    p = commands.add_parser("clear", help="delete completed and cancelled jobs")
    p.add_argument("--before", type=float, help="only those finished more than DAYS ago")
    p.set_defaults(func=cmd_clear)

    p = commands.add_parser("worker", help="run jobs until stopped (SIGINT, SIGTERM)")
    p.add_argument("--worker-id")
    p.add_argument("--polling-interval", type=float, default=5)
    p.add_argument("--once", action="store_true", help="run one job and exit")
    p.add_argument("--concurrency", type=int, default=1, help="worker processes")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_worker)

    p = commands.add_parser("run", help="run the workflow of a pipeline file, resuming earlier runs")
    p.add_argument("file")
    p.add_argument("--workflow", help="which workflow (its name or variable), if the file has several")
    p.add_argument("-j", "--jobs", type=int, default=None, help="worker processes (default: the cores)")
    p.add_argument("--db", default=db_here)
    p.add_argument("--dry-run", action="store_true", help="print what would run and what would be skipped")
    p.add_argument("--force", action="store_true", help="run every job again")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_run)

    p = commands.add_parser("logs", help="what an attempt of a job printed")
    p.add_argument("job_id")
    p.add_argument("--attempt", type=int)
    p.set_defaults(func=cmd_logs)

    p = commands.add_parser("graph", help="the DAG as Mermaid text, with job states")
    p.add_argument("file", nargs="?", help="a pipeline file (else: the jobs in the database)")
    p.add_argument("--workflow")
    p.add_argument("--db", default=db_here)
    p.set_defaults(func=cmd_graph)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except UserError as exc:
        print(f"gigq-mp: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("gigq-mp: interrupted", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())
