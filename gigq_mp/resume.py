"""Resume: which jobs of a workflow already ran, so that running it again skips them.

Each job gets a stable key from its callable (the pickled bytes, plus the source
text, so that editing an imported function counts too), its params and its
parents' keys, in order. Running a workflow again looks the keys up: a job whose
key already has a row reuses that row and its id (a failed one is requeued);
editing a function or a param changes the key of that job and of everything
downstream of it, which therefore runs again.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

from .jobqueue import encode_params, topological_order
from .model import Job
from .serialize import Encoded, dump_callable
from .store import Submission


@dataclass
class ResumePlan:
    """For each job of a workflow: its key, and the existing row it reuses (if any)."""

    keys: Dict[str, str]  # job id (as built) -> key
    params: Dict[str, Encoded] = field(default_factory=dict)  # job id -> its params, encoded once
    reuse: Dict[str, str] = field(default_factory=dict)  # job id (as built) -> id of the existing row
    status: Dict[str, str] = field(default_factory=dict)  # job id (as built) -> status of that row
    submission: Optional[Submission] = None  # where the jobs submitted now landed


def callable_key(function) -> str:
    _, blob = dump_callable(function)
    digest = hashlib.sha256(blob)
    try:
        digest.update(inspect.getsource(function).encode())
    except (OSError, TypeError):
        pass  # no source (a builtin, a notebook cell gone): the pickle alone decides
    return digest.hexdigest()


def job_keys(jobs: Sequence[Job], params: Optional[Dict[str, Encoded]] = None) -> Dict[str, str]:
    """A stable key per job; identical jobs (same callable, params and parents) are numbered.
    The encoded params of each job are left in `params`, so submitting need not encode them again."""
    params = {} if params is None else params
    by_function: Dict[int, bytes] = {}
    keys: Dict[str, str] = {}
    seen: Dict[str, int] = {}
    for job in topological_order(list(jobs)):
        function = by_function.get(id(job.function))
        if function is None:
            function = by_function[id(job.function)] = callable_key(job.function).encode()
        text, blob = params[job.id] = encode_params(job)
        # One hash of: the callable's key, the params, then "\0" + each parent's key (the id of
        # a parent outside the workflow), in order.
        data = function + (text.encode() if text is not None else blob)
        if job.dependencies:
            data += ("\0" + "\0".join([keys.get(parent, parent) for parent in job.dependencies])).encode()
        key = hashlib.sha256(data).hexdigest()[:40]
        count = seen[key] = seen.get(key, 0) + 1
        keys[job.id] = key if count == 1 else f"{key}#{count}"
    return keys


def plan_resume(store, jobs: Sequence[Job], force: bool = False) -> ResumePlan:
    """Match jobs to rows that ran before (none with `force`)."""
    plan = ResumePlan({})
    plan.keys = job_keys(jobs, plan.params)
    if force:
        return plan
    found = store.find_keys(list(plan.keys.values()))
    for job_id, key in plan.keys.items():
        if key in found and found[key][0] != job_id:
            plan.reuse[job_id], plan.status[job_id] = found[key]
    return plan


def apply_resume(jobs: Sequence[Job], plan: ResumePlan) -> None:
    """Give the reused jobs the ids of their rows, and point their children at them."""
    if not plan.reuse:
        return  # a first run: every dependency list stays as it is
    for job in jobs:
        job.dependencies = [plan.reuse.get(d, d) for d in job.dependencies]
    for job in jobs:
        if job.id in plan.reuse:
            old = job.id
            job.id = plan.reuse[old]
            plan.keys[job.id] = plan.keys.pop(old)
            plan.status[job.id] = plan.status.pop(old)
