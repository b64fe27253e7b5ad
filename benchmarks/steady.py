#!/usr/bin/env python
"""Steady-state vs generational evolution (``schedule: steady``, issue 20 §1), two ways.

1. **Simulation** (pure Python, no models, seconds): a discrete-event simulation of a run's
   children on ``W`` workers, each child a merge then an evaluation on one worker, fed with
   per-step times (default: docs/benchmarks.md's real-zoo SLERP merge, 102 s, and a 240-example
   evaluation, 32 s). Plans are of a fixed size (default: 6 merges for generation 1, the pairs of
   4 foundations, then 4: k = 3 top-k pairs + 1 exploration). The generational schedule plans
   when nothing is in flight; the steady one uses ``kinmerge.evolve.steady.Schedule``, the rule
   the runner uses. Each child gets the same step times under both (lognormal jitter, seeded).
   Prints the time to N merges and the workers' utilisation, and the ratio steady / generational.
2. **Measured** (``--measure``; about 10 min on 2 busy cores): the same kinship config on the
   headroom zoo (``zoo:`` refs, docs/zoo.md), run generationally and then steady, on the local
   executor with 2 workers; prints the best selection score against wall time and against merges
   from the stores' events, and the ratios to the generational run measured in the same call.

Usage::

    python benchmarks/steady.py                                   # the simulation only
    python benchmarks/steady.py --workers 8 --merge-s 102 --eval-s 32 --jitter 0.25 --merges 40
    python benchmarks/steady.py --measure --out /tmp/steady-bench   # plus the measured runs

A rerun with the same ``--out`` resumes the finished runs (nothing is remeasured); delete it to
measure again. Note the machine's load (printed) beside any number you keep.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from kinmerge.evolve.steady import Schedule

# -- the simulation ---------------------------------------------------------------------------------


def simulate(schedule: str, *, workers: int, merge_s: float, eval_s: float, plan_sizes: Sequence[int],
             merges: int, jitter: float, seed: int = 0) -> dict[str, float]:
    """Time to ``merges`` completions and the workers' utilisation until then.

    Example:
        >>> r = simulate("generational", workers=8, merge_s=1, eval_s=1, plan_sizes=[4], merges=8, jitter=0)
        >>> r["time_to_n"], r["utilisation"]
        (4.0, 0.5)
    """
    rng = random.Random(seed)
    times = [(merge_s * rng.lognormvariate(0, jitter), eval_s * rng.lognormvariate(0, jitter))
             for _ in range(merges + 64)]
    s = Schedule(limit=workers)
    made: list[int] = []  # plans made: their sizes
    child: dict[tuple[int, int], int] = {}  # key -> child number (the order started: its step times)
    events: list[tuple[float, int, tuple[int, int], int]] = []
    t, busy, done, order = 0.0, 0.0, 0, 0

    def ask() -> int:
        if schedule == "generational" and s.running:
            return 0
        size = plan_sizes[min(len(made), len(plan_sizes) - 1)]
        made.append(size)
        return size

    def fill() -> None:
        nonlocal order
        while (key := s.pull(ask)) is not None:
            child[key] = order
            heapq.heappush(events, (t + times[order][0], order, key, 0))
            order += 1

    fill()
    while done < merges:
        end, n, key, stage = heapq.heappop(events)
        busy += len(s.running) * (end - t)
        t = end
        if stage == 0:
            heapq.heappush(events, (t + times[child[key]][1], n, key, 1))
        else:
            done += 1
            s.finish(key)
            fill()
    return {"time_to_n": round(t, 3), "utilisation": round(busy / (workers * t), 3), "plans": len(made)}


def run_simulation(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    plan_sizes = [int(x) for x in args.plan_sizes.split(",")]
    for workers in sorted({args.workers, plan_sizes[-1]}):
        for jitter in (0.0, args.jitter):
            row: dict[str, dict[str, Any]] = {}
            for schedule in ("generational", "steady"):
                runs = [simulate(schedule, workers=workers, merge_s=args.merge_s, eval_s=args.eval_s,
                                 plan_sizes=plan_sizes, merges=args.merges, jitter=jitter, seed=seed)
                        for seed in range(args.seeds if jitter else 1)]
                row[schedule] = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
                row[schedule]["time_to_n_spread"] = [min(r["time_to_n"] for r in runs),
                                                     max(r["time_to_n"] for r in runs)]
            ratio = row["steady"]["time_to_n"] / row["generational"]["time_to_n"]
            key = f"W={workers} jitter={jitter}"
            out[key] = {**row, "time_ratio_steady_to_generational": round(ratio, 3)}
            g, st = row["generational"], row["steady"]
            print(f"sim {key:18} time to {args.merges} merges: generational {g['time_to_n']:8.0f} s "
                  f"(util {g['utilisation']:.2f}), steady {st['time_to_n']:8.0f} s (util {st['utilisation']:.2f}) "
                  f"-> ratio {ratio:.2f}  [n={args.seeds if jitter else 1} seeds; spread "
                  f"gen {g['time_to_n_spread']}, steady {st['time_to_n_spread']}]")
    return out


# -- the measured runs ------------------------------------------------------------------------------


def _config(schedule: str, out: Path, args: argparse.Namespace) -> Path:
    import yaml

    data: dict[str, Any] = {
        "foundation": [f"zoo:headroom/{t}" for t in args.foundation.split(",")],
        "base": "zoo:headroom/base",
        "strategy": {"name": "kinship", "k": 3, "max_generations": args.generations, "early_stop": False},
        "evaluator": {"name": "builtin", "tasks_dir": "zoo:headroom/tasks", "limit": args.limit,
                      "heldout": False, "threads": 1},
        "kinship_metric": "pcc",
        "seed": 0,
        "executor": {"name": "local", "workers": 2},
        "run_id": schedule,
        "final_kinship_matrix": False,
    }
    if schedule == "steady":
        data["schedule"] = "steady"
    path = out / f"{schedule}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _busy(run_dir: Path, run_id: str) -> float:
    """Seconds the run's merges and evaluations took, summed (worker time, load included)."""
    from kinmerge.store import RunStore

    with RunStore(run_dir, lock=False) as store:
        return sum(e.duration_s or 0.0 for e in store.events(run_id) if e.kind in ("merge", "evaluate"))


def _curve(run_dir: Path, run_id: str) -> list[tuple[float, int, float]]:
    """(seconds since the run started, merges scored so far, best score so far) per evaluation."""
    from kinmerge.store import RunStore

    with RunStore(run_dir, lock=False) as store:
        events = store.events(run_id)
        children = {m.id for m in store.pool(run_id, evaluator=store.evaluators()[0]) if m.parents}
    start = datetime.fromisoformat(next(e.ts for e in events if e.kind == "run_started"))
    best, merges, out = -math.inf, 0, []
    for e in events:
        if e.kind == "evaluate" and e.payload is not None:
            merges += e.payload["id"] in children
            best = max(best, float(e.payload["average"]))
            out.append(((datetime.fromisoformat(e.ts) - start).total_seconds(), merges, best))
    return out


def _best_at(curve: list[tuple[float, int, float]], *, seconds: float | None = None,
             merges: int | None = None) -> float | None:
    seen = [b for t, m, b in curve if (seconds is None or t <= seconds) and (merges is None or m <= merges)]
    return seen[-1] if seen else None


def _one(schedule: str, out: Path, args: argparse.Namespace, rep: int) -> tuple[dict[str, Any], list[Any]]:
    from kinmerge.evolve import evolve

    run_dir = out / f"{schedule}-{rep}"
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    s = evolve(_config(schedule, out, args), run_dir, progress=False)
    curve = _curve(run_dir, schedule)
    t, merges, best = curve[-1]
    busy = _busy(run_dir, schedule)
    return ({"call_seconds": round(time.perf_counter() - t0, 1), "run_seconds": round(t, 1), "merges": merges,
             "step_seconds": round(busy, 1), "utilisation": round(busy / (2 * t), 3),
             "best": round(best, 4), "stop": s.stop, "load_1min": [round(load, 2), round(os.getloadavg()[0], 2)]},
            curve)


def run_measured(args: argparse.Namespace) -> dict[str, Any]:
    """``--repeats`` pairs of runs, the order alternating (generational first, then steady first)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"repeats": []}
    for rep in range(args.repeats):
        order = ("generational", "steady") if rep % 2 == 0 else ("steady", "generational")
        runs = {schedule: _one(schedule, out, args, rep) for schedule in order}
        (g_row, g), (s_row, st) = runs["generational"], runs["steady"]
        n = min(g[-1][1], st[-1][1])
        gt = next(t for t, m, _ in g if m >= n)
        stt = next(t for t, m, _ in st if m >= n)
        horizon = min(g[-1][0], st[-1][0])
        row = {"generational": g_row, "steady": s_row, "merges": n,
               "time_to_n": {"generational": round(gt, 1), "steady": round(stt, 1), "ratio": round(stt / gt, 3)},
               "best_at_seconds": {round(horizon * f): [_best_at(g, seconds=horizon * f),
                                                        _best_at(st, seconds=horizon * f)]
                                   for f in (0.25, 0.5, 0.75, 1.0)},
               "best_at_merges": {m: [_best_at(g, merges=m), _best_at(st, merges=m)]
                                  for m in sorted({max(1, n // 3), max(1, 2 * n // 3), n})}}
        res["repeats"].append(row)
        for schedule in order:
            r = row[schedule]
            print(f"measured #{rep} {schedule:12}: {r['merges']} merges in {r['run_seconds']} s "
                  f"(call {r['call_seconds']} s; steps {r['step_seconds']} s, utilisation {r['utilisation']:.2f}), "
                  f"best {r['best']:.4f}, stop {r['stop']!r}, "
                  f"load {r['load_1min'][0]} -> {r['load_1min'][1]}")
        print(f"measured #{rep} time to {n} merges: generational {gt:.1f} s, steady {stt:.1f} s "
              f"-> ratio {stt / gt:.2f}")
        for t, (a, b) in row["best_at_seconds"].items():
            print(f"measured #{rep} best at {t:5d} s (generational, steady): {a}, {b}")
        for m, (a, b) in row["best_at_merges"].items():
            print(f"measured #{rep} best at {m:3d} merges (generational, steady): {a}, {b}")
    utils = {sch: [r[sch]["utilisation"] for r in res["repeats"]] for sch in ("generational", "steady")}
    print(f"measured utilisation of the 2 workers (step seconds / 2 x wall; less sensitive to load): "
          f"generational {utils['generational']}, steady {utils['steady']}")
    ratios = [r["time_to_n"]["ratio"] for r in res["repeats"]]
    res["time_ratio_mean"] = round(sum(ratios) / len(ratios), 3)
    print(f"measured time-to-N ratio steady/generational: mean {res['time_ratio_mean']:.2f} over n={len(ratios)} "
          f"(spread {min(ratios):.2f}-{max(ratios):.2f}); 2 local workers, {os.cpu_count()} CPUs")
    return res


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", type=int, default=8, help="simulated workers (GPUs)")
    p.add_argument("--merge-s", type=float, default=102.0, help="seconds per merge (docs/benchmarks.md)")
    p.add_argument("--eval-s", type=float, default=32.0, help="seconds per evaluation (240 examples)")
    p.add_argument("--plan-sizes", default="6,4", help="merges per plan: generation 1, then each later one")
    p.add_argument("--merges", type=int, default=40, help="the N of time-to-N-merges")
    p.add_argument("--jitter", type=float, default=0.25, help="lognormal sigma of step times")
    p.add_argument("--seeds", type=int, default=20, help="simulations per jittered case")
    p.add_argument("--measure", action="store_true", help="also run the measured comparison")
    p.add_argument("--out", default="/tmp/steady-bench", help="measured runs' folder")
    p.add_argument("--foundation", default="add,reverse,sort,caesar", help="headroom specialists")
    p.add_argument("--limit", type=int, default=60, help="examples per task (6 tasks)")
    p.add_argument("--generations", type=int, default=5, help="max_generations of both runs")
    p.add_argument("--repeats", type=int, default=2, help="pairs of measured runs (order alternates)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    results: dict[str, Any] = {"simulation": run_simulation(args)}
    if args.measure:
        results["measured"] = run_measured(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
