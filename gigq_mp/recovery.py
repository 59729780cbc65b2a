"""Supervisors that died: who they were, and taking back the jobs they left `running`.

Every supervisor registers itself (pid, process start time, host, heartbeat).
A job left `running` is taken back only when its supervisor is provably dead:
on this host, its pid is gone or belongs to a process started at another time;
on another host, its heartbeat is older than the allowed limit. A job whose
owner never registered (GigQ's own worker, say) is trusted until its timeout.
"""

from __future__ import annotations

import socket
from datetime import datetime
from typing import Dict, Optional

import psutil

from .log import get_logger

logger = get_logger(__name__)


def seconds_since(timestamp: Optional[str]) -> float:
    """Seconds since a GigQ-style ISO timestamp (infinite when unknown)."""
    try:
        return (datetime.now() - datetime.fromisoformat(timestamp)).total_seconds()
    except (TypeError, ValueError):
        return float("inf")


def register(store, supervisor_id: str) -> None:
    me = psutil.Process()
    store.register_supervisor(supervisor_id, me.pid, me.create_time(), socket.gethostname())


def is_alive(registration, heartbeat_timeout: float) -> bool:
    """Whether a registered supervisor may still be running."""
    if registration["host"] == socket.gethostname():
        try:
            started = psutil.Process(registration["pid"]).create_time()
        except psutil.NoSuchProcess:
            return False
        return abs(started - registration["process_start"]) < 1.0  # else the pid was reused
    return seconds_since(registration["heartbeat"]) < heartbeat_timeout


def reclaim_from_dead(store, me: str, heartbeat_timeout: float) -> int:
    """Put the running jobs of dead supervisors back to pending; returns how many."""
    orphans = [row for row in store.orphaned_running_jobs() if row["worker_id"] != me]
    if not orphans:
        return 0
    registered = {row["id"]: row for row in store.supervisors()}
    alive: Dict[str, bool] = {}
    dead_jobs = []
    for job in orphans:
        owner = job["worker_id"]
        if owner not in registered:
            if seconds_since(job["started_at"]) > float(job["timeout"] or 0):
                dead_jobs.append(job)
            continue
        if owner not in alive:
            alive[owner] = is_alive(registered[owner], heartbeat_timeout)
        if not alive[owner]:
            dead_jobs.append(job)
    count = store.reclaim(dead_jobs, "interrupted: its supervisor {worker_id} died")
    for owner, owner_alive in alive.items():
        if not owner_alive:
            store.unregister_supervisor(owner)
    if count:
        logger.warning("took back %d jobs left running by dead supervisors", count)
    return count
