"""Evolution strategies: the pool after generation ``g`` -> the merges of generation ``g + 1``.

Pure functions on plain data: no I/O, no SQLite, no mergekit, no torch. The paper's loops
(Hu et al., "Exploring Model Kinship for Merging LLMs", arXiv 2410.12613, §3-§4) become testable on
made-up scores in milliseconds, and a new strategy is one small class in ``STRATEGIES``.

Contract with the runner (the only caller that does I/O)
--------------------------------------------------------
1. Build the :class:`PoolState` of the pool after the last *completed* generation ``g``: every
   model with its score (mean task score, ``P̄``), the kinship values known so far (one metric:
   the strategy's ``metric``), and every pair already merged or planned.
2. ``plan = strategy.plan(state)``. Exactly one of three things comes back:

   - ``plan.kinship_requests`` is non-empty: the strategy needs these kinship values before it can
     decide. Compute *all* of them (they are requested together so one scan suffices), add them
     to ``state.kinship`` and call ``plan`` again. Given the values, the next call never asks
     again; ``merges`` is empty and ``stop`` is ``None`` on a request.
   - ``plan.stop`` is set: evolution ends; the string says why (one of ``STOP_REASONS``).
   - otherwise ``plan.merges`` holds the merges of generation ``plan.generation``: save the plan,
     make them, evaluate the children, then mark the generation done.

Definitions used throughout
---------------------------
- Ranking: by score, highest first; ties broken by model id (ascending), so plans never depend on
  dict or input order.
- ``S_g`` (:func:`topk` with ``generation=g``): the top-k of every model from generations ``<= g``,
  i.e. of the whole pool *as it stood after generation g*.
- "``S`` no longer changes" (§3, step 4): ``set(S_g) == set(S_{g-1})`` where ``g`` is the last
  completed generation. Compared as sets: a reshuffle inside the top-k is not a change, because it
  adds no new pair to merge.
- The parents of a planned merge are ordered better-ranked first; a SLERP recipe can use
  ``parents[0]`` as its ``base_model``.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol

from kinmerge.errors import ConfigError
from kinmerge.kinship import check_metric
from kinmerge.pool import (
    CANDIDATE_SETS,
    DEFAULT_THRESHOLDS,
    STOP_BUDGET,
    STOP_KINSHIP,
    STOP_NO_PAIRS,
    STOP_TOPK_UNCHANGED,
    Candidates,
    Metric,
    Plan,
    PlannedMerge,
    PoolModel,
    PoolState,
    mean_pairwise_kinship,
    missing_kinship,
    pair,
    topk,
)

__all__ = ["STRATEGIES", "GreedyStrategy", "KinshipStrategy", "RandomStrategy", "Strategy", "get_strategy",
           "kinship_is_high", "least_related"]


# --------------------------------------------------------------------------------------------
# Pure helpers for kinship-aware strategies (paper §4)
# --------------------------------------------------------------------------------------------


def _rank_key(m: PoolModel) -> tuple[float, str]:
    assert m.score is not None
    return (-m.score, m.id)


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


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


class Strategy(Protocol):
    """What the runner needs from a strategy: a name, its settings and ``plan``."""

    name: ClassVar[str]

    def plan(self, state: PoolState) -> Plan: ...

    def settings(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class GreedyStrategy:
    """Top-k greedy merging, paper §3 (Hu et al., arXiv 2410.12613, "top-k greedy merging").

    - Generation 1: merge every pair of the foundation models.
    - Generation ``g+1`` (``g >= 1``): ``S = topk(pool, k)``; merge every pair in ``S`` not merged
      before.
    - Stop (checked in this order): ``S`` did not change over the last completed generation
      (``set(S_g) == set(S_{g-1})``, "top-k unchanged"); generation ``g+1`` would exceed
      ``max_generations`` ("generation budget"); no unmerged pair is left ("no new pairs").

    Settings:
        k: size of ``S`` (paper: 3).
        max_generations: the generation budget; ``None`` for none (the loop still ends: ``S``
            settles or pairs run out, but that may take long).
    """

    name: ClassVar[str] = "greedy"

    k: int = 3
    max_generations: int | None = 10

    def __post_init__(self) -> None:
        if not _is_int(self.k) or self.k < 2:
            raise ConfigError(f"{self.name}: k must be an integer >= 2 (a pair), got {self.k!r}")
        if self.max_generations is not None and (
            not _is_int(self.max_generations) or self.max_generations < 1
        ):
            raise ConfigError(
                f"{self.name}: max_generations must be an integer >= 1 or None, "
                f"got {self.max_generations!r}"
            )

    def settings(self) -> dict[str, Any]:
        """The strategy's settings as plain data (recorded in the run's config)."""
        return asdict(self)

    def plan(self, state: PoolState) -> Plan:
        """The plan for generation ``state.generation + 1`` (see the class docstring)."""
        nxt = state.generation + 1
        if state.generation == 0:
            return self._first_generation(state)
        self._check_state(state)
        stop = self._stop_before_planning(state)
        if stop:
            return Plan(nxt, stop=stop)
        greedy = self._greedy_merges(state)
        extra = self._extra_merges(state, nxt, greedy)
        if isinstance(extra, Plan):
            return extra
        merges = greedy + extra
        return Plan(nxt, merges=merges) if merges else Plan(nxt, stop=STOP_NO_PAIRS)

    # -- the pieces subclasses reuse ------------------------------------------------------------

    def _check_state(self, state: PoolState) -> None:
        """Refuse a pool state this strategy cannot plan from (none for plain greedy)."""

    def _extra_merges(
        self, state: PoolState, nxt: int, greedy: tuple[PlannedMerge, ...]
    ) -> tuple[PlannedMerge, ...] | Plan:
        """Merges beyond the greedy ones (none for plain greedy), or a Plan that settles the
        generation instead (a stop, or kinship the runner must compute first)."""
        return ()

    def _over_budget(self, generation: int) -> bool:
        return self.max_generations is not None and generation > self.max_generations

    def _first_generation(self, state: PoolState) -> Plan:
        """Generation 1: every pair of foundation models, no scores needed."""
        if self._over_budget(1):
            return Plan(1, stop=STOP_BUDGET)
        done = state.all_merged_pairs()
        foundations = [m for m in state.models if m.generation == 0]
        # Better-ranked parent first when scores exist (as in later generations); else by id.
        if all(m.score is not None for m in foundations):
            order = [m.id for m in sorted(foundations, key=_rank_key)]
        else:
            order = sorted(m.id for m in foundations)
        merges = tuple(
            PlannedMerge((a, b), "greedy")
            for a, b in itertools.combinations(order, 2)
            if frozenset((a, b)) not in done
        )
        return Plan(1, merges=merges) if merges else Plan(1, stop=STOP_NO_PAIRS)

    def _stop_before_planning(self, state: PoolState) -> str | None:
        """The cheap stop checks (no kinship needed), for generation ``state.generation + 1``."""
        s_now = topk(state, self.k, generation=state.generation)
        s_before = topk(state, self.k, generation=state.generation - 1)
        if set(s_now) == set(s_before):
            return STOP_TOPK_UNCHANGED
        if self._over_budget(state.generation + 1):
            return STOP_BUDGET
        return None

    def _greedy_merges(self, state: PoolState) -> tuple[PlannedMerge, ...]:
        """Every pair of the current top-k not merged before, in rank order."""
        done = state.all_merged_pairs()
        s = topk(state, self.k)
        return tuple(
            PlannedMerge((a, b), "greedy")
            for a, b in itertools.combinations(s, 2)  # s is best-first, so a outranks b
            if frozenset((a, b)) not in done
        )

    def _extra_candidates(
        self, state: PoolState, candidate_set: str, greedy: tuple[PlannedMerge, ...]
    ) -> tuple[str, list[str]]:
        """The best model and the partners an extra merge may use with it.

        Partners already merged with the best model, or paired with it by this plan's greedy
        merges, are left out: an extra merge must add a *new* child.
        """
        s = topk(state, self.k)
        best = s[0]
        if candidate_set == "pool":
            pool = [m.id for m in state.models]
        elif candidate_set == "previous":
            pool = [m.id for m in state.models if m.generation == state.generation]
        else:  # "top_k"
            pool = list(s)
        taken = state.all_merged_pairs() | {m.pair for m in greedy}
        return best, sorted(c for c in pool if c != best and frozenset((best, c)) not in taken)


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


@dataclass(frozen=True)
class RandomStrategy(GreedyStrategy):
    """Greedy plus one *random* extra merge: the control for kinship-guided exploration.

    From generation 2 on, besides the greedy pairs, merge the current best model with a partner
    drawn uniformly from the whole pool (pairs already merged or planned left out). It answers
    "is it kinship, or just one extra merge per generation?" (paper §4-§5 compare against greedy
    and random iterative merging). The draw is seeded by ``(seed, generation)``, so a run is
    reproducible and resuming it redraws the same partner.

    Settings (besides ``k`` and ``max_generations``):
        seed: the run's seed.
    """

    name: ClassVar[str] = "random"

    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _is_int(self.seed):
            raise ConfigError(f"{self.name}: seed must be an integer, got {self.seed!r}")

    def _extra_merges(
        self, state: PoolState, nxt: int, greedy: tuple[PlannedMerge, ...]
    ) -> tuple[PlannedMerge, ...] | Plan:
        """The best model with a uniformly random partner (the control for exploration)."""
        best, candidates = self._extra_candidates(state, "pool", greedy)
        if not candidates:
            return ()
        # A string seed is hashed with SHA-512 by ``random``: stable across processes and
        # Python versions, unlike hash() of a tuple.
        rng = random.Random(f"kinmerge-random:{self.seed}:{nxt}")
        return (PlannedMerge((best, rng.choice(candidates)), "random"),)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

STRATEGIES: dict[str, Callable[..., Strategy]] = {
    GreedyStrategy.name: GreedyStrategy,
    KinshipStrategy.name: KinshipStrategy,
    RandomStrategy.name: RandomStrategy,
}


def get_strategy(name: str, **settings: Any) -> Strategy:
    """A strategy by registry name, with its settings validated.

    Example:
        >>> get_strategy("kinship", k=3, metric="pcc").threshold
        0.9

    Raises:
        ConfigError: unknown name, unknown setting, or an invalid value.
    """
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; choose one of {', '.join(sorted(STRATEGIES))}"
        ) from None
    try:
        return cls(**settings)
    except TypeError as exc:  # an unknown keyword
        allowed = sorted(cls().settings())
        unknown = sorted(set(settings) - set(allowed))
        raise ConfigError(
            f"strategy {name!r}: unknown setting(s) {unknown}; allowed: {', '.join(allowed)}"
        ) from exc
