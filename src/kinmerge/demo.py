"""The demo: greedy vs kinship-guided vs a random control (and the best new strategy), compared.

The paper (§5) compares top-k greedy merging with and without kinship on one set of three
foundation models, one run each, at unequal budgets. A single run says little, so the demo runs
every *variant* (a strategy with its settings) on several *testbeds* (a foundation set scored on
a task set) with the same generation budget, then compares them at equal budgets, paired testbed
by testbed, with intervals (``kinmerge.report.budget``), and replays the kinship early stop.

By default it runs on the shipped **headroom** zoo, where greedy merging still improves after
generation 1 (docs/zoo.md): four foundation sets of four specialists, scored on all six tasks.
``--zoo tiny`` runs the paper-sized triples of the tiny zoo, where every strategy gets its whole
gain in generation 1.

greedy, kinship and the new strategies are deterministic given a testbed, so they run once per
testbed; the random control draws its extra partner from its seed, so it runs once per seed. Runs
on one testbed share a run directory and therefore their merges and evaluations. The study behind
docs/results.md (``benchmarks/study.py``) uses the same machinery with more testbeds: held-out
samples (``sample_seed``) as seeds, racing variants in their own directories.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kinmerge._io import atomic_write, claim_folder

#: The tiny zoo's paper-sized foundation sets (triples, scored on their own tasks).
FOUNDATION_SETS: tuple[tuple[str, ...], ...] = (
    ("add", "reverse", "sort"),
    ("caesar", "count", "double"),
    ("add", "caesar", "double"),
    ("reverse", "sort", "count"),
)
DEMO_SETS = 4


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison: a run id and what makes the run (strategy, its settings, racing).

    ``seed`` is the run's seed (the random control's draws); ``racing`` turns racing evaluation on
    (``evolve.racing``); such runs get a run directory of their own, so that their example counts
    are their own (runs sharing a directory share evaluations).
    """

    run_id: str
    strategy: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    racing: Mapping[str, Any] | None = None


#: greedy, the paper's kinship-guided loop, and the random-partner control with two seeds.
PAPER_VARIANTS: tuple[Variant, ...] = (
    Variant("greedy", "greedy"),
    Variant("kinship", "kinship", {"threshold": 0.9}),
    Variant("random-s0", "random", seed=0),
    Variant("random-s1", "random", seed=1),
)
#: What the demo runs: the paper's three and the best new strategy of the study (docs/results.md:
#: predicted gain, the highest final gain at 18 merges on both zoos, though within noise of greedy).
DEMO_VARIANTS: tuple[Variant, ...] = (*PAPER_VARIANTS, Variant("predicted", "predicted"))


@dataclass(frozen=True)
class Testbed:
    """Foundation specialists (by name) scored on ``tasks`` (None: their own tasks), on the held-out
    sample ``sample_seed`` draws (None: the first ``limit`` examples of each task)."""

    foundation: tuple[str, ...]
    tasks: tuple[str, ...] | None = None
    sample_seed: int | None = None

    @property
    def name(self) -> str:
        stem = "-".join(self.foundation)
        return stem if self.sample_seed is None else f"{stem}-s{self.sample_seed}"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the defaults fit in a few minutes on 2 CPU cores."""

    testbeds: tuple[Testbed, ...] | None = None  # None: the zoo's own (see demo_testbeds)
    variants: tuple[Variant, ...] = DEMO_VARIANTS
    k: int = 3
    generations: int = 6
    limit: int = 100  # examples per task the loop selects on
    evaluator: Mapping[str, Any] = field(default_factory=dict)  # more builtin settings (threads, batch_size)


@dataclass
class DemoResult:
    out: Path
    run_dirs: list[Path]
    configs: list[Path]
    report: Path | None
    compare: dict[str, Any]
    across_sets: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def demo_testbeds(settings: DemoSettings, zoo: Any, max_sets: int | None = None) -> tuple[Testbed, ...]:
    """The testbeds: the settings', else the zoo's recorded headroom sets (scored as recorded),
    else the paper-sized triples of the tiny zoo, else the zoo's first triples (own tasks)."""
    if settings.testbeds is not None:
        beds = settings.testbeds
    elif zoo.manifest.get("headroom"):
        recorded = zoo.manifest["headroom"]
        tasks = tuple(zoo.manifest["tasks"]) if recorded.get("tasks", "all") == "all" else tuple(recorded["tasks"])
        beds = tuple(Testbed(tuple(s), tasks) for s in recorded["sets"][:DEMO_SETS])
    elif all(t in zoo.specialists for fs in FOUNDATION_SETS for t in fs):
        beds = tuple(Testbed(fs) for fs in FOUNDATION_SETS)
    else:  # another zoo (e.g. the micro one): its own triples
        beds = tuple(Testbed(fs) for fs in itertools.combinations(sorted(zoo.specialists), 3))[:DEMO_SETS]
    return beds[:max_sets] if max_sets else beds


def write_configs(out: Path, settings: DemoSettings, zoo: Any,
                  testbeds: Sequence[Testbed]) -> list[tuple[Path, Path]]:
    """Write one run config per (testbed, variant); return (config, run dir) pairs, testbed by testbed."""
    missing = {t for tb in testbeds for t in tb.foundation} - set(zoo.specialists)
    if missing:
        from kinmerge.errors import ConfigError

        raise ConfigError(f"the zoo at {zoo.root} has no specialist for: {', '.join(sorted(missing))}")
    configs: list[tuple[Path, Path]] = []
    for tb in testbeds:
        tasks = list(tb.tasks) if tb.tasks else list(dict.fromkeys(zoo.task_of(s) for s in tb.foundation))
        evaluator: dict[str, Any] = {"name": "builtin", "tasks_dir": str(zoo.tasks_dir), "tasks": tasks,
                                     "limit": settings.limit, **settings.evaluator}
        if tb.sample_seed is not None:
            evaluator["sample_seed"] = tb.sample_seed
        for v in settings.variants:
            run_dir = out / "runs" / (f"{tb.name}--{v.run_id}" if v.racing else tb.name)
            config: dict[str, Any] = {
                "foundation": [str(zoo.specialists[t]) for t in tb.foundation],
                "base": str(zoo.base),
                "strategy": {"name": v.strategy, "k": settings.k, "max_generations": settings.generations,
                             **v.settings},
                "merge": {"method": "slerp"},
                "evaluator": evaluator,
                "kinship_metric": "pcc",
                "seed": v.seed,
                "run_id": v.run_id,
                "out": {"run_dir": str(run_dir)},
            }
            if v.racing is not None:
                config["racing"] = dict(v.racing)
            path = out / "configs" / f"{tb.name}--{v.run_id}.yaml"
            atomic_write(path, f"# written by kinmerge; rerun one with: kinmerge evolve {path.name}\n"
                         + yaml.safe_dump(config, sort_keys=False))
            configs.append((path, run_dir))
    return configs


def run_configs(configs: Sequence[tuple[Path, Path]], *, workers: int = 1, progress: bool = False,
                log: Callable[[str], None] | None = None) -> None:
    """Run (or resume) every config. Configs sharing a run directory run in order in one process
    (they share a store); with ``workers > 1`` different directories run in parallel processes."""
    groups: dict[Path, list[Path]] = {}
    for config, run_dir in configs:
        groups.setdefault(run_dir, []).append(config)
    if workers <= 1 or len(groups) == 1:
        for paths in groups.values():
            for path in paths:
                line = _evolve_one(path, progress)
                if log:
                    log(line)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(_evolve_group, groups.values(), itertools.repeat(log is not None)):
            pass


def _evolve_group(paths: list[Path], say: bool) -> None:
    """One run directory's configs in order, in a worker process; a line on stderr after each run
    (lines are written whole, so the workers' lines do not mix)."""
    for path in paths:
        line = _evolve_one(path, False)
        if say:
            print(line, file=sys.stderr, flush=True)


def _evolve_one(path: Path, progress: bool) -> str:
    """Run (or resume) one config; the line that says how it ended."""
    from kinmerge.errors import ConfigError, SettingsChangedError
    from kinmerge.evolve import evolve

    try:
        s = evolve(path, progress=progress)
    except SettingsChangedError as exc:
        changed = ", ".join(f"{name.rsplit('.', 1)[-1]} {old} -> {new}" for name, (old, new) in exc.changes.items())
        raise ConfigError(f"{path.parent.parent} holds a demo with other settings ({changed}); rerun with its "
                          "settings (a larger --generations continues it) or give another --out") from None
    best = s.best
    return (f"{path.stem}: {s.status} after generation {s.generation}"
            f"{f' ({s.stop})' if s.stop else ''}, {s.merges} merges, best "
            f"{'-' if best is None or best.score is None else f'{best.score:.4f}'}")


def across_sets(compare: dict[str, Any]) -> list[dict[str, Any]]:
    """Per strategy, over all its runs: gain of the final best over the best foundation model, on
    the selection part and (runs that split) on the held-out part."""
    rows: list[dict[str, Any]] = []
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for run in compare["runs"]:
        by_strategy.setdefault(run["strategy"], []).append(run)
    for strategy, runs in by_strategy.items():
        gains = [r["final_best"] - r["best_per_generation"][0] for r in runs
                 if r["final_best"] is not None and r["best_per_generation"]
                 and r["best_per_generation"][0] is not None]
        # Held out: the final best model's score on examples no choice saw, over the held-out
        # score of the best foundation (the model a user would have had without merging).
        held = [r["final_best_heldout"] - r["best_heldout_per_generation"][0] for r in runs
                if r.get("final_best_heldout") is not None and r.get("best_heldout_per_generation")
                and r["best_heldout_per_generation"][0] is not None]
        merges = [r["merges_used"] for r in runs]
        rows.append({
            "strategy": strategy,
            "runs": len(runs),
            "gain_mean": statistics.fmean(gains) if gains else None,
            "gain_std": statistics.stdev(gains) if len(gains) > 1 else None,
            "heldout_gain_mean": statistics.fmean(held) if held else None,
            "heldout_gain_std": statistics.stdev(held) if len(held) > 1 else None,
            "gain_min": min(gains) if gains else None,
            "gain_max": max(gains) if gains else None,
            "merges_mean": statistics.fmean(merges) if merges else None,
            "early_stops": sum(1 for r in runs if r["early_stop_generation"] is not None),
        })
    return rows


def resolve_zoo(zoo: str | os.PathLike[str] | None) -> Any:
    """A zoo by shipped name (``headroom``, ``tiny``), by the preset of a zoo built into the cache
    (``smol``), or by folder; None: the headroom zoo."""
    from kinmerge.zoo import PRESETS, SHIPPED, built_zoo_dir, load_zoo, shipped_zoo

    if zoo is None or str(zoo) in SHIPPED:
        return shipped_zoo(str(zoo) if zoo is not None else "headroom")
    if str(zoo) in PRESETS and not Path(zoo).exists():  # built into the cache: `kinmerge zoo build --preset smol`
        return load_zoo(built_zoo_dir(str(zoo)))
    return load_zoo(zoo)


def _demo_before_markers(folder: Path) -> bool:
    """A demo folder from before folders carried kinmerge's marker: only what the demo writes."""
    names = {p.name for p in folder.iterdir()}
    return bool(names) and names <= {"configs", "runs", "report"}


def run_demo(
    out: str | os.PathLike[str],
    settings: DemoSettings = DemoSettings(),
    *,
    zoo: str | os.PathLike[str] | None = None,
    max_sets: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    report: bool = True,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run every variant on every testbed, then compare and write the report.

    Args:
        zoo: a shipped zoo's name (``headroom``, the default; ``tiny``) or a zoo folder.
        workers: testbeds run in parallel processes (default: up to 2, the CPUs there are).

    Rerunning with the same ``out`` resumes: finished runs are not redone (the store is keyed by
    content), so an interrupted demo picks up where it stopped.

    Example:
        >>> # not run here: minutes of merging (tests/test_demo.py runs the demo)
        >>> result = run_demo("demo-out")                 # doctest: +SKIP
        >>> result.report                                 # doctest: +SKIP
        PosixPath('demo-out/report/index.html')
    """
    from kinmerge.report.compare import compare_table
    from kinmerge.report.html import write_report

    t0 = time.perf_counter()
    chosen = resolve_zoo(zoo)
    # The demo writes configs/, runs/ and report/ into ``out`` and resumes there: a folder of the
    # user's is refused, before any work, rather than mixed with (or overwritten by) ours.
    out_dir = claim_folder(out, legacy=_demo_before_markers).resolve()
    configs = write_configs(out_dir, settings, chosen, demo_testbeds(settings, chosen, max_sets))
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    run_configs(configs, workers=workers, progress=progress and workers <= 1, log=log)
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
    testbeds = len(result.run_dirs)
    if testbeds < 10:  # a demonstration, not a verdict: a few testbeds move with one or two examples
        lines.append(f"{testbeds} testbed(s) show how the comparison works, not which strategy wins: the study "
                     "behind docs/results.md (30 testbeds per zoo) finds no strategy better than greedy or the "
                     "random control beyond noise")
    return lines
