"""The fork server: one clean process from which a pool's worker processes are forked.

Starting a Python interpreter costs tens of milliseconds of CPU (more with many
.pth files in site-packages), and a pool of N worker processes would pay it N
times, then again for each replacement, all while the supervisor is busy
submitting. The pool starts one fork server instead. It imports what a worker
needs, then only forks: one worker process for each pipe end it is handed. It
never runs a job and never starts a thread, so a fork of it is safe, and the
supervisor itself is never forked.

    pool --"fork" + pipe end (SCM_RIGHTS)--> fork server --os.fork--> worker process
    pool <--its pid-- fork server
    pool --"reap" pid--> fork server (waitpid) --its return code--> pool

The fork server reaps a worker only when asked. Until then a dead worker stays a
zombie, so its pid and process group id cannot pass to an unrelated process
while the pool may still signal them. When its control socket closes (the pool
shut down, or the supervisor died), it kills every worker it still has, each with
its process group, reaps them and exits.
"""

from __future__ import annotations

import collections
import importlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import traceback
from typing import Deque, Optional, Set

from .log import get_logger

logger = get_logger(__name__)

# One message each way: kind (b"F" fork, b"R" reap), pid, value (the new pid, a return code).
_MESSAGE = struct.Struct("!cqq")
REPLY_SECONDS = 30.0  # the longest the pool waits for an answer before it gives the fork server up
UNKNOWN_EXIT = -(2**31)  # return code of a worker whose fork server died before reaping it

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `python -c` puts the current directory first on sys.path; replace it with the directory
# this gigq_mp came from, so the fork server never imports a different copy of gigq_mp.
_SERVER_CODE = f"import sys; sys.path[0] = {_PACKAGE_PARENT!r}; from gigq_mp.forkserver import main; main()"


class ForkServer:
    """The pool's side: start the fork server, ask it for worker processes, reap them."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", _SERVER_CODE, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.ctl: Optional[socket.socket] = ours
        self._waiting: Deque[ForkedProcess] = collections.deque()  # asked, answer not read yet

    def running(self) -> bool:
        """Is it alive, with its control socket open? (If not, no pid it gave is safe to signal.)"""
        return self.ctl is not None and self.popen.poll() is None

    def fork(self, fd: int) -> "ForkedProcess":
        """Ask for a worker process that runs gigq_mp.runner on `fd` (a socket end; the caller
        closes its copy). Does not wait: the pid is read when first needed. OSError when the
        fork server is gone."""
        if self.ctl is None:
            raise OSError("the fork server is closed")
        process = ForkedProcess(self)
        try:
            socket.send_fds(self.ctl, [_MESSAGE.pack(b"F", 0, 0)], [fd])
        except OSError:
            self._gone()  # so running() says so, and the pool starts another
            raise
        self._waiting.append(process)
        return process

    def reap(self, process: "ForkedProcess") -> int:
        """Reap a dead (or SIGKILLed) worker; its return code as Popen gives it."""
        pid = process.pid
        if process.returncode is not None:
            return process.returncode
        if self.ctl is None or not self.running():
            process.returncode = UNKNOWN_EXIT
            return process.returncode
        try:
            self.ctl.send(_MESSAGE.pack(b"R", pid, 0))
        except OSError:
            self._gone()
            process.returncode = UNKNOWN_EXIT
            return process.returncode
        self._waiting.append(process)
        while process.returncode is None:  # each answer pops a request, or _gone() clears them all
            self._answer()
        return process.returncode

    def _answer(self) -> None:
        """Read one answer (they come in the order asked), or give the fork server up."""
        if self.ctl is None or not select.select([self.ctl], [], [], REPLY_SECONDS)[0]:
            if self.ctl is not None:
                logger.error("the fork server did not answer in %g s; stopping it", REPLY_SECONDS)
            return self._gone()
        try:
            data = self.ctl.recv(_MESSAGE.size)
        except OSError:
            data = b""
        if len(data) != _MESSAGE.size or not self._waiting:
            return self._gone()
        kind, pid, value = _MESSAGE.unpack(data)
        process = self._waiting.popleft()
        if kind == b"F":
            process.forked(value)
        else:
            process.returncode = value

    def _gone(self) -> None:
        """It died (or will not answer): what it was asked stays unanswered for good."""
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        while self._waiting:
            self._waiting.popleft().returncode = UNKNOWN_EXIT

    def close(self, grace: float = 5.0) -> None:
        """Close its control socket: it kills and reaps the workers it still has, and exits."""
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            logger.warning("fork server %d did not exit in %g s; killing it", self.popen.pid, grace)
            self.popen.kill()
            self.popen.wait()
        while self._waiting:
            self._waiting.popleft().returncode = UNKNOWN_EXIT


class ForkedProcess:
    """A worker process forked by the fork server, with the part of Popen's interface that
    proctree uses (`pid`, `returncode`, `exited()`, `wait()`)."""

    def __init__(self, server: ForkServer):
        self.server = server
        self._pid: Optional[int] = None
        self.returncode: Optional[int] = None  # set once reaped (or lost with the fork server)

    @property
    def pid(self) -> Optional[int]:
        """Its pid (waits for the fork server's answer); None if it could not be forked."""
        while self._pid is None and self.returncode is None:
            self.server._answer()
        return self._pid

    def forked(self, pid: int) -> None:
        if pid > 0:
            self._pid = pid
        else:
            self.returncode = UNKNOWN_EXIT  # os.fork failed: there is no process

    def owned(self) -> bool:
        """May its pid (and process group id) still be signalled? Only until it is reaped, and
        while its fork server, which reaps only when asked, is alive: otherwise its zombie
        went to init, which may have reaped it and freed the pid."""
        if self.returncode is None and (self.pid is None or not self.server.running()):
            self.returncode = UNKNOWN_EXIT
        return self.returncode is None

    def exited(self) -> bool:
        """Has it exited (a zombie, or reaped)? Never reaps it."""
        if not self.owned():
            return True
        import psutil

        try:
            return psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def wait(self) -> int:
        """Reap it (it must have exited, or have been sent SIGKILL); its return code."""
        if self.returncode is None:
            self.server.reap(self)
        return self.returncode


# -- inside the fork server ----------------------------------------------------------------------


def main() -> None:
    """Entry point of the fork server: argv[1] is the fd of its control socket."""
    importlib.import_module(".runner", __package__)  # imported once here: no forked worker pays for it

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the supervisor
    ctl = socket.socket(fileno=int(sys.argv[1]))
    children: Set[int] = set()
    try:
        serve(ctl, children)
    finally:
        for pid in children:  # the pool is gone: so are its workers, with their process groups
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    continue
        for pid in children:
            os.waitpid(pid, 0)
        os._exit(0)


def serve(ctl: socket.socket, children: Set[int]) -> None:
    """Answer fork and reap requests until the control socket closes."""
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(ctl, _MESSAGE.size, 1)
        except OSError:
            return
        if len(data) != _MESSAGE.size:
            for fd in fds:
                os.close(fd)
            return  # closed (or garbage): stop
        kind, pid, _ = _MESSAGE.unpack(data)
        if kind == b"F" and fds:
            child = fork_worker(ctl, fds[0])
            os.close(fds[0])
            if child > 0:
                children.add(child)
            ctl.send(_MESSAGE.pack(b"F", 0, child))
        elif kind == b"R" and pid in children:
            _, status = os.waitpid(pid, 0)
            children.discard(pid)
            ctl.send(_MESSAGE.pack(b"R", pid, os.waitstatus_to_exitcode(status)))
        else:
            for fd in fds:
                os.close(fd)
            ctl.send(_MESSAGE.pack(b"R", pid, UNKNOWN_EXIT))  # not ours to reap: say so


def fork_worker(ctl: socket.socket, fd: int) -> int:
    """Fork a worker process on pipe end `fd`; its pid, or -1 if the fork failed."""
    try:
        pid = os.fork()
    except OSError as exc:
        print(f"gigq_mp fork server: cannot fork a worker process: {exc}", file=sys.stderr)
        return -1
    if pid:
        return pid
    try:
        ctl.close()
        os.setsid()  # its own process group: killing it kills what its jobs started
        from .runner import main as run_worker

        run_worker(fd)  # never returns: it ends the process
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(70)
