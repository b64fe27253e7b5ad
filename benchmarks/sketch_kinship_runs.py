#!/usr/bin/env python
"""``kinship_source: sketch`` against ``exact``: the same runs, decided from estimates.

Hypothesis (docs/index.md): on the zoos, strategies that decide by kinship make the same
merges when kinship comes from sketches (estimates within ~0.01 of the exact values), while
each model is read once instead of once per kinship scan.

For each zoo (tiny, headroom) and kinship-using strategy, the same config runs twice (exact,
sketch) with one shared evaluation cache. Compared: the merges planned per generation (the
first generation whose plan differs: after it the pools differ, so later plans are not
comparable), the best final score, the bytes read for kinship (events' ``bytes_read``), and
the estimate error on the pairs both runs recorded.

Usage::

    python benchmarks/sketch_kinship_runs.py --workdir /tmp/skruns --generations 4 --limit 20
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "kinmerge" / "data"
ZOOS = {"tiny": DATA / "zoo", "headroom": DATA / "zoo-headroom"}


def config(zoo: Path, strategy: str, source: str, run_dir: Path, generations: int, limit: int) -> dict:
    specialists = sorted(p.name for p in (zoo / "specialists").iterdir())
    return {"foundation": [str(zoo / "specialists" / s) for s in specialists], "base": str(zoo / "base"),
            "strategy": {"name": strategy, "k": 3, "max_generations": generations,
                         **({"early_stop": False} if strategy == "kinship" else {})},
            "merge": {"method": "slerp"},
            "evaluator": {"name": "builtin", "tasks_dir": str(zoo / "tasks"), "limit": limit, "threads": 1},
            "kinship_metric": "pcc", "seed": 0, "kinship_source": source, "out": {"run_dir": str(run_dir)},
            "run_id": strategy}


def read(run_dir: Path, run_id: str) -> dict:
    conn = sqlite3.connect(f"file:{run_dir / 'kinmerge.db'}?mode=ro", uri=True)
    plans = {g: sorted(sorted(m["parents"]) for m in json.loads(p)["merges"])
             for g, p in conn.execute("SELECT generation, plan FROM plans WHERE run_id = ?", (run_id,))}
    events = [json.loads(p) for (p,) in conn.execute(
        "SELECT payload FROM events WHERE run_id = ? AND kind = 'kinship'", (run_id,))]
    kin = {frozenset((a, b)): v for a, b, v in conn.execute(
        "SELECT model_a, model_b, value FROM kinship WHERE metric = 'pcc'")}
    best = conn.execute("SELECT max(s) FROM (SELECT avg(score) AS s FROM evaluations GROUP BY model_id)").fetchone()
    conn.close()
    return {"plans": plans, "bytes_read": sum(e.get("bytes_read") or 0 for e in events), "scans": len(events),
            "kinship": kin, "best": best[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/skruns"))
    ap.add_argument("--zoos", nargs="+", default=["tiny", "headroom"])
    ap.add_argument("--strategies", nargs="+", default=["kinship", "diverse"])
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    env = {**os.environ, "KINMERGE_CACHE": str(args.workdir / "cache")}
    rows = []
    for zoo in args.zoos:
        for strategy in args.strategies:
            got = {}
            for source in ("exact", "sketch"):
                run_dir = args.workdir / f"{zoo}-{strategy}-{source}"
                path = args.workdir / f"{zoo}-{strategy}-{source}.yaml"
                path.write_text(yaml.safe_dump(config(ZOOS[zoo], strategy, source, run_dir, args.generations,
                                                      args.limit)))
                proc = subprocess.run([sys.executable, "-m", "kinmerge.cli", "evolve", str(path)], env=env,
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{path}: {proc.stderr[-2000:]}")
                got[source] = read(run_dir, strategy)
            ex, sk = got["exact"], got["sketch"]
            gens = sorted(set(ex["plans"]) | set(sk["plans"]))
            differ = [g for g in gens if ex["plans"].get(g) != sk["plans"].get(g)]
            common = set(ex["kinship"]) & set(sk["kinship"])
            errors = [abs(ex["kinship"][p] - sk["kinship"][p]) for p in common]
            row = {"zoo": zoo, "strategy": strategy, "generations": len(gens),
                   "first_difference": min(differ, default=None), "plans_same": len(gens) - len(differ),
                   "exact_bytes": ex["bytes_read"], "sketch_bytes": sk["bytes_read"],
                   "exact_scans": ex["scans"], "sketch_events": sk["scans"], "pairs_compared": len(common),
                   "max_error": max(errors, default=None), "best_exact": ex["best"], "best_sketch": sk["best"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
