"""The pool: plain data every layer above the kinship math shares, and pure helpers over it.

A *pool* is the set of models an evolution run merges from (paper §3): the foundation models
(generation 0) and every child merged so far. The store records it, strategies plan from it,
summaries and reports show it; they all speak in the types defined here and none of them
imports another for its vocabulary:

- :class:`ModelRecord`: one model as stored (content id, folder, origin, recipe, parents);
- :class:`PoolModel`: one model *in a run's pool*, as scored: the generation it joined, its
  average score and, when known, the facts a table shows (path, task scores, why it was merged,
  merge gain, its parents' kinship);
- :class:`PoolState`: the pool after a completed generation, what a strategy plans from;
- :class:`Plan` / :class:`PlannedMerge`: a strategy's decision for the next generation;
- :class:`RunFingerprint` (defined in :mod:`kinmerge.fingerprint`, re-exported here): the
  settings that make a run *that* run (the store keeps it; resume, ``status``, ``compare`` and
  reports read it back typed).

Ranking is by score, highest first, ties broken by model id, so nothing depends on dict order.

Example:
    >>> s = PoolState((PoolModel("a", 0, score=0.5), PoolModel("b", 0, score=0.7)))
    >>> topk(s, 1), known_mean_kinship(["a", "b"], {pair("a", "b"): 0.25})
    (('b',), 0.25)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, get_args

from kinmerge.fingerprint import RunFingerprint
from kinmerge.kinship import DEFAULT_THRESHOLDS, METRICS

__all__ = [
    "CANDIDATE_SETS", "DEFAULT_THRESHOLDS", "METRICS", "REASONS", "SHORT_ID", "STOP_BUDGET", "STOP_KINSHIP",
    "STOP_NO_GAIN", "STOP_NO_PAIRS", "STOP_REASONS", "STOP_TOPK_UNCHANGED", "ModelRecord", "Plan", "PlannedMerge",
    "PoolModel", "PoolState", "RunFingerprint", "best_by_generation", "known_mean_kinship", "mean_kinship_bound",
    "mean_pairwise_kinship",
    "merge_gain", "missing_kinship", "pair", "parents_mean", "ranked", "short_id", "topk", "topk_by_generation",
    "with_merge_facts",
]

Reason = Literal["greedy", "exploration", "random", "diverse", "predicted"]
Metric = Literal["pcc", "cs", "ed"]
Candidates = Literal["pool", "previous", "top_k"]
Origin = Literal["foundation", "merge"]

REASONS: tuple[str, ...] = get_args(Reason)
CANDIDATE_SETS: tuple[str, ...] = get_args(Candidates)

STOP_TOPK_UNCHANGED = "top-k unchanged"
STOP_KINSHIP = "kinship early stop"
STOP_BUDGET = "generation budget"
STOP_NO_PAIRS = "no new pairs"
STOP_NO_GAIN = "no predicted gain"
STOP_REASONS: tuple[str, ...] = (STOP_TOPK_UNCHANGED, STOP_KINSHIP, STOP_BUDGET, STOP_NO_PAIRS, STOP_NO_GAIN)

#: Characters of a model id shown to people (tables, trees, progress lines); ``--json`` has the whole
#: id, and every command that takes an id takes this prefix. 8 hex digits: a collision among the
#: ~100 models of a run has probability ~1e-6, and then the prefix lookup says so.
SHORT_ID = 8


def _json_bound(bound: float | None) -> float | None:
    """A bound as JSON has it: an unknown (infinite) bound is ``null``, like no bound, and
    ``kinship_estimate`` tells the two apart."""
    return bound if bound is None or math.isfinite(bound) else None


def short_id(model_id: str) -> str:
    """The short form of a model id: its first :data:`SHORT_ID` characters (``afea62a8``)."""
    return model_id[:SHORT_ID]


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


# --------------------------------------------------------------------------------------------
# Models: one stored record, one scored view
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRecord:
    """One model as the store keeps it, whatever run it belongs to.

    Attributes:
        id: content id (foundations) or merge id (merges): the primary key.
        path: its folder (or hub id), as recorded.
        origin: ``"foundation"`` or ``"merge"``.
        generation: the generation it was first made in (0 for a foundation model).
        recipe: the merge recipe's parameters (merges only).
        created: when it was recorded (ISO 8601, UTC).
        parents: its parents in merge order (``parents[0]`` = SLERP base).
    """

    id: str
    path: str | None
    origin: Origin
    generation: int
    recipe: dict[str, Any] | None
    created: str
    parents: tuple[str, ...] = ()


@dataclass(frozen=True)
class PoolModel:
    """One model of a run's pool, as scored: what strategies rank and tables show.

    Attributes:
        id: content id (the store's primary key).
        generation: 0 for a foundation model, ``g`` for a child that joined in generation ``g``.
        parents: ids of the models it was merged from (empty for a foundation model).
        score: average task score ``P̄``; ``None`` while not evaluated (strategies refuse to rank
            an unscored model rather than guess).
        path: its folder (or hub id), when known.
        task_scores: ``{task: score}`` behind ``score``, when known.
        reason: why the strategy merged it (greedy / exploration / random), when known.
        merge_gain: ``score`` minus the mean of its parents' scores (paper §2), when known.
        kinship: its parents' kinship in the run's metric, when known.
        kinship_bound: the 99% bound of ``kinship`` when it is an estimate from sketches
            (``math.inf``: an estimate whose bound was not recorded); ``None`` when exact.
        heldout_score: ``P̄`` on the held-out part of the tasks (``kinmerge.evolve.heldout``),
            for models that entered the top-k of a run that splits; nothing ranks by it.
    """

    id: str
    generation: int
    parents: tuple[str, ...] = ()
    score: float | None = None
    path: str | None = None
    task_scores: Mapping[str, float] = field(default_factory=dict, compare=False)
    reason: str | None = None
    merge_gain: float | None = None
    kinship: float | None = None
    heldout_score: float | None = None
    kinship_bound: float | None = None

    def __post_init__(self) -> None:
        if self.generation < 0:
            raise ValueError(f"model {self.id!r}: generation must be >= 0, got {self.generation}")
        if self.id in self.parents:
            raise ValueError(f"model {self.id!r} lists itself as a parent")
        if self.score is not None and not math.isfinite(self.score):
            raise ValueError(f"model {self.id!r}: score must be finite, got {self.score}")

    @property
    def origin(self) -> Origin:
        """``"merge"`` for a child, ``"foundation"`` otherwise."""
        return "merge" if self.parents else "foundation"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``--json`` outputs)."""
        return {"id": self.id, "generation": self.generation, "origin": self.origin, "parents": list(self.parents),
                "score": self.score, "heldout_score": self.heldout_score, "path": self.path, "reason": self.reason,
                "merge_gain": self.merge_gain, "kinship": self.kinship,
                "kinship_estimate": self.kinship_bound is not None, "kinship_bound": _json_bound(self.kinship_bound)}


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
        kinship_bounds: the 99% bound of each ``kinship`` value that is an estimate from sketches
            (``kinship_source: sketch``); an exact value has none. Strategies plan from the
            values alone; the runner reads the bounds to re-check a decision they could flip.
    """

    models: tuple[PoolModel, ...]
    kinship: Mapping[frozenset[str], float] = field(default_factory=dict)
    merged_pairs: frozenset[frozenset[str]] = frozenset()
    generation: int = 0
    kinship_metric: str | None = None
    kinship_bounds: Mapping[frozenset[str], float] = field(default_factory=dict)

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


# --------------------------------------------------------------------------------------------
# Plans: a strategy's decision
# --------------------------------------------------------------------------------------------


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

    Exactly one of ``merges``, ``stop`` and ``kinship_requests`` is non-empty (the caller's
    contract is in ``kinmerge.evolve.strategies``).
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
        return {"generation": self.generation,
                "merges": [{"parents": list(m.parents), "reason": m.reason} for m in self.merges],
                "stop": self.stop, "kinship_requests": [list(p) for p in self.kinship_requests]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`."""
        return cls(generation=int(data["generation"]),
                   merges=tuple(PlannedMerge(parents=(m["parents"][0], m["parents"][1]), reason=m["reason"])
                                for m in data.get("merges", ())),
                   stop=data.get("stop"),
                   kinship_requests=tuple((a, b) for a, b in data.get("kinship_requests", ())))

    def describe(self) -> str:
        """One line: ``"3 merges (2 greedy, 1 exploration)"`` or ``"stop (top-k unchanged)"``."""
        if self.stop is not None:
            return f"stop ({self.stop})"
        if self.kinship_requests:
            return f"kinship of {len(self.kinship_requests)} pair(s) requested"
        counts: dict[str, int] = {}
        for m in self.merges:
            counts[m.reason] = counts.get(m.reason, 0) + 1
        detail = ", ".join(f"{n} {r}" for r, n in counts.items())
        return f"{len(self.merges)} merge{'s' if len(self.merges) != 1 else ''} ({detail})"


# --------------------------------------------------------------------------------------------
# Pure helpers (paper §1-§4)
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


def known_mean_kinship(ids: Iterable[str], kinship: Mapping[frozenset[str], float]) -> float | None:
    """:func:`mean_pairwise_kinship` when it is defined (two or more models, every pair known),
    else ``None``: what tables and progress lines show, where "not computed" is an answer.

    Example:
        >>> known_mean_kinship(["a", "b", "c"], {pair("a", "b"): 0.8}) is None
        True
    """
    unique = sorted(set(ids))
    pairs = [frozenset(p) for p in itertools.combinations(unique, 2)]
    if not pairs or missing_kinship(pairs, kinship):
        return None
    return mean_pairwise_kinship(unique, kinship)


def mean_kinship_bound(ids: Iterable[str], bounds: Mapping[frozenset[str], float]) -> float | None:
    """The bound of the mean pairwise kinship of ``ids`` when some of its values are estimates:
    the mean of their bounds (an exact value counts 0), else ``None`` (every value is exact).

    Why the mean: if every estimate is within its bound, the mean of the errors is within the
    mean of the bounds, whatever their signs; no independence is assumed.

    Example:
        >>> mean_kinship_bound(["a", "b", "c"], {pair("a", "b"): 0.03, pair("a", "c"): 0.06})
        0.03
    """
    unique = sorted(set(ids))
    pairs = [frozenset(p) for p in itertools.combinations(unique, 2)]
    if not pairs or not any(p in bounds for p in pairs):
        return None
    return math.fsum(bounds.get(p, 0.0) for p in pairs) / len(pairs)


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


def parents_mean(model: PoolModel, scores: Mapping[str, float | None]) -> float | None:
    """Mean score of a model's parents, ``None`` unless every parent is scored."""
    known = [scores.get(p) for p in model.parents]
    if not known or any(s is None for s in known):
        return None
    return math.fsum(s for s in known if s is not None) / len(known)


def with_merge_facts(
    models: Sequence[PoolModel],
    *,
    scores: Mapping[str, float | None],
    kinship: Mapping[frozenset[str], float],
    reasons: Mapping[frozenset[str], str],
    bounds: Mapping[frozenset[str], float] | None = None,
) -> tuple[PoolModel, ...]:
    """The models with ``merge_gain``, ``kinship`` (of their parents) and ``reason`` filled in.

    Args:
        scores: average scores of the models *and their parents* (a parent may be outside the
            pool slice given).
        kinship: pairwise kinship of one metric.
        reasons: why each parent pair was planned (from the run's saved plans).
        bounds: the bound of each kinship value that is an estimate (``kinship_bound``).
    """
    out = []
    for m in models:
        if not m.parents:
            out.append(m)
            continue
        mean = parents_mean(m, scores)
        gain = merge_gain(m.score, [mean]) if m.score is not None and mean is not None else None
        kin = known_mean_kinship(m.parents, kinship)
        out.append(PoolModel(
            id=m.id, generation=m.generation, parents=m.parents, score=m.score, path=m.path,
            task_scores=m.task_scores, reason=reasons.get(frozenset(m.parents), m.reason), merge_gain=gain,
            kinship=kin, kinship_bound=None if kin is None else mean_kinship_bound(m.parents, bounds or {}),
        ))
    return tuple(out)


def best_by_generation(models: Sequence[PoolModel]) -> dict[int, float | None]:
    """The best score of the whole pool after each generation (the paper's §5 table row).

    Example:
        >>> best_by_generation([PoolModel("a", 0, score=0.4), PoolModel("c", 1, ("a", "b"), 0.5)])
        {0: 0.4, 1: 0.5}
    """
    out: dict[int, float | None] = {}
    for g in sorted({m.generation for m in models}):
        so_far = [m.score for m in models if m.generation <= g and m.score is not None]
        out[g] = max(so_far) if so_far else None
    return out


def topk_by_generation(
    models: Sequence[PoolModel], k: int, kinship: Mapping[frozenset[str], float]
) -> list[tuple[int, tuple[str, ...], float | None]]:
    """Per generation ``g``: (g, the top-k of the pool after g, their mean pairwise kinship).

    The kinship is ``None`` where a pair was never computed; unscored models are left out of
    the ranking. This is the quantity kinship early stopping watches (paper §4).
    """
    scored = tuple(m for m in models if m.score is not None)
    if not scored:
        return []
    state = PoolState(scored, generation=max(m.generation for m in scored))
    out = []
    for g in sorted({m.generation for m in scored}):
        top = topk(state, k, generation=g)
        out.append((g, top, known_mean_kinship(top, kinship)))
    return out
