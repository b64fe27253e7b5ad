"""Top-k greedy merging *with model kinship* (paper §4): exploration and early stopping."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from kinmerge.errors import ConfigError
from kinmerge.evolve.strategies.greedy import GreedyStrategy
from kinmerge.kinship import check_metric
from kinmerge.pool import (
    CANDIDATE_SETS,
    DEFAULT_THRESHOLDS,
    STOP_KINSHIP,
    STOP_NO_PAIRS,
    Candidates,
    Metric,
    Plan,
    PlannedMerge,
    PoolState,
    mean_pairwise_kinship,
    missing_kinship,
    pair,
    topk,
)

__all__ = ["KinshipStrategy", "kinship_is_high", "least_related"]


def kinship_is_high(value: float, metric: str, threshold: float) -> bool:
    """Whether a kinship value counts as "high" (close relatives) for early stopping.

    PCC and CS are similarities: high means ``value > threshold``. ED is a distance: high
    kinship means a *small* distance, ``value < threshold``.
    """
    check_metric(metric)
    return value < threshold if metric == "ed" else value > threshold


def least_related(
    model: str, candidates: Iterable[str], kinship: Mapping[frozenset[str], float], metric: str
) -> str | None:
    """The candidate of *lowest* kinship to ``model`` (paper §4's exploration partner).

    Lowest kinship is the smallest PCC/CS value, or the *largest* ED distance. Ties are broken by
    id. Returns ``None`` when there are no candidates.

    Raises:
        ValueError: a candidate's kinship to ``model`` is missing.
    """
    check_metric(metric)
    pool = sorted(set(candidates) - {model})
    if not pool:
        return None
    missing = missing_kinship((pair(model, c) for c in pool), kinship)
    if missing:
        raise ValueError(f"kinship missing for pairs {list(missing)}")
    sign = -1.0 if metric == "ed" else 1.0
    return min(pool, key=lambda c: (sign * kinship[pair(model, c)], c))


@dataclass(frozen=True)
class KinshipStrategy(GreedyStrategy):
    """Top-k greedy merging *with model kinship*, paper §4 (arXiv 2410.12613).

    Greedy (§3) plus two uses of kinship, from generation 2 on:

    - **Exploration**: also merge the current best model with the candidate of *lowest* kinship to
      it (:func:`least_related`; smallest PCC/CS, largest ED), skipping pairs already merged or
      planned. ``exploration_candidates`` picks the candidate set: ``"pool"`` (default: the whole
      pool, what the paper's runs did), ``"previous"`` (the last generation's children, what its
      text says) or ``"top_k"`` (the current top-k; note that greedy already merges every pair in
      the top-k, so this set only yields a merge when a greedy pair was skipped).
    - **Early stopping**: stop ("kinship early stop") when the mean pairwise kinship of the top-k
      is high: above ``threshold`` for PCC/CS, below it for ED (a distance). Checked after the
      greedy stops ("top-k unchanged", budget), so no kinship is computed for a generation that
      would not run anyway.

    Kinship values the decision needs but ``state.kinship`` lacks come back as
    ``Plan.kinship_requests`` (all at once), never guessed.

    Settings (besides ``k`` and ``max_generations``):
        metric: ``"pcc"`` (paper's main metric), ``"cs"`` or ``"ed"``.
        threshold: early-stop threshold; default 0.9 for PCC/CS, required for ED.
        early_stop: turn early stopping on/off.
        exploration: turn exploration on/off.
        exploration_candidates: ``"pool"``, ``"previous"`` or ``"top_k"``.
    """

    name: ClassVar[str] = "kinship"

    metric: Metric = "pcc"
    threshold: float | None = None
    early_stop: bool = True
    exploration: bool = True
    exploration_candidates: Candidates = "pool"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_metric(self.metric)
        if self.exploration_candidates not in CANDIDATE_SETS:
            raise ConfigError(
                f"{self.name}: exploration_candidates must be one of {', '.join(CANDIDATE_SETS)}, "
                f"got {self.exploration_candidates!r}"
            )
        if self.threshold is None:
            if self.early_stop and self.metric not in DEFAULT_THRESHOLDS:
                raise ConfigError(
                    f"{self.name}: metric {self.metric!r} is a distance with no default early-stop "
                    "threshold; set threshold (stop when the top-k's mean distance falls below it) "
                    "or early_stop=False"
                )
            object.__setattr__(self, "threshold", DEFAULT_THRESHOLDS.get(self.metric))
        elif isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ConfigError(f"{self.name}: threshold must be a number, got {self.threshold!r}")
        elif not math.isfinite(self.threshold):
            raise ConfigError(f"{self.name}: threshold must be a finite number, got {self.threshold!r}")
        elif self.metric in ("pcc", "cs") and not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(f"{self.name}: a {self.metric} threshold lies in [-1, 1] (kinship never exceeds 1, so "
                              f"{self.threshold!r} would never stop the run); the paper uses 0.9")
        elif self.metric == "ed" and self.threshold <= 0:
            raise ConfigError(f"{self.name}: an ed threshold is a distance > 0, got {self.threshold!r}")

    def deciding_sets(self, state: PoolState, plan: Plan
                      ) -> tuple[tuple[str, ...] | None, tuple[str, tuple[str, ...]] | None]:
        """What ``plan`` (this strategy's plan for ``state``) compared kinship over, for a caller
        that checks how sure those comparisons were (estimates from sketches carry a bound).

        Returns:
            ``(top_k, exploration)``: the top-k whose mean kinship met the early-stop threshold
            (``None`` when the check was not reached), and ``(best, candidates)`` the
            exploration partner was chosen from (``None`` when no choice was made).
        """
        if state.generation == 0 or plan.kinship_requests or plan.stop not in (None, STOP_KINSHIP, STOP_NO_PAIRS):
            return None, None  # generation 1, a request, or a cheap greedy stop: no kinship decided
        top = topk(state, self.k) if self.early_stop else None
        if plan.stop == STOP_KINSHIP or not self.exploration:
            return top, None
        greedy = tuple(m for m in plan.merges if m.reason == self.merge_reason)
        best, candidates = self._extra_candidates(state, self.exploration_candidates, greedy)
        return top, ((best, tuple(candidates)) if candidates else None)

    def _check_state(self, state: PoolState) -> None:
        if state.kinship_metric is not None and state.kinship_metric != self.metric:
            raise ValueError(
                f"pool state holds {state.kinship_metric!r} kinship but the strategy uses "
                f"{self.metric!r}"
            )

    def _extra_merges(
        self, state: PoolState, nxt: int, greedy: tuple[PlannedMerge, ...]
    ) -> tuple[PlannedMerge, ...] | Plan:
        """The exploration merge, after the early-stop check (asking for missing kinship first)."""
        s = topk(state, self.k)
        best, candidates = (
            self._extra_candidates(state, self.exploration_candidates, greedy)
            if self.exploration
            else (s[0], [])
        )
        needed: list[frozenset[str]] = []
        if self.early_stop:
            needed += [frozenset(p) for p in itertools.combinations(s, 2)]
        needed += [pair(best, c) for c in candidates]
        requests = missing_kinship(needed, state.kinship)
        if requests:
            return Plan(nxt, kinship_requests=requests)

        assert self.threshold is not None or not self.early_stop
        if self.early_stop and kinship_is_high(
            mean_pairwise_kinship(s, state.kinship), self.metric, float(self.threshold)  # type: ignore[arg-type]
        ):
            return Plan(nxt, stop=STOP_KINSHIP)

        partner = least_related(best, candidates, state.kinship, self.metric)
        return (PlannedMerge((best, partner), "exploration"),) if partner else ()
