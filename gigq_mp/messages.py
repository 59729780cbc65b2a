"""The small frozen messages that cross the pipe between supervisor and worker process.

    supervisor --WorkerInit, JobBatch..., None(stop)--> worker process
    supervisor <--[] (ready), [JobSucceeded | JobFailed, ...]-- worker process

`Accepted`, `WorkerLost`, `Interrupted` and `Killed` never cross the pipe: the
pool makes them from what it sent, what came back and what it did.

Each message is a typed NamedTuple: immutable like a frozen dataclass, and cheaper
on the supervisor's hot path, which builds a RunJob and unpickles a reply for every
job: a NamedTuple is built in 0.3 us and unpickled in 0.4 us, a frozen dataclass of
the same fields in 1.1 us and 0.85 us (Python 3.11). Being tuples, two messages of
different types with equal fields compare equal: code tells them apart by type
(isinstance), never with ==.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple, Union


class WorkerInit(NamedTuple):
    """First message to a new worker process: where to import user modules from."""

    sys_path: Tuple[str, ...]
    cwd: str
    results_dir: Optional[str]  # where large results are written (None: keep them inline)
    capture_dir: Optional[str]  # where the job's stdout and stderr are captured (None: not captured)
    counter_path: Optional[str] = None  # the file counting the jobs this process started (wire.StartCounter)
    environ: Optional[Dict[str, str]] = None  # the supervisor's environment (the fork server's may be older)


class RunJob(NamedTuple):
    """Run one attempt of a job. Its callable is `function_key` in the worker's cache, or
    comes in the same `JobBatch`, or (no pickle stored: a GigQ job) is imported by name."""

    job_id: str
    attempt: int  # which claim of the job this is, unique within its supervisor; every reply repeats it
    function_key: str
    function_module: str
    function_name: str
    params_text: Optional[str]
    params_blob: Optional[bytes]
    # In the order of the job's dependencies: (parent id, result text, result blob, result file)
    # for each, or all of them as one PackedResults.
    parent_results: Union[Tuple[Tuple[str, Optional[str], Optional[bytes], Optional[str]], ...], "PackedResults"]
    pass_parent_results: Optional[bool]


class PackedResults(NamedTuple):
    """A job's parent results when each is JSON text that this run's worker processes wrote:
    the parents' ids, and their results as one JSON array text in the same order. A fan-in
    of thousands of parents then costs one string on the pipe and one parse in the worker,
    not a tuple and a parse per parent."""

    ids: Tuple[str, ...]
    texts: str


class JobBatch(NamedTuple):
    """Jobs for one worker process, with the pickled callables it does not hold yet; and
    attempts sent before that must not start after all (cancelled while they waited)."""

    # Each RunJob as a plain tuple of its fields, which the worker makes a RunJob again: pickling
    # a NamedTuple calls a Python method per instance, three times the cost of a batch of tuples.
    runs: Tuple[tuple, ...]
    functions: Dict[str, bytes]
    skip: Tuple[int, ...] = ()  # RunJob.attempt of each


class Accepted(NamedTuple):
    """The worker process started the attempt (the pool infers it: jobs run in the order
    sent): the timeout clock starts now."""

    job_id: str
    attempt: int
    pid: int


class JobSucceeded(NamedTuple):
    """The job returned; its result is already encoded (JSON text, pickle bytes or a file)."""

    job_id: str
    attempt: int
    result_text: Optional[str]
    result_blob: Optional[bytes]
    result_path: Optional[str]
    stdout: str = ""
    stderr: str = ""
    seconds: Optional[float] = None  # how long the job ran, measured in the worker process
    pid: Optional[int] = None  # the worker process that ran it


class JobFailed(NamedTuple):
    """The job raised, or its result could not be serialized. `error` holds the traceback."""

    job_id: str
    attempt: int
    error_type: str
    error: str
    stdout: str = ""
    stderr: str = ""
    seconds: Optional[float] = None
    pid: Optional[int] = None


class WorkerLost(NamedTuple):
    """The worker process running this attempt ended without answering."""

    job_id: str
    attempt: int
    error: str
    stdout: str = ""
    stderr: str = ""


class Unstarted(NamedTuple):
    """A job sent ahead to a worker process that ended (or was killed) before starting it,
    or that it skipped when told to."""

    job_id: str
    attempt: int


class Interrupted(NamedTuple):
    """The attempt ran, but its worker process went for a reason that is not the job's (its
    fork server died, say) before the job's reply arrived: it runs again, this attempt on
    record as interrupted and not counted."""

    job_id: str
    attempt: int
    error: str


class Killed(NamedTuple):
    """The supervisor killed this attempt's process tree: past its deadline (`status`
    "timeout") or past its memory limit ("failed"). `error` says which and why."""

    job_id: str
    attempt: int
    status: str
    error: str
    stdout: str = ""
    stderr: str = ""
