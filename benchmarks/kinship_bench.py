#!/usr/bin/env python
"""Benchmark ``kinmerge kinship`` / ``kinmerge matrix`` against the read floor and a naive baseline.

What it does, in one run (so ratios are measured under the same machine load):

1. Generates (once; cached in ``--workdir``) a Llama-shaped BF16 family of the chosen size: a base
   and N children whose deltas share structure (children 1-2 share a strong direction, 3-4 a
   weaker one, 5-6 only the family direction), so kinship varies by pair. Generation streams
   tensor by tensor (a fused numba kernel when numba is installed): it never holds a model in RAM.
2. Warms up (one run of each command) and warms the page cache.
3. ``--repeat`` times, interleaved: the *floor* (a subprocess reading the same files once with
   large ``readinto`` calls), ``kinmerge kinship`` on the pair; the floor over all N+1 files,
   ``kinmerge matrix`` on the N children.
4. Diagnostics: the fused kernel alone on in-memory chunks (1 and 2 threads), the scan with a
   no-op kernel (reading + pipeline alone), chunk sizes, the start-up cost (imports + kernel load).
5. The exact float64 reference for the pair (numpy, tensor by tensor, float64) and the *naive*
   baseline (a subprocess that, like the reference tool, loads every model fully in fp32,
   concatenates the deltas and reduces in float32), unless it cannot fit in RAM.
6. Cold-cache numbers (pages evicted with ``posix_fadvise(DONTNEED)``, no root needed).

Each measured thing is its own subprocess; its peak RSS is that process's own ``ru_maxrss``,
read with ``os.wait4`` (not the RUSAGE_CHILDREN maximum over all children).

Usage::

    python benchmarks/kinship_bench.py --params 0.5e9 --repeat 3 --write-doc docs/benchmarks.md
    python benchmarks/kinship_bench.py --params 1e9 --models 2 --repeat 3 --write-doc docs/benchmarks.md
    python benchmarks/kinship_bench.py --render-only --write-doc docs/benchmarks.md   # re-render

Results are kept per size in ``<workdir>/results-<size>-m<N>.json``; ``--write-doc`` renders every
result found there into one Markdown page.

This file is the command line and the order of the measurements; the rest sits beside it, one
concept per module, imported through the script's own folder on ``sys.path``:
``bench_family.py`` (the generated family), ``bench_workers.py`` (the measured subprocesses,
started as ``kinship_bench.py _worker NAME ...``), ``bench_harness.py`` (measuring a process,
load, page cache, machine) and ``bench_doc.py`` (the printed table and docs/benchmarks.md);
``llama_layout.py`` (tensor names, safetensors header) is shared with ``family7b.py``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
from pathlib import Path

from bench_doc import print_table, render_doc
from bench_family import generate_family, size_tag
from bench_harness import (
    LOAD_LIMIT,
    evict,
    kinmerge_cmd,
    machine_info,
    measure,
    mem_available,
    summarize,
    wait_quiet,
    warm,
    worker_cmd,
)
from bench_workers import READ_BUF, worker_main

NAIVE_BYTES_PER_PARAM = 20  # 3 fp32 models (12) + 2 fp32 delta lists (8), before the models are freed
TORCH_BYTES_PER_PARAM = 24  # 2 fp32 deltas (8) + torch.stack (8) + torch.corrcoef centring (8)


# == the benchmark ===========================================================================


def _torch_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def run_benchmark(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[disk] {workdir}: {shutil.disk_usage(workdir).free / 1e9:.0f} GB free", flush=True)
    fam = generate_family(workdir, args.params, args.models)
    base, children = fam["dirs"][0], fam["dirs"][1:]
    files = fam["files"]
    pair_files = files[:3]
    km = kinmerge_cmd()
    kin_cmd = [*km, "kinship", children[0], children[1], "--base", base, "--json", "--no-progress"]
    do_matrix = args.models >= 3
    mat_cmd = [*km, "matrix", *children, "--base", base, "--json", "--no-progress", "--metric", "pcc,cs,ed"]
    res: dict = {"params": fam["config"]["params"], "requested_params": args.params, "family": fam,
                 "models": args.models, "repeat": args.repeat, "loads": [], "read_buf": READ_BUF,
                 "when": _dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
                 "command": " ".join(["python", "benchmarks/kinship_bench.py", *sys.argv[1:]])}

    def block(name: str) -> None:
        la = wait_quiet(args.quiet_wait)
        res["loads"].append({"block": name, **la})

    print("[warm-up] first kinmerge runs", flush=True)
    res["warmup"] = {"kinship": measure(kin_cmd, label="kinmerge kinship (warm-up)")}
    if do_matrix:
        res["warmup"]["matrix"] = measure(mat_cmd, label="kinmerge matrix (warm-up)")

    runs: dict[str, list[dict]] = {"floor_pair": [], "kinship": [], "floor_all": [], "matrix": []}
    for r in range(args.repeat):
        print(f"[timed] repeat {r + 1}/{args.repeat}", flush=True)
        # Read everything right before timing: this machine may page out file pages idle for ~1 min.
        warm(files if do_matrix else pair_files)
        block(f"timed {r + 1}")
        runs["floor_pair"].append(measure(worker_cmd("floor", *pair_files), label="floor: read 3 files"))
        runs["kinship"].append(measure(kin_cmd, label="kinmerge kinship"))
        if do_matrix:
            runs["floor_all"].append(measure(worker_cmd("floor", *files), label=f"floor: read {len(files)} files"))
            runs["matrix"].append(measure(mat_cmd, label=f"kinmerge matrix (N={args.models})"))
    res["summary"] = {k: summarize(v) for k, v in runs.items() if v}
    res["kinship_json"] = runs["kinship"][-1]["data"]
    if do_matrix:
        res["matrix_json"] = {k: v for k, v in runs["matrix"][-1]["data"].items()
                              if k in ("kinship", "seconds", "bytes_read")}

    # -- diagnostics: where the time goes -------------------------------------------------------
    if not args.no_diagnostics:
        print("[diagnostics]", flush=True)
        diag: dict = {}
        warm(pair_files)
        block("diagnostics")
        diag["startup"] = measure(worker_cmd("startup", "2"), label="start-up: imports + first kernel call")
        elems = str(min(fam["config"]["params"], args.kernel_elements))
        diag["ab_pair"] = measure(worker_cmd("ab", str(args.ab_rounds), elems, base, *children[:2]),
                                  label=f"A/B in-process, pair, {args.ab_rounds} rounds")
        if do_matrix:
            warm(files)
            diag["ab_all"] = measure(worker_cmd("ab", str(max(2, args.ab_rounds - 2)), elems, base, *children),
                                     label="A/B in-process, matrix")
        res["diagnostics"] = diag

    # -- exactness: an independent float64 reference ---------------------------------------------
    print("[exact] float64 reference (numpy, tensor by tensor)", flush=True)
    warm(pair_files)
    res["exact"] = measure(worker_cmd("exact", *pair_files), label="numpy float64 streaming (exact)")

    # -- naive baseline -------------------------------------------------------------------------
    p = fam["config"]["params"]
    need = NAIVE_BYTES_PER_PARAM * p + (1 << 30)
    avail = mem_available()
    res["naive_need_gb"], res["mem_available_gb"] = need / 1e9, avail / 1e9
    if args.skip_naive:
        res["naive_skipped"] = "skipped (--skip-naive)"
    elif need > 0.9 * avail:
        res["naive_skipped"] = (f"cannot hold: needs ~{need / 1e9:.1f} GB ({NAIVE_BYTES_PER_PARAM} B/param: 3 fp32 "
                                f"models + 2 fp32 deltas), {avail / 1e9:.1f} GB available")
        print(f"[naive] {res['naive_skipped']}", flush=True)
    else:
        naive_runs: list[dict] = []
        for r in range(args.repeat):
            print(f"[naive] repeat {r + 1}/{args.repeat}", flush=True)
            warm(pair_files)  # the naive run evicts other pages: re-warm its inputs
            block(f"naive {r + 1}")
            naive_runs.append(measure(worker_cmd("naive", "numpy", *pair_files), label="naive fp32 (numpy)"))
            # kinmerge right after, under the same conditions: the paired ratio
            warm(pair_files)
            runs.setdefault("kinship_paired", []).append(measure(kin_cmd, label="kinmerge kinship (paired)"))
        res["summary"]["naive"] = summarize(naive_runs)
        res["summary"]["kinship_paired"] = summarize(runs["kinship_paired"])
        res["naive_json"] = naive_runs[-1]["data"]
        need_t = TORCH_BYTES_PER_PARAM * p + (1 << 30)
        if _torch_available() and need_t <= 0.9 * mem_available():
            print("[naive] once more with the reference tool's own torch reductions", flush=True)
            warm(pair_files)
            block("naive torch")
            res["naive_torch"] = measure(worker_cmd("naive", "torch", *pair_files),
                                         label="naive fp32 (torch reductions)")
        elif not _torch_available():
            res["naive_torch_skipped"] = "torch not installed"
        else:
            res["naive_torch_skipped"] = f"cannot hold: needs ~{need_t / 1e9:.1f} GB"

    # -- cold cache -----------------------------------------------------------------------------
    if not args.no_cold:
        print("[cold] evicting the pair's pages with posix_fadvise(DONTNEED)", flush=True)
        cold: dict = {}
        try:
            evict(pair_files)
            cold["floor_pair"] = measure(worker_cmd("floor", *pair_files), label="floor (cold): read 3 files")
            evict(pair_files)
            cold["kinship"] = measure(kin_cmd, label="kinmerge kinship (cold)")
        except OSError as exc:
            cold["error"] = str(exc)
        res["cold"] = cold
        try:  # only probe: opening writes nothing (dropping caches would hit every user of the machine)
            os.close(os.open("/proc/sys/vm/drop_caches", os.O_WRONLY))
            res["drop_caches"] = "writable (not used: it would drop every user's cache)"
        except OSError as exc:
            res["drop_caches"] = f"not writable here ({exc.strerror})"
    return res


# == main ====================================================================================


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=0.5e9, help="parameters per model (default 0.5e9)")
    ap.add_argument("--models", type=int, default=6, help="children (the matrix runs on all of them; default 6)")
    ap.add_argument("--workdir", default="/tmp/kbench", help="where models and results go (default /tmp/kbench)")
    ap.add_argument("--skip-naive", action="store_true", help="do not run the naive fp32 baseline")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions; medians are reported (default 3)")
    ap.add_argument("--write-doc", default=None, help="render every result in --workdir to this Markdown file")
    ap.add_argument("--render-only", action="store_true", help="do not measure; only render --write-doc")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache runs")
    ap.add_argument("--no-diagnostics", action="store_true", help="skip the where-does-the-time-go runs")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="before each timed block wait up to this many seconds for the load to drop below "
                         f"{LOAD_LIMIT}")
    ap.add_argument("--ab-rounds", type=int, default=5, help="rounds of the in-process A/B diagnostics (default 5)")
    ap.add_argument("--kernel-elements", type=int, default=1 << 26,
                    help="positions per input for the kernel-alone diagnostic (default 64 M)")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    if not args.render_only:
        res = run_benchmark(args)
        out = workdir / f"results-{size_tag(args.params)}-m{args.models}.json"
        out.write_text(json.dumps(res, indent=1, default=str))
        print(f"results: {out}")
        print_table(res)
    if args.write_doc:
        results = [json.loads(p.read_text()) for p in sorted(workdir.glob("results-*.json"))]
        if not results:
            raise SystemExit(f"no results-*.json in {workdir}: run a benchmark first")
        render_doc(results, Path(args.write_doc))


if __name__ == "__main__":
    main()
