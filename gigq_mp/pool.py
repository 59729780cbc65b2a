"""The local pool: starting, feeding, replacing and killing worker processes.

The supervisor talks to an executor through a few calls: `free_slots(depth)`,
`dispatch(run, depth)`, `wait(timeout, wake_fds)`, `kill(job_id)` and
`shutdown()`. `LocalPool` is the executor for one machine; another engine (a
Dask cluster) can take its place by offering the same calls and producing the
same events: `Accepted`, `JobSucceeded`, `JobFailed`, `WorkerLost`, `Interrupted`,
`Unstarted`.

Each worker process is forked from the pool's fork server (forkserver.py), a
clean process that imported gigq_mp's worker code and never runs a job: the
supervisor is never forked, `__main__` never re-imported, and a pool of N pays
for one interpreter start, not N. A worker leads its own process group and
talks over one end of a socket pair. A worker may hold up to `depth` jobs: the one it runs and
the ones sent ahead so it never waits for the supervisor between short jobs.
A process runs its jobs in the order sent and may hold back replies for a
moment to send several at once, so it never says "started": it counts the jobs
it started in a small shared file (wire.StartCounter), and the pool reports a
job started (`Accepted`: its timeout clock starts) when the replies before it
arrive or when the counter shows it.
When its pipe reaches EOF the process has ended: by the counter, the job it
ran becomes a `WorkerLost` event (`Interrupted` when the process went for a
reason not the job's: its fork server died); the jobs it ended without their
replies reaching us become `Interrupted` (they ran: they run again, the attempt
on record but not counted), the ones it never started `Unstarted` (they run
again, uncounted); and a new process takes its place.
"""

from __future__ import annotations

import collections
import os
import selectors
import shutil
import socket
import sys
import tempfile
from typing import Callable, Collection, Deque, Dict, Iterable, List, Optional, Protocol, Set, Tuple

from .capture import collect
from .forkserver import FORK_FAILED, UNKNOWN_EXIT, ForkedProcess, ForkServer
from .log import get_logger
from .messages import Accepted, Interrupted, JobBatch, Killed, RunJob, Unstarted, WorkerInit, WorkerLost
from .proctree import describe_exit, kill_tree, reap, wait_dead
from .runner import FunctionCache
from .wire import Pipe, StartCounter

logger = get_logger(__name__)

MAX_FAILED_STARTS = 20
MAX_SPARED = 2  # runs of one job lost with their fork server that cost it no attempt; then they do
START_POLL_SECONDS = 0.002  # how soon start counters are read after jobs are sent...
START_POLL_MAX_SECONDS = 0.25  # ...and at the longest, while nothing changes


class Executor(Protocol):
    """What the supervisor needs from whatever runs its jobs."""

    def free_slots(self, depth: int) -> int: ...
    def dispatch(
        self, runs: List[RunJob], depth: int, pickled: Dict[str, Optional[bytes]], slow: Collection[int] = ()
    ) -> None: ...
    def wait(self, timeout: Optional[float], wake_fds: Iterable[int] = ()) -> list: ...
    def kill(self, job_id: str, attempt: int, status: str, error: str) -> list: ...
    def skip(self, job_id: str, attempt: int) -> None: ...
    def stop(self) -> None: ...  # the first half of shutdown: returns before its processes are gone
    def shutdown(self) -> None: ...


class WorkerProcess:
    """One worker process: its pipe, the jobs it holds, its start counter, and a mirror
    of its function cache."""

    def __init__(
        self, server: ForkServer, results_dir: Optional[str], capture_dir: Optional[str], counter_path: str
    ) -> None:
        self.counter = StartCounter(counter_path, create=True)
        ours, theirs = socket.socketpair()
        try:
            self.popen = server.fork(theirs.fileno())
        except OSError:
            # The fork server is gone: no process, and its pipe's EOF (theirs closes below)
            # reaches wait(), which counts it as one that died at birth and replaces it.
            self.popen = ForkedProcess.unforked()
        except BaseException:
            ours.close()
            self.counter.close()
            raise
        finally:
            theirs.close()
        self.conn = Pipe(ours.detach(), nonblocking=True)
        try:
            self.conn.post(
                WorkerInit(
                    tuple(p or os.getcwd() for p in sys.path), os.getcwd(), results_dir, capture_dir, counter_path,
                    dict(os.environ),
                )
            )
        except OSError:
            # Died at birth (killed from outside, say): its EOF reaches wait(), which replaces it.
            logger.warning("a worker process ended before it started")
        self.jobs: Deque[RunJob] = collections.deque()  # sent, not answered yet, in the order sent
        self.functions = FunctionCache()
        self.jobs_done = 0  # replies received
        self.accepted = 0  # jobs (counted from the first ever sent) reported started to the supervisor
        self.answered = False  # has it said it is ready (its first message)?
        self.skipping: Set[int] = set()  # attempts it was told to skip, not answered yet
        self.slow: Set[int] = set()  # attempts among `jobs` sent to it as long ones (dropped with their reply)

    @property
    def pid(self) -> Optional[int]:
        """Its pid, once the fork server has said it (None: it could not be forked)."""
        return self.popen.pid

    def running(self) -> Optional[int]:
        """Where in `jobs` the job this process started last stands (it runs, or it ended and
        its reply is still on the way); None when it has started none of them."""
        index = self.counter.read() - self.jobs_done - 1
        return index if 0 <= index < len(self.jobs) else None

    def unreported(self) -> bool:
        """Has it jobs that may have started without the supervisor knowing yet?"""
        return self.answered and self.jobs_done + len(self.jobs) > self.accepted

    def send(self, runs: List[RunJob], pickled: Dict[str, Optional[bytes]]) -> None:
        """Send jobs in one write, with the callables this process does not hold yet."""
        missing: Dict[str, bytes] = {}
        for run in runs:
            key = run.function_key
            if key in self.functions:
                self.functions.get(key)  # touch it: the worker's LRU moves the same way
            else:
                self.functions.put(key, True)
                if pickled.get(key) is not None:
                    missing[key] = pickled[key]
        self.jobs.extend(runs)
        self.conn.post(JobBatch(tuple(map(tuple, runs)), missing))  # plain tuples: see JobBatch

    def ask_to_exit(self) -> None:
        try:
            self.conn.post(None)
            self.conn.flush(wait=1.0)
        except OSError:
            logger.debug("worker process %s already closed its pipe", self.pid)

    def close(self, grace: float) -> int:
        """Ask an idle worker to exit; kill its tree if it has not after `grace` seconds."""
        self.ask_to_exit()
        if wait_dead(self.popen, grace):
            return self.reap()
        return self.kill(0.0)

    def kill(self, grace: float) -> int:
        """Kill the worker process and its descendants; return its exit code."""
        self.conn.close()
        return kill_tree(self.popen, grace)

    def reap(self) -> int:
        """The worker ended (its pipe reached EOF): clear its process group and reap it."""
        self.conn.close()
        if not wait_dead(self.popen, 1.0):  # closed its pipe but still running
            return kill_tree(self.popen, 0.0)
        return reap(self.popen)

    def started_and_after(self, index: Optional[int]) -> Tuple[List[RunJob], Optional[RunJob], List[RunJob]]:
        """Its jobs split around `index`, the one it started last (from running()): (ended,
        their replies not received; that one, or None; not started)."""
        jobs = list(self.jobs)
        if index is None:
            return [], None, jobs
        return jobs[:index], jobs[index], jobs[index + 1 :]


class LocalPool:
    """A fixed number of worker processes on this machine."""

    def __init__(
        self,
        size: int,
        *,
        kill_grace: float = 0.1,
        max_tasks_per_worker: Optional[int] = None,
        results_dir: Optional[str] = None,
        capture_output: bool = True,
    ):
        if size < 1:
            raise ValueError(f"a pool needs at least 1 worker process, got {size}")
        self.kill_grace = kill_grace
        self.max_tasks_per_worker = max_tasks_per_worker
        self.results_dir = results_dir
        # Private to this pool: each worker's start counter, and (if wanted) its captured output.
        self.dir = tempfile.mkdtemp(prefix="gigq_mp-pool-")
        self.capture_dir = self.dir if capture_output else None
        self._spawned = 0
        self.workers: List[WorkerProcess] = []
        self._failed_starts = 0  # worker processes in a row that died before answering
        self._selector = selectors.DefaultSelector()
        self._wake_fds: set = set()
        self._undelivered: list = []  # events collected by a wait() that did not return
        self._poll = START_POLL_SECONDS  # between reads of the start counters; grows while idle
        self._server: Optional[ForkServer] = None
        self._spared: Dict[str, int] = {}  # job id -> runs lost with their fork server, not counted
        try:
            for _ in range(size):
                self._add_worker()
        except BaseException:
            self.shutdown()  # the ones already started
            raise

    def _fork_server(self) -> ForkServer:
        """The fork server, started anew if it died (killed from outside, say)."""
        if self._server is not None and not self._server.running():
            logger.warning("the fork server is gone; starting another")
            self._server.close()
            self._server = None
        if self._server is None:
            self._server = ForkServer()
        return self._server

    def _add_worker(self) -> None:
        self._spawned += 1
        counter_path = os.path.join(self.dir, f"{self._spawned}.started")
        worker = WorkerProcess(self._fork_server(), self.results_dir, self.capture_dir, counter_path)
        self.workers.append(worker)
        self._selector.register(worker.conn.fileno(), selectors.EVENT_READ, worker)

    def _room(self, worker: WorkerProcess, depth: int) -> int:
        """How many jobs to send this worker now: none until its queue is down to half of
        `depth`, then enough to fill it, so each write carries several short jobs."""
        if len(worker.jobs) > depth // 2:
            return 0
        if depth > 1 and worker.slow:
            return 0  # short jobs queued behind a long one would wait for it while others idle
        if self.max_tasks_per_worker:  # never send past the job that retires the process
            depth = min(depth, self.max_tasks_per_worker - worker.jobs_done)
        return max(0, depth - len(worker.jobs))

    def free_slots(self, depth: int) -> int:
        return sum(self._room(w, depth) for w in self.workers)

    def dispatch(
        self, runs: List[RunJob], depth: int, pickled: Dict[str, Optional[bytes]], slow: Collection[int] = ()
    ) -> None:
        """Send jobs to the workers with the most room, one message per worker.

        Never waits for a worker to read: what its pipe does not take now is written
        as it drains (wait() watches for that), so a process busy with a long job and a
        full pipe cannot stall the supervisor. `pickled` maps function keys to pickled
        callables (None: imported by name). `slow`: the attempts among `runs` expected
        to be long; a worker holding one gets no room for more while it does.
        """
        room = {worker: self._room(worker, depth) for worker in self.workers}
        batches: Dict[WorkerProcess, List[RunJob]] = {}
        for run in runs:
            worker = max(room, key=room.__getitem__)
            if room[worker] <= 0:
                raise RuntimeError("dispatch called with more jobs than free slots")
            room[worker] -= 1
            batches.setdefault(worker, []).append(run)
        for worker, batch in batches.items():
            if slow:
                worker.slow.update(run.attempt for run in batch if run.attempt in slow)
            try:
                worker.send(batch, pickled)
            except OSError:
                # The process died; its EOF surfaces in wait() and its jobs are reported there.
                logger.debug("worker process %s is gone; its jobs will be reported", worker.pid)
                continue
            self._watch_writes(worker)
        self._poll = START_POLL_SECONDS  # look soon for the starts of what was just sent

    def _watch_writes(self, worker: WorkerProcess) -> None:
        """Have wait() wake when the worker's pipe takes more, while posted bytes wait."""
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if worker.conn.waiting else 0)
        if self._selector.get_key(worker.conn.fileno()).events != events:
            self._selector.modify(worker.conn.fileno(), events, worker)

    def _started(self, worker: WorkerProcess, events: list) -> bool:
        """Read the worker's start counter: report the job it started last (`Accepted`: its
        timeout clock starts), unless it was already; the ones before it have ended.
        True when it reported one."""
        index = worker.running() if worker.answered else None
        if index is None or worker.jobs_done + index < worker.accepted:
            return False
        run = worker.jobs[index]
        if run.attempt in worker.skipping:  # told to skip it, started it before that arrived
            self._kill_worker(worker, events, index, "cancelled", "cancelled before it started; killed as it began")
            return True
        worker.accepted = worker.jobs_done + index + 1
        events.append(Accepted(run.job_id, run.attempt, worker.pid))
        return True

    def wait(self, timeout: Optional[float], wake_fds: Iterable[int] = ()) -> list:
        """Block until a worker answers, a worker ends, a wake fd is readable, or timeout."""
        for fd in set(wake_fds) - self._wake_fds:
            self._selector.register(fd, selectors.EVENT_READ, None)
            self._wake_fds.add(fd)
        # Collected here until returned: replies taken off a pipe survive an exception
        # (Ctrl-C) on the way and come with the next call.
        events = self._undelivered
        polling = any(worker.unreported() for worker in self.workers)
        if polling:
            # A job may start unseen: just sent to an idle process, or behind replies held
            # back (a job holding the GIL stops the thread that sends them). Read the start
            # counters soon after a send, then less often while nothing changes.
            timeout = self._poll if timeout is None else min(timeout, self._poll)
        for key, mask in self._selector.select(timeout):
            worker = key.data
            if worker is None or worker not in self.workers:
                continue
            if mask & selectors.EVENT_WRITE:
                try:
                    worker.conn.flush()
                except OSError:  # it ended: its EOF is read below, and its jobs reported
                    logger.debug("worker process %s stopped reading; its end of the pipe is closed", worker.pid)
                    worker.conn.drop_posted()
                self._watch_writes(worker)
            if mask & selectors.EVENT_READ:
                self._collect(worker, events)
        found = False
        for worker in list(self.workers):  # _started may replace one
            if worker.unreported():
                found = self._started(worker, events) or found
        if polling:
            self._poll = START_POLL_SECONDS if found else min(self._poll * 2, START_POLL_MAX_SECONDS)
        self._undelivered = []
        return events

    def _collect(self, worker: WorkerProcess, events: list) -> None:
        """Take in every reply the worker has sent so far (never waiting for more)."""
        try:
            batches, closed = worker.conn.recv_ready()
        except OSError:
            batches, closed = [], True
        for messages in batches:
            worker.answered = True
            self._failed_starts = 0
            for reply in messages:  # in the order the jobs were sent
                head = worker.jobs[0] if worker.jobs else None
                if head is None or (reply.job_id, reply.attempt) != (head.job_id, head.attempt):
                    logger.error(
                        "worker process %s answered for job %s out of turn; replacing it",
                        worker.pid,
                        getattr(reply, "job_id", type(reply).__name__),
                    )
                    self._retire(worker)
                    worker.kill(self.kill_grace)
                    self._add_worker()
                    self._report_gone(worker, events, worker.running(), None)  # not the job's fault
                    return
                events.append(reply)
                worker.jobs.popleft()
                worker.jobs_done += 1
                worker.skipping.discard(reply.attempt)
                worker.slow.discard(reply.attempt)
            worker.accepted = max(worker.accepted, worker.jobs_done)
            if self.max_tasks_per_worker and worker.jobs_done >= self.max_tasks_per_worker:
                self._retire(worker)
                self._add_worker()
                worker.close(self.kill_grace + 1.0)
                worker.counter.close()
                self._output(worker)
                return
        if closed:
            self._lost(worker, events)
        else:
            self._started(worker, events)

    def _lost(self, worker: WorkerProcess, events: list) -> None:
        self._retire(worker)
        returncode = worker.reap()
        if not worker.answered:
            self._failed_starts += 1
            if self._failed_starts >= MAX_FAILED_STARTS:
                raise RuntimeError(
                    f"{self._failed_starts} worker processes in a row ended before answering "
                    f"(the last {describe_exit(returncode)}); is the Python environment broken?"
                )
        if not worker.jobs:
            logger.warning("idle worker process %s %s; replacing it", worker.pid, describe_exit(returncode))
        how = f"worker process {describe_exit(returncode)}"

        def lost(run: RunJob, output: Tuple[str, str]) -> WorkerLost:
            return WorkerLost(run.job_id, run.attempt, how, *output)

        # Its fork server went (taking it along), or it never existed: not the job's doing,
        # unless the same job keeps running each time that happens (it may kill the server).
        index = worker.running()
        blameless = returncode in (UNKNOWN_EXIT, FORK_FAILED)
        if blameless and index is not None:
            job_id = worker.jobs[index].job_id
            self._spared[job_id] = self._spared.get(job_id, 0) + 1
            blameless = self._spared[job_id] <= MAX_SPARED
        self._report_gone(worker, events, index, None if blameless else lost)
        self._add_worker()

    def _report_gone(
        self,
        worker: WorkerProcess,
        events: list,
        index: Optional[int],
        blame: Optional[Callable[[RunJob, Tuple[str, str]], object]],
    ) -> None:
        """A retired worker process is gone: `blame(job, output)` makes the event of the job
        it ran (at `index`, from running()); with no blame that job is interrupted (runs
        again, its attempt not counted), as are the ones it ended whose replies never came;
        the ones it never started run again as if never sent."""
        output = self._output(worker)
        ended, last, waiting = worker.started_and_after(index)
        if last is not None and blame is None:
            ended, last = ended + [last], None
        lost = f"its worker process {worker.pid} ended before the job's reply reached the supervisor"
        events.extend(Interrupted(run.job_id, run.attempt, lost) for run in ended)
        if last is not None and blame is not None:
            events.append(blame(last, output))
        events.extend(Unstarted(run.job_id, run.attempt) for run in waiting)
        worker.counter.close()

    def kill(self, job_id: str, attempt: int, status: str, error: str) -> list:
        """Kill the process tree running this attempt and start a replacement. Returns a
        `Killed` event for the job (with what it printed), `Interrupted` events for the jobs it
        ended whose replies never came, and `Unstarted` events for the
        jobs that were sent ahead to the killed process."""
        events: list = []
        try:
            for worker in list(self.workers):
                if not any(run.job_id == job_id and run.attempt == attempt for run in worker.jobs):
                    continue
                self._collect(worker, events)  # replies already on their way count
                index = worker.running() if worker in self.workers else None
                if index is None or (worker.jobs[index].job_id, worker.jobs[index].attempt) != (job_id, attempt):
                    return events  # it ended meanwhile, or has not started
                self._kill_worker(worker, events, index, status, error)
                return events
            return events
        except BaseException:
            self._undelivered.extend(events)  # taken off the pipes: the next wait() returns them
            raise

    def _kill_worker(self, worker: WorkerProcess, events: list, index: int, status: str, error: str) -> None:
        """Kill the worker running its job at `index` (read before the kill); replace it."""
        self._retire(worker)
        worker.kill(self.kill_grace)
        self._add_worker()
        self._report_gone(
            worker, events, index, lambda run, output: Killed(run.job_id, run.attempt, status, error, *output)
        )

    def skip(self, job_id: str, attempt: int) -> None:
        """Tell the worker process holding this attempt, sent ahead and not started, not to
        start it: it answers Unstarted when its turn comes. No effect once it has started
        (kill() is for that)."""
        for worker in self.workers:
            if any(run.job_id == job_id and run.attempt == attempt for run in worker.jobs):
                worker.skipping.add(attempt)  # if it starts it anyway (the skip came too late): killed
                try:
                    worker.conn.post(JobBatch((), {}, (attempt,)))
                except OSError:
                    logger.debug("worker process %s is gone; its jobs will be reported", worker.pid)
                    return
                self._watch_writes(worker)
                return

    def _output(self, worker: WorkerProcess) -> Tuple[str, str]:
        """What a retired worker process printed during its last job (its capture files go)."""
        return collect(self.capture_dir, worker.pid) if self.capture_dir else ("", "")

    def _retire(self, worker: WorkerProcess) -> None:
        self.workers.remove(worker)
        self._selector.unregister(worker.conn.fileno())

    def stop(self) -> None:
        """Stop every worker, without waiting for the idle ones to be gone: busy ones are killed
        with their trees; idle ones are asked to exit, and the fork server is told to go. It
        kills (with its process group) and reaps whichever of them has not exited yet, then
        exits: an idle worker has nothing to lose. shutdown() waits for that."""
        idle = [w for w in self.workers if not w.jobs]
        for worker in idle:
            worker.ask_to_exit()
        for worker in self.workers:
            if worker.jobs:
                worker.kill(self.kill_grace)
        for worker in idle:
            worker.conn.close()
        for worker in self.workers:
            worker.counter.close()
        self.workers.clear()
        if self._server is not None:
            self._server.close(wait=False)

    def shutdown(self) -> None:
        """stop(), then wait until the fork server, and so every worker, is gone."""
        self.stop()
        if self._server is not None:
            self._server.close()
            self._server = None
        self._selector.close()
        shutil.rmtree(self.dir, ignore_errors=True)
