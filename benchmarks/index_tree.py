#!/usr/bin/env python
"""Family-tree recovery: ``kinmerge index tree`` against the parents recorded by evolve runs.

Hypothesis (docs/index.md): from the sketches alone, the parents of >= 95% of the merges of a
recorded run are recovered exactly (the same parent set), for SLERP and linear merges.

What it does, per run directory (a run store ``kinmerge.db`` with its ``models/`` folder):

1. reads the models (foundations and merges) and each merge's recorded parents from the store
   (read-only: a run still being written is fine);
2. indexes every model once (``kinmerge.Index.add``, the store's ids as index ids) against the
   zoo base whose content id the run recorded;
3. infers the tree (``Index.tree``), with the models' file times as the order (a parent is older
   than its child) and without, and counts the merges whose inferred parents are exactly the
   recorded ones, and the foundations inferred as roots (fine-tunes of the base).

Usage::

    python benchmarks/index_tree.py RUN_DIR... [--workdir /tmp/itree] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kinmerge.index import Index
from kinmerge.sources import content_id

ZOOS = [ROOT / "src" / "kinmerge" / "data" / "zoo", ROOT / "src" / "kinmerge" / "data" / "zoo-headroom"]


def read_run(run_dir: Path) -> dict:
    """Models (id, path, generation, method) and recorded parents of every model in a run store."""
    conn = sqlite3.connect(f"file:{run_dir / 'kinmerge.db'}?mode=ro", uri=True)
    models = []
    for mid, path, origin, gen, recipe in conn.execute(
            "SELECT id, path, origin, generation, recipe FROM models ORDER BY generation, created"):
        p = Path(path) if Path(path).is_absolute() else run_dir / path
        if not p.exists() and origin == "foundation":  # recorded in another checkout: the shipped zoo
            p = next((z / "specialists" / Path(path).name for z in ZOOS
                      if (z / "specialists" / Path(path).name).exists()), p)
        method = json.loads(recipe)["method"] if recipe else None
        models.append({"id": mid, "path": str(p), "origin": origin, "generation": gen, "method": method})
    parents: dict[str, set[str]] = {}
    for child, parent in conn.execute("SELECT child, parent FROM parents"):
        parents.setdefault(child, set()).add(parent)
    base_id = json.loads(conn.execute("SELECT config FROM runs LIMIT 1").fetchone()[0])["base"]
    conn.close()
    base = next((z / "base" for z in ZOOS if content_id(z / "base") == base_id), None)
    if base is None:
        raise SystemExit(f"{run_dir}: its base ({base_id}) is none of the shipped zoos' bases")
    return {"models": [m for m in models if Path(m["path"]).exists()], "parents": parents, "base": str(base)}


def score(tree, run: dict) -> dict:
    merges = [m for m in run["models"] if m["origin"] == "merge" and m["id"] in run["parents"]]
    out: dict = {"merges": len(merges), "exact": 0, "by_method": {}, "misses": []}
    for m in merges:
        rel = tree.relation(m["id"])
        ok = rel.kind == "merge" and set(rel.parents) == run["parents"][m["id"]]
        stats = out["by_method"].setdefault(m["method"], Counter())
        stats["merges"] += 1
        stats["exact"] += ok
        out["exact"] += ok
        if not ok:
            out["misses"].append({"model": m["id"], "generation": m["generation"], "inferred": rel.kind,
                                  "residual": rel.residual, "found": list(rel.parents),
                                  "recorded": sorted(run["parents"][m["id"]])})
    roots = [m for m in run["models"] if m["origin"] == "foundation"]
    out["foundations"] = len(roots)
    out["foundations_as_roots"] = sum(tree.relation(m["id"]).kind == "root" for m in roots)
    out["by_method"] = {k: dict(v) for k, v in out["by_method"].items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/index-tree"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--untimed", action="store_true", help="also infer the tree without file times (slow)")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for run_dir in args.runs:
        run = read_run(run_dir)
        path = args.workdir / f"{run_dir.name}.kmi"
        path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        with Index(path) as idx:
            idx.add([m["path"] for m in run["models"]], base=run["base"], ids=[m["id"] for m in run["models"]],
                    max_delta=None)
            t_add = time.perf_counter() - t0
            t0 = time.perf_counter()
            timed = score(idx.tree(use_time=True), run)
            t_tree = time.perf_counter() - t0
            untimed = score(idx.tree(use_time=False), run) if args.untimed else timed
        res = {"run": run_dir.name, "models": len(run["models"]), "add_s": round(t_add, 2),
               "tree_s": round(t_tree, 2), "with_time": timed, "without_time": untimed}
        results.append(res)
        without = f", {untimed['exact']} without" if args.untimed else ""
        print(f"{run_dir.name}: {len(run['models'])} models; merges {timed['merges']}, parents exact "
              f"{timed['exact']} with file times{without}; foundations as roots "
              f"{timed['foundations_as_roots']}/{timed['foundations']}; add {t_add:.1f} s, tree {t_tree:.1f} s",
              flush=True)
    for key in ("with_time", "without_time") if args.untimed else ("with_time",):
        by: dict[str, Counter] = {}
        for r in results:
            for method, c in r[key]["by_method"].items():
                by.setdefault(method, Counter()).update(c)
        total = sum(r[key]["merges"] for r in results)
        exact = sum(r[key]["exact"] for r in results)
        parts = ", ".join(f"{m}: {c['exact']}/{c['merges']} = {c['exact'] / c['merges']:.1%}" for m, c in by.items())
        print(f"{key}: {exact}/{total} = {exact / max(total, 1):.1%} of merges recovered exactly ({parts})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
