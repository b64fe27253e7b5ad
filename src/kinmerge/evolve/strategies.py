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
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal, Protocol, get_args

from kinmerge.errors import ConfigError

Reason = Literal["greedy", "exploration", "random"]
Metric = Literal["pcc", "cs", "ed"]
Candidates = Literal["pool", "previous", "top_k"]

REASONS: tuple[str, ...] = get_args(Reason)
METRICS: tuple[str, ...] = get_args(Metric)
CANDIDATE_SETS: tuple[str, ...] = get_args(Candidates)

STOP_TOPK_UNCHANGED = "top-k unchanged"
STOP_KINSHIP = "kinship early stop"
STOP_BUDGET = "generation budget"
STOP_NO_PAIRS = "no new pairs"
STOP_REASONS: tuple[str, ...] = (STOP_TOPK_UNCHANGED, STOP_KINSHIP, STOP_BUDGET, STOP_NO_PAIRS)

#: Early-stop thresholds when none is given. The paper's 0.9 is for PCC; signed cosine is close to
#: PCC on (nearly mean-zero) weight deltas. ED has no default: a distance depends on model size
#: (the paper's path fell from 20.4 to 1.6 on a 7B model), so the user must choose one.
DEFAULT_THRESHOLDS: dict[str, float] = {"pcc": 0.9, "cs": 0.9}


# --------------------------------------------------------------------------------------------
# Pool state and plans: plain frozen data
# --------------------------------------------------------------------------------------------


def pair(a: str, b: str) -> frozenset[str]:
    """The unordered key of a pair of models, as used in ``kinship`` and ``merged_pairs``.

    Example: ``pair("m1", "m2") == pair("m2", "m1")``.
    """
    if a == b:
        raise ValueError(f"a model cannot be paired with itself: {a!r}")
    return frozenset((a, b))


def _sorted_pair(p: frozenset[str]) -> tuple[str, str]:
    a, b = sorted(p)
    return (a, b)


@dataclass(frozen=True)
class PoolModel:
    """One model of the pool.

    Attributes:
        id: content id (the store's primary key).
        generation: 0 for a foundation model, ``g`` for a child made in generation ``g``.
        parents: ids of the models it was merged from (empty for a foundation model).
        score: average task score ``P̄``; ``None`` while not evaluated (strategies refuse to rank
            an unscored model rather than guess).
    """

    id: str
    generation: int
    parents: tuple[str, ...] = ()
    score: float | None = None

    def __post_init__(self) -> None:
        if self.generation < 0:
            raise ValueError(f"model {self.id!r}: generation must be >= 0, got {self.generation}")
        if self.id in self.parents:
            raise ValueError(f"model {self.id!r} lists itself as a parent")
        if self.score is not None and not math.isfinite(self.score):
            raise ValueError(f"model {self.id!r}: score must be finite, got {self.score}")


@dataclass(frozen=True)
class PoolState:
    """The pool after generation ``generation``: what a strategy needs to plan the next one.

    Attributes:
        models: every model in the pool (foundations and children), any order.
        kinship: pairwise kinship of one metric (the strategy's ``metric``), keyed by
            ``pair(a, b)``. Missing pairs are fine: a strategy requests what it needs.
        merged_pairs: pairs already merged *or planned*; never merged again. Pairs of models'
            ``parents`` are added automatically (see :meth:`all_merged_pairs`).
        generation: the last completed generation (0 = only foundation models).
        kinship_metric: which metric ``kinship`` holds, if known; a strategy with a different
            ``metric`` refuses it instead of reading distances as similarities.
    """

    models: tuple[PoolModel, ...]
    kinship: Mapping[frozenset[str], float] = field(default_factory=dict)
    merged_pairs: frozenset[frozenset[str]] = frozenset()
    generation: int = 0
    kinship_metric: str | None = None

    def __post_init__(self) -> None:
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"duplicate model ids in the pool: {dupes}")
        if self.generation < 0:
            raise ValueError(f"generation must be >= 0, got {self.generation}")
        late = sorted(m.id for m in self.models if m.generation > self.generation)
        if late:
            raise ValueError(
                f"models {late} are newer than the pool state's generation {self.generation}; "
                "a pool state holds only completed generations"
            )
        for key in itertools.chain(self.kinship, self.merged_pairs):
            if not isinstance(key, frozenset) or len(key) != 2:
                raise ValueError(f"pair keys must be frozensets of two ids, got {key!r}")

    @cached_property
    def by_id(self) -> dict[str, PoolModel]:
        """The models keyed by id."""
        return {m.id: m for m in self.models}

    def all_merged_pairs(self) -> frozenset[frozenset[str]]:
        """``merged_pairs`` plus the parent pair of every two-parent child in the pool.

        Why both: a child in the pool proves its parents were merged even if the caller forgot
        to list the pair, and re-merging it would only rebuild the same content-addressed model.
        """
        from_parents = {frozenset(m.parents) for m in self.models if len(set(m.parents)) == 2}
        return frozenset(self.merged_pairs) | frozenset(from_parents)


@dataclass(frozen=True)
class PlannedMerge:
    """One merge of the next generation: two parents (better-ranked first) and why."""

    parents: tuple[str, str]
    reason: Reason = "greedy"

    def __post_init__(self) -> None:
        if len(self.parents) != 2 or self.parents[0] == self.parents[1]:
            raise ValueError(f"a merge needs two distinct parents, got {self.parents!r}")
        if self.reason not in REASONS:
            raise ValueError(f"unknown merge reason {self.reason!r}; expected one of {REASONS}")

    @property
    def pair(self) -> frozenset[str]:
        """The unordered parent pair."""
        return frozenset(self.parents)


@dataclass(frozen=True)
class Plan:
    """What to do for generation ``generation``: merges, a stop, or a request for kinship.

    Exactly one of ``merges``, ``stop`` and ``kinship_requests`` is non-empty (see the module
    docstring for how the runner reacts to each).
    """

    generation: int
    merges: tuple[PlannedMerge, ...] = ()
    stop: str | None = None
    kinship_requests: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        filled = [bool(self.merges), self.stop is not None, bool(self.kinship_requests)]
        if sum(filled) != 1:
            raise ValueError(
                "a plan holds exactly one of merges, stop or kinship_requests; got "
                f"merges={len(self.merges)}, stop={self.stop!r}, "
                f"kinship_requests={len(self.kinship_requests)}"
            )
        if self.stop is not None and self.stop not in STOP_REASONS:
            raise ValueError(f"unknown stop reason {self.stop!r}; expected one of {STOP_REASONS}")
        pairs = [m.pair for m in self.merges]
        if len(set(pairs)) != len(pairs):
            raise ValueError("a plan lists the same pair twice")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (what the store saves)."""
        return {
            "generation": self.generation,
            "merges": [{"parents": list(m.parents), "reason": m.reason} for m in self.merges],
            "stop": self.stop,
            "kinship_requests": [list(p) for p in self.kinship_requests],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`."""
        return cls(
            generation=int(data["generation"]),
            merges=tuple(
                PlannedMerge(parents=(m["parents"][0], m["parents"][1]), reason=m["reason"])
                for m in data.get("merges", ())
            ),
            stop=data.get("stop"),
            kinship_requests=tuple((a, b) for a, b in data.get("kinship_requests", ())),
        )


# --------------------------------------------------------------------------------------------
# Pure helpers (paper §2-§4)
# --------------------------------------------------------------------------------------------


def _rank_key(m: PoolModel) -> tuple[float, str]:
    assert m.score is not None
    return (-m.score, m.id)


def ranked(state: PoolState, *, generation: int | None = None) -> tuple[str, ...]:
    """Ids of the pool (models from generations ``<= generation``; all if ``None``), best first.

    Raises:
        ValueError: a model in range has no score (evaluate every model before planning).
    """
    pool = [m for m in state.models if generation is None or m.generation <= generation]
    unscored = sorted(m.id for m in pool if m.score is None)
    if unscored:
        raise ValueError(f"models without a score cannot be ranked: {unscored}; evaluate them first")
    return tuple(m.id for m in sorted(pool, key=_rank_key))


def topk(state: PoolState, k: int, *, generation: int | None = None) -> tuple[str, ...]:
    """The top-k of the whole pool by score (ties by id), best first: the paper's set ``S``.

    With ``generation=g`` only models from generations ``<= g`` count: ``S`` as it stood after
    generation ``g``.

    Example:
        >>> s = PoolState((PoolModel("a", 0, score=1.0), PoolModel("b", 0, score=2.0)))
        >>> topk(s, 1)
        ('b',)
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return ranked(state, generation=generation)[:k]


def missing_kinship(
    pairs: Iterable[frozenset[str]], kinship: Mapping[frozenset[str], float]
) -> tuple[tuple[str, str], ...]:
    """The pairs (sorted, each as a sorted tuple) whose kinship is not in ``kinship``."""
    return tuple(sorted({_sorted_pair(p) for p in pairs if p not in kinship}))


def mean_pairwise_kinship(ids: Iterable[str], kinship: Mapping[frozenset[str], float]) -> float:
    """Mean kinship over every pair of ``ids`` (paper §1: the kinship of a group of models).

    Example:
        >>> mean_pairwise_kinship(["a", "b", "c"], {pair("a", "b"): 0.8, pair("a", "c"): 0.5,
        ...                                         pair("b", "c"): 0.2})
        0.5

    Raises:
        ValueError: fewer than two distinct ids, or a pair's kinship is missing.
    """
    unique = sorted(set(ids))
    if len(unique) < 2:
        raise ValueError(f"kinship of a group needs at least two models, got {unique}")
    pairs = [frozenset(p) for p in itertools.combinations(unique, 2)]
    missing = missing_kinship(pairs, kinship)
    if missing:
        raise ValueError(f"kinship missing for pairs {list(missing)}")
    return math.fsum(kinship[p] for p in pairs) / len(pairs)


def merge_gain(child_score: float, parent_scores: Iterable[float]) -> float:
    """Merge gain (paper §2): the child's score minus the *mean* of its parents' scores.

    Example:
        >>> merge_gain(68.45, [66.84, 62.5])
        3.78
    """
    parents = list(parent_scores)
    if not parents:
        raise ValueError("merge gain needs at least one parent score")
    return round(child_score - math.fsum(parents) / len(parents), 12)


def kinship_is_high(value: float, metric: str, threshold: float) -> bool:
    """Whether a kinship value counts as "high" (close relatives) for early stopping.

    PCC and CS are similarities: high means ``value > threshold``. ED is a distance: high
    kinship means a *small* distance, ``value < threshold``.
    """
    _check_metric(metric)
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
    _check_metric(metric)
    pool = sorted(set(candidates) - {model})
    if not pool:
        return None
    missing = missing_kinship((pair(model, c) for c in pool), kinship)
    if missing:
        raise ValueError(f"kinship missing for pairs {list(missing)}")
    sign = -1.0 if metric == "ed" else 1.0
    return min(pool, key=lambda c: (sign * kinship[pair(model, c)], c))


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(f"unknown kinship metric {metric!r}; choose one of {', '.join(METRICS)}")


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
        _check_metric(self.metric)
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
        allowed = sorted(cls().settings())  # type: ignore[call-arg]
        unknown = sorted(set(settings) - set(allowed))
        raise ConfigError(
            f"strategy {name!r}: unknown setting(s) {unknown}; allowed: {', '.join(allowed)}"
        ) from exc
