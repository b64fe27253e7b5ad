"""Top-k greedy merging (paper §3): the loop every other strategy extends through small hooks."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from kinmerge.errors import ConfigError
from kinmerge.pool import (
    STOP_BUDGET,
    STOP_NO_PAIRS,
    STOP_TOPK_UNCHANGED,
    Plan,
    PlannedMerge,
    PoolModel,
    PoolState,
    Reason,
    missing_kinship,
    topk,
)

__all__ = ["GreedyStrategy"]


def _rank_key(m: PoolModel) -> tuple[float, str]:
    assert m.score is not None
    return (-m.score, m.id)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


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
    #: the reason recorded for the merges of ``S`` (reports colour merges by it)
    merge_reason: ClassVar[Reason] = "greedy"

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
        requests = missing_kinship(self._needed_kinship(state), state.kinship)
        if requests:
            return Plan(nxt, kinship_requests=requests)
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

    def _needed_kinship(self, state: PoolState) -> list[frozenset[str]]:
        """Pairs whose kinship the selection needs before anything else (none for greedy)."""
        return []

    def _select(self, state: PoolState, generation: int | None = None) -> tuple[str, ...]:
        """The set ``S`` the generation merges from, best first: the top-k of the pool (after
        ``generation``, or now). A variant may choose ``S`` otherwise (e.g. under a kinship cap)."""
        return topk(state, self.k, generation=generation)

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
        s_now = self._select(state, generation=state.generation)
        s_before = self._select(state, generation=state.generation - 1)
        if set(s_now) == set(s_before):
            return STOP_TOPK_UNCHANGED
        if self._over_budget(state.generation + 1):
            return STOP_BUDGET
        return None

    def _greedy_merges(self, state: PoolState) -> tuple[PlannedMerge, ...]:
        """Every pair of the current top-k not merged before, in rank order."""
        done = state.all_merged_pairs()
        s = self._select(state)
        return tuple(
            PlannedMerge((a, b), self.merge_reason)
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
