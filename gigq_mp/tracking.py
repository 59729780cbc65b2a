"""Which pending jobs a supervisor may run, kept in step with the store.

Other processes write to the same database: they submit, cancel, requeue, and
other supervisors finish parents of our jobs. The tracker catches up with all
of it and tells the scheduler: it reads the change log past its cursor (new
jobs are the rows past the highest rowid it has seen), or, on the first call
and when the log no longer reaches back that far, every pending job. A
supervisor started by Workflow.run right after submitting starts from the
submission instead: those jobs are known, only the rest of its scope is read.
Jobs whose upstream failed are cascaded to `cancelled` here as well.
"""

from __future__ import annotations

import collections
import sys
from datetime import datetime
from typing import Callable, Collection, Dict, Iterable, List, Optional, Set, Tuple

from .log import get_logger
from .memory import freeze_long_lived, paused_gc, release_memory
from .model import BLOCKING, FINAL
from .scheduler import OrderKey, Scheduler, order_key
from .serialize import loads_json
from .store import Store, Submission

logger = get_logger(__name__)

SYNC_THROTTLE = 0.2  # seconds between reloads caused by other processes' writes
RESCAN_CHUNK = 5_000  # pending rows read at a time by a full rescan


def decode_ids(text: Optional[str], keep: bool = True) -> List[str]:
    """A JSON list of job ids (most jobs have none: skip the parser). Ids to `keep` are
    interned: a parent's id is then one string however many children name it."""
    if not text or text == "[]":
        return []
    return [sys.intern(i) for i in loads_json(text)] if keep else loads_json(text)


# A pending job's callable, as the supervisor times it: (module, name).
CallableKey = Tuple[str, str]

# A pending job as the tracker hands it to the scheduler: id, parent ids, order, retry_after,
# callable.
Entry = Tuple[str, List[str], OrderKey, Optional[str], CallableKey]


def eligible_at(retry_after: Optional[str], wall: datetime, mono: float) -> Optional[float]:
    """The monotonic time at which a job that must wait until `retry_after` may run."""
    if not retry_after:
        return None
    try:
        wait = (datetime.fromisoformat(retry_after) - wall).total_seconds()
    except ValueError:
        return None
    return mono + wait if wait > 0 else None


class Tracker:
    """The scheduler's view of the store for one supervisor: jobs in `scope` (all when
    None), and which of the `targets` have not reached a final status yet."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        *,
        scope: Optional[Set[str]],
        targets: Iterable[str],
        counts: "collections.Counter[str]",
        clock: Callable[[], float],
        submission: Optional[Submission] = None,
        on_rescan: Callable[[], None] = lambda: None,
    ):
        self.store = store
        self.scheduler = scheduler
        self.scope = scope
        self.open_targets: Set[str] = set(targets)
        self.counts = counts  # the supervisor's outcome counts: cascaded jobs count as cancelled
        self.clock = clock
        self._version: Optional[Tuple[int, int]] = None
        self._cursor: Optional[Tuple[int, int]] = None  # how far we have read the change log
        self._last_sync = float("-inf")
        # Jobs just submitted, taken as they are on the first sync (only with a scope: a
        # supervisor of the whole database must read every pending job anyway).
        self._submission = submission if scope is not None else None
        self.on_rescan = on_rescan  # called before each full rescan: rows may have been deleted
        self.froze_gc = False  # set when its start from a submission left objects out of cyclic GC
        self._callables: Dict[CallableKey, CallableKey] = {}  # one tuple per callable, however many jobs

    def _callable(self, module: str, name: str) -> CallableKey:
        key = (module, name)
        return self._callables.setdefault(key, key)

    def _entry(self, row) -> Entry:
        """The Entry of a row of Store.job_states / pending_states / changes_since."""
        return (
            sys.intern(row["id"]),
            decode_ids(row["dependencies"]),
            order_key(row["priority"], row["created_at"], row["seq"]),
            row["retry_after"],
            self._callable(row["function_module"], row["function_name"]),
        )

    def sync(self, running: Collection[str], force: bool = False) -> List[Tuple[str, str]]:
        """Catch up with what other processes wrote: read the change log past our cursor,
        or, on the first call (or when the log was pruned past us), every pending job.

        `running` holds the jobs running here. Returns (job id, status) for each of them
        that someone else changed meanwhile (a cancel with kill, most often).
        """
        now = self.clock()
        if not force and now - self._last_sync < SYNC_THROTTLE:
            return []  # looked less than SYNC_THROTTLE ago: most turns of the loop make no query
        version = self.store.data_version()
        self._last_sync = now
        if not force and version == self._version:
            return []
        self._version = version
        if self._submission is not None:
            with paused_gc():
                self._start_from_submission(running)
            force = False  # and read what changed since the submission
        if not force and self._cursor is not None:
            changes = self.store.changes_since(self._cursor)
            if changes is not None:
                self._cursor, rows = changes
                return self._apply_changes(rows, running)
            logger.info("the change log no longer reaches this supervisor's cursor; rescanning")
        self._cursor = self.store.change_cursor()
        self.on_rescan()
        with paused_gc():
            self._rescan(running)
        return []

    def forget(self, job_ids: Iterable[str]) -> None:
        """Jobs that ended cancelled because an upstream job failed."""
        for job_id in job_ids:
            self.counts["cancelled"] += 1
            self.scheduler.discard(job_id)
            self.open_targets.discard(job_id)

    def _start_from_submission(self, running: Collection[str]) -> None:
        """Track the jobs just submitted without reading them back; read only the rest of the
        scope (jobs submitted before, requeued or outside the workflow)."""
        submission, self._submission = self._submission, None
        self._cursor = submission.cursor
        first = submission.first_seq
        callable_key = self._callable
        entries = [
            (
                sys.intern(row.id),
                row.dependencies,
                order_key(row.priority, row.created_at, first + i),
                None,
                callable_key(row.function_module, row.function_name),
            )
            for i, row in enumerate(submission.rows)
            if row.id in self.scope
        ]
        if len(entries) == len(self.scope):
            others = []  # the scope is the jobs just submitted (their ids are distinct and in it)
        else:
            submitted = {row.id for row in submission.rows}
            others = [job_id for job_id in self.scope if job_id not in submitted and job_id not in self.scheduler]
        del submission  # the last reference to its rows: they go before the scheduler grows
        for row in self.store.job_states(others):
            if row["status"] == "pending" and row["id"] not in running:
                entries.append(self._entry(row))
        self._track(entries)
        self._resolve_external_parents(running)
        self._refresh_targets(running)
        release_memory()
        self.froze_gc = freeze_long_lived()  # Workflow.run thaws it when the run ends

    def _rescan(self, running: Collection[str]) -> None:
        """Read every pending job: ids first, then their rows a chunk at a time, so a
        100,000-job DAG never holds all its rows in memory at once."""
        pending_ids = {sys.intern(i) for i in self.store.pending_ids()}
        if self.scope is not None:
            pending_ids &= self.scope
        for job_id in self.scheduler.pending_ids() - pending_ids:
            self.scheduler.discard(job_id)  # cancelled or claimed by another supervisor
        for rows in self.store.pending_states(RESCAN_CHUNK):
            fresh = [self._entry(r) for r in rows if r["id"] in pending_ids and r["id"] not in self.scheduler]
            self._track(fresh, pending_ids)
        self._resolve_external_parents(running)
        self._refresh_targets(running)
        release_memory()

    def _apply_changes(self, rows: list, running: Collection[str]) -> List[Tuple[str, str]]:
        """Jobs that were inserted or changed status, by anyone (our own changes included)."""
        new_rows = []
        taken_away = []
        for row in {row["id"]: row for row in rows}.values():  # a new job may also have changed
            job_id, status = row["id"], row["status"]
            if job_id in running:
                if status != "running":
                    taken_away.append((job_id, status))
                continue
            if status == "pending":
                if job_id in self.scheduler and row["retry_after"]:
                    # Run and failed meanwhile (by another supervisor, say): it must wait now.
                    self.scheduler.discard(job_id)
                if job_id not in self.scheduler and (self.scope is None or job_id in self.scope):
                    new_rows.append(self._entry(row))  # submitted, requeued or revived elsewhere
                continue
            if job_id in self.scheduler:
                self.scheduler.discard(job_id)  # cancelled elsewhere
            if status in FINAL:
                self.open_targets.discard(job_id)
            if self.scheduler.is_awaited(job_id):  # a parent finished in another supervisor
                if status == "completed":
                    self.scheduler.parent_completed(job_id)
                elif status in BLOCKING:
                    self.forget(self.store.cascade(job_id, status))
        self._track(new_rows)
        return taken_away

    def _track(self, entries: List[Entry], also_pending: Set[str] = frozenset()) -> None:
        """Start tracking pending jobs. A parent counts as unfinished if tracked here, among
        `entries` or in `also_pending`; otherwise its status is read."""
        deps_of = {job_id: deps for job_id, deps, _, _, _ in entries}
        tracked = self.scheduler.tracked_ids()
        unknown = {
            p for deps in deps_of.values() for p in deps if p not in deps_of and p not in tracked and p not in also_pending
        }
        statuses = self.store.statuses(list(unknown))
        wall, mono = datetime.now(), self.clock()
        blocked = []
        add = self.scheduler.add
        for job_id, deps, key, retry_after, callable_key in entries:
            unfinished = []
            for parent in deps:
                if parent in deps_of or parent in tracked or parent in also_pending:
                    unfinished.append(parent)  # pending
                    continue
                row = statuses.get(parent)
                if row is None or row["status"] in BLOCKING:
                    blocked.append((job_id, parent, row))
                    break
                if row["status"] != "completed":
                    unfinished.append(parent)
            else:
                add(job_id, key, unfinished, eligible_at(retry_after, wall, mono) if retry_after else None, callable_key)
        for job_id, parent, parent_row in blocked:
            if parent_row is None:
                self.store.block(job_id, f"dependency {parent} does not exist", parent)
                self.forget([job_id] + self.store.cascade(job_id, "cancelled"))
            else:
                self.forget(self.store.cascade(parent, parent_row["status"]))

    def track_again(self, job_ids: List[str]) -> None:
        """Jobs taken away from this supervisor while they ran, pending again (cancelled and
        requeued meanwhile): the change log showed them while they were running here, when
        they could not be tracked, so track them now, or no one here would run them."""
        rows = self.store.job_states(job_ids)
        self._track(
            [
                self._entry(row)
                for row in rows
                if row["status"] == "pending"
                and row["id"] not in self.scheduler
                and (self.scope is None or row["id"] in self.scope)
            ]
        )

    def _resolve_external_parents(self, running: Collection[str]) -> None:
        external = self.scheduler.external_parents() - set(running)
        if not external:
            return
        statuses = self.store.statuses(list(external))
        for parent in external:
            row = statuses.get(parent)
            if row is not None and row["status"] == "completed":
                self.scheduler.parent_completed(parent)
            elif row is not None and row["status"] in BLOCKING:
                self.forget(self.store.cascade(parent, row["status"]))

    def _refresh_targets(self, running: Collection[str]) -> None:
        unseen = [t for t in self.open_targets if t not in self.scheduler and t not in running]
        for job_id, row in self.store.statuses(unseen).items():
            if row["status"] in FINAL:
                self.open_targets.discard(job_id)
