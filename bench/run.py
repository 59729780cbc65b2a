"""gigq_mp against its peers, workloads (a)-(g) of issue 3: `python bench/run.py [--quick]`.

Every (workload, tool) pair runs in a fresh process (bench/cases.py) and is
timed there from the call that starts the work to the last result, pool
start-up and shutdown included, for gigq_mp and the peers alike. A run that
does not finish within its cap is reported as "> N s". The short workloads
(a)-(e) run three times per tool, interleaved, and count their median run (a
2-core machine with other work on it moves single runs by 20 % or more); the
peak RSS shown is the highest of the runs. Prints
one table on stdout (progress and tracebacks on stderr).

ratio = how many times better gigq_mp is than the peer on that row (peer time /
gigq_mp time, the same as gigq_mp jobs/s / peer jobs/s); > 1 means gigq_mp wins.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)  # after PYTHONPATH and site-packages: bench.jobs, never a shadow gigq_mp

from bench import jobs  # noqa: E402

FULL = {
    "a": 10_000, "b": 5_000, "c": 1_000, "d": 16, "d_secs": 0.25,
    "e": (10_000, 100_000), "f": 20, "g_mb": 200,
    "repeat": 3,  # runs of each workload (a)-(e) per tool; the median counts
    "budget": 570.0,  # seconds for the whole run (make bench: < 10 min with pip)
    "cap": 60.0, "cap_e_large": 240.0, "gigq_cap": 60.0, "slack": 15.0,
}
QUICK = {
    "a": 1_000, "b": 1_000, "c": 1_000, "d": 16, "d_secs": 0.25,  # (d) full size: the 1.9x bar needs it
    "e": (1_000, 5_000), "f": 4, "g_mb": 20,
    "repeat": 1,
    "budget": 48.0,
    "cap": 10.0, "cap_e_large": 15.0, "gigq_cap": 8.0, "slack": 5.0,
}

TOOL_NAMES = {"ppe": "ProcessPoolExecutor(2)", "gigq": "GigQ 0.5.1", "joblib": "joblib(n_jobs=2)",
              "serial": "serial, 1 process"}


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# -- running one case ------------------------------------------------------------------------------


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), ROOT]))
    return env


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill a case process and every process it started (gigq_mp workers lead their own sessions)."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(family, timeout=5)


class Runner:
    def __init__(self, cfg: Dict[str, Any]):
        self.cfg = cfg
        self.deadline = time.monotonic() + cfg["budget"]
        self.failures: List[Tuple[str, str]] = []

    def cap(self, wanted: float) -> float:
        return max(1.0, min(wanted, self.deadline - time.monotonic() - self.cfg["slack"]))

    def start(self, case: str, tool: str, args: Dict[str, Any]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "bench", "cases.py"), case, tool, json.dumps(args)],
            cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def finish(self, label: str, proc: subprocess.Popen, cap: float, timeout: float) -> Dict[str, Any]:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            out, err = proc.communicate()
            log(f"  {label}: killed after {timeout:.0f} s")
            return {"capped": True, "cap": cap}
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            self.failures.append((label, err.strip() or f"exit status {proc.returncode}, no result"))
            return {"error": (err.strip().splitlines() or ["?"])[-1]}
        return json.loads(lines[-1][len("RESULT "):])

    def run(self, case: str, tool: str, args: Dict[str, Any], cap: Optional[float] = None) -> Dict[str, Any]:
        label = f"({case}) {tool} {json.dumps({k: v for k, v in args.items() if k != 'record_dir'})}"
        if self.deadline - time.monotonic() < self.cfg["slack"] + 1:
            log(f"  {label}: skipped, time budget spent")
            return {"skipped": True}
        cap = self.cap(cap or self.cfg["cap"])
        args = dict(args, cap=cap)
        t = time.monotonic()
        res = self.finish(label, self.start(case, tool, args), cap, cap + self.cfg["slack"])
        log(f"  {label}: {describe(res)}  [{time.monotonic() - t:.1f} s wall]")
        return res

    def rounds(
        self, case: str, tools: List[str], args: Dict[str, Any], times: int, cap: Optional[float] = None
    ) -> Dict[str, Dict[str, Any]]:
        """Run each tool `times` times, interleaved (ours, peer, ..., ours, peer, ...), so that a
        burst of other load on the machine hits every tool alike; keep each tool's median run,
        with the highest peak RSS of its runs."""
        runs: Dict[str, List[Dict[str, Any]]] = {tool: [] for tool in tools}
        for _ in range(times):
            for tool in tools:
                runs[tool].append(self.run(case, tool, args, cap))
        out = {}
        for tool, results in runs.items():
            timed = [r for r in results if "seconds" in r and not r.get("capped")]
            if len(timed) < len(results):  # one failed, was capped or skipped: report that one
                out[tool] = next(r for r in results if r not in timed)
                continue
            timed.sort(key=lambda r: r["seconds"])
            out[tool] = dict(timed[len(timed) // 2], runs=[round(r["seconds"], 3) for r in results])
            measured = [r for r in timed if r.get("rss_peak_mb")]
            if measured:  # the RSS figures of the run that peaked highest
                worst = max(measured, key=lambda r: r["rss_peak_mb"])
                out[tool].update(rss_peak_mb=worst["rss_peak_mb"], rss_before_mb=worst.get("rss_before_mb"))
        return out

    def run_timeouts(self, n: int) -> Dict[str, Any]:
        """(f): jobs record their start and pids; this process polls until every pid is gone."""
        import psutil

        label = f"(f) gigq_mp n={n}"
        if self.deadline - time.monotonic() < self.cfg["slack"] + 1:
            return {"skipped": True}
        cap = self.cap(self.cfg["cap"])
        rec_dir = tempfile.mkdtemp(prefix="bench-f-")
        proc = self.start("f", "gigq_mp", {"n": n, "record_dir": rec_dir, "cap": cap})
        seen: Dict[int, Dict[str, Any]] = {}
        t0, ended = time.monotonic(), None

        def dead(pid: int) -> bool:
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped
            except psutil.NoSuchProcess:
                return True

        while True:
            for name in os.listdir(rec_dir):
                if name.endswith(".json"):
                    idx = int(name[:-5])
                    if idx not in seen:
                        with open(os.path.join(rec_dir, name)) as f:
                            seen[idx] = dict(json.load(f), gone=None)
            now = time.time()
            for r in seen.values():
                if r["gone"] is None and all(dead(p) for p in r["pids"]):
                    r["gone"] = now
            if ended is None and proc.poll() is not None:
                ended = time.monotonic()
            if ended is not None and (
                (len(seen) == n and all(r["gone"] is not None for r in seen.values()))
                or time.monotonic() - ended > 5.0
            ):
                break
            if time.monotonic() - t0 > cap + self.cfg["slack"]:
                break
            time.sleep(0.0005)
        res = self.finish(label, proc, cap, 5.0)
        for r in seen.values():  # leave nothing behind, whatever gigq_mp did
            for p in r["pids"]:
                if r["gone"] is None:
                    try:
                        psutil.Process(p).kill()
                    except psutil.NoSuchProcess:
                        pass
        shutil.rmtree(rec_dir, ignore_errors=True)
        delays = sorted((r["gone"] - (r["start"] + 1.0)) * 1000.0 for r in seen.values() if r["gone"])
        res.update(
            recorded=len(seen), n=n, delays_ms=delays,
            grandchildren=sum(1 for r in seen.values() if len(r["pids"]) > 1),
            never_gone=sum(1 for r in seen.values() if r["gone"] is None) + (n - len(seen)),
        )
        detail = ", ".join(
            f"#{i}{'+gc' if len(r['pids']) > 1 else ''}:"
            + (f"{(r['gone'] - r['start'] - 1.0) * 1000:.1f}" if r["gone"] else "alive")
            for i, r in sorted(seen.items())
        )
        log(f"  {label}: {describe(res)}; delay ms per job: {detail}")
        return res


# -- figures, ratios, bars -------------------------------------------------------------------------

Bound = Optional[Tuple[str, float]]  # ("=", v), ("<", v) or (">", v); None when unknown


def describe(m: Dict[str, Any]) -> str:
    if m.get("error"):
        return "ERROR: " + m["error"]
    if m.get("skipped"):
        return "skipped"
    if m.get("capped"):
        done = f" ({m['done']}/{m['total']} done)" if "total" in m else ""
        return f"> {m['cap']:.0f} s{done}"
    if "seconds" in m:
        return f"{m['seconds']:.3f} s"
    return json.dumps(m)


def seconds(m: Dict[str, Any]) -> Bound:
    if "seconds" in m and not m.get("capped"):
        return ("=", m["seconds"])
    if m.get("capped"):
        return (">", m["cap"])
    return None


def fig_time(m: Dict[str, Any]) -> str:
    s = seconds(m)
    if s is None:
        return "ERROR" if m.get("error") else "skipped"
    if s[0] == ">":
        done = f" ({m['done']}/{m['total']} done)" if "total" in m else ""
        return f"> {s[1]:.0f} s{done}"
    return f"{s[1]:.2f} s"


def fig_rate(m: Dict[str, Any], n: int) -> str:
    s = seconds(m)
    if s is None or s[0] != "=":
        return fig_time(m)
    return f"{n / s[1]:,.0f} jobs/s ({s[1]:.2f} s)"


def fig_hop(m: Dict[str, Any], n: int) -> str:
    s = seconds(m)
    if s is None or s[0] != "=":
        return fig_time(m)
    return f"{s[1] / n * 1000:.3f} ms/hop"


def speedup(ours: Dict[str, Any], peer: Dict[str, Any]) -> Bound:
    """peer time / our time, or a bound on it when one side hit its cap."""
    o, p = seconds(ours), seconds(peer)
    if o is None or p is None:
        return None
    if o[0] == "=" and p[0] == "=":
        return ("=", p[1] / o[1])
    if o[0] == "=" and p[0] == ">":
        return (">", p[1] / o[1])
    if o[0] == ">" and p[0] == "=":
        return ("<", p[1] / o[1])
    return None


def fmt_bound(b: Bound, unit: str = "x") -> str:
    if b is None:
        return "?"
    op = "" if b[0] == "=" else b[0] + " "
    return f"{op}{b[1]:.2f}{unit}"


def at_least(b: Bound, bar: float) -> str:
    if b is None:
        return "?"
    if b[0] == "=":
        return "yes" if b[1] >= bar else "NO"
    if b[0] == ">":
        return "yes" if b[1] >= bar else "?"
    return "NO" if b[1] < bar else "?"


def at_most(b: Bound, bar: float) -> str:
    if b is None:
        return "?"
    if b[0] == "=":
        return "yes" if b[1] <= bar else "NO"
    if b[0] == "<":
        return "yes" if b[1] <= bar else "?"
    return "NO" if b[1] > bar else "?"


def calibrate(target: float) -> int:
    """Iterations of jobs.spin that take about `target` seconds on one core of this machine."""
    n = 200_000
    while True:
        t = time.perf_counter()
        jobs.spin(n)
        dt = time.perf_counter() - t
        if dt > 0.05:
            break
        n *= 2
    best = dt
    for _ in range(2):
        t = time.perf_counter()
        jobs.spin(n)
        best = min(best, time.perf_counter() - t)
    n = max(1, int(n * target / best))
    times = []
    for _ in range(3):  # refine at full size: the short sample above runs a little fast
        t = time.perf_counter()
        jobs.spin(n)
        times.append(time.perf_counter() - t)
    return max(1, int(n * target / statistics.median(times)))


def percentile(sorted_vals: List[float], q: float) -> float:
    """Nearest-rank percentile (with fewer than 100 samples, p99 is the maximum)."""
    k = max(0, math.ceil(q / 100.0 * len(sorted_vals)) - 1)
    return sorted_vals[k]


# -- the run -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
    opts = ap.parse_args()
    cfg = QUICK if opts.quick else FULL
    started = time.monotonic()
    load_at_start = os.getloadavg()[0]  # other work on the machine skews every figure
    R = Runner(cfg)
    na, nb, nc, nd, nf = cfg["a"], cfg["b"], cfg["c"], cfg["d"], cfg["f"]
    e_small, e_large = cfg["e"]
    log(f"bench ({'quick' if opts.quick else 'full'})")

    m: Dict[str, Dict[str, Any]] = {}
    # gigq_mp and the quick peers first; GigQ, the likeliest to hit its caps, last.
    # The short workloads run `repeat` times each, interleaved; the table shows medians.
    t = cfg["repeat"]
    for tool, res in R.rounds("a", ["gigq_mp", "ppe", "joblib"], {"n": na}, t).items():
        m[f"a.{'ours' if tool == 'gigq_mp' else tool}"] = res
    for tool, res in R.rounds("b", ["gigq_mp", "ppe"], {"n": nb}, t).items():
        m[f"b.{'ours' if tool == 'gigq_mp' else tool}"] = res
    for tool, res in R.rounds("c", ["gigq_mp", "ppe"], {"n": nc}, t).items():
        m[f"c.{'ours' if tool == 'gigq_mp' else tool}"] = res
    # Calibrated just before (d), not at the start: this VM's speed drifts, and jobs calibrated
    # a minute earlier ran at 0.17 s instead of 0.25 s once, which moves the ratio for every tool.
    spin_n = calibrate(cfg["d_secs"])
    log(f"(d): spin({spin_n}) ~ {cfg['d_secs']} s")
    d_args = {"n": nd, "spin": spin_n}
    for tool, res in R.rounds("d", ["gigq_mp", "serial", "ppe", "joblib"], d_args, t).items():
        m[f"d.{'ours' if tool == 'gigq_mp' else tool}"] = res
    # (e) is a ratio of two runs: each size runs `repeat` times too, so one slow run cannot move it.
    for size, tag, cap in ((e_small, "small", None), (e_large, "large", cfg["cap_e_large"])):
        for tool, res in R.rounds("e", ["gigq_mp", "ppe"], {"n": size}, t, cap).items():
            m[f"e.{'ours' if tool == 'gigq_mp' else tool}.{tag}"] = res
    m["f.ours"] = R.run_timeouts(nf)
    m["g.ours"] = R.run("g", "gigq_mp", {"mb": cfg["g_mb"]})
    m["g.ppe"] = R.run("g", "ppe", {"mb": cfg["g_mb"]})
    m["c.gigq"] = R.run("c", "gigq", {"n": nc}, cap=cfg["gigq_cap"])
    # GigQ runs (d) in threads of one process (~serial); skipped in --quick to stay under a minute.
    if not opts.quick:
        m["d.gigq"] = R.run("d", "gigq", d_args, cap=cfg["gigq_cap"])
    m["b.gigq"] = R.run("b", "gigq", {"n": nb}, cap=cfg["gigq_cap"])
    m["a.gigq"] = R.run("a", "gigq", {"n": na}, cap=cfg["gigq_cap"])

    rows: List[List[str]] = []

    def row(workload, ours, peer, peer_fig, ratio, bar="", met=""):
        rows.append([workload, ours, TOOL_NAMES.get(peer, peer), peer_fig, ratio, bar, met])

    k = lambda n: f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)  # noqa: E731

    # (a) dispatch
    wl = f"(a) {k(na)} no-op jobs"
    for peer in ("ppe", "joblib", "gigq"):
        r = speedup(m["a.ours"], m[f"a.{peer}"])
        bar, met = (">= 1.0x", at_least(r, 1.0)) if peer == "ppe" else ("", "")
        row(wl, fig_rate(m["a.ours"], na), peer, fig_rate(m[f"a.{peer}"], na), fmt_bound(r), bar, met)
    # (b) fan-out / fan-in
    wl = f"(b) fan 1->{k(nb)}->1"
    for peer in ("gigq", "ppe"):
        r = speedup(m["b.ours"], m[f"b.{peer}"])
        bar, met = (">= 50x", at_least(r, 50.0)) if peer == "gigq" else ("", "")
        row(wl, fig_time(m["b.ours"]), peer, fig_time(m[f"b.{peer}"]), fmt_bound(r), bar, met)
    # (c) chain
    wl = f"(c) chain of {k(nc)}"
    o = seconds(m["c.ours"])
    per_hop = None if o is None else (o[0], o[1] / nc * 1000.0)
    for i, peer in enumerate(("ppe", "gigq")):
        r = speedup(m["c.ours"], m[f"c.{peer}"])
        bar, met = ("< 1 ms/hop", at_most(per_hop, 1.0)) if i == 0 else ("", "")
        row(wl, fig_hop(m["c.ours"], nc), peer, fig_hop(m[f"c.{peer}"], nc), fmt_bound(r), bar, met)
    # (d) CPU-bound
    wl = f"(d) {nd} x {cfg['d_secs']} s CPU"
    for peer in ("serial", "ppe", "joblib", "gigq"):
        if f"d.{peer}" not in m:
            continue
        r = speedup(m["d.ours"], m[f"d.{peer}"])
        bar, met = (">= 1.9x", at_least(r, 1.9)) if peer == "serial" else ("", "")
        row(wl, fig_time(m["d.ours"]), peer, fig_time(m[f"d.{peer}"]), fmt_bound(r), bar, met)
    if "d.ppe" in m and "d.serial" in m:  # what this host allows a forking pool in the same run
        row(f"{wl}, ProcessPoolExecutor(2) in gigq_mp's place", fig_time(m["d.ppe"]), "serial",
            fig_time(m["d.serial"]), fmt_bound(speedup(m["d.ppe"], m["d.serial"])), "(reference)", "")
    # (e) scale
    size_ratio = e_large / e_small
    ratio_bar = 1.2 * size_ratio  # 12 for 100k/10k
    for size, tag in ((e_small, "small"), (e_large, "large")):
        r = speedup(m[f"e.ours.{tag}"], m[f"e.ppe.{tag}"])
        row(f"(e) random DAG {k(size)}, 3 parents", fig_time(m[f"e.ours.{tag}"]), "ppe (level by level)",
            fig_time(m[f"e.ppe.{tag}"]), fmt_bound(r))

    def growth(small: Dict[str, Any], large: Dict[str, Any]) -> Bound:
        s, g = seconds(small), seconds(large)
        if s is None or g is None or s[0] != "=":
            return None
        return (g[0], g[1] / s[1])

    g_ours = growth(m["e.ours.small"], m["e.ours.large"])
    g_ppe = growth(m["e.ppe.small"], m["e.ppe.large"])
    row(f"(e) time {k(e_large)} / {k(e_small)}", fmt_bound(g_ours), "ppe (level by level)", fmt_bound(g_ppe), "",
        f"<= {ratio_bar:g}", at_most(g_ours, ratio_bar))
    rss = {tag: m[f"e.ours.{tag}"].get("rss_peak_mb") for tag in ("small", "large")}
    before = m["e.ours.large"].get("rss_before_mb")
    unfinished = " at its cap, unfinished" if m["e.ours.large"].get("capped") else ""
    rss_fig = (f"{rss['large']:.0f} MB{unfinished} ({before:.0f} MB before run; {k(e_small)}: {rss['small']:.0f} MB)"
               if rss["large"] and rss["small"] and before else "n/a")
    row(f"(e) supervisor peak RSS, {k(e_large)}", rss_fig, "-", "-", "", "< 300 MB",
        ("NO" if not rss["large"] or rss["large"] >= 300 else "?" if unfinished else "yes"))
    # (f) timeout precision
    f = m["f.ours"]
    delays = f.get("delays_ms") or []
    wl = f"(f) timeout=1 -> pids gone ({f.get('n', nf)} jobs, {f.get('grandchildren', 0)} w/ grandchild)"
    statuses = f.get("statuses")
    if delays and not f.get("never_gone"):
        med, p99 = statistics.median(delays), percentile(delays, 99)
        row(wl + ", median", f"{med:.1f} ms", "ppe / GigQ", "n/a: no kill at timeout", "")
        row(wl + ", p99", f"{p99:.1f} ms (max)" if len(delays) < 100 else f"{p99:.1f} ms", "ppe / GigQ",
            "n/a: no kill at timeout", "", "p99 < 100 ms", "yes" if p99 < 100 else "NO")
    else:
        why = describe(f) if not delays else f"{f.get('never_gone')} job(s) left pids alive"
        row(wl + ", p99", why, "ppe / GigQ", "n/a: no kill at timeout", "", "p99 < 100 ms", "NO")
    if statuses and set(statuses) != {"timeout"}:
        log(f"  (f) unexpected final statuses: {statuses}")
    # (g) large results
    wl = f"(g) {cfg['g_mb']} MB array -> 4 readers"
    r = speedup(m["g.ours"], m["g.ppe"])
    row(wl, fig_time(m["g.ours"]), "ppe", fig_time(m["g.ppe"]), fmt_bound(r), ">= 1.0x", at_least(r, 1.0))

    head = ["workload", "gigq_mp", "peer", "peer figure", "ratio", "bar", "met?"]
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(f"gigq_mp bench ({'quick' if opts.quick else 'full'}): {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.system()} {platform.machine()}; 2 worker processes everywhere; "
          f"load average at start {load_at_start:.2f}")
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r_ in rows:
        print(line(r_))
    print("ratio = peer time / gigq_mp time (> 1: gigq_mp faster); times include pool start-up and shutdown;"
          " '> N s' = stopped at its cap. (f): delay from deadline (job's own start + 1 s) to every pid of the job"
          " gone (zombie counts as gone).")
    print(f"total bench wall time: {time.monotonic() - started:.1f} s")
    sys.stdout.flush()
    for label, err in R.failures:
        log(f"\n--- FAILED {label} ---\n{err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
