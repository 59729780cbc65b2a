"""`Workflow`: building a DAG of jobs, submitting it, and running it to the end."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .errors import GigqMpError, RemoteTraceback, ValidationError, WaitTimeout, WorkflowFailed
from .jobqueue import JobQueue
from .memory import paused_gc, thaw
from .model import BLOCKING, Job
from .progress import default_progress
from .runner import in_worker_process
from .resume import ResumePlan, apply_resume, plan_resume
from .serialize import decode_value
from .pool import LocalPool
from .supervisor import Supervisor
from .task import TaskWrapper


class Workflow:
    """A named set of jobs and the dependencies between them."""

    def __init__(self, name: str):
        self.name = name
        self.jobs: List[Job] = []
        self.job_map: Dict[str, Job] = {}
        self.last_run: Dict[str, int] = {}  # counts of the last run(): total, reused, attempts
        self.last_statuses: Dict[str, str] = {}  # job id -> status at the end of the last run()

    def add_job(self, job: Job, depends_on: Optional[List[Job]] = None) -> Job:
        """Add `job`, running after every job of `depends_on`; returns the job."""
        if not isinstance(job, Job):
            raise TypeError(f"add_job needs a Job, got {type(job).__name__}")
        if job.id in self.job_map:
            raise ValidationError(f"job {job.name!r} ({job.id}) is already in workflow {self.name!r}")
        for parent in depends_on or []:
            parent_id = parent.id if isinstance(parent, Job) else parent
            if not isinstance(parent_id, str):
                raise TypeError(f"depends_on takes Jobs (or job ids), got {type(parent).__name__}")
            if parent_id not in job.dependencies:
                job.dependencies.append(parent_id)
        self.jobs.append(job)
        self.job_map[job.id] = job
        return job

    def add_task(
        self,
        task_fn: Any,
        params: Optional[dict] = None,
        depends_on: Optional[List[Job]] = None,
        pass_parent_results: Optional[bool] = None,
    ) -> Job:
        """Add a job of a `@task` with `params`; returns the new Job."""
        if not isinstance(task_fn, TaskWrapper):
            raise TypeError(
                f"add_task needs a function decorated with @task, got {task_fn!r}; "
                "decorate it with @task or use add_job(Job(...))"
            )
        return self.add_job(task_fn.make_job(params, pass_parent_results), depends_on)

    def submit_all(self, queue: JobQueue) -> List[str]:
        """Validate every job, then submit them all in one transaction; returns their ids."""
        return queue.submit_many(self.jobs, workflow=self.name)

    def prepare(self, queue: JobQueue, force: bool = False) -> ResumePlan:
        """Submit what is not yet in `queue`, reusing the rows of jobs that ran before.

        On a file database, a job whose callable, params and parents match a job
        that ran before takes that job's id (a failed one is requeued) instead of
        being submitted again; `force` submits every job anew. Returns the plan.
        """
        return self._prepare(queue, force)

    def _prepare(
        self, queue: JobQueue, force: bool = False, before_insert: Optional[Callable[[], None]] = None
    ) -> ResumePlan:
        """prepare(); `before_insert` is called once, as soon as it is known that new jobs are to
        be inserted (at once, before they are validated, when nothing in the database could be
        reused), never if none are."""
        stored = queue.store.has_jobs()  # a new database has no row to look any job up in
        present = queue.store.existing_ids([job.id for job in self.jobs]) if stored else set()
        fresh = [job for job in self.jobs if job.id not in present]
        if not fresh:
            return ResumePlan({})
        reusable = stored and not queue.store.is_temporary() and queue.store.has_keyed_jobs()
        if before_insert is not None and not reusable:
            before_insert()  # nothing to reuse: every fresh job will be inserted
            before_insert = None
        if queue.store.is_temporary():
            return ResumePlan({}, submission=queue.insert(fresh, workflow=self.name))
        plan = plan_resume(queue.store, fresh, force or not reusable)  # keys only, when no row has one
        apply_resume(self.jobs, plan)  # jobs submitted before also point at reused parents
        self.job_map = {job.id: job for job in self.jobs}
        for job_id, status in plan.status.items():
            if status in BLOCKING:
                queue.requeue_job(job_id)
        new = [job for job in fresh if job.id not in plan.status]
        if new and before_insert is not None:
            before_insert()
        plan.submission = queue.insert(
            new,
            workflow=self.name,
            job_keys=plan.keys,
            params=plan.params,
        )
        return plan

    def run(
        self,
        queue: Optional[JobQueue] = None,
        workers: Optional[int] = None,
        timeout: Optional[float] = None,
        *,
        force: bool = False,
        progress: Union[None, bool, Callable[[dict], None]] = None,
    ) -> Dict[str, Any]:
        """Submit what is not yet submitted, run every job to the end, return {job_id: result}.

        On a file database, jobs that completed in an earlier run of the same
        workflow are reused, not run again (`force=True` runs everything). Raises
        WorkflowFailed (with `.results` and `.failures`) if any job did not complete,
        WaitTimeout if `timeout` seconds pass first. Without a queue the jobs go to a
        throwaway in-memory database. `progress` is called now and then with the
        counts of the run; by default a display updated in place in a notebook, a
        live line on a terminal, nothing otherwise (`progress=False` for none).
        """
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValidationError(f"workers must be an int >= 1, got {workers!r}")
        if in_worker_process():
            raise GigqMpError(
                f"Workflow.run({self.name!r}) was called from inside a running job; a job cannot wait "
                "for other jobs (make them its dependencies instead)"
            )
        if queue is not None and queue.store.closed:
            raise GigqMpError(f"the queue of {queue.db_path!r} is closed; open a new JobQueue")
        if progress is None:
            progress = default_progress(self.name)
        elif progress is False:
            progress = None
        own_queue = queue is None
        queue = JobQueue(":memory:") if own_queue else queue
        pool: Optional[LocalPool] = None
        supervisor: Optional[Supervisor] = None

        def start_pool() -> None:
            nonlocal pool
            pool = LocalPool(workers or os.cpu_count() or 1, results_dir=queue.store.results_dir())

        try:
            # With new jobs to insert, the worker processes start first, so that their start-up
            # overlaps with the insert. Otherwise (every job ran before, say) the supervisor
            # starts them if some job still has to run.
            with paused_gc():
                submission = self._prepare(queue, force, start_pool).submission  # the rest of the plan is stored now
            ids = [job.id for job in self.jobs]
            seqs = submission.seqs if submission else None
            if submission is not None and len(submission.rows) == len(ids):
                older: List[str] = []  # every job was just submitted (none can have completed)
            else:
                submitted = {row.id for row in submission.rows} if submission else set()
                older = [i for i in ids if i not in submitted]
                del submitted
            self.last_run = {"total": len(ids), "reused": queue.store.count_status(older, "completed")}
            del older
            outside = {d for job in self.jobs for d in job.dependencies if d not in self.job_map}
            supervisor = Supervisor(
                queue.store,
                worker_id=f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}",
                concurrency=workers or os.cpu_count() or 1,
                polling_interval=0.5,
                scope=set(ids) | outside,
                targets=set(ids),
                progress=progress,
                executor=pool,
                submission=submission,
            )
            submission = None  # its rows go once the supervisor's first look took them
            pool = None  # the supervisor owns it now
            deadline = None if timeout is None else time.monotonic() + timeout

            def finished() -> bool:
                if deadline is not None and time.monotonic() >= deadline:
                    supervisor.request_stop(cold=True)  # out of time: interrupt jobs, no grace
                return not supervisor.open_targets

            try:
                supervisor.run(until=finished)
            finally:
                if supervisor.tracker.froze_gc:  # what was alive once it had read the submission
                    thaw()
                supervisor.close(wait=False)  # its idle worker processes end while the outcomes are read
            self.last_run["attempts"] = supervisor.finished_attempts
            with paused_gc():
                return self._outcome(queue, ids, timeout, seqs)
        finally:
            if supervisor is not None:
                supervisor.close()  # waits until they are gone
            if pool is not None:
                pool.shutdown()
            if own_queue:
                queue.close()

    def to_mermaid(self, queue: Optional[JobQueue] = None) -> str:
        """The DAG as Mermaid text (`graph TD`), each node labelled with its job's status."""
        statuses: Dict[str, str] = dict(self.last_statuses)
        if queue is not None:
            statuses = {i: row["status"] for i, row in queue.store.statuses([j.id for j in self.jobs]).items()}
            unseen = [job for job in self.jobs if job.id not in statuses]
            if unseen and not queue.store.is_temporary():
                # Built anew (a file loaded again): find the rows an earlier run left, by key.
                statuses.update(plan_resume(queue.store, unseen).status)
        return mermaid(
            [(job.id, job.name, statuses.get(job.id, "not submitted"), job.dependencies) for job in self.jobs]
        )

    def _repr_markdown_(self) -> str:
        return f"```mermaid\n{self.to_mermaid()}\n```"

    def _outcome(
        self, queue: JobQueue, ids: List[str], timeout: Optional[float], seqs: Optional[range] = None
    ) -> Dict[str, Any]:
        rows = queue.store.outcomes(ids, seqs)
        unfinished = [i for i, row in rows.items() if row.status in ("pending", "running")]
        if unfinished:
            raise WaitTimeout(
                f"workflow {self.name!r}: {len(unfinished)} of {len(ids)} jobs unfinished after {timeout} s"
            )
        # The few jobs that did not complete: their name and error too.
        details = queue.store.statuses([i for i, row in rows.items() if row.status != "completed"])
        results = {}
        failures = {}
        for i in ids:
            row = rows.get(i)
            if row is None:  # deleted while the workflow ran (clear_completed from elsewhere)
                name = self.job_map[i].name if i in self.job_map else i
                failures[i] = {"name": name, "status": "missing", "error": "its row was deleted before the run ended"}
            elif row.status == "completed":
                results[i] = decode_value(row.result, row.result_blob, row.result_path)
            else:
                detail = details.get(i)  # None: deleted since
                name, error = (detail["name"], detail["error"]) if detail is not None else (i, None)
                failures[i] = {"name": name, "status": row.status, "error": error}
        self.last_statuses = {i: "completed" for i in results}
        self.last_statuses.update({i: info["status"] for i, info in failures.items()})
        if failures:
            first = next((i for i, info in failures.items() if info["status"] != "cancelled"), next(iter(failures)))
            cause = RemoteTraceback(failures[first]["name"], first, failures[first]["error"] or "")
            raise WorkflowFailed(results, failures) from cause
        return results


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("\n", " ")


def mermaid(nodes: Sequence[Tuple[str, str, str, Sequence[str]]]) -> str:
    """Mermaid `graph TD` text for (id, name, status, dependency ids) nodes, in order;
    dependencies outside the nodes are left out."""
    numbers = {job_id: n for n, (job_id, _, _, _) in enumerate(nodes)}
    lines = ["graph TD"]
    for job_id, name, status, _ in nodes:
        lines.append(f'  j{numbers[job_id]}["{_mermaid_text(name)}: {status}"]')
    for job_id, _, _, dependencies in nodes:
        for parent in dependencies:
            if parent in numbers:
                lines.append(f"  j{numbers[parent]} --> j{numbers[job_id]}")
    return "\n".join(lines)
