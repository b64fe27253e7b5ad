"""The harness of ``kinship_bench.py``: run a command in its own process and measure it (wall time,
its own peak RSS, CPU seconds, its JSON output), watch the machine's load, warm or evict the page
cache, and describe the machine.

Example::

    res = measure(worker_cmd("floor", *files), label="floor: read 3 files")
    res["wall"], res["rss_mb"], res["data"]["seconds"]
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

LOAD_LIMIT = 0.5  # 1-minute load above which a timed block is flagged
# The workers run through the benchmark's entry point (``kinship_bench.py _worker NAME ...``).
ENTRY = Path(__file__).resolve().with_name("kinship_bench.py")


def loadavg() -> dict:
    parts = Path("/proc/loadavg").read_text().split()
    running = int(parts[3].split("/")[0]) - 1  # minus the reader itself
    return {"load1": float(parts[0]), "load5": float(parts[1]), "running": max(0, running)}


def wait_quiet(limit_s: float) -> dict:
    """Wait (up to ``limit_s``) for the 1-minute load to drop below LOAD_LIMIT; return the load."""
    t0 = time.time()
    la = loadavg()
    while la["load1"] > LOAD_LIMIT and time.time() - t0 < limit_s:
        time.sleep(5)
        la = loadavg()
    if la["load1"] > LOAD_LIMIT:
        print(f"  [load] 1-min load {la['load1']:.2f} > {LOAD_LIMIT} (other work on the machine): "
              "absolute times are inflated; the ratios from this same run are the figures to trust", flush=True)
    return la


# A tiny launcher starts every measured command. Linux keeps the RSS high-water mark across
# exec: a command spawned straight from this (large) process would report *our* peak as its own.
# Forked from the ~10 MB launcher, it starts from the launcher's high-water mark instead.
_LAUNCHER = """
import json, os, subprocess, sys, time
rep, out, err, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with open(out, "wb") as o, open(err, "wb") as e:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=o, stderr=e)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
with open(rep, "w") as f:
    json.dump({"wall": wall, "rc": os.waitstatus_to_exitcode(status), "maxrss_kb": ru.ru_maxrss,
               "cpu": ru.ru_utime + ru.ru_stime}, f)
"""


def measure(cmd: list[str], env: dict | None = None, label: str = "") -> dict:
    """Run ``cmd``; wall time, its own peak RSS (os.wait4), CPU seconds, parsed JSON stdout."""
    stem = Path(os.environ.get("TMPDIR", "/tmp")) / f"kbench-{os.getpid()}"
    rep, out_path, err_path = (stem.with_suffix(x) for x in (".rep", ".out", ".err"))
    launcher = [sys.executable, "-S", "-c", _LAUNCHER, str(rep), str(out_path), str(err_path)]
    proc = subprocess.run([*launcher, *cmd], env=env, check=False)
    stdout = out_path.read_text() if out_path.exists() else ""
    stderr = err_path.read_text() if err_path.exists() else ""
    try:
        info = json.loads(rep.read_text())
    except (OSError, ValueError):
        info = {"rc": proc.returncode}
    for f in (rep, out_path, err_path):
        f.unlink(missing_ok=True)
    if proc.returncode != 0 or info["rc"] != 0:
        raise RuntimeError(f"{label or cmd[0]} failed (exit {info['rc']}):\n{stderr[-3000:]}")
    try:
        data = json.loads(stdout)
    except ValueError:
        data = {"stdout": stdout[-2000:]}
    res = {"wall": info["wall"], "rss_mb": info["maxrss_kb"] / 1024, "cpu": info["cpu"], "data": data}
    if label:
        print(f"  {label:<40} {res['wall']:7.2f} s wall  {res['rss_mb']:8.0f} MB peak RSS  "
              f"{res['cpu']:6.2f} s CPU", flush=True)
    return res


def worker_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ENTRY), "_worker", *args]


def kinmerge_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("kinmerge")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from kinmerge.cli import main; sys.argv[0] = 'kinmerge'; main()"]


def evict(files: list[str]) -> None:
    """Drop the files' pages from the page cache (no root needed; clean pages only)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files: list[str]) -> dict:
    return measure(worker_cmd("floor", *files), label=f"(warm page cache: {len(files)} files)")


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def summarize(runs: list[dict]) -> dict:
    return {
        "wall": statistics.median(r["wall"] for r in runs),
        "rss_mb": statistics.median(r["rss_mb"] for r in runs),
        "rss_mb_max": max(r["rss_mb"] for r in runs),
        "cpu": statistics.median(r["cpu"] for r in runs),
        "inproc": statistics.median(r["data"].get("seconds", float("nan")) for r in runs),
        "wall_min": min(r["wall"] for r in runs),
        "inproc_min": min(r["data"].get("seconds", float("nan")) for r in runs),
        "walls": [round(r["wall"], 3) for r in runs],
        "n": len(runs),
    }


def machine_info() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    info = {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu, "mem_gb": mem / 2**30,
            "python": platform.python_version(), "kernel": platform.release()}
    info["numpy"] = __import__("numpy").__version__
    try:
        from kinmerge import _kernels

        info["kinship_kernel"] = _kernels.default_backend() + (f" ({_kernels.c_isa()})" if _kernels.have_c() else "")
    except ImportError:
        info["kinship_kernel"] = "?"
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=Path(__file__).resolve().parent, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent, check=False).stdout.strip()
        if dirty:
            info["commit"] += " (measured on the working tree, with uncommitted changes under src/)"
    except OSError:
        info["commit"] = "?"
    return info
