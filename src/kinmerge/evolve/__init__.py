"""Evolution: the top-k greedy loop of the paper (§3) and its kinship-guided variant (§4).

``strategies`` is pure (pool state -> the next generation's merges); the runner does the I/O.
Everything a caller needs is importable from here, e.g.::

    from kinmerge.evolve import get_strategy, PoolModel, PoolState
"""

from __future__ import annotations

from kinmerge.evolve.strategies import (
    STOP_BUDGET,
    STOP_KINSHIP,
    STOP_NO_PAIRS,
    STOP_REASONS,
    STOP_TOPK_UNCHANGED,
    STRATEGIES,
    GreedyStrategy,
    KinshipStrategy,
    Plan,
    PlannedMerge,
    PoolModel,
    PoolState,
    RandomStrategy,
    Strategy,
    get_strategy,
    kinship_is_high,
    least_related,
    mean_pairwise_kinship,
    merge_gain,
    missing_kinship,
    pair,
    ranked,
    topk,
)

__all__ = [
    "STOP_BUDGET",
    "STOP_KINSHIP",
    "STOP_NO_PAIRS",
    "STOP_REASONS",
    "STOP_TOPK_UNCHANGED",
    "STRATEGIES",
    "GreedyStrategy",
    "KinshipStrategy",
    "Plan",
    "PlannedMerge",
    "PoolModel",
    "PoolState",
    "RandomStrategy",
    "Strategy",
    "get_strategy",
    "kinship_is_high",
    "least_related",
    "mean_pairwise_kinship",
    "merge_gain",
    "missing_kinship",
    "pair",
    "ranked",
    "topk",
]
