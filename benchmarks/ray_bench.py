#!/usr/bin/env python
"""Benchmark kinmerge on a local Ray cluster against the local executor and the local scan.

Two measurements, each against a baseline measured in the same run:

1. ``matrix``: the exact kinship matrix of a ~0.5 B Llama-shaped BF16 family (base + 6 children,
   generated once by ``bench_family.generate_family`` and cached in ``--workdir``), sharded over a
   2-CPU local Ray cluster (``scan_ray``, 2 and 4 shards, one scan thread per shard) vs the local
   scan (``scan_refs``, one scan thread per core), alternated round by round in one process with
   the cluster already up and the page cache warm; plus whole ``kinmerge matrix`` commands (with
   and without ``--ray``, i.e. with the cost of starting a cluster or connecting to one) and the
   peak RSS of the Ray workers. Also checks that the matrices are equal.
2. ``evolve``: a greedy run on the shipped tiny zoo (3 foundations, k = 3, 3 generations, builtin
   evaluator, one thread per step), as ``kinmerge evolve`` subprocesses: local in sequence, local
   with 2 processes, Ray starting its own 2-CPU cluster, Ray on a running 2-CPU cluster. Wall time,
   and from each run's store events the merges and evaluations in flight over time. Checks that
   every variant ends with the same pool.

Usage::

    python benchmarks/ray_bench.py matrix --workdir /tmp/kbench --rounds 5
    python benchmarks/ray_bench.py evolve --workdir /tmp/raybench --repeat 2
    python benchmarks/ray_bench.py render --workdir /tmp/kbench --evolve-workdir /tmp/raybench \\
        --write-doc docs/benchmarks.md

``render`` writes the "Ray" section of docs/benchmarks.md between its own markers, after the
page's notes marker, so ``kinship_bench.py --write-doc`` keeps it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

START = "<!-- ray_bench:start -->"
END = "<!-- ray_bench:end -->"
ZOO = ROOT / "src" / "kinmerge" / "data" / "zoo"


def loadavg() -> float:
    return os.getloadavg()[0]


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def env() -> dict[str, str]:
    # One torch thread everywhere: a Ray task gets OMP_NUM_THREADS = its CPUs (1), and a merge's bytes
    # depend on torch's thread count (its reductions), so with the machine's default (2 here) the
    # local runs would make other bytes for the same merges than the Ray runs (docs/distributed.md).
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def kinmerge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kinmerge.cli", *args]


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
    return time.perf_counter() - t0, out.stdout


def warm(files: list[str]) -> None:
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


# == 1. the sharded matrix ====================================================================


def _shard_with_memory(task):  # defined in __main__: Ray ships it by value to the workers
    """A shard scanned under tracemalloc (numpy reports its buffers to it): what the task allocates,
    and the worker process's resident size before it (Ray, numpy, kinmerge imported)."""
    import tracemalloc

    from kinmerge.scan_ray import scan_shard

    def rss_mb() -> float:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024

    before = rss_mb()
    tracemalloc.start()
    scan_shard(task)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"rss_before_mb": before, "task_peak_alloc_mb": peak / 2**20, "rss_after_mb": rss_mb()}


def bench_matrix(args: argparse.Namespace) -> dict:
    import numpy as np
    import ray

    from bench_family import generate_family
    from kinmerge._ray import RayCluster
    from kinmerge.scan import scan_refs
    from kinmerge.scan_ray import ShardTask, scan_ray, shard_plans, tensor_bytes
    from kinmerge.sources import open_models

    fam = generate_family(Path(args.workdir), args.params, args.models)
    base, children = fam["dirs"][0], fam["dirs"][1:]
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    cluster_start = time.perf_counter() - t0
    address = ray.get_runtime_context().gcs_address
    variants = {"local": lambda: scan_refs(base, children),
                "ray_2_shards": lambda: scan_ray(base, children, shards=2),
                "ray_4_shards": lambda: scan_ray(base, children, shards=4)}
    for fn in variants.values():  # warm-up: worker processes, imports, page cache
        fn()
    rounds: dict[str, list[float]] = {k: [] for k in variants}
    loads = []
    results = {}
    for _ in range(args.rounds):
        for key, fn in variants.items():
            warm(fam["files"])
            loads.append(loadavg())
            t = time.perf_counter()
            results[key] = fn()
            rounds[key].append(time.perf_counter() - t)
    ref = results["local"]
    exact = {}
    for key in ("ray_2_shards", "ray_4_shards"):
        r = results[key]
        rel = max(float(np.max(np.abs(r.matrix(m) - ref.matrix(m)) / np.maximum(np.abs(ref.matrix(m)), 1e-300)))
                  for m in ("pcc", "cs", "ed"))
        exact[key] = {"max_rel_diff": rel, "bit_identical": bool(np.array_equal(r.stats.gram, ref.stats.gram)
                                                                and np.array_equal(r.stats.sums, ref.stats.sums))}
    # peak RSS of a worker streaming one shard (of 2), from inside the task
    with open_models([base, *children]) as opened:
        from kinmerge.scan import plan

        plans, _, _ = plan(opened[0], opened[1:])
        sizes = [tensor_bytes(opened, p) for p in plans]
        paths = tuple(str(s.path) for s in opened)
    with RayCluster() as cluster:
        refs = [cluster.submit(_shard_with_memory, ShardTask(paths, tuple(part)), name="memory_probe")
                for part in shard_plans(plans, sizes, 2)]
        memory = [cluster.result(r, "memory probe") for r in refs]
    # whole commands: local, --ray=<the running cluster>, --ray (a cluster of its own)
    margs = ["matrix", *children, "--base", base, "--json", "--no-progress"]
    cli: dict[str, list[float]] = {"local": [], "ray_connect": [], "ray_own_cluster": []}
    outputs = {}
    for _ in range(args.cli_runs):
        for key, extra in (("local", []), ("ray_connect", [f"--ray={address}"]), ("ray_own_cluster", ["--ray"])):
            warm(fam["files"])
            seconds, out = timed(kinmerge_cmd(*margs, *extra))
            cli[key].append(seconds)
            outputs[key] = json.loads(out)
    for data in outputs.values():
        data.pop("seconds")
    ray.shutdown()
    return {
        "when": datetime.now().isoformat(timespec="seconds"), "commit": commit(), "family": {
            "params": fam["config"]["params"], "children": len(children), "file_bytes": fam["file_bytes"]},
        "cluster_start_s": cluster_start, "rounds": rounds, "loads": loads, "exact": exact,
        "memory": memory, "cli": cli, "cli_same_output": all(o == outputs["local"] for o in outputs.values()),
        "command": " ".join(["python benchmarks/ray_bench.py matrix", f"--workdir {args.workdir}",
                             f"--rounds {args.rounds}"]),
    }


# == 2. an evolution run ======================================================================


def evolve_config(path: Path, executor: dict, limit: int) -> Path:
    import yaml

    data = {
        "foundation": [str(ZOO / "specialists" / n) for n in ("add", "reverse", "sort")],
        "base": str(ZOO / "base"),
        "strategy": {"name": "greedy", "k": 3, "max_generations": 3},
        "merge": {"method": "slerp"},
        "evaluator": {"name": "builtin", "tasks_dir": str(ZOO / "tasks"), "tasks": ["add", "reverse", "sort"],
                      "limit": limit, "threads": 1},
        "run_id": "bench",
        "final_kinship_matrix": False,
        "executor": executor,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def in_flight(run_dir: Path) -> dict:
    """Merges and evaluations in flight over time, from the store's events."""
    from kinmerge.store import RunStore

    with RunStore(run_dir, lock=False) as store:
        events = store.events("bench")
        pool = [(m.id, m.generation, m.score) for m in store.pool_state("bench", evaluator=store.evaluators()[0],
                                                                          metric="pcc").models]
    t = {e.id: datetime.fromisoformat(e.ts).timestamp() for e in events}
    t0 = min(t.values())
    open_: dict[tuple[str, str], float] = {}
    spans = []  # (start, end, kind, generation): from the driver's start event to its result event
    for e in events:
        if e.kind == "merge_start":
            open_[("merge", "+".join(e.payload["parents"]))] = t[e.id] - t0
        elif e.kind == "merge":
            key = ("merge", "+".join(e.payload["parents"]))
            spans.append((open_.pop(key), t[e.id] - t0, "merge", e.generation, e.duration_s))
        elif e.kind == "evaluate_start":
            open_[("evaluate", e.message)] = t[e.id] - t0
        elif e.kind == "evaluate":
            key = ("evaluate", e.payload["id"])
            spans.append((open_.pop(key), t[e.id] - t0, "evaluate", e.generation, e.duration_s))
    end = max(t.values()) - t0
    step = 0.5
    timeline = []
    for k in range(int(end / step) + 1):
        x = k * step
        timeline.append(sum(1 for s, f, *_ in spans if s <= x < f))
    busy = [n for n in timeline if n]
    pipelined = 0  # evaluations of merges started before their generation's last merge started
    for g in {s[3] for s in spans if s[3]}:
        last_merge = max(s for s, _, kind, gen, _ in spans if kind == "merge" and gen == g)
        pipelined += sum(1 for s, _, kind, gen, _ in spans if kind == "evaluate" and gen == g and s < last_merge)
    step_seconds = sum(d or 0.0 for *_, d in spans)
    return {"timeline": timeline, "step_s": step, "max_in_flight": max(timeline, default=0),
            "mean_in_flight_when_busy": statistics.mean(busy) if busy else 0.0, "steps": len(spans),
            "step_seconds": step_seconds, "pipelined_evaluations": pipelined, "pool": pool,
            "span_s": end}


def bench_evolve(args: argparse.Namespace) -> dict:
    import ray

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    address = ray.get_runtime_context().gcs_address
    variants = {"local, sequential": {"name": "local", "workers": 1},
                "local, 2 processes": {"name": "local", "workers": 2},
                "ray, own 2-CPU cluster": {"name": "ray", "num_cpus": 2},
                "ray, running 2-CPU cluster": {"name": "ray", "address": address}}
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for r in range(args.repeat):
        for key, executor in variants.items():
            cfg = evolve_config(work / f"{key.replace(' ', '_').replace(',', '')}.yaml", executor, args.limit)
            run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
            load = loadavg()
            seconds, _ = timed(kinmerge_cmd("evolve", str(cfg), "--run-dir", str(run_dir), "--no-progress"))
            info = in_flight(run_dir)
            runs[key].append({"wall_s": seconds, "load": load, **info})
            print(f"[evolve] round {r + 1} {key}: {seconds:.1f} s, max in flight {info['max_in_flight']}, "
                  f"pipelined evaluations {info['pipelined_evaluations']}", flush=True)
    ray.shutdown()
    pools = {json.dumps(run["pool"]) for rs in runs.values() for run in rs}
    return {"when": datetime.now().isoformat(timespec="seconds"), "commit": commit(), "runs": runs,
            "same_pool": len(pools) == 1, "limit": args.limit,
            "command": f"python benchmarks/ray_bench.py evolve --workdir {args.workdir} --repeat {args.repeat} "
                       f"--limit {args.limit}"}


# == rendering ================================================================================


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def render(matrix: dict | None, evolves: list[dict]) -> str:
    L: list[str] = [START, "", "## Ray: the sharded matrix and evolution runs on a local cluster", ""]
    w = L.append
    w("Generated by `benchmarks/ray_bench.py render` (docs/distributed.md). Same machine as above: 2 cores")
    w("shared with other work (the 1-minute load is listed), so absolute times are pessimistic; each")
    w("Ray figure has a local baseline measured in the same run. A 2-CPU Ray cluster on a 2-core machine")
    w("shows Ray's overhead, not a speed-up from more machines: on one machine the local scan already")
    w("uses both cores.")
    w("")
    if matrix:
        fam = matrix["family"]
        r = matrix["rounds"]
        loc = _med(r["local"])
        w(f"### Sharded kinship matrix (~{fam['params'] / 1e9:.2f} B parameters, base + {fam['children']} "
          f"children, {fam['file_bytes'] / 1e9:.2f} GB per BF16 file)")
        w("")
        w(f"Run {matrix['when']}, commit {matrix['commit']}: `{matrix['command']}`.")
        w(f"In one process, the cluster up (it took {matrix['cluster_start_s']:.1f} s to start), page cache warm,")
        w(f"variants alternated over {len(r['local'])} rounds (1-minute load {min(matrix['loads']):.1f}-"
          f"{max(matrix['loads']):.1f}).")
        w("")
        w("| variant | median s | best s | ratio to local (median) |")
        w("|---|---:|---:|---:|")
        labels = {"local": "local scan (`scan_refs`, 2 threads)",
                  "ray_2_shards": "`scan_ray`, 2 shards x 1 CPU",
                  "ray_4_shards": "`scan_ray`, 4 shards x 1 CPU"}
        for key, label in labels.items():
            w(f"| {label} | {_med(r[key]):.2f} | {min(r[key]):.2f} | {_med(r[key]) / loc:.2f}x |")
        w("")
        ex = matrix["exact"]
        for k, v in ex.items():
            w(f"- {k.replace('_', ' ')} vs the local scan: max relative difference {v['max_rel_diff']:.1e}, "
              f"statistics bit-identical: {'yes' if v['bit_identical'] else 'no'}")
        w("")
        mem = matrix["memory"]
        w("Memory of a task streaming one of 2 shards (1 scan thread, 1M-element chunks, 7 inputs): it")
        w(f"allocates at most {max(x['task_peak_alloc_mb'] for x in mem):.1f} MB (tracemalloc, numpy buffers "
          f"included); its worker process is {min(x['rss_before_mb'] for x in mem):.0f}-"
          f"{max(x['rss_after_mb'] for x in mem):.0f} MB")
        w("resident, most of it Ray's own runtime.")
        w("")
        c = matrix["cli"]
        w(f"Whole `kinmerge matrix ... --json` commands ({len(c['local'])} runs each, median): local "
          f"{_med(c['local']):.2f} s;")
        w(f"`--ray=ADDRESS` of the running cluster {_med(c['ray_connect']):.2f} s (a new Ray job: import Ray, "
          "connect, start worker")
        w(f"processes that import kinmerge); `--ray` starting a cluster of its own {_med(c['ray_own_cluster']):.2f} "
          f"s. Same JSON output: {'yes' if matrix['cli_same_output'] else 'no'}.")
        w("")
    for evolve in evolves:
        runs = evolve["runs"]
        n = len(next(iter(runs.values())))
        w(f"### Evolution run on the tiny zoo, {evolve['limit']} examples per task")
        w("")
        w(f"Run {evolve['when']}, commit {evolve['commit']}: `{evolve['command']}`.")
        w(f"Greedy, k = 3, 3 generations, 3 foundations (add, reverse, sort), SLERP merges, builtin evaluator "
          f"({evolve['limit']}")
        w("examples per task at most, one thread per step; `OMP_NUM_THREADS=1` in every process so that merges make")
        w(f"the same bytes everywhere); `kinmerge evolve` subprocesses, {n} alternated rounds. In flight = merges and")
        w("evaluations between the driver's start event and its result event (for Ray a start is a")
        w("submission, at most `workers` at once); sampled every 0.5 s from the store's events.")
        w("")
        w("| executor | wall s (median) | runs | load | steps | step s (sum) | max in flight "
          "| mean in flight when busy | evaluations started before their generation's last merge |")
        w("|---|---:|---|---|---:|---:|---:|---:|---:|")
        base = _med([x["wall_s"] for x in runs["local, sequential"]])
        for key, rs in runs.items():
            walls = [x["wall_s"] for x in rs]
            loads = ", ".join(format(x["load"], ".1f") for x in rs)
            w(f"| {key} | {_med(walls):.1f} ({_med(walls) / base:.2f}x) | {', '.join(f'{x:.1f}' for x in walls)} | "
              f"{loads} | {rs[-1]['steps']} | "
              f"{_med([x['step_seconds'] for x in rs]):.1f} | {max(x['max_in_flight'] for x in rs)} | "
              f"{_med([x['mean_in_flight_when_busy'] for x in rs]):.2f} | {rs[-1]['pipelined_evaluations']} |")
        w("")
        w(f"Every run ended with the same pool: {'yes' if evolve['same_pool'] else 'no'}. Steps in flight over "
          "time (last round, one digit per 0.5 s, from the first event):")
        w("")
        w("```")
        for key, rs in runs.items():
            w(f"{key:28s} {''.join(str(min(x, 9)) for x in rs[-1]['timeline'])}")
        w("```")
        w("")
    if evolves:
        w("**Reading the evolution runs.** The 2 cores were already loaded 3x by other work (load 5-7), so two")
        w("steps in flight could not finish sooner than one: each step took longer (the *step s* sums), the first")
        w("steps in fresh worker processes also import torch and transformers (the long first stretch of every")
        w("timeline is generation 0's evaluations), and a Ray run starting its own cluster pays ~7 s for it.")
        w("What the runs do show: no barrier between a generation's merges and its evaluations (evaluations")
        w("start before the generation's last merge in every variant; the sequential one alternates merge and")
        w("evaluation), two steps in flight nearly all the time with 2 workers, and the same pool from every")
        w("executor. A speed-up needs a free core or GPU per worker and steps longer than a process start-up;")
        w("this machine has neither (no GPU was lent to this task).")
        w("")
    w(END)
    return "\n".join(L)


def write_doc(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("matrix", help="the sharded matrix vs the local scan")
    m.add_argument("--workdir", default="/tmp/kbench")
    m.add_argument("--params", type=float, default=0.5e9)
    m.add_argument("--models", type=int, default=6)
    m.add_argument("--rounds", type=int, default=5)
    m.add_argument("--cli-runs", type=int, default=2)
    e = sub.add_parser("evolve", help="an evolution run: Ray vs local")
    e.add_argument("--workdir", default="/tmp/raybench")
    e.add_argument("--repeat", type=int, default=2)
    e.add_argument("--limit", type=int, default=50, help="evaluation examples per task (longer steps)")
    r = sub.add_parser("render", help="write the Ray section of docs/benchmarks.md")
    r.add_argument("--workdir", default="/tmp/kbench")
    r.add_argument("--evolve-workdir", default="/tmp/raybench")
    r.add_argument("--write-doc", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    if args.what == "matrix":
        res = bench_matrix(args)
        out = Path(args.workdir) / "ray-matrix.json"
    elif args.what == "evolve":
        res = bench_evolve(args)
        out = Path(args.workdir) / f"ray-evolve-l{args.limit}.json"
    else:
        mfile = Path(args.workdir) / "ray-matrix.json"
        matrix = json.loads(mfile.read_text()) if mfile.exists() else None
        evolves = [json.loads(f.read_text()) for f in sorted(Path(args.evolve_workdir).glob("ray-evolve-l*.json"),
                                                             key=lambda f: int(f.stem.split("-l")[1]))]
        write_doc(Path(args.write_doc), render(matrix, evolves))
        return
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in ("runs",)}, indent=1, default=str)[:3000])
    print(f"results: {out}")


if __name__ == "__main__":
    main()
