"""`JobQueue`: submitting jobs to one SQLite file and reading them back.

Submission validates everything before writing anything: options, params and
callables that must serialize, dependencies that must exist, no cycles. Then
one transaction writes the jobs, parents before children.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .errors import ValidationError, WaitTimeout
from .model import FINAL, Job, JobStatus, check_job_options, status_value
from .serialize import Encoded, decode_value, dump_callable, dumps_exact, encode_value, is_exact_json
from .store import JobRow, Store, Submission

_HIDDEN_COLUMNS = ("params_blob", "result_blob", "result_path", "function_key", "job_key")


def topological_order(jobs: Sequence[Job]) -> List[Job]:
    """Parents before children among `jobs`; ValidationError naming the jobs of a cycle."""
    by_id = {job.id: job for job in jobs}
    if len(by_id) != len(jobs):
        raise ValidationError("the same Job object (or id) appears twice in one submission")
    if _parents_first(jobs, by_id):
        return list(jobs)  # the usual case: jobs added after their parents
    waiting = {job.id: sum(1 for d in set(job.dependencies) if d in by_id) for job in jobs}
    children: Dict[str, List[str]] = {}
    for job in jobs:
        for dep in set(job.dependencies):
            if dep in by_id:
                children.setdefault(dep, []).append(job.id)
    ordered = [job for job in jobs if waiting[job.id] == 0]
    for job in ordered:  # grows while we walk it
        for child in children.get(job.id, ()):
            waiting[child] -= 1
            if waiting[child] == 0:
                ordered.append(by_id[child])
    if len(ordered) < len(jobs):
        stuck = [f"{by_id[i].name} ({i})" for i, n in waiting.items() if n > 0]
        raise ValidationError(f"dependency cycle among jobs: {', '.join(stuck)}")
    return ordered


def _parents_first(jobs: Sequence[Job], by_id: Dict[str, Job]) -> bool:
    """True if every job comes after those of its parents that are among `jobs` (then
    there is no cycle either)."""
    seen = set()
    for job in jobs:
        for dep in job.dependencies:
            if dep not in seen and dep in by_id:
                return False
        seen.add(job.id)
    return True


def encode_params(job: Job) -> Encoded:
    """A job's params, encoded; an error names the job (its message built only then)."""
    params = job.params or {}
    if is_exact_json(params):
        return dumps_exact(params), None
    return encode_value(params, what=f"params of job {job.name!r}")


def job_row(
    job: Job,
    functions: Dict[str, bytes],
    keys_by_function: Dict[int, str],
    workflow: Optional[str] = None,
    job_key: Optional[str] = None,
    params: Optional[Encoded] = None,
) -> JobRow:
    """Validate one job and encode it as a row for Store.insert_jobs (`params`: already encoded)."""
    if not isinstance(job, Job):
        raise TypeError(f"expected a Job, got {type(job).__name__}")
    if job.params is not None and not isinstance(job.params, dict):
        raise ValidationError(f"params of job {job.name!r} must be a dict, got {type(job.params).__name__}")
    max_memory_mb = getattr(job, "max_memory_mb", None)
    check_job_options(
        priority=job.priority,
        max_attempts=job.max_attempts,
        timeout=job.timeout,
        retry_delay=job.retry_delay,
        max_memory_mb=max_memory_mb,
    )
    key = keys_by_function.get(id(job.function))
    if key is None:
        key, blob = dump_callable(job.function)
        functions[key] = blob
        keys_by_function[id(job.function)] = key
    params_text, params_blob = params or encode_params(job)
    if len(job.dependencies) != len(set(job.dependencies)):
        raise ValidationError(f"job {job.name!r} lists the same dependency twice")
    if job.id in job.dependencies:
        raise ValidationError(f"dependency cycle among jobs: {job.name} ({job.id}) depends on itself")
    return JobRow(  # by position: this runs once per job, and 19 keywords cost half of it
        job.id,  # id
        str(job.name),  # name
        getattr(job.function, "__name__", type(job.function).__name__),  # function_name
        getattr(job.function, "__module__", None) or "__main__",  # function_module
        key,  # function_key
        params_text,  # params
        params_blob,  # params_blob
        job.priority,  # priority
        list(job.dependencies),  # dependencies
        job.max_attempts,  # max_attempts
        job.timeout,  # timeout
        job.description,  # description
        job.created_at,  # created_at
        None if job.pass_parent_results is None else int(job.pass_parent_results),  # pass_parent_results
        job.retry_delay,  # retry_delay
        int(bool(getattr(job, "retry_backoff", False))),  # retry_backoff
        max_memory_mb,  # max_memory_mb
        job_key,  # job_key
        workflow,  # workflow
    )


def decode_job(row, executions: Optional[list] = None) -> Dict[str, Any]:
    """A jobs row as GigQ's dict: params, dependencies and result decoded."""
    job = {k: row[k] for k in row.keys() if k not in _HIDDEN_COLUMNS}
    job["params"] = decode_value(row["params"], row["params_blob"])
    job["dependencies"] = json.loads(row["dependencies"]) if row["dependencies"] else []
    job["result"] = decode_value(row["result"], row["result_blob"], row["result_path"])
    if row["pass_parent_results"] is not None:
        job["pass_parent_results"] = bool(row["pass_parent_results"])
    if executions is not None:
        job["executions"] = [
            {**dict(e), "result": decode_value(e["result"], None)} for e in executions
        ]
    return job


class JobQueue:
    """A job queue in one SQLite file (WAL mode)."""

    def __init__(self, db_path: str, initialize: bool = True):
        self.db_path = str(db_path)
        self.store = Store(self.db_path, initialize=initialize)

    def submit(self, job: Job) -> str:
        """Validate and store one job; returns its id."""
        return self.submit_many([job])[0]

    def submit_many(
        self,
        jobs: Sequence[Job],
        *,
        workflow: Optional[str] = None,
        job_keys: Optional[Dict[str, str]] = None,
        params: Optional[Dict[str, Encoded]] = None,
    ) -> List[str]:
        """Validate every job, then store them all in one transaction (or none).

        `workflow` names the Workflow they belong to; `job_keys` are their resume keys and
        `params` their params already encoded (both by job id, from resume.plan_resume).
        """
        jobs = list(jobs)
        self.insert(jobs, workflow=workflow, job_keys=job_keys, params=params)
        return [job.id for job in jobs]

    def insert(
        self,
        jobs: List[Job],
        *,
        workflow: Optional[str] = None,
        job_keys: Optional[Dict[str, str]] = None,
        params: Optional[Dict[str, Encoded]] = None,
    ) -> Optional[Submission]:
        """submit_many, returning where the jobs landed (for a supervisor started next)."""
        functions: Dict[str, bytes] = {}
        keys: Dict[int, str] = {}
        job_keys = job_keys or {}
        params = params or {}
        rows = {
            job.id: job_row(job, functions, keys, workflow, job_keys.get(job.id), params.get(job.id)) for job in jobs
        }
        ordered = topological_order(jobs)
        outside = {d for job in jobs for d in job.dependencies if d not in rows}
        missing = outside - self.store.existing_ids(list(outside))
        if missing:
            raise ValidationError(f"unknown dependency job ids: {', '.join(sorted(missing))}")
        return self.store.insert_jobs([rows[job.id] for job in ordered], functions)

    def cancel(self, job_id: str, kill: bool = False) -> bool:
        """Cancel a pending job (and its pending descendants); False if it was not pending.

        With `kill=True` a running job is cancelled too: the supervisor running it kills
        its process tree at its next turn (within about a second).
        """
        return bool(self.store.cancel(job_id, running_too=kill))

    def get_status(self, job_id: str) -> Dict[str, Any]:
        """The job's fields, decoded, with `exists` and its `executions` (oldest first)."""
        row = self.store.get_job(job_id)
        if row is None:
            return {"exists": False}
        status = decode_job(row, self.store.executions(job_id))
        status["exists"] = True
        return status

    def get_result(self, job_id: str) -> Any:
        """The decoded result of a completed job; None if not completed; KeyError if unknown."""
        row = self.store.get_job(job_id)
        if row is None:
            raise KeyError(job_id)
        if row["status"] != JobStatus.COMPLETED.value:
            return None
        return decode_value(row["result"], row["result_blob"], row["result_path"])

    def list_jobs(self, status: Any = None, limit: int = 100) -> List[Dict[str, Any]]:
        """Jobs newest first, optionally only those with `status` (a JobStatus or its value)."""
        return [decode_job(row) for row in self.store.list_jobs(status_value(status), limit)]

    def stats(self) -> Dict[str, int]:
        """Count of jobs per status value, plus `total`."""
        counts = {s.value: 0 for s in JobStatus}
        counts.update(self.store.count_by_status())
        counts["total"] = sum(counts.values())
        return counts

    def clear_completed(self, before_timestamp: Optional[str] = None) -> int:
        """Delete completed and cancelled jobs (finished before the ISO timestamp, if given)."""
        return self.store.clear_completed(before_timestamp)

    def requeue_job(self, job_id: str) -> bool:
        """failed, timeout or cancelled -> pending (attempts reset); revives what it cancelled."""
        return self.store.requeue(job_id)

    def wait(self, ids: Iterable[str], timeout: Optional[float] = None) -> Dict[str, str]:
        """Block until every job is completed, failed, timeout or cancelled; returns their statuses."""
        ids = list(ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while True:
            rows = self.store.statuses(ids)
            unknown = [i for i in ids if i not in rows]
            if unknown:
                raise KeyError(f"unknown job ids: {', '.join(unknown)}")
            statuses = {i: rows[i]["status"] for i in ids}
            if all(s in FINAL for s in statuses.values()):
                return statuses
            if deadline is not None and time.monotonic() >= deadline:
                left = sum(1 for s in statuses.values() if s not in FINAL)
                raise WaitTimeout(f"{left} of {len(ids)} jobs still unfinished after {timeout} s")
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(pause * 2, 0.5)

    def close(self) -> None:
        """Close this queue's database connection."""
        self.store.close()
