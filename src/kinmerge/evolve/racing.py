"""Racing: score a child on a slice of each task first, finish only the ones that can still matter.

Evaluation is where an evolution run spends its time (minutes per model with the harness on a
7B model; ~89% of the demo's wall time). Most children of a generation never enter the top-k, and
a few dozen examples are often enough to see that. So a generation's children are scored in
rounds on growing slices of every task (``first`` examples, then twice as many, ... up to all):
after each round, a child whose **upper confidence bound** on its final average score is below
the k-th best of what is known — the scores of the pool before this generation, the final scores
of siblings already finished and the *lower* bounds of siblings still racing — stops there
(successive halving, racing style): it cannot enter the top-k. Its score
is recorded with the number of examples it used (a *partial* score), so reports show what was
spent, and a run that does not race treats it as not yet scored.

The bound: with ``c`` correct of ``n`` examples scored so far out of ``N`` in a task, the final
accuracy is ``(c + X) / N`` with ``X`` the correct answers among the ``N - n`` left (the examples
are a random sample of the task). With a uniform prior on the task's accuracy, the posterior is
Beta(c + 1, n - c + 1) and ``X`` is beta-binomial; the tasks are independent, so the final average
has a known mean and variance, and the bound is their normal upper quantile at ``confidence``.
Calibrated by construction under that prior (a test draws accuracies uniformly and checks that the
bound holds at least as often as stated), and far tighter than a Hoeffding bound at these sizes:
with 50 of 200 examples scored a child 0.15 below the bar is stopped, not only one 0.3 below.

Example:
    >>> upper_bound({"t": (10, 50, 200)}, confidence=0.95) < 0.5
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

__all__ = ["RaceSettings", "bounds", "combine", "counts_of", "parts", "race", "upper_bound"]


@dataclass(frozen=True)
class RaceSettings:
    """``first``: examples per task in the first round; each round doubles it (``growth``);
    ``confidence``: how sure the bound must be before a child is stopped."""

    first: int = 50
    growth: float = 2.0
    confidence: float = 0.95


def parts(total: int, settings: RaceSettings) -> list[tuple[int, int]]:
    """The example ranges of the rounds for a task set of ``total`` examples per task.

    >>> parts(300, RaceSettings(first=50))
    [(0, 50), (50, 100), (100, 200), (200, 300)]
    """
    out, start, size = [], 0, settings.first
    while start < total:
        stop = min(total, max(start + 1, int(size)))
        out.append((start, stop))
        start, size = stop, size * settings.growth
    return out


def upper_bound(counts: Mapping[str, tuple[float, int, int]], *, confidence: float) -> float:
    """Upper ``confidence`` bound on the final average score from ``{task: (correct, n, N)}``
    (beta-binomial predictive of the examples left, normal quantile of the average)."""
    return bounds(counts, confidence=confidence)[1]


def bounds(counts: Mapping[str, tuple[float, int, int]], *, confidence: float) -> tuple[float, float]:
    """Lower and upper ``confidence`` bounds on the final average score (see :func:`upper_bound`).

    >>> low, high = bounds({"t": (25, 50, 200)}, confidence=0.95)
    >>> round(low, 2), round(high, 2)
    (0.4, 0.6)
    """
    if not counts:
        return -math.inf, math.inf
    mean = var = 0.0
    for correct, n, big_n in counts.values():
        left = big_n - n
        a, b = correct + 1.0, n - correct + 1.0
        mean += (correct + left * a / (a + b)) / big_n
        var += left * a * b * (a + b + left) / ((a + b) ** 2 * (a + b + 1.0)) / big_n**2
    t = len(counts)
    half = NormalDist().inv_cdf(confidence) * math.sqrt(var) / t
    return mean / t - half, mean / t + half


def combine(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One evaluation result (``{"scores", "details", "average", "seconds"}``) from the results of
    several parts of the same task set: accuracies weighted by examples, ``n`` and time summed."""
    tasks: dict[str, dict[str, float]] = {}
    for res in results:
        for task, d in res["details"].items():
            acc = tasks.setdefault(task, {"correct": 0.0, "loglik": 0.0, "n": 0.0, "of": 0.0})
            n = float(d["n"])
            acc["correct"] += float(d["accuracy"]) * n
            acc["loglik"] += float(d.get("mean_loglik", 0.0)) * n
            acc["n"] += n
            acc["of"] = float(d.get("of", n))
    details = {t: {"accuracy": a["correct"] / a["n"], "mean_loglik": a["loglik"] / a["n"], "n": a["n"], "of": a["of"],
                   **({"partial": True} if a["n"] < a["of"] else {})}
               for t, a in tasks.items() if a["n"]}
    scores = {t: d["accuracy"] for t, d in details.items()}
    return {"scores": scores, "details": details, "average": sum(scores.values()) / len(scores) if scores else 0.0,
            "seconds": sum(float(res.get("seconds", 0.0)) for res in results)}


def counts_of(result: Mapping[str, Any]) -> dict[str, tuple[float, int, int]]:
    """``{task: (correct, n, N)}`` of a (combined) result, for :func:`upper_bound`."""
    return {t: (float(d["accuracy"]) * float(d["n"]), int(d["n"]), int(d.get("of", d["n"])))
            for t, d in result["details"].items()}


#: ``score_part(ids, (start, stop))`` yields ``(id, result)`` for each model scored on that part.
ScorePart = Callable[[Sequence[str], tuple[int, int]], Iterable[tuple[str, Mapping[str, Any]]]]


def race(ids: Sequence[str], score_part: ScorePart, *, pool: Sequence[float], k: int,
         settings: RaceSettings) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """Score ``ids`` in rounds; yield ``(id, combined result, stopped early)`` as each one's fate is
    decided: scored on every example, or stopped because its upper bound fell below the bar — the
    k-th best of ``pool`` (the scores already known), the finished siblings' scores and the racing
    siblings' lower bounds. With fewer than ``k`` of those nobody is raced out.

    Example:
        >>> def score(ids, part):  # a model that gets 1 answer in 10 right, on one task of 400
        ...     n = part[1] - part[0]
        ...     return [(i, {"details": {"t": {"accuracy": 0.1, "n": n, "of": 400}}}) for i in ids]
        >>> [(i, r["details"]["t"]["n"], early) for i, r, early in race(["m"], score, pool=[0.5], k=1,
        ...                                                           settings=RaceSettings(first=50))]
        [('m', 50.0, True)]
    """
    results: dict[str, list[Mapping[str, Any]]] = {i: [] for i in ids}
    alive, finished = list(ids), list[float]()
    start, target, total = 0, float(settings.first), None  # the rounds' ends grow by ``growth``
    while alive:
        stop = max(start + 1, int(target)) if total is None else min(total, max(start + 1, int(target)))
        for mid, res in score_part(alive, (start, stop)):
            results[mid].append(res)
        combined = {mid: combine(results[mid]) for mid in alive}
        counts = {mid: counts_of(c) for mid, c in combined.items()}
        span = {mid: bounds(c, confidence=settings.confidence) for mid, c in counts.items()}
        known = sorted([*pool, *finished, *(low for low, _ in span.values())], reverse=True)
        bar = known[k - 1] if len(known) >= k else -math.inf
        still = []
        for mid in alive:
            total = max(big_n for _, _, big_n in counts[mid].values())
            if all(n >= big_n for _, n, big_n in counts[mid].values()):
                finished.append(combined[mid]["average"])
                yield mid, combined[mid], False
            elif span[mid][1] < bar:
                yield mid, combined[mid], True
            else:
                still.append(mid)
        alive, start, target = still, stop, target * settings.growth
