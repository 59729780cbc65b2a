"""The local pool: starting, feeding, replacing and killing worker processes.

The supervisor talks to an executor through five calls: `idle_count`,
`dispatch(run)`, `wait(timeout, wake_fds)`, `kill(job_id)` and `shutdown(grace)`.
`LocalPool` is the executor for one machine; another engine (a Dask cluster)
can take its place by offering the same calls and producing the same events.

Each worker process is started fresh with `subprocess` (never fork, never
re-import of `__main__`), leads its own process group, and talks over one end
of a socket pair. When its pipe reaches EOF the process has ended: if it held
a job, a `WorkerLost` event says how it ended, and a new process takes its place.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection, wait
from typing import Dict, Iterable, List, Optional, Protocol

from .messages import Accepted, RunJob, WorkerInit, WorkerLost
from .proctree import describe_exit, kill_tree, reap, wait_dead
from .runner import FunctionCache

logger = logging.getLogger("gigq_mp.pool")

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RUNNER_CODE = "from gigq_mp.runner import main; main()"


class Executor(Protocol):
    """What the supervisor needs from whatever runs its jobs."""

    def idle_count(self) -> int: ...
    def dispatch(self, run: RunJob) -> None: ...
    def wait(self, timeout: Optional[float], wake_fds: Iterable[int] = ()) -> list: ...
    def kill(self, job_id: str) -> None: ...
    def shutdown(self) -> None: ...


class WorkerProcess:
    """One worker process: its pipe, the attempt it holds, and a mirror of its function cache."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")]))
        self.popen = subprocess.Popen(
            [sys.executable, "-c", _RUNNER_CODE, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send(WorkerInit(tuple(p or os.getcwd() for p in sys.path), os.getcwd()))
        self.pid = self.popen.pid
        self.job: Optional[RunJob] = None
        self.functions = FunctionCache()
        self.jobs_done = 0

    def send(self, run: RunJob) -> None:
        if run.function_key in self.functions:
            self.functions.get(run.function_key)  # keep the mirror's LRU order in step
            run = dataclasses.replace(run, function_blob=None)
        else:
            self.functions.put(run.function_key, True)
        self.job = run
        self.conn.send(run)

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

    def __init__(self, size: int, *, kill_grace: float = 0.1, max_tasks_per_worker: Optional[int] = None):
        if size < 1:
            raise ValueError(f"a pool needs at least 1 worker process, got {size}")
        self.size = size
        self.kill_grace = kill_grace
        self.max_tasks_per_worker = max_tasks_per_worker
        self.workers: List[WorkerProcess] = [WorkerProcess() for _ in range(size)]
        self._by_conn: Dict[Connection, WorkerProcess] = {w.conn: w for w in self.workers}

    def idle_count(self) -> int:
        return sum(1 for w in self.workers if w.job is None)

    def dispatch(self, run: RunJob) -> None:
        worker = next(w for w in self.workers if w.job is None)
        try:
            worker.send(run)
        except OSError:
            # The process died while idle; its EOF will surface in wait() as a lost job.
            worker.job = run

    def wait(self, timeout: Optional[float], wake_fds: Iterable[int] = ()) -> list:
        """Block until a worker answers, a worker ends, a wake fd is readable, or timeout."""
        ready = wait(list(self._by_conn) + list(wake_fds), timeout)
        events: list = []
        for conn in ready:
            worker = self._by_conn.get(conn)
            if worker is None:
                continue  # a wake fd: the caller drains it
            self._collect(worker, events)
        return events

    def _collect(self, worker: WorkerProcess, events: list) -> None:
        while True:
            try:
                if not worker.conn.poll():
                    return
                message = worker.conn.recv()
            except (EOFError, OSError):
                self._lost(worker, events)
                return
            events.append(message)
            if not isinstance(message, Accepted):  # a final answer frees the worker
                worker.job = None
                worker.jobs_done += 1
                if self.max_tasks_per_worker and worker.jobs_done >= self.max_tasks_per_worker:
                    self._replace(worker, lambda: worker.close(self.kill_grace))
                    return

    def _lost(self, worker: WorkerProcess, events: list) -> None:
        returncode = worker.reap()
        if worker.job is not None:
            events.append(
                WorkerLost(worker.job.job_id, worker.job.attempt, f"worker process {describe_exit(returncode)}")
            )
        else:
            logger.warning("idle worker process %d %s; replacing it", worker.pid, describe_exit(returncode))
        self._replace(worker, lambda: None)

    def kill(self, job_id: str) -> None:
        """Kill the process tree running `job_id` and start a replacement worker."""
        for worker in self.workers:
            if worker.job is not None and worker.job.job_id == job_id:
                self._replace(worker, lambda: worker.kill(self.kill_grace))
                return

    def _replace(self, worker: WorkerProcess, finish) -> None:
        del self._by_conn[worker.conn]
        self.workers.remove(worker)
        finish()
        fresh = WorkerProcess()
        self.workers.append(fresh)
        self._by_conn[fresh.conn] = fresh

    def shutdown(self) -> None:
        """Stop every worker: idle ones are asked to exit, busy ones are killed with their trees."""
        for worker in self.workers:
            if worker.job is None:
                worker.ask_to_exit()  # let them all exit at once; close() then only reaps
        for worker in self.workers:
            if worker.job is None:
                worker.close(1.0)
            else:
                worker.kill(self.kill_grace)
        self.workers.clear()
        self._by_conn.clear()
