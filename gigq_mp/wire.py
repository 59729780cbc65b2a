"""What connects the supervisor and a worker process: the pipe (pickled messages, each
preceded by its length, 8 bytes big-endian), and the counter of jobs the worker has
started, which the pool reads without the pipe.

The worker process uses its end blocking: `send` and `recv` wait until a whole
message is written or read. The supervisor's end never waits: `recv_ready`
returns the messages that have fully arrived, and `post` queues a message and
writes what the pipe takes now, `flush` more when it drains. So a worker busy
with a long job (it reads nothing meanwhile) or stopped halfway through a large
reply cannot stall the supervisor. Smaller to import than
`multiprocessing.connection`, so a worker process starts faster.
"""

from __future__ import annotations

import collections
import os
import pickle
import select
import struct
from typing import Any, Deque, List, Optional, Tuple

_HEADER = struct.Struct("!Q")
_SMALL = 64 * 1024  # messages up to this size go out in one write with their header
_CHUNK = 256 * 1024  # bytes read at a time by recv_ready


class Pipe:
    def __init__(self, fd: int, nonblocking: bool = False):
        self._fd = fd
        self._inbox = bytearray()  # bytes read by recv_ready, not yet a whole message
        self._outbox: Deque[memoryview] = collections.deque()  # posted, not written yet
        if nonblocking:
            os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self._fd

    def send(self, message: Any) -> None:
        """Write one message (OSError when the other end is gone)."""
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if len(payload) <= _SMALL:
            self._write(_HEADER.pack(len(payload)) + payload)
        else:
            self._write(_HEADER.pack(len(payload)))
            self._write(payload)

    def post(self, message: Any) -> None:
        """Queue one message and write what the pipe takes now (a non-blocking end);
        OSError when the other end is gone."""
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._outbox.append(memoryview(_HEADER.pack(len(payload)) + payload))
        self.flush()

    @property
    def waiting(self) -> bool:
        """Are posted bytes still waiting for the pipe to take them?"""
        return bool(self._outbox)

    def flush(self, wait: float = 0.0) -> bool:
        """Write posted bytes, waiting up to `wait` seconds for the pipe to take them;
        True when none are left."""
        while self._outbox:
            try:
                written = os.write(self._fd, self._outbox[0])
            except BlockingIOError:
                if wait <= 0 or not select.select([], [self._fd], [], wait)[1]:
                    return False
                continue
            if written == len(self._outbox[0]):
                self._outbox.popleft()
            else:
                self._outbox[0] = self._outbox[0][written:]
        return True

    def drop_posted(self) -> None:
        """Forget what was posted and not written (the other end is gone)."""
        self._outbox.clear()

    def recv(self) -> Any:
        """Wait for one whole message (EOFError when the other end closed)."""
        (size,) = _HEADER.unpack(self._read(_HEADER.size))
        return pickle.loads(self._read(size))

    def recv_ready(self) -> Tuple[List[Any], bool]:
        """(the messages that have fully arrived, whether the other end has closed),
        without waiting; a message still arriving stays for the next call."""
        closed = False
        while True:
            try:
                chunk = os.read(self._fd, _CHUNK)
            except BlockingIOError:
                break
            except ConnectionResetError:  # it died with our bytes unread: the end, as EOF is
                closed = True
                break
            if not chunk:
                closed = True
                break
            self._inbox += chunk
        messages = []
        start = 0
        with memoryview(self._inbox) as view:  # released before the inbox is trimmed
            while len(view) - start >= _HEADER.size:
                (size,) = _HEADER.unpack_from(view, start)
                end = start + _HEADER.size + size
                if end > len(view):
                    break
                messages.append(pickle.loads(view[start + _HEADER.size : end]))
                start = end
        del self._inbox[:start]
        return messages, closed

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                select.select([], [self._fd], [])  # a non-blocking end: wait until it takes more

    def _read(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        while view:
            got = os.readv(self._fd, [view])
            if got == 0:
                raise EOFError("the other end of the pipe closed")
            view = view[got:]
        return buffer


class StartCounter:
    """How many jobs a worker process has started, in an 8-byte file both processes map.

    The worker process sets it before each job; the pool reads it whenever it needs to
    know which job runs, even while the worker cannot send (a job holding the GIL keeps
    the thread that sends replies from running). The pool creates and removes the file.
    """

    def __init__(self, path: str, create: bool = False):
        import mmap

        self.path = path
        self._owner = create
        if create:
            with open(path, "wb") as f:
                f.write(bytes(8))
        self._file = open(path, "r+b")
        self._map: Optional["mmap.mmap"] = mmap.mmap(self._file.fileno(), 8)
        # One aligned 8-byte word: each read and write is a single load or store, never
        # seen half done (struct.pack_into clears the bytes before it writes them).
        self._cell = memoryview(self._map).cast("Q")

    def read(self) -> int:
        return self._cell[0] if self._map is not None else 0

    def set(self, count: int) -> None:
        self._cell[0] = count

    def close(self) -> None:
        """Unmap it (and, in the pool, remove the file); reads give 0 afterwards."""
        if self._map is None:
            return
        self._cell.release()
        self._map.close()
        self._map = None
        self._file.close()
        if self._owner:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                return  # the pool's directory went first
