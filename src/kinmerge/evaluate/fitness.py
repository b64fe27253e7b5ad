"""The fitness a pool ranks by: a weighted mean of task scores and which way is better.

The paper ranks by the plain mean of task accuracies (P̄). Users weigh tasks unequally, and some
metrics are better low (perplexity, loss). :class:`Fitness` is the one place both are applied:
``value`` is the weighted mean of the raw task scores (what reports show), ``key`` turns it into
the number a pool ranks by (higher is better either way), so no caller flips a sign itself.
Pure: plain mappings in, floats out. A run sets it in ``evaluator:`` (``task_weights``,
``direction``) and records it in its fingerprint (``RunFingerprint.fitness``).

Example:
    >>> f = Fitness({"add": 3.0, "rev": 1.0}, direction="min")
    >>> f.value({"add": 2.0, "rev": 6.0}), f.key(3.0) > f.key(4.0)
    (3.0, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kinmerge.errors import ConfigError

__all__ = ["DIRECTIONS", "Fitness"]

#: ``max``: higher task scores are better (accuracy); ``min``: lower are (perplexity-type).
DIRECTIONS = ("max", "min")


@dataclass(frozen=True)
class Fitness:
    """Task weights (a task not named weighs 1) and a metric direction.

    Raises:
        ConfigError: a weight that is negative or not a finite number, all weights zero, or an
            unknown direction.
    """

    weights: Mapping[str, float] = field(default_factory=dict)
    direction: Literal["max", "min"] = "max"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        for task, w in self.weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ConfigError(f"task_weights.{task}: a weight must be a number >= 0, got {w!r}")
        object.__setattr__(self, "weights", {t: float(w) for t, w in self.weights.items()})

    def check(self, tasks: Iterable[str]) -> None:
        """Refuse weights that name none of, or other than, the run's ``tasks``, or weigh all zero.

        Raises:
            ConfigError: one line naming the unknown tasks (and the run's), or saying all are zero.
        """
        known = sorted(set(tasks))
        if unknown := sorted(set(self.weights) - set(known)):
            raise ConfigError(f"task_weights name {', '.join(unknown)}, not a task of this run "
                              f"({', '.join(known) or 'none'}); weigh the run's tasks by their names")
        if known and all(self.weights.get(t, 1.0) == 0 for t in known):
            raise ConfigError("task_weights are all zero: give at least one task a positive weight")

    def value(self, scores: Mapping[str, float]) -> float:
        """The weighted mean of ``scores`` (the raw metric); ``nan`` when no task weighs anything."""
        total = math.fsum(self.weights.get(t, 1.0) for t in scores)
        if not scores or total == 0:
            return float("nan")
        return math.fsum(self.weights.get(t, 1.0) * s for t, s in scores.items()) / total

    def key(self, value: float) -> float:
        """The number a pool ranks ``value`` by: higher is better, whatever the direction."""
        return value if self.direction == "max" else -value

    def value_of_key(self, key: float) -> float:
        """The weighted mean a ranking ``key`` came from (for showing a pool's ranked scores raw)."""
        return self.key(key)  # the flip is its own inverse

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Fitness:
        """The fitness of a fingerprint's ``fitness`` entry (:meth:`to_dict`); ``None``/``{}``: the
        paper's plain mean.

        Raises:
            ConfigError: a stored weight or direction that :class:`Fitness` refuses.
        """
        data = data or {}
        return cls(dict(data.get("task_weights") or {}), data.get("direction") or "max")

    def to_dict(self) -> dict[str, Any]:
        """The fingerprint's form: ``{}`` for the paper's fitness (plain mean, higher better), so
        runs recorded before weights existed read back unchanged."""
        return {**({"task_weights": dict(sorted(self.weights.items()))} if self.weights else {}),
                **({"direction": self.direction} if self.direction != "max" else {})}
