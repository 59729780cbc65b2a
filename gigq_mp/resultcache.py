"""Small results of completed parents, kept in the supervisor for the children that wait.

Claiming a child needs its parents' results. A parent that completed in this
supervisor a moment ago has its result at hand: keeping it until each child that
waited for it has been claimed saves reading it back from SQLite (a random
lookup per parent). The store stays the truth; a child that misses reads it.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

from .serialize import StoredResult

ENTRY_OVERHEAD = 200  # bytes an entry costs beyond its result (dict slot, list, tuple, strings)


class ResultCache:
    """Results by job id, each for a number of claims; the oldest go first when full.

    Entries whose children never get claimed here (cancelled, claimed by another
    supervisor) age out that way. Results stored in files are not kept: the file
    belongs to the job's row. The owner clears the cache when rows may have been
    deleted (their ids could come back with other results).
    """

    def __init__(self, max_bytes: int, max_item_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self._entries: Dict[str, list] = {}  # job id -> [result, claims left, size], oldest first
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes held: the results kept, and ENTRY_OVERHEAD per entry."""
        return self._bytes

    def put(self, job_id: str, result: StoredResult, children: int) -> None:
        """Keep `result` (text, blob, path) of `job_id` for `children` claims."""
        self._drop(job_id)
        text, blob, path = result
        size = len(text or "") + len(blob or b"")
        if children <= 0 or path is not None or size > self.max_item_bytes:
            return
        size += ENTRY_OVERHEAD  # so many tiny results are bounded too
        self._entries[job_id] = [result, children, size]
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def take(self, job_id: str) -> Optional[StoredResult]:
        """The kept result of `job_id` for one child's claim, or None."""
        return self.take_many([job_id]).get(job_id)

    def take_many(self, ids: Iterable[str]) -> Dict[str, StoredResult]:
        """take() for each of `ids`, which names a job once for each claim that needs its
        result: job id -> result, for the ids kept. (One loop: a fan-in's claim takes thousands.)"""
        entries = self._entries
        found = {}
        freed = 0
        for job_id in ids:
            entry = entries.get(job_id)
            if entry is not None:
                found[job_id] = entry[0]
                if entry[1] > 1:
                    entry[1] -= 1
                else:
                    del entries[job_id]
                    freed += entry[2]
        self._bytes -= freed
        return found

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, job_id: str) -> None:
        entry = self._entries.pop(job_id, None)
        if entry is not None:
            self._bytes -= entry[2]
