"""Pure readiness logic: which tracked jobs may run now, in priority order.

No SQL, no processes, no clock of its own: the supervisor tells it what
happened (a job added, a parent completed, an attempt to retry later) and asks
for the next ready jobs at a time it passes in. Each job waits on a counter of
unfinished parents; when it reaches zero the job enters the ready heap (or the
delayed heap, when a retry delay has not passed yet).

Ready order: higher priority first, then older (created_at, then insertion).
"""

from __future__ import annotations

import heapq
from datetime import datetime
from typing import Any, Callable, Dict, Hashable, KeysView, List, Optional, Sequence, Set, Tuple

OrderKey = Tuple[int, float, int]  # (-priority, created_at as a timestamp, sequence)

WAITING, READY, DELAYED, RUNNING = "waiting", "ready", "delayed", "running"
DROPPED = "dropped"  # no longer tracked (a record other structures may still hold)
_NO_KIND = object()  # no job's kind


def order_key(priority: int, created_at: str, sequence: int) -> OrderKey:
    """Higher priority first, then older (GigQ's ISO `created_at`), then submission order."""
    try:
        created = datetime.fromisoformat(created_at).timestamp()
    except (TypeError, ValueError):
        created = 0.0
    return (-int(priority or 0), created, sequence)


class _Tracked:
    """One tracked job. Children waiting for a parent are listed by record, so a completed
    parent reaches them without looking them up; a record discarded (or replaced by a new
    add) leaves its state DROPPED, and lists that still hold it skip it."""

    __slots__ = ("job_id", "state", "key", "waiting", "entry", "kind")

    def __init__(self, job_id: str, state: str, key: OrderKey, waiting: int, kind: Hashable) -> None:
        self.job_id = job_id
        self.state = state
        self.key = key
        self.waiting = waiting  # parents not yet completed (while WAITING)
        self.entry: Optional[tuple] = None  # its live entry in the ready or delayed heap
        self.kind = kind  # what the supervisor judges its run time by (its callable)


class Scheduler:
    """The jobs one supervisor tracks, and which of them are ready."""

    def __init__(self) -> None:
        self._jobs: Dict[str, _Tracked] = {}
        self._children: Dict[str, List[_Tracked]] = {}  # parent id -> jobs that waited for it when added
        # (-priority, created, sequence, job id): flat, because a heap of (key, id) pairs
        # compares nested tuples, twice the cost per pop (a heap of 50,000 ready jobs).
        # Entries of jobs that left the state since stay behind and are skipped.
        self._ready: List[Tuple[int, float, int, str]] = []
        self._delayed: List[Tuple[float, OrderKey, str]] = []
        self._n_ready = 0

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def state(self, job_id: str) -> Optional[str]:
        job = self._jobs.get(job_id)
        return None if job is None else job.state

    def pending_ids(self) -> Set[str]:
        """Tracked jobs that are not running here."""
        return {job_id for job_id, job in self._jobs.items() if job.state != RUNNING}

    def tracked_ids(self) -> KeysView[str]:
        """Every tracked job (a live view)."""
        return self._jobs.keys()

    def add(
        self,
        job_id: str,
        key: OrderKey,
        unfinished_parents: Sequence[str],
        eligible_at: Optional[float] = None,
        kind: Hashable = None,
    ) -> None:
        """Track a pending job; it becomes ready once every listed parent has completed.
        `kind` is handed back to pop_ready's `cap` (the tracker passes the job's callable key:
        module and name)."""
        if job_id in self._jobs:
            self.discard(job_id)  # tracked anew: what its old record waited for no longer counts
        if not unfinished_parents:
            job = self._jobs[job_id] = _Tracked(job_id, WAITING, key, 0, kind)
            self._release(job, eligible_at)
            return
        parents = set(unfinished_parents) if len(unfinished_parents) > 1 else unfinished_parents
        job = self._jobs[job_id] = _Tracked(job_id, WAITING, key, len(parents), kind)
        children = self._children
        for parent in parents:
            waiting = children.get(parent)
            if waiting is None:
                children[parent] = [job]
            else:
                waiting.append(job)

    def _release(self, job: _Tracked, eligible_at: Optional[float]) -> None:
        if eligible_at is None:
            job.state = READY
            self._n_ready += 1
            job.entry = (*job.key, job.job_id)
            heapq.heappush(self._ready, job.entry)
        else:
            job.state = DELAYED
            job.entry = (eligible_at, job.key, job.job_id)
            heapq.heappush(self._delayed, job.entry)

    def parent_completed(self, parent_id: str) -> int:
        """A parent completed: its tracked children may become ready. Returns how many
        tracked children were waiting for it."""
        waited = 0
        for child in self._children.pop(parent_id, ()):
            if child.state is not WAITING:  # discarded, or tracked anew, since
                continue
            waited += 1
            child.waiting -= 1
            if child.waiting == 0:
                self._release(child, None)
        return waited

    def sequence(self, job_id: str) -> int:
        """The tracked job's submission sequence (its rowid in the store)."""
        return self._jobs[job_id].key[2]

    def is_awaited(self, job_id: str) -> bool:
        """True when some tracked job waits for `job_id` to complete."""
        return bool(self._children.get(job_id))

    def external_parents(self) -> Set[str]:
        """Parents that waiting jobs (may) wait on but this scheduler does not track."""
        return {parent for parent in self._children if parent not in self._jobs}

    def pop_ready(self, now: float, limit: int, cap: Optional[Callable[[Any], int]] = None) -> List[str]:
        """Up to `limit` ready jobs in priority order; they are marked running.

        With `cap`, a job is taken only if the jobs taken, it included, number at most
        cap(kind) for the kind of each of them: jobs of a slow kind make a small batch. The
        first job that does not fit ends the batch (the ones after it wait too, so the
        order holds). If `cap` raises, the jobs taken so far are ready again."""
        jobs = self._jobs
        ready = self._ready
        self.release_due(now)
        taken: List[_Tracked] = []
        caps: Dict[Any, int] = {}
        kind: Any = _NO_KIND  # the kind of the job taken last, whose cap is applied already
        try:
            while ready and len(taken) < limit:
                entry = ready[0]
                job = jobs.get(entry[3])
                if job is None or job.entry is not entry:
                    heapq.heappop(ready)  # stale: the job left this state since
                    continue
                if cap is not None and job.kind is not kind:
                    most = caps.get(job.kind)
                    if most is None:
                        most = caps[job.kind] = cap(job.kind)
                    if len(taken) >= most:
                        break
                    limit = min(limit, most)
                    kind = job.kind
                heapq.heappop(ready)
                job.state = RUNNING
                job.entry = None
                self._n_ready -= 1
                taken.append(job)
        except BaseException:
            for job in taken:
                if job.state is RUNNING:
                    self._release(job, None)
            raise
        return [job.job_id for job in taken]

    def release_due(self, now: float) -> None:
        """Delayed jobs whose time has come join the ready ones."""
        jobs = self._jobs
        while self._delayed and self._delayed[0][0] <= now:
            entry = heapq.heappop(self._delayed)
            job = jobs.get(entry[2])
            if job is not None and job.entry is entry:
                self._release(job, None)

    def next_eligible_at(self) -> Optional[float]:
        """When the earliest delayed job becomes ready (stale heap entries may make it early)."""
        return self._delayed[0][0] if self._delayed else None

    def retry(self, job_id: str, eligible_at: Optional[float]) -> None:
        """A running job failed an attempt and will run again, not before `eligible_at`."""
        self._release(self._jobs[job_id], eligible_at)

    def ready_count(self, now: float) -> int:
        """How many jobs pop_ready(now, ...) could hand out."""
        jobs = self._jobs
        due = 0
        for entry in self._delayed:
            job = jobs.get(entry[2])
            if entry[0] <= now and job is not None and job.entry is entry:
                due += 1
        return self._n_ready + due

    def discard(self, job_id: str) -> None:
        """Stop tracking a job (it ended, or left pending without us)."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        if job.state is READY:
            self._n_ready -= 1
        job.state = DROPPED
        job.entry = None
