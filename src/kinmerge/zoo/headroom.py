"""The zoo property of issue 9 §1: greedy evolution still improves after generation 1.

A zoo is a useful testbed for *does kinship guidance pay?* only if the paper's top-k greedy
loop has an improving stage after generation 1 for exploration to extend. The property, on a
zoo's recorded greedy runs (one per foundation set):

* the **gain at generation >= 2** -- the best score of the pool at the end minus the best after
  generation 1 -- is at least :data:`MIN_GAIN` (0.01 on a 0-1 average task score), and
* the **top-k kinship rises** through the run (:func:`kinship_rises`), the paper's improving
  -> saturation shape,

on at least :data:`MIN_SHARE` (3 of every 4) of the foundation sets. Pure functions over plain
lists, so a test can check a shipped record and a benchmark can check fresh runs the same way.

Example:
    >>> row = set_result("a-b-c", best=[0.5, 0.6, 0.62, 0.62], kinship=[0.1, 0.5, 0.9, 0.95])
    >>> row["gain_after_gen1"] >= MIN_GAIN and row["holds"]
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MIN_GAIN", "MIN_SHARE", "gain_after_gen1", "kinship_rises", "set_result", "verdict"]

#: The gain at generation >= 2 a foundation set must show (average task score, 0-1 scale).
MIN_GAIN = 0.01
#: ... on at least this share of the foundation sets.
MIN_SHARE = 3 / 4
_EPS = 1e-9  # scores are sums of 1/n steps; compare with a hair of slack


def gain_after_gen1(best: Sequence[float | None]) -> float | None:
    """Best score after the last generation minus the best after generation 1.

    ``best[i]`` is the best score of the pool after generation ``i`` (``best[0]``: the
    foundations). ``None`` when generation 1 was never scored; 0 when the run stopped there.

    Example:
        >>> round(gain_after_gen1([0.5, 0.6, 0.61, 0.63]), 3)
        0.03
    """
    if len(best) < 2 or best[1] is None:
        return None
    later = [b for b in best[2:] if b is not None]
    return (max(later) - best[1]) if later else 0.0


def kinship_rises(values: Sequence[float | None]) -> bool:
    """True when the top-k kinship ends above both its value at generation 0 and after generation 1.

    ``values[i]`` is the mean pairwise kinship (PCC) of the top-k after generation ``i``. The
    paper's shape is low kinship while merges still gain and high kinship at saturation; a run
    that saturates at once keeps its generation-1 top-k, so its kinship stays flat and "rises"
    needs the last value to beat generation 1 as well as generation 0.

    Example:
        >>> kinship_rises([0.05, 0.4, 0.8, 0.95])
        True
        >>> kinship_rises([0.05, 0.6, 0.6, 0.6])
        False
    """
    if len(values) < 3 or values[0] is None or values[1] is None:
        return False
    known = [v for v in values[2:] if v is not None]
    return bool(known) and known[-1] > values[0] and known[-1] > values[1]


def set_result(name: str, best: Sequence[float | None], kinship: Sequence[float | None],
               **extra: Any) -> dict[str, Any]:
    """One foundation set's row: its curves, gain at generation >= 2, and whether it holds.

    ``extra`` (merges, stop reason, seconds, ...) is copied into the row.
    """
    gain = gain_after_gen1(best)
    rises = kinship_rises(kinship)
    return {"set": name, "best": list(best), "topk_kinship": list(kinship), **extra,
            "gain_after_gen1": gain, "kinship_rises": rises,
            "holds": gain is not None and gain >= MIN_GAIN - _EPS and rises}


def verdict(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Whether the property holds over ``rows`` (one per foundation set).

    Example:
        >>> verdict([{"holds": True}, {"holds": True}, {"holds": True}, {"holds": False}])
        {'sets': 4, 'hold': 3, 'property': True}
    """
    hold = sum(1 for r in rows if r["holds"])
    return {"sets": len(rows), "hold": hold,
            "property": bool(rows) and hold >= MIN_SHARE * len(rows) - _EPS}
