"""Evolution: the top-k greedy loop of the paper (§3) and its kinship-guided variant (§4).

- :func:`evolve` runs (or resumes) a run from a config; :func:`load_config` reads one;
  :func:`read_summary` says where a run stands (safe while it runs).
- :mod:`~kinmerge.evolve.strategies` is pure (pool state -> the next generation's plan);
  :mod:`~kinmerge.evolve.steps` are the expensive steps, run by an executor
  (:mod:`~kinmerge.evolve.executors`); :mod:`~kinmerge.evolve.runner` is the loop between them.

Example::

    from kinmerge.evolve import evolve, read_summary
    evolve("examples/evolve.yaml")
    print(read_summary("runs/evolve-kinship").best)

The strategy API (``get_strategy``, ``PoolModel``, ``PoolState``, ...) is importable from here
too; the runner, its config (pydantic) and the store load only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kinmerge.evolve.strategies import (
    STRATEGIES,
    GreedyStrategy,
    KinshipStrategy,
    RandomStrategy,
    Strategy,
    get_strategy,
    kinship_is_high,
    least_related,
)
from kinmerge.pool import (
    STOP_BUDGET,
    STOP_KINSHIP,
    STOP_NO_PAIRS,
    STOP_REASONS,
    STOP_TOPK_UNCHANGED,
    Plan,
    PlannedMerge,
    PoolModel,
    PoolState,
    mean_pairwise_kinship,
    merge_gain,
    missing_kinship,
    pair,
    ranked,
    topk,
)

if TYPE_CHECKING:
    from kinmerge.evolve.config import RunConfig, load_config
    from kinmerge.evolve.runner import evolve
    from kinmerge.evolve.summary import RunSummary, read_summary

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
    "RunConfig",
    "RunSummary",
    "Strategy",
    "evolve",
    "get_strategy",
    "kinship_is_high",
    "least_related",
    "load_config",
    "mean_pairwise_kinship",
    "merge_gain",
    "missing_kinship",
    "pair",
    "ranked",
    "read_summary",
    "topk",
]

_LAZY = {
    "evolve": "kinmerge.evolve.runner",
    "load_config": "kinmerge.evolve.config",
    "RunConfig": "kinmerge.evolve.config",
    "read_summary": "kinmerge.evolve.summary",
    "RunSummary": "kinmerge.evolve.summary",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kinmerge.evolve' has no attribute {name!r}")
