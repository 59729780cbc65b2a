"""The supervisor loop: claim ready jobs, dispatch them, wait, decide, record.

    sync with the store (tracking.py) ──> scheduler (ready heap) ──claim──> store (running)
          ^                                                      │
          │                            RunJob ──> executor (worker processes)
          │                                                      │
    record outcome <── decide (retry / final / cascade) <── events, deadlines

The supervisor alone owns the database connection and the scheduling state.
It waits in one place, `executor.wait`, over the worker pipes and a wake-up
pipe, with a timeout set by the nearest deadline, retry time or poll. Its
clock is a parameter so deadline logic can be tested on fake time.
"""

from __future__ import annotations

import atexit
import collections
import heapq
import os
import random
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple, Union

from .log import get_logger
from .messages import (
    Accepted, Interrupted, JobFailed, JobSucceeded, Killed, PackedResults, RunJob, Unstarted, WorkerLost,
)
from .model import FINAL
from .pool import Executor, LocalPool
from .proctree import tree_rss
from .recovery import reclaim_from_dead, register
from .resultcache import ResultCache
from .scheduler import Scheduler
from .store import AttemptRef, Claimed, Store, Submission, Success, remove_file
from .tracking import CallableKey, Tracker, decode_ids

logger = get_logger(__name__)

RETRY_BACKOFF_CAP = 3600.0  # seconds: the longest exponential retry delay
RETRY_JITTER = 0.25  # a backed-off delay grows by up to this fraction, never shrinks
QUEUED_SECONDS = 0.02  # jobs are sent ahead to a worker process: about this much work...
MAX_DEPTH = 128  # ...and at most this many jobs
UNTIMED_SECONDS = 1.0  # the run time assumed of a callable none of whose jobs has finished here
MAX_TIMED_FUNCTIONS = 4096  # callables whose run times are kept
CLAIM_AHEAD = 64  # short jobs claimed beyond the free slots (QUEUED_SECONDS of work a worker process at most)
PROGRESS_SECONDS = 0.25  # between calls of the progress callback
PRUNE_CHANGES_EVERY = 10_000  # attempts between trims of the change log
MEMORY_CHECK_SECONDS = 0.1  # how often jobs with a memory limit are measured
KILL_RETRY_SECONDS = 0.05  # a kill that found its job not running is tried again this much later
RESULT_CACHE_BYTES = 32 * 2**20  # small results kept for the children that wait for them...
RESULT_CACHE_ITEM_BYTES = 64 * 2**10  # ...each at most this large
HEARTBEAT_SECONDS = 5.0  # how often a supervisor says it is alive
RECLAIM_SECONDS = 2.0  # how often an idle supervisor looks for jobs of dead supervisors
FLUSH_SECONDS = 0.02  # the longest a recorded outcome waits in an open transaction...
PEER_FLUSH_SECONDS = 0.002  # ...or, with other supervisors on the database, holds its write lock

_live: "weakref.WeakSet[Supervisor]" = weakref.WeakSet()


@dataclass(slots=True)
class Attempt:
    """One attempt of a job running in this supervisor's pool."""

    job_id: str
    name: str
    ref: AttemptRef
    number: int
    max_attempts: int
    timeout: float
    retry_delay: float
    retry_backoff: bool
    max_memory_mb: Optional[float] = None
    started: Optional[float] = None  # when the worker process accepted the job (clock time)
    deadline: Optional[float] = None
    pid: Optional[int] = None
    peak_mb: float = 0.0
    claim: int = 0  # unique per claim in this supervisor: what RunJob.attempt and replies carry
    succeeded: bool = False  # its success is queued (a Ctrl-C may make its event come again)
    # What its run time counts for: its callable's module and __name__ (the row's
    # function_module and function_name). By name, not by pickle: closures of one function (a
    # lambda made in a loop) share their timing; so do every functools.partial ("partial")
    # and same-named functions of one module, which is coarser than it should be.
    timed_as: CallableKey = ("", "")


def retry_delay_for(attempt: Attempt, jitter: float) -> float:
    """Seconds before the next attempt: retry_delay, doubled per attempt when backing off."""
    if not attempt.retry_backoff:
        return float(attempt.retry_delay)
    base = float(attempt.retry_delay) or 1.0
    return min(base * 2 ** (attempt.number - 1), RETRY_BACKOFF_CAP) * (1.0 + RETRY_JITTER * jitter)


class Supervisor:
    """Runs pending jobs of one database in a pool of worker processes."""

    def __init__(
        self,
        store: Store,
        *,
        worker_id: str,
        concurrency: int,
        polling_interval: float = 5.0,
        grace_period: float = 5.0,
        scope: Optional[Set[str]] = None,
        targets: Optional[Set[str]] = None,
        executor_factory: Optional[Callable[[], Executor]] = None,
        executor: Optional[Executor] = None,
        max_tasks_per_worker: Optional[int] = None,
        max_memory_mb: Optional[float] = None,
        heartbeat_timeout: float = 60.0,
        progress: Optional[Callable[[dict], None]] = None,
        submission: Optional[Submission] = None,  # jobs just submitted, with `scope`: not read back
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.polling_interval = polling_interval
        self.grace_period = grace_period
        self.clock = clock
        self.max_memory_mb = max_memory_mb  # for jobs that set none
        self.heartbeat_timeout = heartbeat_timeout  # when a supervisor on another host counts as dead
        self._next_memory_check = 0.0
        self.progress = progress  # called with counts every PROGRESS_SECONDS, and at the end
        self._next_progress = 0.0
        self._run_started = self.clock()
        self.counts = collections.Counter()  # final outcomes recorded by this supervisor
        self._peers = 0  # other supervisors registered on this database
        self._deadlines: List[Tuple[float, str, int]] = []  # heap of started attempts' deadlines
        self._limited: Set[str] = set()  # started attempts with a memory limit
        self._last_heartbeat = float("-inf")
        self._last_reclaim = float("-inf")
        self._executor_factory = executor_factory or (
            lambda: LocalPool(
                concurrency, max_tasks_per_worker=max_tasks_per_worker, results_dir=store.results_dir()
            )
        )
        self.executor: Optional[Executor] = executor  # started early by the caller, or on first use
        self._stopping: Optional[Executor] = None  # stopped by close(wait=False), not waited for yet
        self.scheduler = Scheduler()
        self._parent_results = ResultCache(RESULT_CACHE_BYTES, RESULT_CACHE_ITEM_BYTES)
        self.tracker = Tracker(
            store, self.scheduler, scope=scope, targets=targets or (), counts=self.counts, clock=clock,
            submission=submission, on_rescan=self._parent_results.clear,
        )
        self.running: Dict[str, Attempt] = {}
        self.open_targets = self.tracker.open_targets  # jobs run(until=...) waits for
        self._targets = frozenset(targets or ())
        self.finished_attempts = 0
        self._next_prune = PRUNE_CHANGES_EVERY  # finished attempts at the next trim of the change log
        self._durations: Dict[CallableKey, float] = {}  # a callable's moving average run time
        self._functions: Dict[str, Optional[bytes]] = {}
        self._claims = 0  # claims made by this supervisor (Attempt.claim)
        self._buffer: Deque[RunJob] = collections.deque()  # claimed and committed, not yet sent
        self._successes: List[Success] = []  # handled, to be written by _record_successes
        self._unhandled: Deque[object] = collections.deque()  # from the executor, not applied yet
        self._stop = threading.Event()
        self._cold = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        _live.add(self)

    # -- control from other threads and signal handlers ----------------------------------------

    def request_stop(self, cold: bool = False) -> None:
        """Stop claiming; running jobs get the grace period (none when `cold`)."""
        if cold:
            self._cold.set()
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            logger.debug("wake-up pipe full or closed; the loop wakes anyway")

    # -- the loop -------------------------------------------------------------------------------

    def run(self, until: Optional[Callable[[], bool]] = None, max_attempts: Optional[int] = None) -> int:
        """Run until stopped, until `until()` is true, or until `max_attempts` attempts ended.

        With `max_attempts`, returns as soon as nothing is ready and nothing runs.
        Returns the number of attempts that ended.

        Writes are batched: one transaction stays open while outcomes are applied,
        and is committed before any newly claimed job leaves for a worker (so no
        two supervisors can run one job), or after FLUSH_SECONDS at the latest.
        """
        started = self.finished_attempts
        self._stop.clear()
        self._cold.clear()
        batch_since: Optional[float] = None
        try:
            self._register()
            self._reclaim_from_dead()
            self._sync(force=True)
            while True:
                now = self.clock()
                if batch_since is None:
                    self.store.begin_batch()
                    batch_since = now
                self._handle_all([])  # what the last wait brought
                self._sync()
                self._housekeeping(now)
                self._report(now)
                done = self.finished_attempts - started
                finished = self._stop.is_set() or (until is not None and until())
                budget = None
                if max_attempts is not None:
                    finished = finished or (done >= max_attempts and not self.running)
                    budget = max_attempts - done - len(self.running)
                if finished:
                    self._release_buffer()
                claimed = not finished and self._claim(now, budget)
                if finished or claimed or now - batch_since >= self._flush_seconds():
                    batch_since = None  # closed by the commit, even one that fails
                    self.store.commit_batch()
                self._send()
                if finished or (max_attempts is not None and not self.running and not self.scheduler.ready_count(now)):
                    break  # with max_attempts, nothing running and nothing ready
                timeout = self._wait_timeout(now)
                if batch_since is not None:
                    timeout = min(timeout, max(0.0, batch_since + self._flush_seconds() - now))
                self._wait(timeout)
            self._drain()
            self._report(self.clock(), final=True)
        except KeyboardInterrupt:
            try:
                if batch_since is not None:
                    self._close_batch_after_error()
            finally:
                self._stop_after_interrupt()
            raise
        except BaseException:
            try:
                if batch_since is not None:
                    self._close_batch_after_error()
            finally:
                self._abort()
            raise
        return self.finished_attempts - started

    def _stop_after_interrupt(self) -> None:
        """Ctrl-C: stop as for stop() (running jobs get the grace period); a second Ctrl-C
        during the grace period stops at once. Either way no worker process is left."""
        logger.warning("interrupted: giving running jobs %g s to finish (Ctrl-C again to kill them)", self.grace_period)
        try:
            self._stop.set()
            self._release_buffer()
            self._drain()
        finally:
            self._abort()

    # -- registration, heartbeat, jobs of dead supervisors --------------------------------------

    def _register(self) -> None:
        register(self.store, self.worker_id)
        self._last_heartbeat = self.clock()
        self._peers = len(self.store.supervisors()) - 1

    def _housekeeping(self, now: float) -> None:
        """Heartbeat; trim the change log now and then; and, when idle, take back the jobs
        of supervisors that died."""
        if self.finished_attempts >= self._next_prune:
            self._next_prune = self.finished_attempts + PRUNE_CHANGES_EVERY
            self.store.prune_changes()
        if now - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self.store.heartbeat(self.worker_id)
            self._peers = len(self.store.supervisors()) - 1
            self._last_heartbeat = now
        if not self.running and not self._buffer and now - self._last_reclaim >= RECLAIM_SECONDS:
            if self.scheduler.ready_count(now) == 0 and self._reclaim_from_dead():
                self._sync(force=True)

    def _reclaim_from_dead(self) -> int:
        """Running jobs whose supervisor is provably dead go back to pending."""
        self._last_reclaim = self.clock()
        return reclaim_from_dead(self.store, self.worker_id, self.heartbeat_timeout)

    def _report(self, now: float, final: bool = False) -> None:
        if self.progress is None or (not final and now < self._next_progress):
            return
        self._next_progress = now + PROGRESS_SECONDS
        total = len(self._targets) if self._targets else None
        self.progress(
            {
                "total": total,
                "done": total - len(self.open_targets) if total is not None else sum(self.counts.values()),
                "running": sum(1 for a in self.running.values() if a.started is not None),
                "completed": self.counts["completed"],
                "failed": self.counts["failed"] + self.counts["timeout"],
                "cancelled": self.counts["cancelled"],
                "elapsed": now - self._run_started,
                "final": final,
            }
        )

    def _flush_seconds(self) -> float:
        return PEER_FLUSH_SECONDS if self._peers else FLUSH_SECONDS

    def _close_batch_after_error(self) -> None:
        """Keep the outcomes already applied, the successes queued included (their jobs left
        `running`, results in hand); roll back if we cannot. A second Ctrl-C goes through."""
        try:
            self._record_successes()
        except BaseException as exc:
            self.store.rollback_batch()
            if not isinstance(exc, Exception):
                raise
            logger.exception("could not record the last successes; the batch was rolled back")
            return
        try:
            self.store.commit_batch()  # rolls back by itself if it cannot commit
        except Exception:
            logger.exception("could not commit the last batch; it was rolled back")

    def _wait(self, timeout: Optional[float]) -> None:
        """The one waiting point: worker pipes and the wake-up pipe; then deadlines passed.
        What it brings is queued at once for _handle_all."""
        self._unhandled.extend(self._ensure_executor().wait(timeout, [self._wake_r]))
        self._drain_wake()
        self._enforce_limits(self.clock())

    def _wait_timeout(self, now: float) -> float:
        # Retries now due become ready first: counted as delayed, they would make every
        # wait time out at once while nothing may be claimed (workers busy, stopping).
        self.scheduler.release_due(now)
        candidates = [self.polling_interval]
        if self._deadlines:
            candidates.append(self._deadlines[0][0] - now)
        if self._limited:
            candidates.append(self._next_memory_check - now)
        eligible = self.scheduler.next_eligible_at()
        if eligible is not None:
            candidates.append(eligible - now)
        return max(0.0, min(candidates))

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                continue
        except BlockingIOError:
            return

    def _ensure_executor(self) -> Executor:
        if self.executor is None:
            self.executor = self._executor_factory()
        return self.executor

    def _sync(self, force: bool = False) -> None:
        """Catch up with other processes' writes (tracking.py); stop the jobs running here
        that someone else changed meanwhile."""
        again = []
        for job_id, status in self.tracker.sync(self.running, force):
            if job_id in self.running:
                self._taken_away(self.running[job_id], status)
                if status == "pending":
                    again.append(job_id)  # cancelled and requeued, say: it must run again
        if again:
            self.tracker.track_again(again)

    # -- dispatch -------------------------------------------------------------------------------

    def _depth(self) -> int:
        """Jobs per worker process: several while jobs are short, so no worker waits for
        a round trip and one write carries several jobs; one at a time for long jobs,
        so none queues behind a long job while another worker idles (nor a job of higher
        priority that becomes ready meanwhile).

        Judged by the slowest callable among the jobs waiting to be sent, by its own run
        times: one none of whose jobs has finished here yet counts as slow. So when a stage
        of quick jobs feeds a stage of slower ones, the slower ones are not queued deep on
        the strength of the quick ones' times."""
        return _depth_for(self._slowest_waiting())

    def _seconds(self, callable_key: CallableKey) -> float:
        """What a job of this callable takes, by its own run times here (UNTIMED_SECONDS for
        one none of whose jobs has finished here yet)."""
        return self._durations.get(callable_key, UNTIMED_SECONDS)

    def _run_seconds(self, run: RunJob) -> float:
        """_seconds() of the callable of a job about to be sent."""
        return self._durations.get((run.function_module, run.function_name), UNTIMED_SECONDS)

    def _slowest_waiting(self) -> float:
        """Seconds a job of the slowest callable waiting to be sent takes (0 with none)."""
        if not self._buffer:
            return 0.0
        return max(map(self._run_seconds, self._buffer))

    def _claim_ahead(self, slowest: float) -> int:
        """Short jobs are claimed this many beyond the free slots, so one commit covers many:
        about QUEUED_SECONDS of work per worker process (a job of higher priority that becomes
        ready waits for no more), at most CLAIM_AHEAD jobs; none while another supervisor
        shares the database (it would be starved)."""
        if self._peers:
            return 0
        return min(CLAIM_AHEAD, int(QUEUED_SECONDS * self.concurrency / max(slowest, 1e-6)))

    def _claim(self, now: float, budget: Optional[int]) -> bool:
        """Claim ready jobs into the send buffer (inside the open batch). True if any were claimed.

        A claim takes what the free slots hold at the depth its own slowest job (or the
        slowest job already waiting in the buffer) allows, plus about QUEUED_SECONDS of its
        work per worker process ahead, so one commit covers several quick jobs; jobs of
        callables not timed yet count as slow (UNTIMED_SECONDS). A job of higher priority
        that becomes ready waits for that much claimed work at most.
        """
        executor = self._ensure_executor()
        buffered = self._slowest_waiting()  # read once: it walks the buffer
        waiting = len(self._buffer)

        def most(seconds: float) -> int:
            return executor.free_slots(_depth_for(seconds)) + self._claim_ahead(seconds) - waiting

        want = most(buffered)  # the most any claim may take: one of quick jobs
        if budget is not None:
            want = min(want, budget)
        if want <= 0:
            return False
        seconds = self._seconds
        job_ids = self.scheduler.pop_ready(now, want, lambda key: most(max(seconds(key), buffered)))
        if not job_ids:
            return False
        claimed = self.store.claim([(j, self.scheduler.sequence(j)) for j in job_ids], self.worker_id)
        try:
            taken = {row.id for row, _ in claimed}
            for job_id in job_ids:
                if job_id not in taken:
                    self.scheduler.discard(job_id)  # another supervisor or a cancel got there first
            parents = {row.id: decode_ids(row.dependencies, keep=False) for row, _ in claimed}
            kept = self._parent_results.take_many([p for deps in parents.values() for p in deps])
            stored = self.store.results([p for deps in parents.values() for p in deps if p not in kept])
            self._buffer.extend(self._prepare(row, ref, parents[row.id], kept, stored) for row, ref in claimed)
        except BaseException:
            for row, ref in claimed:  # claimed, never ours in memory (a Ctrl-C): back to pending
                if row.id not in self.running:
                    self.store.release_unstarted(ref)
            raise
        return bool(claimed)

    def _prepare(self, row: Claimed, ref: AttemptRef, parents: List[str], kept: dict, stored: dict) -> RunJob:
        """The attempt of a job just claimed, and the message that runs it, with the results of
        its parents: `kept` (from this run's workers) or else `stored`. (Arguments by position:
        this runs once per job, and keywords cost a third of it.)"""
        job_id = ref.job_id
        key = row.function_key or f"{row.function_module}:{row.function_name}"
        if key not in self._functions:
            self._functions[key] = self.store.function_blob(key) if row.function_key else None
        self._claims += 1
        claim = self._claims
        self.running[job_id] = Attempt(
            job_id,  # job_id
            row.name,  # name
            ref,  # ref
            row.attempts,  # number
            row.max_attempts,  # max_attempts
            float(row.timeout),  # timeout
            float(row.retry_delay or 0),  # retry_delay
            bool(row.retry_backoff),  # retry_backoff
            row.max_memory_mb or self.max_memory_mb,  # max_memory_mb
            claim=claim,
            timed_as=(row.function_module, row.function_name),
        )
        inject = row.pass_parent_results
        return RunJob(
            job_id,  # job_id
            claim,  # attempt
            key,  # function_key
            row.function_module,  # function_module
            row.function_name,  # function_name
            row.params,  # params_text
            row.params_blob,  # params_blob
            _parent_results(parents, kept, stored) if parents else (),  # parent_results
            None if inject is None else bool(inject),  # pass_parent_results
        )

    def _send(self) -> None:
        """Hand claimed (and committed) jobs to the executor's free slots."""
        if not self._buffer:
            return
        executor = self._ensure_executor()
        depth = self._depth()
        count = min(executor.free_slots(depth), len(self._buffer))
        if not count:
            return
        runs = [self._buffer.popleft() for _ in range(count)]
        slow = ()
        if depth == 1:  # some of them are long: the pool queues no short job behind one
            slow = {r.attempt for r in runs if _depth_for(self._run_seconds(r)) == 1}
        executor.dispatch(runs, depth, self._functions, slow)

    def _release_buffer(self) -> None:
        """Stopping: claimed jobs that never left for a worker go back to pending."""
        while self._buffer:
            run = self._buffer.popleft()
            self._handle(Unstarted(run.job_id, run.attempt))

    # -- outcomes -------------------------------------------------------------------------------

    def _handle_all(self, events: list) -> None:
        """Apply `events`, after any left from before, inside the caller's transaction:
        successes are written together at the end, failures and the rest one by one. An
        event leaves the queue once applied, so one a Ctrl-C caught in between (replies of
        jobs that ended, say) is applied by the stop that follows, not lost."""
        self._unhandled.extend(events)
        while self._unhandled:
            self._handle(self._unhandled[0])
            self._unhandled.popleft()
        self._record_successes()

    def _handle(self, event) -> None:
        """Apply one event from the executor; a success is only queued (_record_successes)."""
        attempt = self.running.get(event.job_id)
        if attempt is None or event.attempt != attempt.claim:  # a reply for an earlier claim
            logger.debug("ignoring %r for an attempt that is no longer running", event)
            return
        if isinstance(event, Accepted):
            attempt.started = self.clock()
            attempt.deadline = attempt.started + attempt.timeout
            heapq.heappush(self._deadlines, (attempt.deadline, attempt.job_id, attempt.claim))
            attempt.pid = event.pid
            if attempt.max_memory_mb:
                self._limited.add(attempt.job_id)
        elif isinstance(event, JobSucceeded):
            attempt.pid = event.pid or attempt.pid
            self._succeeded(attempt, event)
        elif isinstance(event, JobFailed):
            attempt.pid = event.pid or attempt.pid
            self._failed(attempt, "failed", event.error, (event.stdout, event.stderr), event.seconds)
        elif isinstance(event, WorkerLost):
            self._failed(attempt, "failed", event.error, (event.stdout, event.stderr))
        elif isinstance(event, Killed):
            self._failed(attempt, event.status, event.error, (event.stdout, event.stderr))
        elif isinstance(event, (Unstarted, Interrupted)):
            if isinstance(event, Unstarted):
                requeued = self.store.release_unstarted(attempt.ref)  # then forgotten: see _failed
            else:
                requeued = self.store.record_interrupted(attempt.ref, attempt.pid, event.error)
            del self.running[attempt.job_id]
            if requeued:
                self.scheduler.retry(attempt.job_id, None)
            else:
                self.scheduler.discard(attempt.job_id)
        else:
            raise TypeError(f"unexpected event from the executor: {event!r}")

    def _ended(self, attempt: Attempt, seconds: Optional[float] = None) -> None:
        """Forget a finished attempt; `seconds` is how long its job ran, as the worker measured."""
        del self.running[attempt.job_id]
        self.finished_attempts += 1
        if seconds is None and attempt.started is not None:
            seconds = self.clock() - attempt.started
        if seconds is not None:
            known = self._durations.get(attempt.timed_as)
            if known is None and len(self._durations) >= MAX_TIMED_FUNCTIONS:
                self._durations.clear()  # thousands of distinct functions: start over, not grow
            self._durations[attempt.timed_as] = seconds if known is None else known + 0.2 * (seconds - known)

    def _succeeded(self, attempt: Attempt, event: JobSucceeded) -> None:
        """Queue the success, then forget the attempt (so a Ctrl-C in between keeps the result)."""
        if not attempt.succeeded:
            result = (event.result_text, event.result_blob, event.result_path)
            self._successes.append(Success(attempt.ref, attempt.pid, result, (event.stdout, event.stderr)))
            attempt.succeeded = True
        self._ended(attempt, event.seconds)
        self.scheduler.discard(attempt.job_id)
        self.open_targets.discard(attempt.job_id)

    def _record_successes(self) -> None:
        """Write the queued successes in one go; their children may then run."""
        if not self._successes:
            return
        successes, self._successes = self._successes, []
        try:
            outcomes = self.store.record_successes(successes)  # harmless to repeat
        except BaseException:
            self._successes = successes + self._successes  # results in hand: try again when closing
            raise
        for success, recorded in zip(successes, outcomes):
            job_id = success.ref.job_id
            if recorded:
                self.counts["completed"] += 1
                self._parent_results.put(job_id, success.result, self.scheduler.parent_completed(job_id))
            else:
                logger.warning("job %s was changed by someone else while it ran; result dropped", job_id)
                _, _, path = success.result
                if path is not None:
                    remove_file(path)

    def _failed(
        self, attempt: Attempt, kind: str, error: str, output: Tuple[str, str], seconds: Optional[float] = None
    ) -> None:
        """Record a failed attempt, then forget it: if recording is interrupted (Ctrl-C), the
        attempt is still ours and a stop puts its job back to pending."""
        label = f"attempt {attempt.number} of {attempt.max_attempts}"
        if attempt.number < attempt.max_attempts:
            delay = retry_delay_for(attempt, random.random())
            retry_after = (datetime.now() + timedelta(seconds=delay)).isoformat() if delay > 0 else None
            recorded, _ = self.store.record_failure(attempt.ref, attempt.pid, output, kind, error, "pending", retry_after)
            self._ended(attempt, seconds)
            if recorded:
                self.scheduler.retry(attempt.job_id, self.clock() + delay if delay > 0 else None)
            else:
                self.scheduler.discard(attempt.job_id)
            logger.info("job %s (%s) %s on %s; retrying", attempt.name, attempt.job_id, kind, label)
            return
        recorded, cancelled = self.store.record_failure(attempt.ref, attempt.pid, output, kind, error, kind)
        self._ended(attempt, seconds)
        self.scheduler.discard(attempt.job_id)
        self.open_targets.discard(attempt.job_id)
        if recorded:
            self.counts[kind] += 1
            self.tracker.forget(cancelled)
        logger.info("job %s (%s) %s on %s; giving up", attempt.name, attempt.job_id, kind, label)

    def _taken_away(self, attempt: Attempt, status: str) -> None:
        """Someone else changed a job while it ran here (cancel(kill=True), most often):
        stop it, and close its attempt without touching the job's row."""
        self._ended(attempt)
        self.scheduler.discard(attempt.job_id)
        if status in FINAL:
            self.open_targets.discard(attempt.job_id)
        queued = [run for run in self._buffer if run.job_id == attempt.job_id]
        for run in queued:
            self._buffer.remove(run)
        error = f"job became {status} while it ran here"
        executor = self._ensure_executor()
        events = executor.kill(attempt.job_id, attempt.claim, status, error)
        if not any(isinstance(event, Killed) for event in events):
            executor.skip(attempt.job_id, attempt.claim)  # sent ahead and not started: it never will
        outcome = "cancelled" if status == "cancelled" else "interrupted"
        output = next(((e.stdout, e.stderr) for e in events if isinstance(e, Killed)), ("", ""))
        self.store.close_attempt(attempt.ref, attempt.pid, outcome, error, output)
        self._handle_all([event for event in events if not isinstance(event, Killed)])

    def _enforce_limits(self, now: float) -> None:
        """Kill the process tree of every attempt past its deadline or its memory limit;
        queue the events to record (each kill's at once)."""
        events = self._unhandled
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, job_id, claim = heapq.heappop(self._deadlines)
            attempt = self.running.get(job_id)
            if attempt is not None and attempt.claim == claim and attempt.deadline == deadline:
                error = f"timed out after {attempt.timeout:g} s; its worker process tree was killed"
                events += self._kill(attempt, "timeout", error)
        if self._limited and now >= self._next_memory_check:
            self._next_memory_check = now + MEMORY_CHECK_SECONDS
            for job_id in list(self._limited):
                attempt = self.running.get(job_id)
                if attempt is None or attempt.deadline is None:
                    self._limited.discard(job_id)  # ended, or already killed
                    continue
                used_mb = tree_rss(attempt.pid) / 2**20
                attempt.peak_mb = max(attempt.peak_mb, used_mb)
                if used_mb > attempt.max_memory_mb:
                    error = (
                        f"exceeded memory limit of {attempt.max_memory_mb:g} MB (peak {attempt.peak_mb:.0f} MB); "
                        "its worker process tree was killed"
                    )
                    events += self._kill(attempt, "failed", error)

    def _kill(self, attempt: Attempt, status: str, error: str) -> list:
        deadline, attempt.deadline = attempt.deadline, None  # killed once; the Killed event ends it
        events = self._ensure_executor().kill(attempt.job_id, attempt.claim, status, error)
        if not any(isinstance(event, Killed) for event in events):
            # Not running in a worker process at this moment (it just ended, or has not
            # begun): look again shortly, so a limit can never be dropped.
            attempt.deadline = self.clock() + KILL_RETRY_SECONDS if status == "timeout" else deadline
            heapq.heappush(self._deadlines, (attempt.deadline, attempt.job_id, attempt.claim))
        return events

    # -- stopping -------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Stopped: let running jobs finish within the grace period, then interrupt the rest."""
        deadline = self.clock() + self.grace_period
        while self.running and not self._cold.is_set():
            left = deadline - self.clock()
            if left <= 0:
                break
            if not self._unhandled:
                self._wait(min(left, self._wait_timeout(self.clock())))
            self.store.begin_batch()
            try:
                self._handle_all([])
            except BaseException:
                self._close_batch_after_error()  # a Ctrl-C now must not undo results in hand
                raise
            self.store.commit_batch()
        self._interrupt_running("stopped before it finished")

    def _abort(self) -> None:
        """An exception (Ctrl-C) stops everything now; the database stays consistent."""
        try:
            self._interrupt_running("interrupted")
        finally:
            self.close()

    def _interrupt_running(self, reason: str) -> None:
        """Kill every worker process, and put the jobs they held back to pending, no attempt used."""
        if not self.running:
            return
        self._shut_down_executor()
        with self.store.transaction():
            for attempt in self.running.values():
                self.scheduler.discard(attempt.job_id)
                if attempt.started is None:
                    self.store.release_unstarted(attempt.ref)
                else:
                    self.store.record_interrupted(attempt.ref, attempt.pid, reason)
            self.running.clear()

    def close(self, wait: bool = True) -> None:
        """Shut the pool down and release the wake-up pipe. Idempotent. With `wait=False`, idle
        worker processes may still be ending when it returns (the caller has other work to do
        meanwhile); a later close() waits until they are gone."""
        if self._wake_r >= 0:
            if self.running:
                self._interrupt_running("supervisor closed")
            if self.executor is not None and not wait:
                self._stopping = self.executor  # set first: a Ctrl-C from here on leaves it to close()
                self.executor = None
                self._stopping.stop()
            try:
                self.store.unregister_supervisor(self.worker_id)
            except Exception:  # a closed or broken store: our registration dies with us anyway
                logger.debug("could not unregister supervisor %s", self.worker_id, exc_info=True)
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    logger.debug("wake-up fd %d already closed", fd)
            self._wake_r = self._wake_w = -1
        if wait:
            self._shut_down_executor()
            _live.discard(self)

    def _shut_down_executor(self) -> None:
        """Shut the executor down and wait until its processes are gone. It is held in
        `_stopping` until then, so that a Ctrl-C halfway leaves it to a later close()."""
        if self.executor is not None:
            self._stopping = self.executor
            self.executor = None
        if self._stopping is not None:
            self._stopping.shutdown()
            self._stopping = None


def _depth_for(seconds: float) -> int:
    """Jobs a worker process may hold when each takes `seconds`: QUEUED_SECONDS of work."""
    return max(1, min(MAX_DEPTH, int(QUEUED_SECONDS / max(seconds, 1e-6))))


def _parent_results(parents: List[str], kept: dict, stored: dict) -> Union[tuple, PackedResults]:
    """RunJob.parent_results: packed when there are PACK_MIN_PARENTS or more and every one's
    result is kept and is JSON text (kept results came from this run's workers, which write
    exact JSON; a text read from the database could be anything another program wrote, and
    is never packed)."""
    if len(parents) >= PACK_MIN_PARENTS:
        got = [kept.get(p) for p in parents]
        if None not in got:
            texts = [result[0] for result in got]
            if None not in texts:  # a result with text has no blob and no file
                return PackedResults(tuple(parents), "[" + ",".join(texts) + "]")
    no_result = (None, None, None)
    return tuple([(p, *(kept.get(p) or stored.get(p, no_result))) for p in parents])


# Below this many parents a tuple per parent is cheaper to build and to pickle than a
# PackedResults (a NamedTuple pickles through a Python call); from 16 on packing wins on both
# sides of the pipe, and a fan-in of thousands costs a fraction.
PACK_MIN_PARENTS = 16


def close_all() -> None:
    """Shut down every live supervisor's pool (at interpreter exit)."""
    for supervisor in list(_live):
        supervisor.close()


atexit.register(close_all)
