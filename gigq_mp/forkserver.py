"""The fork server: one clean process from which a pool's worker processes are forked.

Starting a Python interpreter costs tens of milliseconds of CPU (more with many
.pth files in site-packages), and a pool of N worker processes would pay it N
times, then again for each replacement, all while the supervisor is busy
submitting. The pool starts one fork server instead. It imports what a worker
needs, then only forks: one worker process for each pipe end it is handed. It
never runs a job and never starts a thread, so a fork of it is safe, and the
supervisor itself is never forked.

    pool --"fork" + pipe end (SCM_RIGHTS)--> fork server --os.fork--> worker process
    pool <--its pid, once it leads its own session-- fork server
    pool --"reap" pid--> fork server (waitpid, never blocking) --return code or "not yet"--> pool

Each request carries a number that its answer repeats, so an answer always goes to
its own request. The fork server reaps a worker only when asked: until then a dead
worker stays a zombie, and its pid and process group id cannot pass to an
unrelated process while the pool may still signal them. It exits, after killing
every worker it still has (each with its process group) and reaping them, when
its control socket closes (the pool shut down) or when its parent, the
supervisor, is gone.
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from typing import Dict, List, Optional, Set, Tuple



def _logger():
    """This module's logger, found when first needed: the fork server, which imports this
    module, never logs (logging costs its start 2 ms)."""
    from .log import get_logger

    return get_logger(__name__)


# One message each way: kind (b"F" fork, b"R" reap), request number, pid, value (the new pid,
# a return code).
_MESSAGE = struct.Struct("!cqqq")
REPLY_SECONDS = 30.0  # the longest the pool waits for an answer before it gives the fork server up
MAX_OUTSTANDING = 32  # requests sent and not answered yet, at most (their answers must fit its buffer)
REAP_POLL_SECONDS = 0.002  # between "reap" requests for a worker that has not exited yet
PARENT_CHECK_SECONDS = 0.25  # how often the fork server looks whether the supervisor is gone
NOT_YET = -(2**31) + 2  # answer to "reap": it has not exited (in uninterruptible sleep, say)
FORK_FAILED = -(2**31) + 1  # return code of a worker that could not be forked
UNKNOWN_EXIT = -(2**31)  # return code of a worker whose fork server died before reaping it

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `python -c` puts the current directory first on sys.path; replace it with the directory
# this gigq_mp came from, so the fork server never imports a different copy of gigq_mp.
_SERVER_CODE = f"import sys; sys.path[0] = {_PACKAGE_PARENT!r}; from gigq_mp.forkserver import main; main()"


class ForkServer:
    """The pool's side: start the fork server, ask it for worker processes, reap them."""

    def __init__(self) -> None:
        import subprocess  # here: the fork server itself never starts a process this way

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", _SERVER_CODE, str(theirs.fileno()), str(os.getpid())],
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
        self._poller = select.poll()  # not select(): the supervisor may hold fds past 1023
        self._poller.register(ours, select.POLLIN)
        self._number = 0
        self._waiting: Dict[int, Tuple[bytes, ForkedProcess]] = {}  # asked, not answered, oldest first
        self._unapplied: Optional[bytes] = None  # an answer read, not yet applied

    def running(self) -> bool:
        """Is it alive, with its control socket open? (If not, no pid it gave is safe to signal.)"""
        return self.ctl is not None and self.popen.poll() is None

    def fork(self, fd: int) -> "ForkedProcess":
        """Ask for a worker process that runs gigq_mp.runner on `fd` (a socket end; the caller
        closes its copy). Does not wait for it: the pid is read when first needed. OSError
        when the fork server is gone."""
        process = ForkedProcess(self)
        self._ask(b"F", 0, process, [fd])
        return process

    def reap(self, process: "ForkedProcess") -> int:
        """Reap a worker that exited (or was sent SIGKILL); its return code as Popen gives it.
        Waits while it has not exited, as Popen.wait() would."""
        while process.returncode is None:
            pid = process.pid  # may settle returncode itself (it was never forked)
            if pid is None or not self.running():
                if process.returncode is None:
                    process.returncode = UNKNOWN_EXIT
                break
            try:
                number = self._ask(b"R", pid, process)
            except OSError:
                process.returncode = UNKNOWN_EXIT
                break
            while number in self._waiting:
                self._answer()
            if process.returncode is None:
                time.sleep(REAP_POLL_SECONDS)  # not exited yet
        return process.returncode

    def close(self, grace: float = 5.0, wait: bool = True) -> None:
        """Close its control socket: it kills and reaps the workers it still has, and exits.
        Waits for that (`grace` seconds, then kills it) unless `wait` is False."""
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if not wait:
            return
        import subprocess

        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            _logger().warning("fork server %d did not exit in %g s; killing it", self.popen.pid, grace)
            self.popen.kill()
            self.popen.wait()
        self._forget_waiting()

    def _ask(self, kind: bytes, pid: int, process: "ForkedProcess", fds: List[int] = ()) -> int:
        """Send one request (registered first, so an interruption cannot lose its answer's
        match); its number. OSError when the fork server is gone."""
        while self.ctl is not None and len(self._waiting) >= MAX_OUTSTANDING:
            self._answer()  # else its answers fill the socket, and it stops reading ours
        if self.ctl is None:
            raise OSError("the fork server is gone")
        self._number += 1
        number = self._number
        self._waiting[number] = (kind, process)
        try:
            socket.send_fds(self.ctl, [_MESSAGE.pack(kind, number, pid, 0)], fds)
        except OSError:
            self._gone()  # so running() says so, and the pool starts another
            raise
        return number

    def _answer(self) -> None:
        """Read one answer and apply it to its request; give the fork server up if it does
        not answer in REPLY_SECONDS, or answers nonsense. An answer read is kept until it is
        applied, so an interruption (Ctrl-C) in between does not lose it: the next call
        applies it first."""
        if self.ctl is None:
            return
        if self._unapplied is None:
            if not self._poller.poll(REPLY_SECONDS * 1000):
                _logger().error("the fork server did not answer in %g s; stopping it", REPLY_SECONDS)
                return self._gone()
            try:
                self._unapplied = self.ctl.recv(_MESSAGE.size)
            except OSError:
                self._unapplied = b""
        if len(self._unapplied) != _MESSAGE.size:
            return self._gone()  # it closed its end: it died
        kind, number, _, value = _MESSAGE.unpack(self._unapplied)
        asked = self._waiting.get(number)
        if asked is None or asked[0] != kind:
            _logger().error("the fork server answered request %d, which was not asked; stopping it", number)
            return self._gone()
        process = asked[1]
        if kind == b"F":
            process.forked(value)
        elif value != NOT_YET:
            process.returncode = value
        del self._waiting[number]  # applied (doing it again would change nothing)
        self._unapplied = None
        for older in [n for n in self._waiting if n < number]:
            # Registered, never sent (an interruption in between): no answer will come.
            lost_kind, lost = self._waiting.pop(older)
            if lost_kind == b"F":
                lost.forked(-1)

    def _gone(self) -> None:
        """It died (or will not answer): what it was asked stays unanswered for good."""
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._forget_waiting()

    def _forget_waiting(self) -> None:
        while self._waiting:
            _, (kind, process) = self._waiting.popitem()
            if process.returncode is None:
                process.returncode = UNKNOWN_EXIT


class ForkedProcess:
    """A worker process forked by the fork server, with the part of Popen's interface that
    proctree uses (`pid`, `returncode`, `owned()`, `exited()`, `wait()`)."""

    def __init__(self, server: Optional[ForkServer]):
        self.server = server
        self._pid: Optional[int] = None
        self.returncode: Optional[int] = None  # set once reaped (or lost with the fork server)

    @classmethod
    def unforked(cls) -> "ForkedProcess":
        """Stands for a worker process the fork server could not be asked for."""
        process = cls(None)
        process.returncode = FORK_FAILED
        return process

    @property
    def pid(self) -> Optional[int]:
        """Its pid (waits for the fork server's answer); None if it could not be forked."""
        while self._pid is None and self.returncode is None:
            if self.server is None or self.server.ctl is None:
                self.returncode = UNKNOWN_EXIT
                break
            self.server._answer()
        return self._pid

    def forked(self, pid: int) -> None:
        if pid > 0:
            self._pid = pid
        elif self.returncode is None:
            self.returncode = FORK_FAILED  # there is no process

    def owned(self) -> bool:
        """May its pid (and process group id) still be signalled? Only until it is reaped, and
        while its fork server, which reaps only when asked, is alive: otherwise its zombie
        went to init, which may have reaped it and freed the pid."""
        if self.pid is not None and self.returncode is None and not self.server.running():
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
        """Reap it (it has exited, or was sent SIGKILL); its return code."""
        if self.returncode is None:
            self.server.reap(self)
        return self.returncode


# -- inside the fork server ----------------------------------------------------------------------


def main() -> None:
    """Entry point of the fork server: argv[1] is the fd of its control socket, argv[2] the
    supervisor's pid."""
    importlib.import_module(".runner", __package__)  # imported once here: no forked worker pays for it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the supervisor
    # An ignored SIGCHLD (inherited from the application) would have the kernel reap workers
    # at once: their pids would not stay reserved, and waitpid would fail.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    ctl = socket.socket(fileno=int(sys.argv[1]))
    supervisor = int(sys.argv[2])
    children: Set[int] = set()
    try:
        if os.getppid() == supervisor:
            serve(ctl, children, supervisor)
    finally:
        for pid in children:  # the pool is gone: so are its workers, with their process groups
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    continue
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                continue  # reaped already (by nobody we know of): nothing to wait for
        os._exit(0)


def serve(ctl: socket.socket, children: Set[int], supervisor: int) -> None:
    """Answer fork and reap requests until the control socket closes or the supervisor is
    gone (a process it forked may hold a copy of the socket's other end open)."""
    poller = select.poll()
    poller.register(ctl, select.POLLIN)
    while True:
        if not poller.poll(PARENT_CHECK_SECONDS * 1000):
            if os.getppid() != supervisor:
                return
            continue
        try:
            data, fds, _, _ = socket.recv_fds(ctl, _MESSAGE.size, 4)
        except OSError:
            return
        if len(data) != _MESSAGE.size:
            for fd in fds:
                os.close(fd)
            return  # closed (or nonsense): stop
        kind, number, pid, _ = _MESSAGE.unpack(data)
        if kind == b"F" and len(fds) == 1:
            child = fork_worker(ctl, fds[0])
            os.close(fds[0])
            if child > 0:
                children.add(child)
            ctl.send(_MESSAGE.pack(b"F", number, 0, child))
            continue
        for fd in fds:
            os.close(fd)
        if kind == b"R" and pid in children:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)  # never blocks: the pool asks again
                code = os.waitstatus_to_exitcode(status) if done else NOT_YET
            except ChildProcessError:
                done, code = pid, UNKNOWN_EXIT
            if done:
                children.discard(pid)
            ctl.send(_MESSAGE.pack(b"R", number, pid, code))
        else:
            ctl.send(_MESSAGE.pack(kind, number, pid, UNKNOWN_EXIT))  # not ours: say so


def fork_worker(ctl: socket.socket, fd: int) -> int:
    """Fork a worker process on pipe end `fd`; its pid once it leads its own session (so
    the pool can kill its process group), or -1 if the fork failed."""
    server = os.getpid()
    ready_r, ready_w = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(ready_r)
        os.close(ready_w)
        print(f"gigq_mp fork server: cannot fork a worker process: {exc}", file=sys.stderr)
        return -1
    if pid:
        os.close(ready_w)
        os.read(ready_r, 1)  # end of file once the child has its session (or died)
        os.close(ready_r)
        return pid
    try:
        ctl.close()
        os.close(ready_r)
        os.setsid()  # its own session and process group: killing it kills what its jobs started
        os.close(ready_w)
        from .runner import main as run_worker

        run_worker(fd, server)  # never returns: it ends the process
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(70)
