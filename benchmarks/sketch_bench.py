#!/usr/bin/env python
"""Throughput of the sketch pass against the read floor, in one process, variants alternated.

Target (issue 12): sketching runs in the streaming pass that reads the models at >= 0.8x the
read floor's throughput, i.e. in <= 1.25x the floor's time, with memory bounded like a scan.

On a Llama-shaped BF16 family (``benchmarks/family7b.py``, ~0.5 B parameters by default: the
shape of kinship_bench's 0.5 B family), alternating round by round so that machine noise hits
every variant alike:

* ``floor``: read the files once (1 MB ``readinto`` calls into a page-aligned buffer);
* ``sketch pass``: ``sketch_models`` (reads, the kinship kernel for the exact moments, the sketch
  kernel), default size, all cores;
* ``projection only``: the same pass with the kinship kernel replaced by a no-op (the cost the
  sketch adds to a scan that computes the moments anyway);
* ``exact scan``: ``kinmerge.scan`` (what a scan costs without sketches);
* the same at 1 thread, at size 2^14, and the kernels alone on in-memory chunks.

Then one cold-cache run of the floor and the sketch pass (pages evicted with
``posix_fadvise(DONTNEED)``). Peak RSS of the process is reported.

Usage::

    python benchmarks/sketch_bench.py --workdir /tmp/skbench --rounds 5 --quiet-wait 60
    python benchmarks/sketch_bench.py --layers 2 --hidden 512 --rounds 2   # quick, ~40 M params
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import family7b
from bench_harness import evict, loadavg, wait_quiet
from bench_workers import w_floor
from kinmerge import _kernels, _sketch_kernels
from kinmerge.scan import DEFAULT_CHUNK, n_threads, scan
from kinmerge.sketch import DEFAULT_SIZE, tensor_key
from kinmerge.sketch_scan import sketch_models
from kinmerge.sources import open_models

HALF_B = family7b.shape(1408, 3840, 17, 22, 32000)  # 0.50 B: kinship_bench's 0.5 B shape


def family(workdir: Path, cfg: dict, children: int) -> list[Path]:
    folder = workdir / f"h{cfg['hidden_size']}-l{cfg['num_hidden_layers']}-c{children}"
    if not (folder / "family.json").exists():
        family7b.generate(folder, cfg, children, seed=7)
    return [folder / "base"] + [folder / f"child{k}" for k in range(1, children + 1)]


def files_of(dirs: list[Path]) -> list[str]:
    return [str(f) for d in dirs for f in sorted(d.glob("*.safetensors"))]


def variants(dirs: list[Path]) -> dict:
    real = _kernels.accumulate

    def null_moments(base, base_dtype, models, model_dtypes, *, backend="auto"):
        n = len(models)
        return np.zeros(n), np.zeros((n, n))

    def sketch(threads=None, size=DEFAULT_SIZE, moments=True) -> float:
        _kernels.accumulate = real if moments else null_moments
        try:
            with open_models(dirs) as (base, *models):
                return sketch_models(base, models, size=size, threads=threads).seconds
        finally:
            _kernels.accumulate = real

    def exact(threads=None) -> float:
        with open_models(dirs) as (base, *models):
            return scan(base, models, threads=threads).seconds

    files = files_of(dirs)
    return {
        "floor": lambda: w_floor(files, 1 << 20)["seconds"],
        "sketch pass (default size)": lambda: sketch(),
        "projection only (no moments)": lambda: sketch(moments=False),
        "sketch pass, size 2^14": lambda: sketch(size=1 << 14),
        "sketch pass, 1 thread": lambda: sketch(threads=1),
        "exact scan (kinship only)": lambda: exact(),
        "exact scan, 1 thread": lambda: exact(threads=1),
    }


def kernels_alone(dirs: list[Path], positions: int = 1 << 26) -> dict:
    """G positions/s of each kernel on in-memory BF16 chunks (1 thread), default size."""
    with open_models(dirs) as (base, *models):
        name = "model.layers.0.mlp.up_proj.weight"
        take = min(positions, base.tensors[name].numel)
        raws = [src.read_range(name, 0, take).copy() for src in (base, *models)]
    n = len(raws) - 1
    out, ones = np.zeros((n, DEFAULT_SIZE)), np.zeros(DEFAULT_SIZE, np.int32)
    key = tensor_key(0, name)
    res = {}
    for label, fn in {
        "kinship kernel": lambda lo, hi: _kernels.accumulate(raws[0][lo:hi], "BF16", [r[lo:hi] for r in raws[1:]],
                                                             ["BF16"] * n),
        "sketch kernel (with ones)": lambda lo, hi: _sketch_kernels.accumulate(
            out, ones, raws[0][lo:hi], "BF16", [r[lo:hi] for r in raws[1:]], ["BF16"] * n, key, lo),
    }.items():
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for lo in range(0, take, DEFAULT_CHUNK):
                fn(lo, min(take, lo + DEFAULT_CHUNK))
            best = min(best, time.perf_counter() - t0)
        res[label] = take / best / 1e9
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/skbench"))
    ap.add_argument("--children", type=int, default=2, help="models sketched in the pass (default 2: a pair)")
    ap.add_argument("--layers", type=int, default=None, help="override the 0.5 B shape's layers")
    ap.add_argument("--hidden", type=int, default=None, help="override the hidden size (heads follow)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quiet-wait", type=float, default=0.0, help="wait up to this many s for load < 0.5 first")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default <workdir>/sketch_bench.json)")
    args = ap.parse_args()
    cfg = dict(HALF_B)
    if args.layers:
        cfg["num_hidden_layers"] = args.layers
    if args.hidden:
        cfg.update(family7b.shape(args.hidden, int(args.hidden * 8 / 3) // 64 * 64, cfg["num_hidden_layers"],
                                  args.hidden // 64, cfg["vocab_size"]))
    dirs = family(args.workdir, cfg, args.children)
    files = files_of(dirs)
    nbytes = sum(Path(f).stat().st_size for f in files)
    params = sum(family7b.numel(s) for _, s in family7b.tensor_list(cfg))
    quiet = wait_quiet(args.quiet_wait) if args.quiet_wait else None
    runs = variants(dirs)
    for fn in runs.values():  # warm the page cache and load both kernels
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    loads = []
    for _ in range(args.rounds):
        loads.append(loadavg()["load1"])
        for k, fn in runs.items():
            times[k].append(fn())
    kern = kernels_alone(dirs)
    evict(files)
    cold_floor = w_floor(files, 1 << 20)["seconds"]
    evict(files)
    with open_models(dirs) as (base, *models):
        cold_sketch = sketch_models(base, models).seconds
    med = {k: statistics.median(v) for k, v in times.items()}
    floor = med["floor"]
    res = {"params": params, "bytes": nbytes, "children": args.children, "threads": n_threads(), "loads": loads,
           "quiet": quiet, "median": med, "min": {k: min(v) for k, v in times.items()}, "runs": times,
           "kernels_g_positions_per_s": kern, "cold": {"floor": cold_floor, "sketch pass": cold_sketch},
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "isa": _kernels.c_isa(), "sketch_backend": _sketch_kernels.default_backend()}
    out = args.out or args.workdir / "sketch_bench.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"{params / 1e9:.2f} B params, base + {args.children} children, {nbytes / 1e9:.2f} GB read per pass; "
          f"{args.rounds} alternating rounds, 1-min load {', '.join(f'{x:.1f}' for x in loads)}; "
          f"{res['threads']} threads; C kernels: {res['isa']}")
    print("\n| variant (warm page cache) | median s | best s | vs floor (median) | throughput |")
    print("|---|---:|---:|---:|---:|")
    for k in runs:
        print(f"| {k} | {med[k]:.3f} | {min(times[k]):.3f} | {med[k] / floor:.2f}x | "
              f"{nbytes / med[k] / 1e9:.1f} GB/s |")
    print(f"\nCold cache (one run each): floor {cold_floor:.2f} s, sketch pass {cold_sketch:.2f} s "
          f"({cold_sketch / cold_floor:.2f}x).")
    print("Kernels alone, 1 thread, in-memory BF16, G positions/s (all models per position): "
          + ", ".join(f"{k} {v:.2f}" for k, v in kern.items()) + ".")
    print(f"Peak RSS of this process: {res['peak_rss_mb']:.0f} MB. Results: {out}")


if __name__ == "__main__":
    main()
