"""Kinship of one model to thousands of sketched models: estimates, bounds, and a fast ranking.

Pure math on arrays (``kinmerge.index.api`` reads them from the index file).

**One against many.** ``estimate_many`` gives every model's estimate and bound in one pass
over the stacked sketch values: the per-bucket-group products the estimators need
(``sketch.estimate_parts``) are one grouped matrix-vector product, ``<q, x>`` per group.

**Ranking thousands.** Reading every full sketch (512 KB of float32 each) costs ~5 GB for
10,000 models: too slow for an interactive query. Every model therefore also keeps its sketch
*folded* to ``COARSE`` buckets (bucket ``h`` added into ``h mod COARSE``: a coarser sketch of
the same delta, 16 KB). ``rank`` screens all models on the folded sketches, keeps every model
whose coarse interval (at ``SCREEN_CONFIDENCE``) could still reach the requested top ``N``, and
estimates only those again from their full sketches. The values shown are always full-size
estimates; the screen only decides which to compute.

Why folding is a sketch: bucket ``h`` of block ``k`` is ``(r_k + p) mod D``; modulo ``d`` (a
divisor of ``D``) that is ``(r_k mod d + p) mod d``, a block-shifted sketch with uniform shifts,
except that positions ``d`` apart *within* a block now always share a bucket (with independent
signs: unbiased, and the jackknife sees their share of the variance).

Example:
    >>> rng = np.random.default_rng(0)
    >>> from kinmerge.sketch import Sketch
    >>> deltas = rng.standard_normal((3, 20_000)); deltas[1] += deltas[0]
    >>> sk = []
    >>> for d in deltas:
    ...     s = Sketch.empty(4096); s.add(d, "w"); sk.append(s)
    >>> v, b = estimate_many(sk[0], np.stack([s.values for s in sk]), [s.sum for s in sk], [s.sumsq for s in sk],
    ...                      sk[0].n, sk[0].ones, "cs")
    >>> [round(float(x), 2) for x in v[:2]], bool(abs(v[2]) <= b[2])   # the third: 0 within its bound
    ([1.0, 0.71], True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kinmerge.sketch import (
    DEFAULT_CONFIDENCE,
    GROUPS,
    METRICS,
    Sketch,
    estimate_parts,
    why_undefined,
)

__all__ = ["COARSE", "SCREEN_CONFIDENCE", "Ranked", "estimate_many", "fold", "rank"]

COARSE = 1 << 12  # buckets of the folded screening sketch (16 KB in float32)
SCREEN_CONFIDENCE = 0.9999  # the screen keeps a model unless it is this sure it cannot make the top N
_BATCH = 512  # rows per block: bounds the float64 temporaries


def fold(values: np.ndarray, size: int = COARSE) -> np.ndarray:
    """Fold sketch values (..., D) to ``size`` buckets: bucket ``h`` goes to ``h mod size``.

    >>> fold(np.arange(8.0), 4).tolist()
    [4.0, 6.0, 8.0, 10.0]
    """
    d = values.shape[-1]
    if size >= d:
        return np.asarray(values)
    return np.asarray(np.asarray(values).reshape(*values.shape[:-1], d // size, size).sum(axis=-2))


def _group_dot(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(GROUPS, M): ``<q, x_m>`` over each bucket group (one pass over ``x``; float64 sums)."""
    m, d = x.shape
    out = np.einsum("mkg,kg->gm", x.reshape(m, d // GROUPS, GROUPS), q.reshape(d // GROUPS, GROUPS))
    return np.asarray(out, dtype=np.float64)


def _group_sq(x: np.ndarray) -> np.ndarray:
    """(GROUPS, M): ``Σ x²`` of each row over each bucket group (h mod GROUPS)."""
    m, d = x.shape
    x3 = x.reshape(m, d // GROUPS, GROUPS)
    return np.asarray(np.einsum("mkg,mkg->gm", x3, x3), dtype=np.float64)


def estimate_many(query: Sketch, values: np.ndarray, sums: Sequence[float] | np.ndarray,
                  sumsqs: Sequence[float] | np.ndarray, n: int, ones: np.ndarray, metric: str,
                  confidence: float = DEFAULT_CONFIDENCE, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Estimated kinship of ``query`` to every row of ``values`` (M, size): (values, bounds).

    ``dtype``: the products' precision (float32 for the screen: 4x less memory traffic, relative
    rounding ~1e-6, far below a screen's bound).

    ``sums``, ``sumsqs``: the rows' exact ``Σδ`` and ``Σδ²``; ``n``, ``ones``: the positions and
    sketch of ones shared by all (the query must cover the same: ``Sketch.coverage_id``).
    NaN where a kinship is undefined (``why_undefined`` says why).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown kinship metric '{metric}': choose from {', '.join(METRICS)}")
    size = values.shape[1]
    q = query.values - (query.mean * query.ones if metric == "pcc" else 0.0)
    means = np.asarray(sums, dtype=np.float64) / max(n, 1)
    sq = np.asarray(sumsqs, dtype=np.float64)
    qq = _group_sq(q[None])  # (GROUPS, 1)
    out_v, out_b = np.empty(len(values)), np.empty(len(values))
    qd: np.ndarray = q.astype(dtype)
    ones_d: np.ndarray = np.asarray(ones, dtype=dtype)
    q1 = _group_dot(qd, ones_d[None])  # (GROUPS, 1): <q, S(1)> per group
    oo = _group_sq(ones_d[None])
    for lo in range(0, len(values), _BATCH):
        x: np.ndarray = np.asarray(values[lo : lo + _BATCH], dtype=dtype)
        qx, xx = _group_dot(qd, x), _group_sq(x)
        if metric == "pcc":  # centre by algebra, not by a copy: S(x - mu) = S(x) - mu S(1)
            mu = means[lo : lo + _BATCH][None, :]
            x1 = _group_dot(ones_d, x)
            qx = qx - mu * q1
            xx = np.maximum(xx - 2.0 * mu * x1 + mu * mu * oo, 0.0)
        c, half = estimate_parts(qq, qx, xx, metric, size, confidence,
                                 np.nan if query.sumsq is None else query.sumsq, sq[lo : lo + _BATCH])
        out_v[lo : lo + len(x)], out_b[lo : lo + len(x)] = c, half
    return out_v, out_b


@dataclass(frozen=True)
class Ranked:
    """One model in a ranking: its row, the estimate and bound (full size), or why undefined."""

    row: int
    value: float | None
    bound: float
    reason: str | None = None


def rank(query: Sketch, coarse: np.ndarray, sums: np.ndarray, sumsqs: np.ndarray, n: int, ones: np.ndarray,
         full: Callable[[list[int]], np.ndarray], metric: str, *, top: int | None = 10, least: bool = False,
         confidence: float = DEFAULT_CONFIDENCE) -> list[Ranked]:
    """The ``top`` models nearest to ``query`` (``least``: least related first), all if ``top`` is None.

    Args:
        coarse: (M, COARSE) folded sketches of the candidates.
        full: rows -> their full sketch values (M', D); called for the screened rows only.
        n, ones: positions and (full-size) sketch of ones shared by every model.

    "Nearest" is the highest PCC or cosine, the smallest ED. Undefined estimates come last.
    """
    m = len(coarse)
    if m == 0:
        return []
    rows = list(range(m))
    sign = (-1.0 if metric == "ed" else 1.0) * (-1.0 if least else 1.0)  # larger key = shown first
    if top is not None and top < m:
        small = query_fold(query, coarse.shape[1])
        cv, cb = estimate_many(small, coarse, sums, sumsqs, n, fold(ones, coarse.shape[1]), metric, SCREEN_CONFIDENCE,
                               np.float32)
        key, ok = sign * cv, np.isfinite(cv)
        lower = np.where(ok, key - cb, -np.inf)
        cut = np.sort(lower)[::-1][top - 1]
        rows = [int(i) for i in np.flatnonzero(~ok | (key + cb >= cut))]
    values = full(rows)
    v, b = estimate_many(query, values, sums[rows], sumsqs[rows], n, ones, metric, confidence)
    qsq = float((query.values**2).sum())
    qwhy = why_undefined(query, metric, qsq)
    out = []
    for i, r in enumerate(rows):
        sk = Sketch(query.seed, query.size, n, float(sums[r]), float(sumsqs[r]), values[i], ones)
        why = qwhy or why_undefined(sk, metric, float(np.dot(values[i], values[i])))
        out.append(Ranked(r, None if why or not np.isfinite(v[i]) else float(v[i]), float(b[i]), why))
    out.sort(key=lambda x: (x.value is None, -sign * (x.value or 0.0), x.row))
    return out if top is None else out[:top]


def query_fold(query: Sketch, size: int) -> Sketch:
    """The query's sketch folded to ``size`` buckets (same moments)."""
    return Sketch(query.seed, size, query.n, query.sum, query.sumsq, fold(query.values, size), fold(query.ones, size))
