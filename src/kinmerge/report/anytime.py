"""Strategies judged at equal budgets: anytime curves, budget-matched scores, early-stop replay.

Strategies spend different budgets (the paper's kinship run made 19 merges, greedy 11), so each
is scored by what it had found *after the same number of merges* (or model evaluations, or
evaluated examples): its **anytime curve**, the best score of the pool as a step function of the
budget spent. A run that stopped before a budget keeps its final best there: stopping early is its
choice, and the budget it saved counts in its favour elsewhere (merges used, early-stop tables).

Merges are counted in the order they were made (generation by generation, in plan order);
the foundation models (generation 0) are evaluated before any merge and count as evaluations.

**Early stopping, replayed.** A kinship run with early stopping *off* records the top-k kinship
after every generation, so the stop a threshold would have made can be replayed without rerunning:
the run stops before generation g + 1 at the first g >= 1 whose top-k kinship passes the threshold.
What it saves (merges) and loses (best score) follows from the recorded pool.

Example:
    >>> from kinmerge.pool import PoolModel
    >>> pool = [PoolModel("a", 0, score=0.5), PoolModel("b", 0, score=0.4),
    ...         PoolModel("ab", 1, ("a", "b"), 0.55), PoolModel("x", 2, ("ab", "a"), 0.6)]
    >>> c = curve(pool, merge_order=["ab", "x"])
    >>> c.best_after(0), c.best_after(1), c.best_after(5)
    (0.5, 0.55, 0.6)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kinmerge.pool import PoolModel

__all__ = ["Anytime", "StopReplay", "area", "curve", "replay_early_stop"]


@dataclass(frozen=True)
class Anytime:
    """A run's best score as a function of the budget spent.

    ``best[i]`` is the best of the pool after ``i`` merges (``best[0]``: the foundation models);
    ``evaluations[i]`` and ``examples[i]`` what was spent to get there (models scored, examples
    scored; ``examples`` is ``None`` where a score's example count is not recorded).
    """

    best: tuple[float | None, ...]
    evaluations: tuple[int, ...]
    examples: tuple[int | None, ...]

    @property
    def merges(self) -> int:
        """Merges the run made."""
        return len(self.best) - 1

    def best_after(self, merges: int) -> float | None:
        """Best score with at most ``merges`` merges made (the final best past the run's end)."""
        return self.best[min(max(merges, 0), self.merges)]

    def best_within(self, budget: int, *, unit: str = "evaluations") -> float | None:
        """Best score found spending at most ``budget`` evaluations (or examples, ``unit="examples"``);
        ``None`` if even the foundation models cost more."""
        spent = self.evaluations if unit == "evaluations" else self.examples
        found = None
        for best, cost in zip(self.best, spent, strict=True):
            if cost is None or cost > budget:
                break
            found = best
        return found


def curve(pool: Sequence[PoolModel], *, merge_order: Sequence[str],
          examples: Mapping[str, int] | None = None) -> Anytime:
    """The anytime curve of a pool whose merges were made in ``merge_order``.

    Args:
        merge_order: the ids of the merged models, in the order they were made.
        examples: examples scored per model (for the examples axis); optional.
    """
    by_id = {m.id: m for m in pool}
    foundations = [m for m in pool if not m.parents]
    scores = [m.score for m in foundations if m.score is not None]
    best: list[float | None] = [max(scores) if scores else None]
    evaluations = [len(foundations)]
    used = [sum(examples.get(m.id, 0) for m in foundations)] if examples is not None else [None]
    for mid in merge_order:
        model = by_id.get(mid)
        score = model.score if model is not None else None
        prev = best[-1]
        best.append(score if prev is None else prev if score is None else max(prev, score))
        evaluations.append(evaluations[-1] + 1)
        last = used[-1]
        used.append(None if last is None or examples is None else last + examples.get(mid, 0))
    return Anytime(tuple(best), tuple(evaluations), tuple(used))


def area(c: Anytime, budget: int) -> float | None:
    """Mean best-so-far over budgets 0..``budget`` merges: a run that gets good early scores high.

    >>> from kinmerge.pool import PoolModel
    >>> c = curve([PoolModel("a", 0, score=0.5), PoolModel("m", 1, ("a", "b"), 0.7)], merge_order=["m"])
    >>> area(c, 2)
    0.6333333333333333
    """
    values = [c.best_after(b) for b in range(budget + 1)]
    if any(v is None for v in values):
        return None
    return math.fsum(v for v in values if v is not None) / len(values)


@dataclass(frozen=True)
class StopReplay:
    """What a kinship early stop at ``threshold`` would have done to a recorded, unstopped run."""

    threshold: float
    stopped_after: int | None  # the last generation it would have made; None: it never fires
    merges_used: int
    merges_saved: int
    best: float | None
    best_lost: float | None


def replay_early_stop(pool: Sequence[PoolModel], topk_kinship: Mapping[int, float | None], threshold: float, *,
                      metric: str = "pcc") -> StopReplay:
    """Replay kinship early stopping (paper §4) on a run recorded without it.

    The kinship strategy checks, before planning generation g + 1 (g >= 1), whether the mean
    pairwise kinship of the top-k after g is high (> threshold; < for ED, a distance).

    Args:
        topk_kinship: the top-k kinship after each generation, as recorded.
    """
    generations = sorted({m.generation for m in pool})
    stop = None
    for g in generations:
        value = topk_kinship.get(g)
        if g >= 1 and value is not None and (value < threshold if metric == "ed" else value > threshold):
            stop = g
            break
    kept = [m for m in pool if stop is None or m.generation <= stop]
    merges_all = sum(1 for m in pool if m.parents)
    merges_kept = sum(1 for m in kept if m.parents)
    final = [m.score for m in pool if m.score is not None]
    best_kept = [m.score for m in kept if m.score is not None]
    best = max(best_kept) if best_kept else None
    lost = max(final) - best if final and best is not None else None
    return StopReplay(threshold, stop, merges_kept, merges_all - merges_kept, best, lost)
