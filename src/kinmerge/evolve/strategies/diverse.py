"""Diverse top-k: the greedy loop, but the set it merges from never collapses into one family.

The paper's saturation stage is inbreeding: the top-k become descendants of each other (mean
pairwise PCC 0.93-0.99) and merging them gives nothing new. Greedy's exploration merge tries to
escape it with one extra child; this strategy changes *which* models form ``S`` instead: walking
the ranking best-first, a model joins ``S`` only if its kinship to every member already chosen is
at most ``cap`` (for ED: at least ``cap`` apart). If fewer than k models qualify among the best
``window * k`` of the pool, ``S`` is filled up with the best remaining ones, so it always has k
members and the loop's stop rule ("S unchanged") keeps its meaning.

Example:
    >>> from kinmerge.pool import PoolModel, PoolState, pair
    >>> ms = tuple(PoolModel(i, 0, score=s) for i, s in (("a", .9), ("b", .8), ("c", .7), ("d", .6)))
    >>> kin = {pair("a", "b"): .95, pair("a", "c"): .2, pair("b", "c"): .3, pair("a", "d"): .1,
    ...        pair("b", "d"): .1, pair("c", "d"): .1}
    >>> diverse_topk(["a", "b", "c", "d"], kin, k=3, cap=0.9)
    ('a', 'c', 'd')
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from kinmerge.errors import ConfigError
from kinmerge.evolve.strategies.greedy import GreedyStrategy, _is_int
from kinmerge.kinship import check_metric
from kinmerge.pool import Metric, PoolState, Reason, pair, ranked

__all__ = ["DiverseStrategy", "diverse_topk"]


def diverse_topk(ranking: Sequence[str], kinship: Mapping[frozenset[str], float], *, k: int, cap: float,
                 metric: str = "pcc") -> tuple[str, ...]:
    """The first ``k`` of ``ranking`` (best first) whose pairwise kinship stays within ``cap``,
    filled up with the best of the rest when too few qualify.

    Raises:
        KeyError: a pair's kinship is missing (request all pairs of ``ranking`` first).
    """
    def close(a: str, b: str) -> bool:
        value = kinship[pair(a, b)]
        return value < cap if metric == "ed" else value > cap

    chosen: list[str] = []
    for model in ranking:
        if len(chosen) == k:
            break
        if all(not close(model, c) for c in chosen):
            chosen.append(model)
    for model in ranking:  # too few qualified: fill with the best of the rest, in rank order
        if len(chosen) == k:
            break
        if model not in chosen:
            chosen.append(model)
    rank = {m: i for i, m in enumerate(ranking)}
    return tuple(sorted(chosen, key=rank.__getitem__))


@dataclass(frozen=True)
class DiverseStrategy(GreedyStrategy):
    """Top-k greedy merging where ``S`` is chosen under a kinship cap (see the module docstring):
    the paper's saturation stage (arXiv 2410.12613, §2) kept out of the set the loop merges from.

    Settings (besides ``k`` and ``max_generations``):
        metric: the kinship metric of the cap (``pcc`` default, ``cs``, ``ed``).
        cap: the highest kinship two members of ``S`` may have (PCC/CS; for ED the smallest
            distance). Default 0.9, the paper's "near-identical" line.
        window: ``S`` is chosen among the best ``window * k`` models (their kinship is computed
            in one scan per generation).
    """

    name: ClassVar[str] = "diverse"
    merge_reason: ClassVar[Reason] = "diverse"

    metric: Metric = "pcc"
    cap: float = 0.9
    window: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        check_metric(self.metric)
        if isinstance(self.cap, bool) or not isinstance(self.cap, (int, float)):
            raise ConfigError(f"{self.name}: cap must be a number, got {self.cap!r}")
        if self.metric != "ed" and not -1.0 <= self.cap <= 1.0:
            raise ConfigError(f"{self.name}: a {self.metric} cap lies in [-1, 1], got {self.cap!r}")
        if not _is_int(self.window) or self.window < 1:
            raise ConfigError(f"{self.name}: window must be an integer >= 1, got {self.window!r}")

    def _check_state(self, state: PoolState) -> None:
        if state.kinship_metric is not None and state.kinship_metric != self.metric:
            raise ValueError(f"pool state holds {state.kinship_metric!r} kinship but the strategy uses "
                             f"{self.metric!r}")

    def _window(self, state: PoolState, generation: int | None) -> tuple[str, ...]:
        return ranked(state, generation=generation)[: self.window * self.k]

    def _needed_kinship(self, state: PoolState) -> list[frozenset[str]]:
        """Every pair among the best ``window * k``, now and as the pool stood a generation ago
        (the stop rule compares the two selections)."""
        out: set[frozenset[str]] = set()
        for generation in (None, state.generation - 1):
            out |= {pair(a, b) for a, b in itertools.combinations(self._window(state, generation), 2)}
        return sorted(out, key=sorted)

    def _select(self, state: PoolState, generation: int | None = None) -> tuple[str, ...]:
        return diverse_topk(self._window(state, generation), state.kinship, k=self.k, cap=self.cap,
                            metric=self.metric)
