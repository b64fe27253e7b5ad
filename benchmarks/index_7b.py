#!/usr/bin/env python
"""The index at hub scale: a query over 10,000 sketches, and 7B-shaped models read cold.

Targets (issue 12, docs/benchmarks.md): an index query over 10,000 sketches in <= 0.5 s warm;
exact pair kinship of 7B models in <= 1.2x the cold read floor with < 1 GB peak RSS; the
sketch pass against the same floor.

``query``: writes an index of 10,000 synthetic sketches at the default size (2^17 buckets:
5.2 GB of float32; no layer groups) in 100 clusters of 100 whose members have PCC ~0.5 with
each other and ~0 across (a hub of fine-tune families), then times ``Index.query(top=10)`` in
a fresh process: the first query (reads every folded sketch from the file) and the next ones
(the folded sketches kept in memory), each for a different query model.

``7b``: on a family written by ``benchmarks/family7b.py`` (base + 2 children, Llama-2-7B
shapes, BF16, 13.5 GB each), every measurement its own subprocess (peak RSS by ``os.wait4``),
pages evicted (``posix_fadvise(DONTNEED)``) before each: the read floor of the three files,
``kinmerge kinship`` (exact), and the sketch pass (``sketch_models``, default size).

Usage::

    python benchmarks/family7b.py /work/scratch/fam7b --children 2
    python benchmarks/index_7b.py 7b /work/scratch/fam7b --out /tmp/i7b.json
    python benchmarks/index_7b.py query --workdir /work/scratch/q10k --out /tmp/q10k.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_harness import evict, kinmerge_cmd, loadavg, measure, worker_cmd

N_MODELS = 10_000
CLUSTER = 100
N_POS = 6_738_415_616  # Llama-2-7B parameters: the moments of a 7B delta


def build_index(path: Path, size: int = 1 << 17, seed: int = 0) -> None:
    from kinmerge.index.file import IndexFile
    from kinmerge.index.query import COARSE, fold

    rng = np.random.default_rng(seed)
    ones = np.zeros(size, "<i4")  # every delta has mean 0 here: the centring term is unused
    f = IndexFile(path)
    with f.transaction() as conn:
        f.write_meta(conn, {"seed": seed, "size": size, "coarse": COARSE, "groups": [], "group_size": 0, "n": N_POS,
                            "coverage_id": "synthetic", "base_sumsq": None,
                            "base": {"id": "synthetic-base", "ref": "synthetic-base", "label": "base"}},
                     {"ones": ones})
    for lo in range(0, N_MODELS, CLUSTER):
        centre = rng.standard_normal(size).astype(np.float32)
        vals = (0.7 * centre[None] + 0.7 * rng.standard_normal((CLUSTER, size), dtype=np.float32)).astype("<f4")
        with f.transaction() as conn:
            for i, v in enumerate(vals):
                sq = float(np.dot(v, v))
                f.insert(conn, {"id": f"m{lo + i:05d}", "label": f"m{lo + i:05d}", "ref": "synthetic", "made": None,
                                "n": N_POS, "sum": 0.0, "sumsq": sq, "sketch": v, "coarse": fold(v, COARSE)})
    f.close()


def time_queries(path: Path, queries: int = 6) -> dict:
    from kinmerge.index import Index

    out = {"queries": []}
    t0 = time.perf_counter()
    with Index(path) as idx:
        out["open_s"] = time.perf_counter() - t0
        for q in range(queries):
            label = f"m{(q * 1_733) % N_MODELS:05d}"
            t = time.perf_counter()
            found = idx.query(label, top=10)
            dt = time.perf_counter() - t
            same = sum(int(n.label[1:]) // CLUSTER == int(label[1:]) // CLUSTER for n in found)
            out["queries"].append({"model": label, "seconds": dt, "top10_same_cluster": same})
            print(f"  query {label}: {dt:.3f} s, {same}/10 of its own cluster", flush=True)
    return out


def run_query(args: argparse.Namespace) -> dict:
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / "hub.kmi"
    if not path.exists():
        t0 = time.perf_counter()
        build_index(path)
        print(f"built {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", flush=True)
    os.sync()
    res = measure(worker_cmd_self("queries", str(path)), label="queries (fresh process)")
    return {"index_bytes": path.stat().st_size, "load": loadavg(), **res}


def worker_cmd_self(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "_worker", *args]


def run_7b(args: argparse.Namespace) -> dict:
    fam = args.family
    dirs = [fam / "base", fam / "child1", fam / "child2"]
    files = [str(f) for d in dirs for f in sorted(d.glob("*.safetensors"))]
    size = sum(os.path.getsize(f) for f in files)
    out: dict = {"bytes": size, "rounds": []}
    for r in range(args.rounds):
        row = {"load_before": loadavg()}
        for name, cmd in (
            ("floor", worker_cmd("floor", *files)),
            ("exact kinship", [*kinmerge_cmd(), "kinship", str(dirs[1]), str(dirs[2]), "--base", str(dirs[0]),
                               "--json", "--no-progress"]),
            ("sketch pass", worker_cmd_self("sketch", *map(str, dirs))),
        ):
            evict(files)
            row[name] = measure(cmd, label=f"round {r + 1}: {name} (cold)")
        out["rounds"].append(row)
    return out


def w_sketch(*dirs: str) -> dict:
    from kinmerge.sketch_scan import sketch_models
    from kinmerge.sources import open_models

    with open_models(list(dirs)) as (base, *models):
        res = sketch_models(base, models)
    return {"seconds": res.seconds, "bytes_read": res.bytes_read}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        name, rest = sys.argv[2], sys.argv[3:]
        data = time_queries(Path(rest[0])) if name == "queries" else w_sketch(*rest)
        print(json.dumps(data))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    q = sub.add_parser("query")
    q.add_argument("--workdir", type=Path, default=Path("/tmp/q10k"))
    q.add_argument("--out", type=Path, default=None)
    s = sub.add_parser("7b")
    s.add_argument("family", type=Path)
    s.add_argument("--rounds", type=int, default=1)
    s.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    res = run_query(args) if args.what == "query" else run_7b(args)
    text = json.dumps(res, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
