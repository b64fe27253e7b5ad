"""The demo: greedy vs kinship-guided vs random-control evolution on the shipped tiny zoo.

The paper (§5) compares top-k greedy merging with and without kinship on one set of three
foundation models, one run each. A single run says little, so the demo runs every strategy on
several foundation sets (triples of specialists, as the paper starts from three models) and the
random control with several seeds, all with the same generation budget, then compares:

  * best score of the pool per generation, merges used, where the early stop fired;
  * per strategy across foundation sets: the gain of the final best over the best foundation
    model (scores of different sets are on different tasks, so gains, not scores, are averaged),
    with mean, sample std and range.

greedy and kinship are deterministic given a foundation set (SLERP and evaluation are
deterministic), so they run once per set; the random control draws its extra partner from the
seed, so it runs once per seed. Runs on one foundation set share a run directory and therefore
their merges and evaluations: a merge both strategies make is made and scored once.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kinmerge._io import atomic_write

FOUNDATION_SETS: tuple[tuple[str, ...], ...] = (
    ("add", "reverse", "sort"),
    ("caesar", "count", "double"),
    ("add", "caesar", "double"),
    ("reverse", "sort", "count"),
)
STRATEGIES = ("greedy", "kinship", "random")
RANDOM_SEEDS = (0, 1)


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the defaults fit in a few minutes on 2 CPU cores."""

    foundation_sets: tuple[tuple[str, ...], ...] | None = None  # None: FOUNDATION_SETS, or triples of the zoo's
    strategies: tuple[str, ...] = STRATEGIES
    random_seeds: tuple[int, ...] = RANDOM_SEEDS
    k: int = 3
    generations: int = 5
    limit: int = 100  # held-out examples per task
    threshold: float = 0.9  # kinship early stop (mean pairwise PCC of the top-k)


@dataclass
class DemoResult:
    out: Path
    run_dirs: list[Path]
    configs: list[Path]
    report: Path | None
    compare: dict[str, Any]
    across_sets: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def foundation_sets(settings: DemoSettings, zoo: Any, max_sets: int | None = None) -> tuple[tuple[str, ...], ...]:
    """The triples of specialists to start from: the settings', else the default ones the zoo has."""
    if settings.foundation_sets is not None:
        sets = settings.foundation_sets
    elif all(t in zoo.specialists for fs in FOUNDATION_SETS for t in fs):
        sets = FOUNDATION_SETS
    else:  # another zoo (e.g. the micro one): its own triples
        sets = tuple(itertools.combinations(sorted(zoo.specialists), 3))[: len(FOUNDATION_SETS)]
    return sets[:max_sets] if max_sets else sets


def write_configs(out: Path, settings: DemoSettings, zoo: Any,
                  sets: Sequence[tuple[str, ...]]) -> list[tuple[Path, Path]]:
    """Write one run config per (foundation set, strategy, seed); return (config, run dir) pairs."""
    missing = {t for fs in sets for t in fs} - set(zoo.specialists)
    if missing:
        from kinmerge.errors import ConfigError

        raise ConfigError(f"the zoo at {zoo.root} has no specialist for: {', '.join(sorted(missing))}")
    configs: list[tuple[Path, Path]] = []
    for fset in sets:
        set_name = "-".join(fset)
        run_dir = out / "runs" / set_name
        for strategy in settings.strategies:
            seeds = settings.random_seeds if strategy == "random" else (0,)
            for seed in seeds:
                run_id = f"{strategy}-s{seed}" if strategy == "random" else strategy
                strat: dict[str, Any] = {"name": strategy, "k": settings.k, "max_generations": settings.generations}
                if strategy == "kinship":
                    strat["threshold"] = settings.threshold
                config = {
                    "foundation": [str(zoo.specialists[t]) for t in fset],
                    "base": str(zoo.base),
                    "strategy": strat,
                    "merge": {"method": "slerp"},
                    "evaluator": {"name": "builtin", "tasks_dir": str(zoo.tasks_dir), "tasks": list(fset),
                                  "limit": settings.limit},
                    "kinship_metric": "pcc",
                    "seed": seed,
                    "run_id": run_id,
                    "out": {"run_dir": str(run_dir)},
                }
                path = out / "configs" / f"{set_name}--{run_id}.yaml"
                atomic_write(path, f"# written by `kinmerge demo`; rerun one with: kinmerge evolve {path.name}\n"
                             + yaml.safe_dump(config, sort_keys=False))
                configs.append((path, run_dir))
    return configs


def across_sets(compare: dict[str, Any]) -> list[dict[str, Any]]:
    """Per strategy, over all its runs: gain of the final best over the best foundation model."""
    rows: list[dict[str, Any]] = []
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for run in compare["runs"]:
        by_strategy.setdefault(run["strategy"], []).append(run)
    for strategy, runs in by_strategy.items():
        gains = [r["final_best"] - r["best_per_generation"][0] for r in runs
                 if r["final_best"] is not None and r["best_per_generation"]
                 and r["best_per_generation"][0] is not None]
        merges = [r["merges_used"] for r in runs]
        rows.append({
            "strategy": strategy,
            "runs": len(runs),
            "gain_mean": statistics.fmean(gains) if gains else None,
            "gain_std": statistics.stdev(gains) if len(gains) > 1 else None,
            "gain_min": min(gains) if gains else None,
            "gain_max": max(gains) if gains else None,
            "merges_mean": statistics.fmean(merges) if merges else None,
            "early_stops": sum(1 for r in runs if r["early_stop_generation"] is not None),
        })
    return rows


def run_demo(
    out: str | os.PathLike[str],
    settings: DemoSettings = DemoSettings(),
    *,
    zoo_root: str | os.PathLike[str] | None = None,
    max_sets: int | None = None,
    progress: bool = True,
    report: bool = True,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run every strategy on every foundation set, then compare and write the report.

    Rerunning with the same ``out`` resumes: finished runs are not redone (the store is keyed by
    content), so an interrupted demo picks up where it stopped.

    Example:
        >>> result = run_demo("demo-out")                 # doctest: +SKIP
        >>> result.report                                 # doctest: +SKIP
        PosixPath('demo-out/report/index.html')
    """
    from kinmerge.errors import ConfigError, SettingsChangedError
    from kinmerge.evolve import evolve
    from kinmerge.report.compare import compare_table
    from kinmerge.report.html import write_report
    from kinmerge.zoo import load_zoo, shipped_zoo

    t0 = time.perf_counter()
    out_dir = Path(out).resolve()
    zoo = load_zoo(zoo_root) if zoo_root else shipped_zoo()
    configs = write_configs(out_dir, settings, zoo, foundation_sets(settings, zoo, max_sets))
    for i, (config, _) in enumerate(configs, 1):
        if log:
            log(f"[{i}/{len(configs)}] kinmerge evolve {config.relative_to(out_dir)}")
        try:
            evolve(config, progress=progress)
        except SettingsChangedError as exc:
            changed = ", ".join(f"{name.rsplit('.', 1)[-1]} {old} -> {new}" for name, (old, new) in exc.changes.items())
            raise ConfigError(f"{out_dir} holds a demo with other settings ({changed}); rerun with its settings "
                              "(a larger --generations continues it) or give another --out") from None
    run_dirs = list(dict.fromkeys(run_dir for _, run_dir in configs))
    compare = compare_table(run_dirs)
    report_path = write_report(run_dirs, out_dir / "report") if report else None
    return DemoResult(out_dir, run_dirs, [c for c, _ in configs], report_path, compare, across_sets(compare),
                      time.perf_counter() - t0)


def summary_lines(result: DemoResult) -> Sequence[str]:
    """Plain-text closing lines (paths), printed after the tables."""
    lines = [f"runs: {', '.join(str(p.relative_to(result.out)) for p in result.run_dirs)} (under {result.out})",
             f"configs: {result.out / 'configs'}"]
    if result.report:
        lines.append(f"report: {result.report}")
    lines.append(f"took {result.seconds:.0f} s")
    return lines
