"""The supervisor's end of a worker pipe never waits: neither for the rest of a message
that is still arriving, nor for a worker that does not read."""

from __future__ import annotations

import socket
import threading

import pytest

from gigq_mp.wire import Pipe


@pytest.fixture
def ends():
    ours, theirs = socket.socketpair()
    supervisor, worker = Pipe(ours.detach(), nonblocking=True), Pipe(theirs.detach())
    yield supervisor, worker
    supervisor.close()
    worker.close()


@pytest.mark.timeout(30)
def test_recv_ready_returns_whole_messages_only_and_keeps_the_rest(ends):
    supervisor, worker = ends
    assert supervisor.recv_ready() == ([], False)
    big = "y" * 3_000_000  # far more than the pipe holds: written while we read
    writer = threading.Thread(target=lambda: (worker.send([1, 2]), worker.send(big)))
    writer.start()
    got = []
    while len(got) < 2:  # recv_ready is called many times while the big one arrives
        messages, closed = supervisor.recv_ready()
        assert not closed
        got += messages
    writer.join()
    assert got == [[1, 2], big]
    worker.close()
    assert supervisor.recv_ready() == ([], True)


@pytest.mark.timeout(30)
def test_post_never_waits_for_a_worker_that_is_not_reading(ends):
    supervisor, worker = ends
    payload = "z" * 4_000_000  # more than the pipe takes while nobody reads
    supervisor.post(payload)  # returns at once
    assert supervisor.waiting
    assert supervisor.flush() is False  # still nobody reading
    received = []
    reader = threading.Thread(target=lambda: received.append(worker.recv()))
    reader.start()
    assert supervisor.flush(wait=20.0) is True
    reader.join()
    assert received == [payload]
    assert not supervisor.waiting
