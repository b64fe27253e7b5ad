"""Evolution strategies: the pool after generation ``g`` -> the merges of generation ``g + 1``.

Pure functions on plain data: no I/O, no SQLite, no mergekit, no torch. The paper's loops
(Hu et al., "Exploring Model Kinship for Merging LLMs", arXiv 2410.12613, §3-§4) become testable on
made-up scores in milliseconds, and a new strategy is one small class in ``STRATEGIES``.

One module per strategy: :mod:`~.greedy` (the paper's §3 loop, with the hooks the others use),
:mod:`~.kinship` (§4: exploration and early stopping), :mod:`~.control` (the random control),
:mod:`~.diverse` (``S`` chosen under a kinship cap) and :mod:`~.predicted` (pairs ranked by a
gain predicted from scores and kinship, fitted on the run's own merges). The data they plan from
and return is :mod:`kinmerge.pool`.

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

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from kinmerge.errors import ConfigError
from kinmerge.evolve.strategies.control import RandomStrategy
from kinmerge.evolve.strategies.diverse import DiverseStrategy, diverse_topk
from kinmerge.evolve.strategies.greedy import GreedyStrategy
from kinmerge.evolve.strategies.kinship import KinshipStrategy, kinship_is_high, least_related
from kinmerge.evolve.strategies.predicted import GainModel, PredictedGainStrategy, fit_gain
from kinmerge.pool import Plan, PoolState

__all__ = ["STRATEGIES", "DiverseStrategy", "GainModel", "GreedyStrategy", "KinshipStrategy",
           "PredictedGainStrategy", "RandomStrategy", "Strategy", "diverse_topk", "fit_gain", "get_strategy",
           "kinship_is_high", "least_related"]


class Strategy(Protocol):
    """What the runner needs from a strategy: a name, its settings and ``plan``."""

    name: ClassVar[str]

    def plan(self, state: PoolState) -> Plan: ...

    def settings(self) -> dict[str, Any]: ...


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    GreedyStrategy.name: GreedyStrategy,
    KinshipStrategy.name: KinshipStrategy,
    RandomStrategy.name: RandomStrategy,
    DiverseStrategy.name: DiverseStrategy,
    PredictedGainStrategy.name: PredictedGainStrategy,
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
