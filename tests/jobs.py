"""A small library of ordinary and misbehaving jobs for the test suite.

Everything here is importable as ``tests.jobs`` so that worker processes (and
a GigQ-layout database that stores functions by module and name) can find it.
Jobs that leave evidence write to files with O_APPEND, one ``os.write`` per
line, so lines from concurrent processes never interleave.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time


def append_line(path, line):
    """Append one line to ``path`` atomically (O_APPEND, single write)."""
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (str(line) + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path):
    """Lines appended with ``append_line`` (empty list if the file is absent)."""
    try:
        with open(path) as f:
            return [line for line in f.read().splitlines() if line]
    except FileNotFoundError:
        return []


# --- ordinary jobs ---------------------------------------------------------

def add(a, b):
    return a + b


def noop():
    return None


def identity(x):
    return x


def getpid():
    return os.getpid()


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def record_run(path, tag):
    """Append ``tag`` to ``path`` (to count / order runs) and return it."""
    append_line(path, tag)
    return tag


def record_time_and_fail(path):
    """Append the current wall-clock time, then raise."""
    append_line(path, repr(time.time()))
    raise RuntimeError("failing on purpose")


def fail_unless_flag(flag_path, result="ok"):
    """Fail while ``flag_path`` does not exist; return ``result`` once it does."""
    if not os.path.exists(flag_path):
        raise RuntimeError(f"flag file {flag_path} is missing")
    return result


def echo_parent_ids(parent_results):
    return list(parent_results.keys())


def parent_values_repr(parent_results):
    return [repr(v) for v in parent_results.values()]


def sum_parents(parent_results):
    return sum(parent_results.values())


def takes_kwargs(**kwargs):
    """Reports which keyword arguments it received and the parent results."""
    return {
        "keys": sorted(kwargs),
        "parents": list(kwargs.get("parent_results", {}).values()),
    }


def optional_parent_results(parent_results="absent"):
    if parent_results == "absent":
        return "absent"
    return sorted(parent_results.values())


def plain():
    """Takes no argument at all: injecting parent_results would break it."""
    return "plain"


# --- results that are not JSON ---------------------------------------------

@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


def return_set():
    return {1, 2, 3}


def return_tuple():
    return (1, "a", 2.5)


def return_point(x, y):
    return Point(x, y)


def return_int_keys():
    return {1: "a", 2: "b"}


def return_json_doc():
    return {"a": [1, 2.5, "x", None, True], "b": {"nested": "yes"}}


def return_unpicklable(kind="generator"):
    if kind == "generator":
        return (i for i in range(3))
    if kind == "lock":
        return threading.Lock()
    raise ValueError(kind)


# --- misbehaving jobs -------------------------------------------------------

def raise_value_error(message="boom"):
    raise ValueError(message)


def os_exit(code=1):
    os._exit(code)


def sigkill_self():
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


def segfault():
    ctypes.string_at(0)


def spawn_grandchild_and_sleep(pidfile, seconds):
    """Start a child process that sleeps, record its pid, then sleep too."""
    child = subprocess.Popen(
        [sys.executable, "-c", f"import time; time.sleep({seconds})"]
    )
    append_line(pidfile, child.pid)
    time.sleep(seconds)
    return "not killed"


def record_pid_and_sleep(pidfile, seconds):
    append_line(pidfile, os.getpid())
    time.sleep(seconds)
    return "not killed"


def ignore_sigterm_and_sleep(seconds, pidfile=None):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if pidfile is not None:
        append_line(pidfile, os.getpid())
    time.sleep(seconds)
    return "not killed"


# --- reliability (crashes, interrupts, limits) ------------------------------

def record_start_sleep_finish(path, tag, seconds):
    """Append ``start TAG PID TIME``, sleep, append ``done TAG PID TIME``, return ``tag``."""
    append_line(path, f"start {tag} {os.getpid()} {time.time()!r}")
    time.sleep(seconds)
    append_line(path, f"done {tag} {os.getpid()} {time.time()!r}")
    return tag


def hold_memory(mb, seconds=10.0):
    """Hold ``mb`` MB of resident memory (every page written) for ``seconds``."""
    block = b"x" * (int(mb) * 1024 * 1024)
    time.sleep(seconds)
    return len(block)


def child_holds_memory(pidfile, mb, seconds=10.0):
    """Start a child process that holds ``mb`` MB, record its pid, wait for it."""
    code = f"import time; b = b'x' * ({int(mb)} * 1024 * 1024); time.sleep({seconds})"
    child = subprocess.Popen([sys.executable, "-c", code])
    append_line(pidfile, child.pid)
    child.wait()
    return "not killed"


def record_pids_with_grandchild_and_sleep(pidfile, seconds):
    """Start a sleeping child, append ``OWN_PID CHILD_PID``, then sleep too."""
    child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    append_line(pidfile, f"{os.getpid()} {child.pid}")
    time.sleep(seconds)
    child.wait()
    return "not killed"


def chaos_step(log, tag, index, seconds, parent_results=None):
    """(index + sum of the parents' results) mod 1_000_003, after ``seconds``.

    Appends ``start TAG TIME`` first and ``done TAG TIME`` as the very last step."""
    append_line(log, f"start {tag} {time.time()!r}")
    time.sleep(seconds)
    total = (index + sum((parent_results or {}).values())) % 1_000_003
    append_line(log, f"done {tag} {time.time()!r}")
    return total


def wait_for_flag(path, tag, flag, seconds=60.0):
    """Log ``start TAG PID TIME``, wait until ``flag`` exists (at most ``seconds``),
    log ``done TAG PID TIME`` and return ``tag``."""
    append_line(path, f"start {tag} {os.getpid()} {time.time()!r}")
    deadline = time.monotonic() + seconds
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.05)
    append_line(path, f"done {tag} {os.getpid()} {time.time()!r}")
    return tag


def record_run_and_sleep(path, tag, seconds):
    """Append ``tag`` to ``path``, sleep ``seconds`` and return ``tag``."""
    append_line(path, tag)
    time.sleep(seconds)
    return tag


# --- command line (issue 5) --------------------------------------------------

def print_both(tag):
    """Print to stdout and stderr, from Python and from child processes; return ``tag``."""
    print(f"py-out-{tag}", flush=True)
    print(f"py-err-{tag}", file=sys.stderr, flush=True)
    subprocess.run(["echo", f"child-out-{tag}"], check=True)
    subprocess.run(
        [sys.executable, "-c", f"import sys; sys.stderr.write('child-err-{tag}\\n')"], check=True
    )
    return tag


def fail_once_with_output(marker):
    """First call (``marker`` absent): print, create ``marker``, raise. Later calls: print, return."""
    if not os.path.exists(marker):
        append_line(marker, "failed once")
        print("first-attempt-stdout", flush=True)
        print("first-attempt-stderr", file=sys.stderr, flush=True)
        raise RuntimeError("first attempt fails")
    print("second-attempt-stdout", flush=True)
    return "ok"


def echo_params(**kwargs):
    """Return the keyword arguments it was called with."""
    return dict(kwargs)


def print_without_newline(tag):
    """Print ``tag`` to stdout and stderr with no trailing newline; return ``tag``."""
    sys.stdout.write(f"out-{tag}")
    sys.stdout.flush()
    sys.stderr.write(f"err-{tag}")
    sys.stderr.flush()
    return tag


def delete_parent_rows(db_path, parent_results):
    """Delete the rows of this job's parents from under the running workflow (as a
    clear_completed in another process would); returns how many went."""
    import sqlite3

    conn = sqlite3.connect(db_path, timeout=30)
    try:
        with conn:
            marks = ",".join("?" * len(parent_results))
            return conn.execute(f"DELETE FROM jobs WHERE id IN ({marks})", list(parent_results)).rowcount
    finally:
        conn.close()


def hold_the_gil(n):
    """A C loop that never releases the GIL: no other thread of the process runs meanwhile."""
    return sum(range(n))


def sleep_then_exit(seconds, code=5):
    time.sleep(seconds)
    os._exit(code)


def sleep_with_payload(payload, seconds):
    """Large params (payload) and a sleep: its worker process reads for a while first."""
    time.sleep(seconds)
    return len(payload)


def silence_stdout():
    """Point fd 1 at /dev/null and leave it there (as a job quieting a C library might)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    return "silenced"


def write_env(name, path):
    """Write the value of environment variable `name` (or "<unset>") to `path`."""
    with open(path, "w") as f:
        f.write(os.environ.get(name, "<unset>"))


def kill_parent_and_sleep(seconds=10):
    """Kill this worker's parent (the pool's fork server), as a job gone wrong might."""
    os.kill(os.getppid(), 9)
    time.sleep(seconds)
