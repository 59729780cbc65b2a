"""Job functions shared by every tool in the benchmark (importable, module level)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def noop():
    return None


def one():
    return 1


def fan_item(i, parent_results=None):
    return i


def fan_sum(parent_results):
    return sum(parent_results.values())


def fan_item_plain(i, head=None):
    """ProcessPoolExecutor's form of fan_item: the head's result passed as an argument."""
    return i


def fan_sum_plain(values):
    return sum(values)


def hop(i):
    return i


def spin(n):
    """CPU-bound: n iterations of integer arithmetic (calibrated to ~0.25 s)."""
    x = 0
    for k in range(n):
        x = (x * 31 + k) & 0xFFFFFFFF
    return x


def make_array(mb):
    import numpy as np

    return np.full(int(mb * 1024 * 1024) // 8, 1.0, dtype=np.float64)


def read_array(parent_results):
    (arr,) = parent_results.values()
    return float(arr.sum())


def read_array_plain(arr):
    return float(arr.sum())


def sleeper(record_dir, index, grandchild, sleep=30.0):
    """Timeout job: record its own start time and pids, then sleep past its deadline."""
    started = time.time()
    pids = [os.getpid()]
    if grandchild:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pids.append(child.pid)
    path = os.path.join(record_dir, f"{index}.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"index": index, "start": started, "pids": pids}, f)
    os.replace(path + ".tmp", path)
    time.sleep(sleep)
    return "not killed"
