"""What connects the supervisor and a worker process: the pipe (pickled messages, each
preceded by its length, 8 bytes big-endian, over a blocking file descriptor), and the
counter of jobs the worker has started, which the pool reads without the pipe.

Smaller to import than `multiprocessing.connection` (a worker process starts
faster), and a message whose reader is gone raises OSError on send, one cut
short or a closed pipe EOFError on recv.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any, Optional

_HEADER = struct.Struct("!Q")
_COUNT = struct.Struct("<Q")
_SMALL = 64 * 1024  # messages up to this size go out in one write with their header


class Pipe:
    def __init__(self, fd: int):
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def send(self, message: Any) -> None:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if len(payload) <= _SMALL:
            self._write(_HEADER.pack(len(payload)) + payload)
        else:
            self._write(_HEADER.pack(len(payload)))
            self._write(payload)

    def recv(self) -> Any:
        (size,) = _HEADER.unpack(self._read(_HEADER.size))
        return pickle.loads(self._read(size))

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

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

    def read(self) -> int:
        return _COUNT.unpack_from(self._map, 0)[0] if self._map is not None else 0

    def set(self, count: int) -> None:
        _COUNT.pack_into(self._map, 0, count)

    def close(self) -> None:
        """Unmap it (and, in the pool, remove the file); reads give 0 afterwards."""
        if self._map is None:
            return
        self._map.close()
        self._map = None
        self._file.close()
        if self._owner:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                return  # the pool's directory went first
