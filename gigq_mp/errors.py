"""Exception classes of gigq_mp: one base class, messages that name the offending value."""

from __future__ import annotations


class GigqMpError(Exception):
    """Base class of every exception gigq_mp raises on purpose."""


class ValidationError(GigqMpError, ValueError):
    """Bad input caught before anything was written: unknown dependency, cycle, bad option."""


class SerializationError(GigqMpError, TypeError):
    """A callable, params or result that cannot be serialized; the message names it."""


class WaitTimeout(GigqMpError, TimeoutError):
    """`Workflow.run(timeout=...)` or `JobQueue.wait(timeout=...)` ran out of time."""


class WorkflowFailed(GigqMpError):
    """Some jobs of a workflow did not complete.

    `results` maps each completed job id to its result; `failures` maps each other
    job id to a dict with its `name`, `status` and `error`.
    """

    def __init__(self, results: dict, failures: dict):
        self.results = results
        self.failures = failures
        lines = [f"{len(failures)} of {len(results) + len(failures)} jobs did not complete:"]
        for job_id, info in failures.items():
            first_line = (info.get("error") or "").strip().splitlines()[:1]
            reason = f": {first_line[0]}" if first_line else ""
            lines.append(f"  {info['name']} ({job_id}) {info['status']}{reason}")
        super().__init__("\n".join(lines))

    def _repr_markdown_(self) -> str:
        """A table of the jobs that did not complete, for notebooks."""
        rows = ["| job | status | error |", "| --- | --- | --- |"]
        for job_id, info in self.failures.items():
            first = (info.get("error") or "").strip().splitlines()[:1]
            error = (first[0] if first else "").replace("|", "\\|")
            rows.append(f"| {info['name']} (`{job_id[:8]}`) | {info['status']} | {error} |")
        return "\n".join([f"**{len(self.failures)} jobs did not complete**", "", *rows])


class RemoteTraceback(GigqMpError):
    """The error of a job as its worker process reported it, traceback included; set as
    the `__cause__` of WorkflowFailed so that Python prints it with the failure."""

    def __init__(self, name: str, job_id: str, error: str):
        self.job_name, self.job_id = name, job_id
        super().__init__(f"job {name} ({job_id}) failed in a worker process:\n\n{error}")
