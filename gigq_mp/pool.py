"""The local pool: starting, feeding, replacing and killing worker processes.

The supervisor talks to an executor through a few calls: `free_slots(depth)`,
`dispatch(run, depth)`, `wait(timeout, wake_fds)`, `kill(job_id)` and
`shutdown()`. `LocalPool` is the executor for one machine; another engine (a
Dask cluster) can take its place by offering the same calls and producing the
same events: `Accepted`, `JobSucceeded`, `JobFailed`, `WorkerLost`, `Unstarted`.

Each worker process is started fresh with `subprocess` (never fork, never a
re-import of `__main__`), leads its own process group, and talks over one end
of a socket pair. A worker may hold up to `depth` jobs: the one it runs and
the ones sent ahead so it never waits for the supervisor between short jobs.
A process runs its jobs in the order sent, so the pool knows which one runs:
the head of its queue, started when the process said it was ready, when the
job was sent to an idle process, or when the reply to the job before it came
(`Accepted`). When its pipe reaches EOF the process has ended: the job it was
running becomes a `WorkerLost` event, the ones sent ahead `Unstarted`, and a
new process takes its place.
"""

from __future__ import annotations

import collections
import os
import select
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Deque, Dict, Iterable, List, Optional, Protocol, Tuple

from .capture import collect
from .log import get_logger
from .messages import Accepted, JobBatch, Killed, RunJob, Unstarted, WorkerInit, WorkerLost
from .proctree import describe_exit, kill_tree, reap, wait_dead
from .runner import FunctionCache
from .wire import Pipe

logger = get_logger(__name__)

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `python -c` puts the current directory first on sys.path; replace it with the directory
# this gigq_mp came from, so a worker never imports a different copy of gigq_mp.
MAX_FAILED_STARTS = 20

_RUNNER_CODE = (
    f"import sys; sys.path[0] = {_PACKAGE_PARENT!r}; from gigq_mp.runner import main; main()"
)


class Executor(Protocol):
    """What the supervisor needs from whatever runs its jobs."""

    def free_slots(self, depth: int) -> int: ...
    def dispatch(self, runs: List[RunJob], depth: int, pickled: Dict[str, Optional[bytes]]) -> None: ...
    def wait(self, timeout: Optional[float], wake_fds: Iterable[int] = ()) -> list: ...
    def kill(self, job_id: str, status: str, error: str) -> list: ...
    def shutdown(self) -> None: ...


class WorkerProcess:
    """One worker process: its pipe, the jobs it holds, and a mirror of its function cache."""

    def __init__(self, results_dir: Optional[str], capture_dir: Optional[str]) -> None:
        ours, theirs = socket.socketpair()
        self.popen = subprocess.Popen(
            [sys.executable, "-c", _RUNNER_CODE, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        theirs.close()
        self.conn = Pipe(ours.detach())
        self.pid = self.popen.pid
        try:
            self.conn.send(WorkerInit(tuple(p or os.getcwd() for p in sys.path), os.getcwd(), results_dir, capture_dir))
        except OSError:
            # Died at birth (killed from outside, say): its EOF reaches wait(), which replaces it.
            logger.warning("worker process %d ended before it started", self.pid)
        self.jobs: Deque[RunJob] = collections.deque()  # the first one runs, the rest wait
        self.functions = FunctionCache()
        self.jobs_done = 0
        self.answered = False  # has it said it is ready (its first message)?
        self.head_started = False  # has the job at the head of `jobs` been reported started?

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
        self.conn.send(JobBatch(tuple(runs), missing))

    def ask_to_exit(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            logger.debug("worker process %d already closed its pipe", self.pid)

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
        self.capture_dir = tempfile.mkdtemp(prefix="gigq_mp-capture-") if capture_output else None
        self.workers: List[WorkerProcess] = []
        self._failed_starts = 0  # worker processes in a row that died before answering
        self._selector = selectors.DefaultSelector()
        self._wake_fds: set = set()
        self._early: list = []  # events found outside wait(), returned by the next wait()
        for _ in range(size):
            self._add_worker()

    def _add_worker(self) -> None:
        worker = WorkerProcess(self.results_dir, self.capture_dir)
        self.workers.append(worker)
        self._selector.register(worker.conn.fileno(), selectors.EVENT_READ, worker)

    def _room(self, worker: WorkerProcess, depth: int) -> int:
        """How many jobs to send this worker now: none until its queue is down to half of
        `depth`, then enough to fill it, so each write carries several short jobs."""
        if len(worker.jobs) > depth // 2:
            return 0
        if self.max_tasks_per_worker:  # never send past the job that retires the process
            depth = min(depth, self.max_tasks_per_worker - worker.jobs_done)
        return max(0, depth - len(worker.jobs))

    def free_slots(self, depth: int) -> int:
        return sum(self._room(w, depth) for w in self.workers)

    def dispatch(self, runs: List[RunJob], depth: int, pickled: Dict[str, Optional[bytes]]) -> None:
        """Send jobs to the workers with the most room, one write per worker.

        `pickled` maps function keys to pickled callables (None: imported by name).
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
            try:
                worker.send(batch, pickled)
            except OSError:
                # The process died; its EOF surfaces in wait() and its jobs are reported there.
                logger.debug("worker process %d is gone; its jobs will be reported", worker.pid)
            self._started(worker, self._early)

    def _started(self, worker: WorkerProcess, events: list) -> None:
        """A ready process starts the job at the head of its queue at once: report it
        (`Accepted`: its timeout clock starts)."""
        if worker.answered and worker.jobs and not worker.head_started:
            worker.head_started = True
            head = worker.jobs[0]
            events.append(Accepted(head.job_id, head.attempt, worker.pid))

    def wait(self, timeout: Optional[float], wake_fds: Iterable[int] = ()) -> list:
        """Block until a worker answers, a worker ends, a wake fd is readable, or timeout."""
        for fd in set(wake_fds) - self._wake_fds:
            self._selector.register(fd, selectors.EVENT_READ, None)
            self._wake_fds.add(fd)
        events, self._early = self._early, []
        for key, _ in self._selector.select(0 if events else timeout):
            if key.data is not None and key.data in self.workers:
                self._collect(key.data, events)
        return events

    def _collect(self, worker: WorkerProcess, events: list) -> None:
        fd = worker.conn.fileno()
        while True:
            try:
                if not select.select([fd], [], [], 0)[0]:  # nothing more to read now
                    return
                messages = worker.conn.recv()
            except (EOFError, OSError):
                self._lost(worker, events)
                return
            events.extend(messages)  # replies, in the order the jobs were sent
            worker.answered = True
            self._failed_starts = 0
            for _ in messages:
                worker.jobs.popleft()
                worker.head_started = False
            worker.jobs_done += len(messages)
            if self.max_tasks_per_worker and worker.jobs_done >= self.max_tasks_per_worker:
                self._retire(worker)
                self._add_worker()
                worker.close(self.kill_grace + 1.0)
                self._output(worker)
                return
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
        output = self._output(worker)
        if worker.jobs and worker.head_started:
            head = worker.jobs.popleft()
            events.append(
                WorkerLost(head.job_id, head.attempt, f"worker process {describe_exit(returncode)}", *output)
            )
        else:
            logger.warning("idle worker process %d %s; replacing it", worker.pid, describe_exit(returncode))
        events.extend(Unstarted(run.job_id, run.attempt) for run in worker.jobs)
        self._add_worker()

    def kill(self, job_id: str, status: str, error: str) -> list:
        """Kill the process tree running `job_id` and start a replacement. Returns a `Killed`
        event for the job (with what it printed) and `Unstarted` events for the jobs that
        were sent ahead to the killed process."""
        for worker in self.workers:
            if worker.jobs and worker.jobs[0].job_id == job_id:
                self._retire(worker)
                worker.kill(self.kill_grace)
                self._add_worker()
                head, *ahead = worker.jobs
                killed = Killed(head.job_id, head.attempt, status, error, *self._output(worker))
                return [killed] + [Unstarted(run.job_id, run.attempt) for run in ahead]
        return []

    def _output(self, worker: WorkerProcess) -> Tuple[str, str]:
        """What a retired worker process printed during its last job (its capture files go)."""
        return collect(self.capture_dir, worker.pid) if self.capture_dir else ("", "")

    def _retire(self, worker: WorkerProcess) -> None:
        self.workers.remove(worker)
        self._selector.unregister(worker.conn.fileno())

    def shutdown(self) -> None:
        """Stop every worker: idle ones are asked to exit, busy ones are killed with their trees."""
        idle = [w for w in self.workers if not w.jobs]
        for worker in idle:
            worker.ask_to_exit()  # let them all exit at once; close() then only reaps
        for worker in self.workers:
            if worker.jobs:
                worker.kill(self.kill_grace)
            else:
                worker.close(1.0)
        self.workers.clear()
        self._selector.close()
        if self.capture_dir:
            shutil.rmtree(self.capture_dir, ignore_errors=True)
