"""Statistics for comparing strategies honestly: paired differences, bootstrap intervals, sign tests.

A comparison of two merging strategies is *paired*: the same foundation set and the same seed (the
same testbed) are run under both, so the question is the distribution of the per-pair differences,
not of two separate means. For each comparison:

- the mean difference with a percentile bootstrap 95% interval (resampling pairs, seeded, so the
  numbers are reproducible);
- wins / ties / losses and a two-sided exact sign test on the non-tied pairs;
- the number of pairs, so a reader sees how much data stands behind a claim.

Pure functions on lists of numbers: no runs, no files.

Example:
    >>> d = paired([0.61, 0.63, 0.60, 0.64], [0.60, 0.60, 0.60, 0.61])
    >>> d.n, d.wins, d.ties, d.losses, round(d.mean, 4)
    (4, 3, 1, 0, 0.0175)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Paired", "Spread", "bootstrap_ci", "cluster_bootstrap_ci", "holm", "mean_or_none", "node_jackknife_ci",
           "paired", "partial_correlation", "proportion_difference_ci", "score_sem", "sign_test", "spread",
           "wilson_ci"]


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (``None`` for one value), range and the standard error."""

    n: int
    mean: float | None
    std: float | None
    sem: float | None
    low: float | None
    high: float | None


def spread(values: Sequence[float | None]) -> Spread:
    """:class:`Spread` of the known values (``None`` values are left out).

    >>> spread([1.0, 2.0, 3.0, None]).std
    1.0
    """
    known = [float(v) for v in values if v is not None]
    if not known:
        return Spread(0, None, None, None, None, None)
    mean = math.fsum(known) / len(known)
    if len(known) < 2:
        return Spread(1, mean, None, None, known[0], known[0])
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in known) / (len(known) - 1))
    return Spread(len(known), mean, std, std / math.sqrt(len(known)), min(known), max(known))


def score_sem(scores: Mapping[str, float], examples: Mapping[str, int]) -> float | None:
    """Standard error of a model's average score from the examples behind it.

    Each task score is a proportion of its ``n`` examples (binomial variance ``p (1 - p) / n``);
    the average of ``T`` tasks has variance ``sum(p (1 - p) / n) / T**2``. This is the sampling
    error of the *evaluation* (another draw of examples would move the score by about this much),
    not of the merge. ``None`` when a task's ``n`` is unknown or a score is not a proportion.

    >>> round(score_sem({"a": 0.5, "b": 0.9}, {"a": 100, "b": 100}), 4)
    0.0292
    """
    if not scores or any(examples.get(t, 0) <= 0 or not 0.0 <= p <= 1.0 for t, p in scores.items()):
        return None
    return math.sqrt(math.fsum(p * (1.0 - p) / examples[t] for t, p in scores.items())) / len(scores)


def bootstrap_ci(values: Sequence[float], *, level: float = 0.95, resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (``None`` for fewer than 2 values).

    Seeded: the same values give the same interval. With few values the interval is optimistic
    (the bootstrap cannot see beyond the sample); the pair count is always reported beside it.

    >>> lo, hi = bootstrap_ci([0.0, 0.01, 0.02, 0.03, 0.04])
    >>> lo < 0.02 < hi
    True
    """
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    n = len(values)
    means = sorted(math.fsum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    lo = means[math.floor(tail * (resamples - 1))]
    hi = means[math.ceil((1.0 - tail) * (resamples - 1))]
    return lo, hi


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven if wins and losses
    were equally likely (ties are left out before calling).

    >>> round(sign_test(9, 1), 4)
    0.0215
    >>> sign_test(0, 0)
    1.0
    """
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = math.fsum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class Paired:
    """The differences ``a - b`` over matched pairs, summarised."""

    n: int
    mean: float | None
    ci: tuple[float, float] | None
    wins: int
    ties: int
    losses: int
    p_sign: float

    def to_dict(self) -> dict[str, object]:
        return {"n": self.n, "mean": self.mean, "ci95": list(self.ci) if self.ci else None, "wins": self.wins,
                "ties": self.ties, "losses": self.losses, "p_sign": self.p_sign}


def paired(a: Sequence[float], b: Sequence[float], *, tie: float = 1e-12, seed: int = 0) -> Paired:
    """Compare ``a`` with ``b``, pair by pair (the same testbed under two strategies).

    Args:
        tie: differences at most this large count as ties (scores move in steps of 1/examples;
            a tie is an honest outcome, not a half-win).
    """
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs equal lengths, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    wins = sum(d > tie for d in diffs)
    losses = sum(d < -tie for d in diffs)
    mean = math.fsum(diffs) / len(diffs) if diffs else None
    return Paired(len(diffs), mean, bootstrap_ci(diffs, seed=seed), wins, len(diffs) - wins - losses, losses,
                  sign_test(wins, losses))


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean, or ``None`` when there are no values or any is missing: a mean over the
    values that happen to exist would silently compare different things.

    >>> mean_or_none([0.5, 0.7]), mean_or_none([0.5, None]), mean_or_none([])
    (0.6, None, None)
    """
    if not values or any(v is None for v in values):
        return None
    return math.fsum(values) / len(values)  # type: ignore[arg-type]


def wilson_ci(p: float, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of an accuracy ``p`` measured on ``n`` examples: unlike p ± z·SE it
    stays inside [0, 1] and is not zero-width at 0 or 1, where specialists' scores sit.

    >>> [round(v, 3) for v in wilson_ci(1.0, 100)]
    [0.963, 1.0]
    """
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion_difference_ci(p1: float, n1: int, p2: float, n2: int, *, z: float = 1.96) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``p1 - p2`` (two accuracies on ``n1`` and ``n2``
    examples): did a merge lose a parent's skill by more than sampling error?

    >>> [round(v, 3) for v in proportion_difference_ci(1.0, 100, 0.9, 100)]
    [0.042, 0.174]
    """
    l1, u1 = wilson_ci(p1, n1, z=z)
    l2, u2 = wilson_ci(p2, n2, z=z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values: the family-wise error stays at the level a reader
    compares them with, whichever of the reported comparisons they look at.

    >>> {k: round(v, 3) for k, v in holm({"a": 0.01, "b": 0.04, "c": 0.03}).items()}
    {'a': 0.03, 'b': 0.06, 'c': 0.06}
    """
    order = sorted(pvalues, key=lambda k: (pvalues[k], k))
    out: dict[str, float] = {}
    running = 0.0
    for i, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * pvalues[name]))
        out[name] = running
    return {k: out[k] for k in pvalues}


def partial_correlation(x: Sequence[float], y: Sequence[float], controls: Sequence[Sequence[float]]) -> float | None:
    """Pearson correlation of ``x`` and ``y`` after removing what the ``controls`` explain
    linearly (least squares with an intercept): does kinship say anything about a merge's gain
    that the parents' scores and the generation do not? ``None`` when undefined.

    >>> x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    >>> z = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    >>> round(partial_correlation(x, [a + 3 * b for a, b in zip(x, z)], [z]), 3)
    1.0
    """
    import numpy as np

    n = len(x)
    if n != len(y) or any(len(c) != n for c in controls) or n < len(controls) + 3:
        return None
    design = np.column_stack([np.ones(n), *[np.asarray(c, dtype=np.float64) for c in controls]])

    def residual(v: Sequence[float]) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        coef, *_ = np.linalg.lstsq(design, v, rcond=None)
        return v - design @ coef  # type: ignore[no-any-return]

    rx, ry = residual(x), residual(y)
    denom = float(np.sqrt((rx @ rx) * (ry @ ry)))
    return float(rx @ ry) / denom if denom > 1e-15 else None


def cluster_bootstrap_ci(groups: Sequence[str], statistic: Callable[[list[int]], float | None], *,
                         level: float = 0.95, resamples: int = 2_000, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` resampling whole *groups* (foundation sets).

    Merges of one testbed share parents and runs, so they are not independent observations;
    resampling testbeds (with every merge of each drawn testbed) keeps that dependence in the
    interval. ``statistic`` takes the row indices of a resample; resamples where it is undefined
    are dropped. ``None`` with fewer than 2 groups.

    >>> g = ["a", "a", "b", "b", "c", "c"]
    >>> v = [1.0, 1.2, 2.0, 2.2, 3.0, 3.2]
    >>> lo, hi = cluster_bootstrap_ci(g, lambda rows: sum(v[i] for i in rows) / len(rows))
    >>> lo < 2.1 < hi
    True
    """
    names = sorted(set(groups))
    if len(names) < 2:
        return None
    rows_of = {name: [i for i, g in enumerate(groups) if g == name] for name in names}
    rng = random.Random(seed)
    values = []
    for _ in range(resamples):
        rows = [i for _ in names for i in rows_of[rng.choice(names)]]
        v = statistic(rows)
        if v is not None and math.isfinite(v):
            values.append(v)
    if len(values) < resamples // 2:
        return None
    values.sort()
    tail = (1.0 - level) / 2.0
    return values[math.floor(tail * (len(values) - 1))], values[math.ceil((1.0 - tail) * (len(values) - 1))]


def node_jackknife_ci(pairs: Sequence[tuple[str, str]], statistic: Callable[[list[int]], float | None], *,
                      level: float = 0.95) -> tuple[float, float] | None:
    """Interval of a statistic over *pairs of models* that share models (all-pairs merges):
    the statistic ± z × the node-deleting jackknife standard error (Snijders & Borgatti 1999,
    "Non-parametric standard errors and tests for network statistics").

    Every pair of a pool of n models shares a model with 2(n − 2) others, so resampling pairs as
    if independent gives an interval that is too narrow. Deleting one model (and all its pairs)
    at a time, SE² = (n − 2) / (2n) × Σ (θ₋ᵢ − θ̄)². ``statistic`` takes row indices into
    ``pairs``; a deletion where it is undefined is dropped. ``None`` when the statistic on all
    pairs is undefined or fewer than 3 deletions are defined.

    >>> pairs = [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")]
    >>> v = [1.0, 2.0, 3.0, 2.0, 3.0, 4.0]
    >>> lo, hi = node_jackknife_ci(pairs, lambda rows: sum(v[i] for i in rows) / len(rows))
    >>> round(lo, 3), round(hi, 3)
    (1.417, 3.583)
    """
    from statistics import NormalDist

    theta = statistic(list(range(len(pairs))))
    if theta is None or not math.isfinite(theta):
        return None
    nodes = sorted({m for pair in pairs for m in pair})
    deleted = []
    for node in nodes:
        v = statistic([i for i, pair in enumerate(pairs) if node not in pair])
        if v is not None and math.isfinite(v):
            deleted.append(v)
    n = len(deleted)
    if n < 3:
        return None
    mean = sum(deleted) / n
    se = math.sqrt((n - 2) / (2 * n) * sum((v - mean) ** 2 for v in deleted))
    z = NormalDist().inv_cdf(1.0 - (1.0 - level) / 2.0)
    return theta - z * se, theta + z * se
