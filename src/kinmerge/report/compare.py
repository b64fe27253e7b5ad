"""Comparing runs: best score per generation, merges used, early stops, spread across seeds.

The data behind ``kinmerge compare`` and the report's comparison table. Runs group by strategy
*and* foundation set: scores of different foundation models are not comparable.

Example:
    ``compare_table(["runs/greedy-s0", "runs/greedy-s1", "runs/kinship-s0"])["strategies"]``
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

from kinmerge.report.budget import budget_table, early_stop_table
from kinmerge.report.queries import RunHistory, counted_runs, left_out_line, load_runs, unfinished

__all__ = ["compare_runs", "compare_table", "counted_runs", "left_out_line"]



# ---------------------------------------------------------------------------------------------


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
    """``{n, mean, std, min, max}`` of the known values; ``std`` is the sample std (``None`` if n < 2)."""
    known = [float(v) for v in values if v is not None]
    if not known:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(known),
        "mean": math.fsum(known) / len(known),
        "std": statistics.stdev(known) if len(known) > 1 else None,
        "min": min(known),
        "max": max(known),
    }


def _carried(best: Sequence[float | None], length: int) -> list[float | None]:
    """Best-in-pool per generation, carried forward: a finished run's pool no longer changes."""
    out: list[float | None] = []
    last: float | None = None
    for g in range(length):
        value = best[g] if g < len(best) else None
        last = value if value is not None else last
        out.append(last)
    return out


def _run_row(r: RunHistory) -> dict[str, Any]:
    per_gen = r.best_per_generation()
    last = max(per_gen, default=0)
    return {
        "run_dir": str(r.run_dir),
        "run_id": r.run.id,
        "strategy": r.run.strategy,
        "seed": r.run.seed,
        "status": r.run.status,
        "foundations": [r.label_of(m.id) for m in r.foundations],
        "testbed": r.run_dir.name,
        "variant": r.variant,
        "best_per_generation": [per_gen.get(g) for g in range(last + 1)],
        "merges_used": r.merges_used,
        "stop_reason": r.stop_reason,
        "early_stop_generation": r.early_stop_generation,
        "final_best": r.final_best,
        "best_heldout_per_generation": [r.best_heldout_per_generation().get(g) for g in range(last + 1)],
        "final_best_heldout": r.final_best_heldout,
        "kinship_source": r.kinship_source,
        "final_top_k_kinship": r.topk_kinship_at(last),
        "final_top_k_kinship_bound": _finite(r.topk_kinship_bound_at(last)),
        "final_top_k_kinship_estimate": r.topk_kinship_bound_at(last) is not None,
        "kinship_rechecks": r.kinship_rechecks,
    }


def _finite(bound: float | None) -> float | None:
    return bound if bound is None or math.isfinite(bound) else None  # JSON has no inf: an unknown bound is null


def _settings_but_seed(run: RunHistory) -> str:
    """The run's strategy settings without its seed, as a key (seeds of one variant group together)."""
    fp = run.fingerprint
    settings = {k: v for k, v in (fp.settings if fp else {}).items() if k != "seed"}
    return json.dumps(settings, sort_keys=True, default=str)


def resolution(runs: Sequence[RunHistory]) -> dict[str, Any]:
    """How finely the scores can move: one example of one task changes an average by
    ``1 / (examples x tasks)``; tables print as many decimals as that needs (at least 2)."""
    counts = [n for r in runs for n in r.examples.values() if n]
    per_model = min(counts) if counts else None
    digits = 2 if not per_model else max(2, math.ceil(math.log10(per_model) + 1e-9))
    return {"examples_per_model": per_model, "step": 1 / per_model if per_model else None, "digits": digits}


def compare_runs(runs: Sequence[RunHistory], *, budgets: Sequence[int] | None = None,
                 reference: str = "greedy") -> dict[str, Any]:
    """:func:`compare_table` of runs already loaded."""
    everyone = runs
    rows = [_run_row(r) | {"counted": r.run.status == "finished"} for r in everyone]
    runs = counted_runs(everyone)
    rows_counted = [row for row in rows if row["counted"]]
    # Runs group by strategy, its settings but the seed, *and* foundation set: scores of different
    # foundations don't average, and `kinship` with early stopping off is another variant, not a seed.
    keys = [(r.run.strategy, _settings_but_seed(r), tuple(sorted(m.id for m in r.foundations))) for r in runs]
    strategies: list[dict[str, Any]] = []
    for key in dict.fromkeys(keys):
        group = [row for row, k in zip(rows_counted, keys, strict=True) if k == key]
        variants = {row["variant"] for row in group}
        length = max(len(row["best_per_generation"]) for row in group)
        carried = [_carried(row["best_per_generation"], length) for row in group]
        strategies.append(
            {
                "strategy": key[0],
                "variant": variants.pop() if len(variants) == 1 else key[0],
                "foundations": group[0]["foundations"],
                "runs": len(group),
                "seeds": [row["seed"] for row in group],
                "best_per_generation": [_spread([c[g] for c in carried]) for g in range(length)],
                "merges_used": _spread([row["merges_used"] for row in group]),
                "final_best": _spread([row["final_best"] for row in group]),
                "final_best_heldout": _spread([row["final_best_heldout"] for row in group]),
                "early_stops": sum(1 for row in group if row["early_stop_generation"] is not None),
            }
        )
    return {"runs": rows, "strategies": strategies, "resolution": resolution(everyone),
            "budget": budget_table(runs, budgets=budgets, reference=reference) if runs else None,
            "early_stop": early_stop_table(runs) if runs else None,
            "left_out": [{"run_dir": str(r.run_dir), "run_id": r.run.id, "status": unfinished(r.run.status)}
                         for r in everyone if r.run.status != "finished"],
            "note": left_out_line(everyone)}


def compare_table(
    run_dirs: Sequence[str | os.PathLike[str]], *, evaluator: str | None = None,
    budgets: Sequence[int] | None = None, reference: str = "greedy",
) -> dict[str, Any]:
    """Compare runs (strategies, seeds): the data behind ``kinmerge compare``.

    Returns:
        ``{"runs": [...], "strategies": [...]}``. Each run row: ``run_dir``, ``run_id``,
        ``strategy``, ``seed``, ``status``, ``foundations`` (labels), ``best_per_generation``
        (best score of the pool after generation ``i`` at index ``i``; index 0 = foundations),
        ``merges_used``, ``stop_reason``, ``early_stop_generation`` (the generation kinship early
        stopping skipped, else ``None``), ``final_best``, and how its kinship was computed:
        ``kinship_source``, ``final_top_k_kinship`` (the final top-k's mean kinship in the run's
        metric) with ``final_top_k_kinship_estimate`` and its 99% ``final_top_k_kinship_bound``
        when estimated from sketches, and ``kinship_rechecks`` (decisions re-checked exactly).
        Each strategy row (runs grouped by strategy name, in order of appearance): ``runs``,
        ``seeds``, and ``{n, mean, std, min, max}`` of ``final_best``, ``merges_used`` and of
        each generation's best (a run that stopped earlier counts with its final pool best;
        ``std`` is the sample standard deviation, ``None`` for a single run), plus
        ``early_stops`` (how many runs early-stopped).
        Runs of one strategy on different foundation sets form separate groups (their scores
        are not comparable); each group lists its ``foundations``. ``budget``: every variant at
        equal budgets, paired with ``reference`` testbed by testbed (``report.budget``);
        ``early_stop``: kinship early stopping replayed on runs recorded without it;
        ``resolution``: how finely scores move (decimals worth printing). Each run counts once
        (a directory given twice is read once), and only finished runs enter ``strategies``,
        ``budget`` and ``early_stop``: every run row says ``counted``; ``left_out`` lists the
        unfinished ones and ``note`` says so in one line (``None`` when all finished).

    Raises:
        StoreError: a directory holds no store or no run, or its evaluator is ambiguous.

    Example:
        ``compare_table(["runs/greedy-s0", "runs/greedy-s1", "runs/kinship-s0"])["strategies"]``
    """
    return compare_runs(load_runs(run_dirs, evaluator=evaluator), budgets=budgets, reference=reference)
