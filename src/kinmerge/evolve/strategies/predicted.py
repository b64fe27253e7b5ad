"""Predicted gain: merge the pairs whose child is predicted to score best, from scores and kinship.

The paper's §2 finding is that the gain of a merge (child score minus the mean of its parents')
shrinks as the parents' kinship grows: close relatives have little to teach each other. Greedy
ignores it (it merges every pair of the top-k, relatives or not); the paper's exploration uses
kinship alone (the least related partner, however weak). This strategy uses both, and learns how
much kinship matters *on this run*:

1. After each generation, fit ``gain ~ a + b * kinship`` by least squares on the run's own
   merges (every child with scored parents and known parents' kinship). With fewer than three
   merges, or kinship values that do not vary, ``b`` is 0 and ``a`` the mean gain seen so far.
2. Every unmerged pair among the best ``window * k`` models gets a predicted child score:
   the parents' mean score + ``a + b * kinship`` + ``optimism`` residual standard deviations (an
   upper confidence bound: an uncertain pair gets the benefit of the doubt).
3. Merge the ``merges`` pairs predicted best (default: as many as greedy makes, k(k-1)/2, so the
   two spend budgets alike); stop when no pair is predicted to beat the best model
   ("no predicted gain").

Example:
    >>> m = fit_gain([(0.1, 0.04), (0.5, 0.02), (0.9, 0.0)])
    >>> round(m.a, 3), round(m.b, 3), round(m.predict(0.3), 3)
    (0.045, -0.05, 0.03)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from kinmerge.errors import ConfigError
from kinmerge.evolve.strategies.greedy import GreedyStrategy, _is_int
from kinmerge.kinship import check_metric
from kinmerge.pool import (
    STOP_BUDGET,
    STOP_NO_GAIN,
    STOP_NO_PAIRS,
    Metric,
    Plan,
    PlannedMerge,
    PoolState,
    Reason,
    missing_kinship,
    pair,
    parents_mean,
    ranked,
)

__all__ = ["GainModel", "PredictedGainStrategy", "fit_gain"]


@dataclass(frozen=True)
class GainModel:
    """``gain = a + b * kinship``, with the residual standard deviation and the observations used."""

    a: float
    b: float
    sd: float
    n: int

    def predict(self, kinship: float) -> float:
        return self.a + self.b * kinship


def fit_gain(observations: Sequence[tuple[float, float]]) -> GainModel:
    """Least squares of gain on kinship over ``(kinship, gain)`` observations (see the module)."""
    n = len(observations)
    if n == 0:
        return GainModel(0.0, 0.0, 0.0, 0)
    xs = [x for x, _ in observations]
    ys = [y for _, y in observations]
    mean_x, mean_y = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - mean_x) ** 2 for x in xs)
    b = math.fsum((x - mean_x) * (y - mean_y) for x, y in observations) / sxx if n >= 3 and sxx > 1e-12 else 0.0
    a = mean_y - b * mean_x
    dof = n - (2 if b else 1)
    sd = math.sqrt(math.fsum((y - a - b * x) ** 2 for x, y in observations) / dof) if dof > 0 else 0.0
    return GainModel(a, b, sd, n)


@dataclass(frozen=True)
class PredictedGainStrategy(GreedyStrategy):
    """Merge the pairs predicted to give the best children (see the module docstring), from the
    paper's §2 finding that kinship bounds the gain (Hu et al., arXiv 2410.12613).

    Settings (besides ``k`` and ``max_generations``):
        metric: the kinship metric the prediction uses (``pcc`` default).
        window: candidates are the best ``window * k`` models of the pool.
        merges: merges per generation; default k(k-1)/2 (what greedy makes from its top-k).
        optimism: residual standard deviations added to each prediction (0: plain prediction).
    """

    name: ClassVar[str] = "predicted"
    merge_reason: ClassVar[Reason] = "predicted"

    metric: Metric = "pcc"
    window: int = 2
    merges: int | None = None
    optimism: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_metric(self.metric)
        if not _is_int(self.window) or self.window < 1:
            raise ConfigError(f"{self.name}: window must be an integer >= 1, got {self.window!r}")
        if self.merges is not None and (not _is_int(self.merges) or self.merges < 1):
            raise ConfigError(f"{self.name}: merges must be an integer >= 1, got {self.merges!r}")
        if isinstance(self.optimism, bool) or not isinstance(self.optimism, (int, float)) or self.optimism < 0:
            raise ConfigError(f"{self.name}: optimism must be a number >= 0, got {self.optimism!r}")

    def plan(self, state: PoolState) -> Plan:
        nxt = state.generation + 1
        if state.generation == 0:
            return self._first_generation(state)
        if state.kinship_metric is not None and state.kinship_metric != self.metric:
            raise ValueError(f"pool state holds {state.kinship_metric!r} kinship but the strategy uses "
                             f"{self.metric!r}")
        if self._over_budget(nxt):
            return Plan(nxt, stop=STOP_BUDGET)
        done = state.all_merged_pairs()
        order = ranked(state)
        candidates = [(a, b) for a, b in itertools.combinations(order[: self.window * self.k], 2)
                      if pair(a, b) not in done]
        if not candidates:
            return Plan(nxt, stop=STOP_NO_PAIRS)
        children = [m for m in state.models if len(set(m.parents)) == 2]
        needed = [pair(a, b) for a, b in candidates] + [pair(*m.parents) for m in children]
        requests = missing_kinship(needed, state.kinship)
        if requests:
            return Plan(nxt, kinship_requests=requests)
        model = self.gain_model(state)
        scores = {m.id: m.score for m in state.models}
        best = max(s for s in scores.values() if s is not None)
        bonus = self.optimism * model.sd
        predicted = {(a, b): (scores[a] + scores[b]) / 2 + model.predict(state.kinship[pair(a, b)]) + bonus  # type: ignore[operator]
                     for a, b in candidates}
        promising = sorted((p for p in candidates if predicted[p] > best), key=lambda p: (-predicted[p], p))
        if not promising:
            return Plan(nxt, stop=STOP_NO_GAIN)
        count = self.merges or self.k * (self.k - 1) // 2
        return Plan(nxt, merges=tuple(PlannedMerge(p, self.merge_reason) for p in promising[:count]))

    def gain_model(self, state: PoolState) -> GainModel:
        """The gain-vs-kinship fit on the run's own merges (children with scored parents)."""
        scores = {m.id: m.score for m in state.models}
        observations = []
        for m in state.models:
            if len(set(m.parents)) != 2 or m.score is None or pair(*m.parents) not in state.kinship:
                continue
            mean = parents_mean(m, scores)
            if mean is not None:
                observations.append((state.kinship[pair(*m.parents)], m.score - mean))
        return fit_gain(observations)
