"""`Worker`: GigQ's worker API on top of a supervisor and its pool of worker processes."""

from __future__ import annotations

import signal
import threading
import uuid
from typing import Callable, Optional

from .log import get_logger
from .store import Store
from .supervisor import Supervisor

logger = get_logger(__name__)


class Worker:
    """Runs the jobs of one database with `concurrency` worker processes.

    Beyond GigQ's arguments: `grace_period` (seconds running jobs get after stop(),
    SIGINT or SIGTERM before they are killed), `max_tasks_per_worker` (replace a
    worker process after that many jobs), `max_memory_mb` (a memory limit for jobs
    that set none), `heartbeat_timeout` (when a supervisor on another host that
    stopped beating counts as dead, and its running jobs are taken back) and
    `progress` (called now and then with counts, e.g. a `progress.ProgressLine`).
    """

    def __init__(
        self,
        db_path: str,
        worker_id: Optional[str] = None,
        polling_interval: float = 5,
        concurrency: int = 1,
        *,
        grace_period: float = 5.0,
        max_tasks_per_worker: Optional[int] = None,
        max_memory_mb: Optional[float] = None,
        heartbeat_timeout: float = 60.0,
        progress: Optional[Callable[[dict], None]] = None,
    ):
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if polling_interval is None or polling_interval <= 0:
            raise ValueError(f"polling_interval must be > 0 seconds, got {polling_interval!r}")
        self.db_path = str(db_path)
        self.worker_id = worker_id or f"worker-{uuid.uuid4()}"
        self.polling_interval = polling_interval
        self.concurrency = concurrency
        self.grace_period = grace_period
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_memory_mb = max_memory_mb
        self.heartbeat_timeout = heartbeat_timeout
        self.progress = progress
        self.running = False
        self._supervisor: Optional[Supervisor] = None
        self._lock = threading.Lock()

    def _get_supervisor(self) -> Supervisor:
        with self._lock:
            if self._supervisor is None:
                self._supervisor = Supervisor(
                    Store(self.db_path),
                    worker_id=self.worker_id,
                    concurrency=self.concurrency,
                    polling_interval=self.polling_interval,
                    grace_period=self.grace_period,
                    max_tasks_per_worker=self.max_tasks_per_worker,
                    max_memory_mb=self.max_memory_mb,
                    heartbeat_timeout=self.heartbeat_timeout,
                    progress=self.progress,
                )
            return self._supervisor

    def start(self) -> None:
        """Run jobs until stop(), SIGINT or SIGTERM. A second signal stops at once."""
        supervisor = self._get_supervisor()
        self.running = True
        restore = self._install_signal_handlers(supervisor)
        logger.info("worker %s started with %d worker processes", self.worker_id, self.concurrency)
        try:
            supervisor.run()
        finally:
            self.running = False
            restore()
            self.close()
            logger.info("worker %s stopped", self.worker_id)

    def stop(self) -> None:
        """Stop claiming jobs; running ones get the grace period. Safe from any thread."""
        self.running = False
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.request_stop()

    def process_one(self) -> bool:
        """Run one ready job to the end of its attempt; False when no job was ready."""
        return self._get_supervisor().run(max_attempts=1) > 0

    def close(self) -> None:
        """Stop the worker processes and close the database connection."""
        with self._lock:
            supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.close()
            supervisor.store.close()

    @staticmethod
    def _install_signal_handlers(supervisor: Supervisor):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        received = []

        def on_signal(signum, frame):
            received.append(signum)
            supervisor.request_stop(cold=len(received) > 1)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore
