"""The random control: greedy plus one extra merge with a *random* partner (is it kinship, or just
one extra merge per generation?)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from kinmerge.errors import ConfigError
from kinmerge.evolve.strategies.greedy import GreedyStrategy, _is_int
from kinmerge.pool import Plan, PlannedMerge, PoolState

__all__ = ["RandomStrategy"]


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
