"""Evaluators: a model folder in, one score per task out.

An evaluator turns a local Hugging Face model folder into an :class:`EvalResult`: one primary
score per task (accuracy in 0..1) and a few details per task. ``EvalResult.average`` is the
paper's P̄, the mean score over the task set, which the evolution uses to rank merges.

Evaluators are looked up by name in :data:`EVALUATORS` (``get_evaluator("builtin", ...)``); an
adapter module adds itself to that dict. ``settings()`` returns everything that changes the
scores, so an evaluation can be cached under (model content id, evaluator name, settings).

Importing this package is light: torch and transformers load inside ``evaluate()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kinmerge.errors import ConfigError

__all__ = ["EVALUATORS", "EvalResult", "Evaluator", "get_evaluator", "register_evaluator"]


@dataclass(frozen=True)
class EvalResult:
    """The scores of one model on one task set.

    Attributes:
        scores: task name -> primary score (accuracy in 0..1).
        details: task name -> named numbers, e.g. ``{"accuracy": 0.8,
            "mean_loglik": -1.2, "n": 200}``.
    """

    scores: dict[str, float]
    details: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def average(self) -> float:
        """Mean score over the tasks (the paper's P̄); ``nan`` when there are no tasks."""
        if not self.scores:
            return float("nan")
        return sum(self.scores.values()) / len(self.scores)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form: ``{"scores", "details", "average"}``."""
        return {"scores": dict(self.scores), "details": {k: dict(v) for k, v in self.details.items()},
                "average": self.average}


@runtime_checkable
class Evaluator(Protocol):
    """Anything that scores a model folder on a fixed task set."""

    name: str

    def settings(self) -> dict[str, Any]:
        """Everything that affects the scores (task content hashes, limits, ...), JSON-ready."""
        ...

    def evaluate(self, model_dir: Path) -> EvalResult:
        """Score the model saved in ``model_dir`` (a local Hugging Face folder)."""
        ...


def _builtin(**settings: Any) -> Evaluator:
    from kinmerge.evaluate.builtin import BuiltinEvaluator

    return BuiltinEvaluator(**settings)


def _lm_eval(**settings: Any) -> Evaluator:
    from kinmerge.evaluate.lm_eval import LmEvalEvaluator

    return LmEvalEvaluator(**settings)


#: name -> factory(**settings) -> Evaluator. Adapters register here (e.g. ``"lm_eval"``).
EVALUATORS: dict[str, Callable[..., Evaluator]] = {"builtin": _builtin, "lm_eval": _lm_eval}


def register_evaluator(name: str, factory: Callable[..., Evaluator]) -> None:
    """Make ``get_evaluator(name, ...)`` call ``factory(**settings)``."""
    EVALUATORS[name] = factory


def get_evaluator(name: str, **settings: Any) -> Evaluator:
    """Build the evaluator registered as ``name`` with the given settings.

    Args:
        name: a key of :data:`EVALUATORS`, e.g. ``"builtin"``.
        **settings: passed to the evaluator's constructor.

    Returns:
        The evaluator.

    Raises:
        ConfigError: if no evaluator is registered under ``name``.

    Example:
        >>> ev = get_evaluator("builtin", tasks_dir="zoo/tasks", limit=50)  # doctest: +SKIP
        >>> ev.evaluate(Path("zoo/base")).average  # doctest: +SKIP
        0.41
    """
    try:
        factory = EVALUATORS[name]
    except KeyError:
        known = ", ".join(sorted(EVALUATORS))
        raise ConfigError(f"unknown evaluator {name!r}; choose one of: {known}") from None
    return factory(**settings)
