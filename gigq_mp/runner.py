"""The code that runs inside a worker process.

The pool's fork server (forkserver.py) forks a worker process and calls `main(fd)`,
where fd is this process's end of a socket pair. The worker process never
imports the user's `__main__` and never touches SQLite: it receives `RunJob`
messages, answers `JobSucceeded` or `JobFailed` for each, and exits when
the pipe closes, when it is told to stop, or when its supervisor disappears.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
import traceback
import types
from collections import OrderedDict, deque
from typing import Any, Callable, Deque, Dict, Optional, Set

from .capture import OutputCapture
from .messages import JobFailed, JobSucceeded, PackedResults, RunJob, Unstarted, WorkerInit
from .serialize import decode_value, encode_result, load_callable, loads_json
from .wire import Pipe, StartCounter

FUNCTION_CACHE_SIZE = 64
_CO_VARARGS, _CO_VARKEYWORDS = 0x04, 0x08  # code flags: *args, **kwargs (inspect.CO_VARARGS, ...)
ORPHAN_CHECK_SECONDS = 0.25
REPLY_WINDOW = 0.002  # seconds a reply may wait for others between jobs...
REPLY_LATE = 0.01  # ...and at most, while a job runs


class FunctionCache:
    """A bounded LRU of callables by key (in a worker process: the entries of cache_entry).
    The supervisor keeps a mirror of each worker's cache with the same rule, so it knows
    when to send a callable again."""

    def __init__(self, capacity: int = FUNCTION_CACHE_SIZE):
        self.capacity = capacity
        self._items: "OrderedDict[str, Any]" = OrderedDict()

    def get(self, key: str) -> Any:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return key in self._items


_IN_WORKER = False  # set in worker processes, so that Workflow.run can refuse to nest
_PID = os.getpid()  # of this worker process (set again by main(): the fork server imported us)


def in_worker_process() -> bool:
    """True inside a gigq_mp worker process (a job is running here)."""
    return _IN_WORKER


def wants_parent_results(function: Callable) -> bool:
    """Auto mode: inject when the callable takes `parent_results` or `**kwargs`.

    A plain function is read from its code object, as inspect.signature would read it, so
    a worker process need not import inspect (5-10 ms of its first job that has parents);
    anything else (a wrapped or partial function, a method, a class) goes to inspect."""
    if type(function) is types.FunctionType and not hasattr(function, "__wrapped__"):
        if not hasattr(function, "__signature__"):
            code = function.__code__
            flags = code.co_flags
            named = code.co_argcount + code.co_kwonlyargcount + bool(flags & _CO_VARARGS) + bool(flags & _CO_VARKEYWORDS)
            return bool(flags & _CO_VARKEYWORDS) or "parent_results" in code.co_varnames[:named]
    import inspect

    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "parent_results" or p.kind is p.VAR_KEYWORD for p in parameters)


def cache_entry(message: RunJob, functions: FunctionCache, pickled: Dict[str, bytes]) -> list:
    """The cache entry of the job's callable, touched as the supervisor's mirror of the cache
    was when it sent the job: for every job taken from the queue, run or skipped, so the two
    evict alike. A callable missing here arrived in `pickled` with this job's batch; its entry
    is [callable or None until loaded, whether it takes parent results or None until read,
    its pickle until loaded]. The pickle stays until a load succeeds: a callable that fails
    to load fails each of its jobs alike."""
    entry = functions.get(message.function_key)
    if entry is None:
        entry = [None, None, pickled.pop(message.function_key, None)]
        functions.put(message.function_key, entry)
    return entry


def run_job(message: RunJob, functions: FunctionCache, pickled: Dict[str, bytes]) -> Any:
    """Call the job's function with its params (and parent results); return its result."""
    loaded = cache_entry(message, functions, pickled)
    if loaded[0] is None:
        loaded[0] = load_callable(loaded[2], message.function_module, message.function_name)
        loaded[2] = None
    function = loaded[0]
    params = decode_value(message.params_text, message.params_blob) or {}
    inject = message.pass_parent_results
    parents = message.parent_results
    if parents and inject is None and loaded[1] is None:
        loaded[1] = wants_parent_results(function)  # once: inspect.signature costs more than a short job
    if parents and (inject or (inject is None and loaded[1])):
        params = dict(params)
        if type(parents) is PackedResults:
            params["parent_results"] = dict(zip(parents.ids, loads_json(parents.texts)))
        else:
            params["parent_results"] = {
                parent_id: decode_value(text, blob, path) for parent_id, text, blob, path in parents
            }
    return function(**params)


def answer(
    message: RunJob,
    functions: FunctionCache,
    pickled: Dict[str, bytes],
    results_dir: Optional[str],
    capture: Optional[OutputCapture],
) -> Any:
    """Run one attempt and build the reply; never raises."""
    if capture is not None:
        capture.start()
    started = time.perf_counter()
    try:
        result = run_job(message, functions, pickled)
    except BaseException as exc:  # the job's failure, whatever it is, is the answer
        error = (
            "".join(traceback.format_exception_only(type(exc), exc)).strip() + "\n\n" + traceback.format_exc()
        )
        output = capture.stop() if capture is not None else ("", "")
        ran = time.perf_counter() - started
        return JobFailed(message.job_id, message.attempt, type(exc).__name__, error, *output, ran, _PID)
    output = capture.stop() if capture is not None else ("", "")
    ran = time.perf_counter() - started
    # The attempt number is unique within one supervisor; the pid keeps two supervisors apart.
    name = f"{message.job_id}.{message.attempt}-{_PID}.pickle"
    spill = None if results_dir is None else os.path.join(results_dir, name)
    try:
        text, blob, path = encode_result(result, spill)
    except Exception as exc:
        return JobFailed(message.job_id, message.attempt, type(exc).__name__, str(exc), *output, ran, _PID)
    return JobSucceeded(message.job_id, message.attempt, text, blob, path, *output, ran, _PID)


def kill_own_descendants() -> None:
    """Kill every process this worker started (its jobs' children), children first."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in reversed(children):
        try:
            child.kill()
        except psutil.NoSuchProcess:
            continue


def watch_parent(parent_pid: int) -> None:
    """Exit, taking our descendants along, as soon as our parent (the fork server) is gone."""
    while True:
        threading.Event().wait(ORPHAN_CHECK_SECONDS)
        if os.getppid() != parent_pid:
            kill_own_descendants()
            os._exit(70)


class Outbox:
    """Replies waiting to go to the supervisor, several per write.

    The serving loop sends them when it has no job left or when the oldest has
    waited REPLY_WINDOW; a thread sends them once they are REPLY_LATE old, so a
    long job never holds back the replies of the short ones before it (nor the
    supervisor's knowledge that it has started: jobs run in the order sent).
    """

    def __init__(self, conn: Pipe):
        self.conn = conn
        self.items: list = []
        self.since = 0.0  # when the oldest waiting reply was added
        self.closed = False
        self.cond = threading.Condition()
        threading.Thread(target=self._send_late, daemon=True).start()

    def add(self, reply: Any) -> None:
        with self.cond:
            if not self.items:
                self.since = time.monotonic()
                self.cond.notify()
            self.items.append(reply)

    def due(self) -> bool:
        return bool(self.items) and time.monotonic() - self.since >= REPLY_WINDOW

    def flush(self) -> None:
        with self.cond:
            self._send()

    def close(self) -> None:
        """Send what is left (if the pipe still takes it) and stop the thread."""
        with self.cond:
            try:
                self._send()
            except OSError:
                self.items = []  # the supervisor is gone: nobody is left to tell
            self.closed = True
            self.cond.notify()

    def _send(self) -> None:
        if self.items and not self.closed:
            items, self.items = self.items, []
            self.conn.send(items)

    def _send_late(self) -> None:
        with self.cond:
            while not self.closed:
                if not self.items:
                    self.cond.wait()
                    continue
                left = self.since + REPLY_LATE - time.monotonic()
                if left > 0:
                    self.cond.wait(left)
                    continue
                try:
                    self._send()
                except OSError:
                    return  # the pipe is gone; the serving loop finds out too


def serve(
    conn: Pipe, results_dir: Optional[str], capture: Optional[OutputCapture], counter: Optional[StartCounter] = None
) -> None:
    """Answer RunJob messages until the pipe closes or a None arrives.

    Messages travel in lists both ways, so one write can carry several jobs, or
    the replies to several jobs. The first message says the process is ready.
    There is no "started" message: the pool knows a job started when the replies
    to the jobs before it arrive, or from `counter`, which this loop sets before
    each job.
    """
    functions = FunctionCache()
    pickled: Dict[str, bytes] = {}  # callables received, not yet loaded into the cache
    jobs: Deque[Optional[RunJob]] = deque()
    skip: Set[int] = set()  # attempts not to run after all
    conn.send([])  # ready
    outbox = Outbox(conn)
    started = 0
    try:
        while True:
            if not jobs:
                outbox.flush()
                if not receive(conn, jobs, pickled, skip, block=True):
                    return
                if not jobs:
                    continue  # only skips came (for jobs already answered)
            job = jobs.popleft()
            if job is None:
                return
            started += 1
            if job.attempt in skip:
                # Counted, never shown as started: the pool kills a process that starts a
                # job it was told to skip (the skip came too late).
                skip.discard(job.attempt)
                cache_entry(job, functions, pickled)  # as the supervisor's mirror was touched
                outbox.add(Unstarted(job.job_id, job.attempt))
            else:
                if counter is not None:
                    counter.set(started)  # the pool can tell which job runs, replies sent or not
                outbox.add(answer(job, functions, pickled, results_dir, capture))
            if not receive(conn, jobs, pickled, skip, block=False):
                return
            if outbox.due():
                outbox.flush()
    finally:
        outbox.close()


def receive(
    conn: Pipe, jobs: Deque[Optional[RunJob]], pickled: Dict[str, bytes], skip: Set[int], block: bool
) -> bool:
    """Move what the supervisor sent into `jobs`, `pickled` and `skip`; False when the pipe is closed."""
    fd = conn.fileno()
    while block or select.select([fd], [], [], 0)[0]:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return False
        if message is None:
            jobs.append(None)
        else:
            pickled.update(message.functions)
            jobs.extend(map(RunJob._make, message.runs))
            # A skip for a job no longer queued here came too late: the job has run.
            skip.update(a for a in message.skip if any(job is not None and job.attempt == a for job in jobs))
        block = False
    return True


def adopt_environment(environ: Dict[str, str]) -> None:
    """Make os.environ what the supervisor's is now (the fork server's may be older). Names
    the C library refuses (an entry with no name, say) are left as they are."""
    for name in [name for name in os.environ if name not in environ]:
        try:
            del os.environ[name]
        except (OSError, ValueError):
            continue
    for name, value in environ.items():
        if os.environ.get(name) != value:
            try:
                os.environ[name] = value
            except (OSError, ValueError):
                continue


def main(fd: int, parent_pid: int) -> None:
    """Entry point of a worker process, forked by the fork server `parent_pid`: `fd` is our
    end of the pipe. If the fork server goes (with the supervisor, or killed), we go too."""
    global _IN_WORKER, _PID
    _IN_WORKER = True
    _PID = os.getpid()
    # Ctrl-C belongs to the supervisor: it decides when and how workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Pipe(fd)
    try:
        init: WorkerInit = conn.recv()
    except (EOFError, OSError):
        os._exit(0)  # the pool dropped us before it said anything (it stopped): nothing to do
    if init.environ is not None:
        adopt_environment(init.environ)
    sys.path[:] = list(init.sys_path) + [p for p in sys.path if p not in init.sys_path]
    os.chdir(init.cwd)
    threading.Thread(target=watch_parent, args=(parent_pid,), daemon=True).start()
    status = 0
    try:
        serve(
            conn,
            init.results_dir,
            OutputCapture(init.capture_dir) if init.capture_dir else None,
            StartCounter(init.counter_path) if init.counter_path else None,
        )
    except BaseException:
        traceback.print_exc()
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
