#!/usr/bin/env python
"""Does a zoo leave headroom after generation 1? The zoo property of issue 9 §1, measured.

For each foundation set (a list of the zoo's specialists) the script writes one evolve config
-- the paper's top-k greedy loop: ``strategy: {name: greedy, k: 3}``, the default
``merge: {method: slerp}`` (the paper's layer gradient), the builtin evaluator on the set's
scored tasks -- runs ``kinmerge evolve`` on it, and prints per set:

* the best score of the pool after each generation (index 0 = the foundations),
* the **gain at generation >= 2**: the final best minus the best after generation 1,
* the top-k kinship (mean pairwise PCC of the top-k) after each generation,

and whether the property holds: on at least 3 of every 4 sets the gain at generation >= 2 is
>= 0.01 and the top-k kinship rises through the run (its last value is above both its value at
generation 0 and after generation 1; see ``kinmerge.zoo.headroom``). It also times one
evaluation (the base, the runs' evaluator settings): a run's time is mostly evaluations.

Usage::

    # the sets recorded in a zoo's manifest (``headroom.sets``), its scored tasks and limit
    python benchmarks/zoo_headroom.py --zoo src/kinmerge/data/zoo-headroom --out /tmp/hr
    # any zoo and sets: ';' between sets, ',' between models; tasks: 'own' (the foundations'
    # own tasks) or 'all' (every task of the zoo) or a ',' list
    python benchmarks/zoo_headroom.py --zoo src/kinmerge/data/zoo --tasks own \\
        --sets "add,reverse,sort;caesar,count,double;add,caesar,double;reverse,sort,count"
    # record the runs (best and top-k kinship per generation) beside a shipped zoo
    python benchmarks/zoo_headroom.py --zoo src/kinmerge/data/zoo-headroom --out /tmp/hr \\
        --json src/kinmerge/data/zoo-headroom/headroom.json

Pin it to one core on a shared machine (``taskset -c 1``; the evaluator already uses one torch
thread for small models). ``--workers N`` runs N sets at a time in separate processes.
Reruns with the same ``--out`` resume (the run store is keyed by content).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from kinmerge.zoo.headroom import MIN_GAIN, set_result, verdict

GENERATIONS = 6
K = 3


def write_config(out: Path, zoo: Any, fset: Sequence[str], tasks: Sequence[str], limit: int,
                 k: int, generations: int, merge: dict[str, Any]) -> tuple[Path, Path, str]:
    """One greedy config for a foundation set (the demo's format); returns (config, run dir, name)."""
    name = "-".join(fset)
    run_dir = out / "runs" / name
    config = {
        "foundation": [str(zoo.specialists[m]) for m in fset],
        "base": str(zoo.base),
        "strategy": {"name": "greedy", "k": k, "max_generations": generations},
        "merge": merge,
        # No held-out split: the recorded curves (zoo-headroom/headroom.json) predate it and scored
        # the first `limit` examples of each task; a rerun must measure the same thing.
        "evaluator": {"name": "builtin", "tasks_dir": str(zoo.tasks_dir), "tasks": list(tasks),
                      "limit": limit, "heldout": False},
        "kinship_metric": "pcc",
        "seed": 0,
        "run_id": "greedy",
        "out": {"run_dir": str(run_dir)},
    }
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path, run_dir, name


def run_set(config: str, run_dir: str, name: str) -> dict[str, Any]:
    """Run (or resume) one greedy evolution and read its curves from the store."""
    from kinmerge.evolve.runner import evolve
    from kinmerge.report.queries import load_runs

    t0 = time.perf_counter()
    evolve(config, progress=False)
    seconds = time.perf_counter() - t0
    (run,) = [r for r in load_runs([run_dir]) if r.run.id == "greedy"]
    gens = sorted(run.best_per_generation())
    best = [run.best_per_generation()[g] for g in gens]
    kinship = [run.topk_kinship_at(g) for g in gens]
    return set_result(name, best, kinship, merges=run.merges_used, stop=run.stop_reason,
                      seconds=round(seconds, 1))


def _defaults(zoo: Any, tasks: str | None, limit: int | None) -> tuple[str, int]:
    """Scored tasks and examples per task: as given, else the zoo's ``headroom`` entry."""
    recorded = zoo.manifest.get("headroom", {})
    return (tasks or recorded.get("tasks", "all"),
            limit or recorded.get("limit") or zoo.manifest["settings"]["eval_size"])


def _scored_tasks(zoo: Any, fset: Sequence[str], tasks: str) -> list[str]:
    if tasks == "all":
        return list(zoo.manifest["tasks"])
    if tasks == "own":
        own: list[str] = []
        for m in fset:
            spec = zoo.manifest["specialists"][m]
            for t in spec.get("tasks", [spec["task"]]):
                if t not in own:
                    own.append(t)
        return [t for t in zoo.manifest["tasks"] if t in own]
    return [t.strip() for t in tasks.split(",") if t.strip()]


def measure(zoo_root: str | os.PathLike[str], out: str | os.PathLike[str],
            sets: Sequence[Sequence[str]] | None = None, tasks: str | None = None,
            limit: int | None = None, k: int = K, generations: int = GENERATIONS,
            merge: dict[str, Any] | None = None, workers: int = 1,
            log: Any = print) -> dict[str, Any]:
    """Run every set and return ``{"settings", "sets": [row...], "verdict"}``.

    ``sets``, ``tasks`` and ``limit`` default to the zoo manifest's ``headroom`` entry (written
    by the zoo build for presets that carry foundation sets), else all triples would be too many:
    give them explicitly.
    """
    from kinmerge.zoo import load_zoo

    zoo = load_zoo(zoo_root)
    sets = [list(s) for s in (sets or zoo.manifest.get("headroom", {}).get("sets") or [])]
    if not sets:
        raise SystemExit("no foundation sets: pass --sets or use a zoo whose zoo.json has headroom.sets")
    tasks, limit = _defaults(zoo, tasks, limit)
    merge = merge or {"method": "slerp"}
    out = Path(out).resolve()
    jobs = []
    for fset in sets:
        scored = _scored_tasks(zoo, fset, tasks)
        jobs.append(write_config(out, zoo, fset, scored, limit, k, generations, merge))
    rows: list[dict[str, Any]] = []
    if workers <= 1:
        for config, run_dir, name in jobs:
            rows.append(run_set(str(config), str(run_dir), name))
            log(_row_line(rows[-1]))
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [pool.submit(run_set, str(c), str(r), n) for c, r, n in jobs]
            for f in futures:
                rows.append(f.result())
                log(_row_line(rows[-1]))
    settings = {"preset": zoo.manifest.get("preset"), "seed": zoo.manifest.get("seed"), "k": k,
                "max_generations": generations, "merge": merge, "tasks": tasks, "limit": limit}
    return {"settings": settings, "sets": rows, "verdict": verdict(rows)}


def evaluation_seconds(zoo_root: str | os.PathLike[str], tasks: str | None = None,
                       limit: int | None = None, repeat: int = 3) -> dict[str, Any]:
    """Seconds to score one model (the base) with the runs' evaluator settings; best of ``repeat``.

    The loop's cost is mostly evaluation (one per merge), so this is what a run's time scales
    with. Loading the model is included, as in a run.
    """
    from kinmerge.evaluate.builtin import BuiltinEvaluator
    from kinmerge.zoo import load_zoo

    zoo = load_zoo(zoo_root)
    tasks, limit = _defaults(zoo, tasks, limit)
    names = list(zoo.manifest["tasks"]) if tasks in ("all", "own") else tasks.split(",")
    evaluator = BuiltinEvaluator(zoo.tasks_dir, limit=limit, tasks=names, progress=False)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        evaluator.evaluate(zoo.base)
        times.append(time.perf_counter() - t0)
    return {"seconds": round(min(times), 3), "tasks": len(names), "limit": limit,
            "examples": len(names) * limit}


def _fmt(values: Sequence[float | None]) -> str:
    return " ".join("  -  " if v is None else f"{v:.3f}" for v in values)


def _row_line(row: dict[str, Any]) -> str:
    gain = row["gain_after_gen1"]
    return (f"{row['set']}\n  best    {_fmt(row['best'])}\n  top-k   {_fmt(row['topk_kinship'])}\n"
            f"  gain@>=2 {'-' if gain is None else f'{gain:+.4f}'}  kinship rises "
            f"{'yes' if row['kinship_rises'] else 'no'}  merges {row['merges']}  stop "
            f"{row['stop']}  -> {'HOLDS' if row['holds'] else 'fails'}  ({row['seconds']:.0f}s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", required=True, help="zoo folder (built with `kinmerge zoo build`)")
    parser.add_argument("--out", default="/tmp/zoo-headroom", help="configs and run stores")
    parser.add_argument("--sets", default=None,
                        help="foundation sets: 'a,b,c;d,e,f' (default: the zoo's headroom.sets)")
    parser.add_argument("--tasks", default=None,
                        help="scored tasks: own | all | a,b,c (default: the zoo's, else all)")
    parser.add_argument("--limit", type=int, default=None, help="examples per task")
    parser.add_argument("--k", type=int, default=K)
    parser.add_argument("--generations", type=int, default=GENERATIONS)
    parser.add_argument("--merge", default=None,
                        help="merge recipe as YAML/JSON, e.g. '{method: linear}' (default slerp)")
    parser.add_argument("--workers", type=int, default=1, help="sets run at a time")
    parser.add_argument("--json", dest="json_out", default=None, help="write the result here")
    args = parser.parse_args(argv)
    sets = None
    if args.sets:
        sets = [[m.strip() for m in s.split(",") if m.strip()] for s in args.sets.split(";") if s.strip()]
    merge = yaml.safe_load(args.merge) if args.merge else None
    t0 = time.perf_counter()
    result = measure(args.zoo, args.out, sets, args.tasks, args.limit, args.k, args.generations,
                     merge, args.workers)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["evaluation"] = evaluation_seconds(args.zoo, args.tasks, args.limit)
    e = result["evaluation"]
    print(f"evaluation: {e['seconds']:.2f} s per model ({e['tasks']} tasks x {e['limit']} examples, "
          f"best of 3, one torch thread)")
    v = result["verdict"]
    print(f"property (gain >= {MIN_GAIN} at generation >= 2 and rising top-k kinship on >= 3 of "
          f"4 sets): {v['hold']}/{v['sets']} sets -> {'HOLDS' if v['property'] else 'fails'}"
          f"  ({result['seconds']:.0f}s)")
    text = json.dumps(result, indent=2) + "\n"
    if args.json_out:
        Path(args.json_out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
