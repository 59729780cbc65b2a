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
from typing import Dict, KeysView, List, Optional, Sequence, Set, Tuple

OrderKey = Tuple[int, float, int]  # (-priority, created_at as a timestamp, sequence)

WAITING, READY, DELAYED, RUNNING = "waiting", "ready", "delayed", "running"


def order_key(priority: int, created_at: str, sequence: int) -> OrderKey:
    """Higher priority first, then older (GigQ's ISO `created_at`), then submission order."""
    try:
        created = datetime.fromisoformat(created_at).timestamp()
    except (TypeError, ValueError):
        created = 0.0
    return (-int(priority or 0), created, sequence)


class Scheduler:
    """The jobs one supervisor tracks, and which of them are ready."""

    def __init__(self) -> None:
        self._state: Dict[str, str] = {}
        self._key: Dict[str, OrderKey] = {}
        # job -> [parents not yet completed, token of this add()]; a parent's list holds
        # (child, token) so entries left by a discarded-then-re-added child are ignored.
        self._unfinished: Dict[str, List[int]] = {}
        self._children: Dict[str, List[Tuple[str, int]]] = {}
        self._tokens = 0
        # (-priority, created, sequence, job id): flat, because a heap of (key, id) pairs
        # compares nested tuples, twice the cost per pop (a heap of 50,000 ready jobs).
        self._ready: List[Tuple[int, float, int, str]] = []
        self._delayed: List[Tuple[float, OrderKey, str]] = []
        self._eligible_at: Dict[str, float] = {}
        self._n_ready = 0

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._state

    def __len__(self) -> int:
        return len(self._state)

    def state(self, job_id: str) -> Optional[str]:
        return self._state.get(job_id)

    def pending_ids(self) -> Set[str]:
        """Tracked jobs that are not running here."""
        return {job_id for job_id, state in self._state.items() if state != RUNNING}

    def tracked_ids(self) -> KeysView[str]:
        """Every tracked job (a live view)."""
        return self._state.keys()

    def add(
        self, job_id: str, key: OrderKey, unfinished_parents: Sequence[str], eligible_at: Optional[float] = None
    ) -> None:
        """Track a pending job; it becomes ready once every listed parent has completed."""
        self._key[job_id] = key
        if not unfinished_parents:
            self._release(job_id, eligible_at)
            return
        parents = set(unfinished_parents) if len(unfinished_parents) > 1 else unfinished_parents
        self._tokens += 1
        self._state[job_id] = WAITING
        self._unfinished[job_id] = [len(parents), self._tokens]
        entry = (job_id, self._tokens)
        children = self._children
        for parent in parents:
            waiting = children.get(parent)
            if waiting is None:
                children[parent] = [entry]
            else:
                waiting.append(entry)

    def _release(self, job_id: str, eligible_at: Optional[float]) -> None:
        if eligible_at is None:
            self._state[job_id] = READY
            self._n_ready += 1
            heapq.heappush(self._ready, (*self._key[job_id], job_id))
        else:
            self._state[job_id] = DELAYED
            self._eligible_at[job_id] = eligible_at
            heapq.heappush(self._delayed, (eligible_at, self._key[job_id], job_id))

    def parent_completed(self, parent_id: str) -> int:
        """A parent completed: its tracked children may become ready. Returns how many
        tracked children were waiting for it."""
        waited = 0
        for child, token in self._children.pop(parent_id, ()):
            waiting = self._unfinished.get(child)
            if waiting is None or waiting[1] != token or self._state.get(child) != WAITING:
                continue
            waited += 1
            waiting[0] -= 1
            if waiting[0] == 0:
                del self._unfinished[child]
                self._release(child, None)
        return waited

    def sequence(self, job_id: str) -> int:
        """The tracked job's submission sequence (its rowid in the store)."""
        return self._key[job_id][2]

    def is_awaited(self, job_id: str) -> bool:
        """True when some tracked job waits for `job_id` to complete."""
        return bool(self._children.get(job_id))

    def external_parents(self) -> Set[str]:
        """Parents that waiting jobs (may) wait on but this scheduler does not track."""
        return {parent for parent in self._children if parent not in self._state}

    def pop_ready(self, now: float, limit: int) -> List[str]:
        """Up to `limit` ready jobs in priority order; they are marked running."""
        while self._delayed and self._delayed[0][0] <= now:
            eligible_at, key, job_id = heapq.heappop(self._delayed)
            if self._state.get(job_id) == DELAYED and self._eligible_at.get(job_id) == eligible_at:
                del self._eligible_at[job_id]
                self._release(job_id, None)
        taken: List[str] = []
        while self._ready and len(taken) < limit:
            entry = heapq.heappop(self._ready)
            job_id = entry[3]
            if self._state.get(job_id) == READY and self._key.get(job_id) == entry[:3]:
                self._state[job_id] = RUNNING
                self._n_ready -= 1
                taken.append(job_id)
        return taken

    def next_eligible_at(self) -> Optional[float]:
        """When the earliest delayed job becomes ready (stale heap entries may make it early)."""
        return self._delayed[0][0] if self._delayed else None

    def retry(self, job_id: str, eligible_at: Optional[float]) -> None:
        """A running job failed an attempt and will run again, not before `eligible_at`."""
        self._release(job_id, eligible_at)

    def ready_count(self, now: float) -> int:
        """How many jobs pop_ready(now, ...) could hand out."""
        due = sum(1 for eligible_at, _, job_id in self._delayed if eligible_at <= now and self._state.get(job_id) == DELAYED)
        return self._n_ready + due

    def discard(self, job_id: str) -> None:
        """Stop tracking a job (it ended, or left pending without us)."""
        if self._state.pop(job_id, None) == READY:
            self._n_ready -= 1
        self._key.pop(job_id, None)
        self._unfinished.pop(job_id, None)
        self._eligible_at.pop(job_id, None)

