"""Strategies compared at equal budgets, with intervals: the tables behind ``kinmerge compare``.

Runs are grouped by *testbed* (the same foundation models scored by the same evaluator: task set,
held-out sample, settings) and by *variant* (the run id without its seed: ``random-s1`` ->
``random``). Within a testbed a variant's runs (random seeds) are averaged, then each variant is
paired with the reference (greedy) testbed by testbed. Scores are reported as the **gain over the
best foundation model** of the testbed, so testbeds with different tasks add up.

- ``budget_table``: at each budget (merges made), each variant's mean gain with its standard
  error, and its paired difference from the reference with a bootstrap 95% interval, wins / ties
  / losses and a sign test; plus the area under the anytime curve and the merges the runs used.
- ``early_stop_table``: kinship early stopping replayed on runs recorded without it: merges saved
  and final best lost at each threshold.
- ``anytime_bands``: the anytime curves behind the report's figure: per variant, the gain over
  the best foundation after each budget, averaged over seeds within a testbed, then the mean and
  the range (min–max) across testbeds.

Example:
    ``budget_table(load_runs(run_dirs), budgets=(6, 12, 18))["variants"][0]["vs_reference"]["12"]``
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from kinmerge.report.anytime import area, replay_early_stop
from kinmerge.report.queries import RunHistory
from kinmerge.report.stats import mean_or_none, paired, spread

__all__ = ["anytime_bands", "budget_table", "default_budgets", "early_stop_table"]

Testbed = tuple[tuple[str, ...], str | None]


def default_budgets(runs: Sequence[RunHistory]) -> tuple[int, ...]:
    """Three budgets spread over what the runs spent: a third, two thirds and all of the most
    merges any run made (at least 1)."""
    most = max((r.anytime.merges for r in runs), default=0)
    return tuple(sorted({max(1, round(most * f)) for f in (1 / 3, 2 / 3, 1.0)})) or (1,)


def _by_testbed(runs: Sequence[RunHistory]) -> dict[Testbed, dict[str, list[RunHistory]]]:
    out: dict[Testbed, dict[str, list[RunHistory]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        out[r.testbed][r.variant].append(r)
    return out


def budget_table(runs: Sequence[RunHistory], *, budgets: Sequence[int] | None = None,
                 reference: str = "greedy", seed: int = 0) -> dict[str, Any]:
    """Every variant at each budget (gain over the best foundation) and paired with ``reference``.

    Returns:
        ``{"budgets", "reference", "testbeds", "variants": [{"variant", "runs", "testbeds",
        "gain": {budget: spread}, "vs_reference": {budget: paired}, "auc": spread,
        "auc_vs_reference": paired, "merges_used": spread}]}`` (budgets as strings, JSON keys).
    """
    chosen = tuple(budgets) if budgets else default_budgets(runs)
    grouped = _by_testbed(runs)
    auc_budget = max(chosen)
    measures: dict[str, Callable[[RunHistory], float | None]] = {
        **{str(b): (lambda r, b=b: _gain(r, r.anytime.best_after(b))) for b in chosen},
        "auc": lambda r: _gain(r, area(r.anytime, auc_budget)),
    }
    variants = list(dict.fromkeys(r.variant for r in runs))
    rows = []
    for v in variants:
        beds = [t for t, by in grouped.items() if v in by]
        per_bed = {name: {t: mean_or_none([f(r) for r in grouped[t][v]]) for t in beds} for name, f in measures.items()}
        row: dict[str, Any] = {
            "variant": v,
            "runs": sum(len(grouped[t][v]) for t in beds),
            "testbeds": len(beds),
            "gain": {b: spread(list(per_bed[b].values())).__dict__ for b in per_bed if b != "auc"},
            "auc": spread(list(per_bed["auc"].values())).__dict__,
            "merges_used": spread([r.anytime.merges for t in beds for r in grouped[t][v]]).__dict__,
        }
        if v != reference:
            shared = [t for t in beds if reference in grouped[t]]
            ref = {name: {t: mean_or_none([f(r) for r in grouped[t][reference]]) for t in shared}
                   for name, f in measures.items()}
            compared = {}
            for name in measures:
                pairs = [(per_bed[name][t], ref[name][t]) for t in shared
                         if per_bed[name][t] is not None and ref[name][t] is not None]
                compared[name] = paired([a for a, _ in pairs], [b for _, b in pairs], seed=seed).to_dict()
            row["vs_reference"] = {b: compared[b] for b in compared if b != "auc"}
            row["auc_vs_reference"] = compared["auc"]
        rows.append(row)
    return {"budgets": [str(b) for b in chosen], "auc_budget": auc_budget, "reference": reference,
            "testbeds": len(grouped), "variants": rows}


def _gain(r: RunHistory, value: float | None) -> float | None:
    base = r.foundation_best
    return None if value is None or base is None else value - base


def early_stop_table(runs: Sequence[RunHistory], *, thresholds: Sequence[float] = (0.8, 0.85, 0.9, 0.95),
                     variant: str | None = None) -> dict[str, Any]:
    """Kinship early stopping replayed on runs recorded *without* it (every generation's top-k
    kinship is in the record, so no rerun is needed).

    Args:
        variant: which runs to replay; default: the kinship-strategy runs whose early stop was off,
            else (none recorded) the greedy runs: the paper's loop without its exploration.
    """
    chosen = [r for r in runs if (r.variant == variant if variant else
                                  r.run.strategy == "kinship" and r.fingerprint is not None
                                  and r.fingerprint.settings.get("early_stop") is False)]
    if not chosen and variant is None:
        chosen, variant = [r for r in runs if r.variant == "greedy"], "greedy"
    rows = []
    for t in thresholds:
        replays = [replay_early_stop(list(r.models.values()), {row.generation: row.kinship for row in r.topk}, t,
                                     metric=r.metric) for r in chosen]
        used = [rp.merges_used + rp.merges_saved for rp in replays]
        rows.append({
            "threshold": t,
            "runs": len(replays),
            "fired": sum(rp.merges_saved > 0 for rp in replays),
            "merges_saved": spread([rp.merges_saved for rp in replays]).__dict__,
            "share_saved": (sum(rp.merges_saved for rp in replays) / sum(used)) if sum(used) else None,
            "best_lost": spread([rp.best_lost for rp in replays]).__dict__,
            "runs_that_lost": sum((rp.best_lost or 0.0) > 1e-12 for rp in replays),
        })
    return {"variant": variant or "kinship (early stop off)", "runs": len(chosen), "rows": rows}


def anytime_bands(runs: Sequence[RunHistory], *, unit: str = "merges") -> dict[str, dict[str, Any]]:
    """Per variant: the gain over each testbed's best foundation model as a function of the budget
    spent (``unit``: ``"merges"`` made, or ``"examples"`` evaluated), as ``{"x", "mean", "low",
    "high", "testbeds", "runs"}``.

    At each budget a variant's runs on one testbed (its seeds) are averaged; ``mean`` is the mean
    over testbeds, ``low``/``high`` the smallest and largest testbed value (``None`` where a
    testbed has no value yet, e.g. fewer examples than the foundation models cost). ``x`` is every
    merge count up to the most any run made, or every example count at which some run's best
    could change. A variant without recorded example counts is left out of the examples axis.

    Example:
        ``anytime_bands(load_runs(run_dirs))["greedy"]["mean"][3]``: greedy's mean gain after 3 merges
    """
    grouped = _by_testbed(runs)
    if unit == "merges":
        xs = list(range(max((r.anytime.merges for r in runs), default=0) + 1))

        def at(r: RunHistory, x: int) -> float | None:
            return _gain(r, r.anytime.best_after(x))
    elif unit == "examples":
        xs = sorted({c for r in runs for c in r.anytime.examples if c is not None})

        def at(r: RunHistory, x: int) -> float | None:
            return _gain(r, r.anytime.best_within(x, unit="examples"))
    else:
        raise ValueError(f"unit must be 'merges' or 'examples', got {unit!r}")
    out: dict[str, dict[str, Any]] = {}
    for v in dict.fromkeys(r.variant for r in runs):
        beds = [by[v] for by in grouped.values() if v in by]
        if unit == "examples" and any(None in r.anytime.examples for group in beds for r in group):
            continue
        mean, low, high = [], [], []
        for x in xs:
            values = [mean_or_none([at(r, x) for r in group]) for group in beds]
            known = [val for val in values if val is not None]
            full = len(known) == len(values) and bool(known)
            mean.append(sum(known) / len(known) if full else None)
            low.append(min(known) if full else None)
            high.append(max(known) if full else None)
        out[v] = {"x": xs, "mean": mean, "low": low, "high": high, "testbeds": len(beds),
                  "runs": sum(len(group) for group in beds)}
    return out
