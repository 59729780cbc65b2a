"""One end of the pipe between the supervisor and a worker process: pickled messages,
each preceded by its length (8 bytes, big-endian), over a blocking file descriptor.

Smaller to import than `multiprocessing.connection` (a worker process starts
faster), and a message whose reader is gone raises OSError on send, one cut
short or a closed pipe EOFError on recv.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

_HEADER = struct.Struct("!Q")
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
