"""Decisions an estimate could flip are re-checked exactly (``kinship_source: sketch``).

Kinship from sketches is an estimate with a 99% bound (a half-width). Two decisions of the
kinship strategy (paper §4) compare kinship values, and an estimate's bound can flip them:

- **early stop**: the top-k's mean kinship against ``threshold``. It could flip when the
  threshold lies within the mean's bound (:func:`stop_could_flip`);
- **exploration partner**: the candidate of lowest kinship to the best model. It could flip when
  another candidate's interval overlaps the chosen one's (:func:`partner_contenders`).

For such a decision the runner scans the models involved exactly (recorded with source
``exact``, which then replaces the estimates: ``RunStore.kinship_of_run``) and plans again, until
no decision rests on an estimate that could flip it. The strategies stay pure: they plan from
values, and this module only reads what they compared (``KinshipStrategy.deciding_sets``).

Example:
    >>> stop_could_flip([0.91, 0.89, 0.90], [0.02, 0.02, 0.02], "pcc", 0.905)
    True
    >>> stop_could_flip([0.91, 0.89, 0.90], [0.0, 0.0, 0.0], "pcc", 0.905)   # exact: sure
    False
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kinmerge.evolve.strategies import KinshipStrategy, Strategy
from kinmerge.kinship import METRICS, check_metric
from kinmerge.pool import Plan, PoolState, mean_kinship_bound, pair
from kinmerge.store import RunStore

__all__ = ["Recheck", "partner_contenders", "rechecks", "record_exact", "settle", "stop_could_flip"]


def stop_could_flip(values: Sequence[float], bounds: Sequence[float], metric: str, threshold: float) -> bool:
    """Whether the early-stop comparison (mean of ``values`` against ``threshold``) could go the
    other way if each value were anywhere within its bound.

    The mean's bound is the mean of the bounds (every error within its bound keeps the mean's
    error within their mean). The comparison is sure when every value is exact (bounds 0) or the
    threshold lies outside ``[mean - bound, mean + bound]``; the metric does not matter (ED is
    compared the other way round, but the interval is the same).
    """
    check_metric(metric)
    if not values or len(values) != len(bounds):
        raise ValueError(f"need one bound per value, got {len(values)} values and {len(bounds)} bounds")
    bound = math.fsum(bounds) / len(bounds)
    return bound > 0 and abs(math.fsum(values) / len(values) - threshold) <= bound


def partner_contenders(model: str, candidates: Sequence[str], kinship: Mapping[frozenset[str], float],
                       bounds: Mapping[frozenset[str], float], metric: str) -> tuple[str, ...]:
    """The candidates that could be the true least-related partner of ``model``, when that is
    not sure: the chosen one first, then every other whose interval reaches past the chosen
    one's. Empty when the choice stands whatever the estimates' errors.

    Lowest kinship is the smallest PCC/CS or the largest ED (``least_related``); a value without
    a bound is exact. Scanning the contenders exactly settles the choice: any other candidate's
    true value is beyond the chosen one's interval, so beyond the contenders' true minimum.

    Example:
        >>> kin = {pair("b", "x"): 0.10, pair("b", "y"): 0.14, pair("b", "z"): 0.50}
        >>> partner_contenders("b", ["x", "y", "z"], kin, {pair("b", "x"): 0.03, pair("b", "y"): 0.03}, "pcc")
        ('x', 'y')
    """
    check_metric(metric)
    sign = -1.0 if metric == "ed" else 1.0
    pool = sorted(set(candidates) - {model})
    if not pool:
        return ()

    def key(c: str) -> float:
        return sign * kinship[pair(model, c)]

    chosen = min(pool, key=lambda c: (key(c), c))
    reach = bounds.get(pair(model, chosen), 0.0)
    others = tuple(c for c in pool if c != chosen and reach + bounds.get(pair(model, c), 0.0) > 0
                   and key(c) - bounds.get(pair(model, c), 0.0) <= key(chosen) + reach)
    return (chosen, *others) if others else ()


@dataclass(frozen=True)
class Recheck:
    """One decision an estimate could flip: which (``"early stop"`` or ``"exploration partner"``),
    the models to scan exactly, and what the estimates said (for the run's log)."""

    decision: str
    models: tuple[str, ...]
    why: str


def rechecks(strategy: Strategy, state: PoolState, plan: Plan) -> list[Recheck]:
    """The decisions of ``plan`` that an estimate in ``state`` could flip (none for exact kinship).

    Only the kinship strategy's early stop and exploration are checked; the ``diverse`` and
    ``predicted`` strategies also read kinship, but through a cap and a fit, not a comparison
    this rule covers (docs/evolve.md says so).
    """
    bounds = state.kinship_bounds
    if not bounds or not isinstance(strategy, KinshipStrategy):
        return []
    top, exploration = strategy.deciding_sets(state, plan)
    out = []
    if top is not None and strategy.threshold is not None:
        pairs = [frozenset(p) for p in itertools.combinations(top, 2)]
        values = [state.kinship[p] for p in pairs]
        if stop_could_flip(values, [bounds.get(p, 0.0) for p in pairs], strategy.metric, strategy.threshold):
            mean = math.fsum(values) / len(values)
            out.append(Recheck("early stop", tuple(top),
                               f"top-{len(top)} mean {strategy.metric} {mean:.4f} ± "
                               f"{mean_kinship_bound(top, bounds):.4f} vs threshold {strategy.threshold:g}"))
    if exploration is not None:
        best, candidates = exploration
        contenders = partner_contenders(best, candidates, state.kinship, bounds, strategy.metric)
        if contenders:
            shown = ", ".join(f"{c[:8]} {state.kinship[pair(best, c)]:.4f} ± {bounds.get(pair(best, c), 0.0):.4f}"
                              for c in contenders)
            out.append(Recheck("exploration partner", (best, *contenders), f"partners of {best[:8]}: {shown}"))
    return out


def settle(strategy: Strategy, state: PoolState, plan: Plan, *, scan_exact: Callable[[Recheck], None],
           read_state: Callable[[], PoolState]) -> tuple[Plan, PoolState, int]:
    """Re-check exactly every decision of ``plan`` an estimate could flip, and plan again.

    ``scan_exact`` records the exact kinship of a re-check's models; ``read_state`` reads the
    pool state again (exact values now in place of those estimates). Repeats while the new plan
    rests on another decision that could flip (an exact early stop may uncover an exploration
    choice); each pair is scanned at most once, so it ends.

    Returns:
        ``(plan, state, count)``: the settled plan, the state it was made from, and how many
        decisions were re-checked.
    """
    count, scanned = 0, set[frozenset[str]]()
    while True:
        todo = [r for r in rechecks(strategy, state, plan)
                if {frozenset(p) for p in itertools.combinations(r.models, 2)} - scanned]
        if not todo:
            return plan, state, count
        for r in todo:
            scan_exact(r)
            scanned |= {frozenset(p) for p in itertools.combinations(r.models, 2)}
        count += len(todo)
        state = read_state()
        plan = strategy.plan(state)


def record_exact(store: RunStore, run_id: str, recheck: Recheck, result: Mapping[str, Any], *, base: str,
                 generation: int) -> int:
    """Record an exact scan of a re-check's models (every metric, source ``exact``) and log the
    re-check (``kinship_recheck`` events: ``kinmerge status`` counts them). Returns the pairs."""
    models = recheck.models
    count = 0
    for metric in METRICS:
        values = {(models[i], models[j]): v for i, j, v in result["values"][metric]}
        if values:
            store.record_kinships(values, metric, base=base, source="exact")
        count = max(count, len(values))
    store.log_event(run_id, "kinship_recheck", f"{recheck.decision}: {recheck.why}; scanned {len(models)} models "
                    "exactly", generation=generation, duration_s=result["seconds"],
                    payload={"decision": recheck.decision, "models": list(models), "why": recheck.why,
                             "pairs": count, "bytes_read": result["bytes_read"]})
    return count
