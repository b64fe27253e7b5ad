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

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kinmerge.errors import ConfigError

__all__ = ["EVALUATORS", "EvalResult", "Evaluator", "evaluator_accepts", "get_evaluator", "register_evaluator"]


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


#: name -> the evaluator class as ``"module:Class"`` (imported when first used, so importing this
#: package stays light), or a factory ``(**settings) -> Evaluator`` registered by an adapter.
EVALUATORS: dict[str, str | Callable[..., Evaluator]] = {
    "builtin": "kinmerge.evaluate.builtin:BuiltinEvaluator",
    "lm_eval": "kinmerge.evaluate.lm_eval:LmEvalEvaluator",
}


def register_evaluator(name: str, factory: str | Callable[..., Evaluator]) -> None:
    """Make ``get_evaluator(name, ...)`` build ``factory(**settings)`` (a callable or "module:Class")."""
    EVALUATORS[name] = factory


def _factory(name: str) -> Callable[..., Evaluator]:
    try:
        entry = EVALUATORS[name]
    except KeyError:
        known = ", ".join(sorted(EVALUATORS))
        raise ConfigError(f"unknown evaluator {name!r}; choose one of: {known}") from None
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
    return entry


def _parameters(factory: Callable[..., Evaluator]) -> dict[str, inspect.Parameter] | None:
    """The keyword settings ``factory`` takes; ``None`` when it takes any (``**settings``)."""
    params = dict(inspect.signature(factory).parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n: p for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def evaluator_accepts(name: str, setting: str) -> bool:
    """Whether evaluator ``name`` takes the keyword ``setting`` (e.g. ``"progress"``)."""
    params = _parameters(_factory(name))
    return params is None or setting in params


def get_evaluator(name: str, **settings: Any) -> Evaluator:
    """Build the evaluator registered as ``name`` with the given settings.

    Args:
        name: a key of :data:`EVALUATORS`, e.g. ``"builtin"``.
        **settings: passed to the evaluator's constructor.

    Returns:
        The evaluator.

    Raises:
        ConfigError: no evaluator is registered under ``name``, a setting is unknown, or a
            required one is missing (each named, in one line).

    Example:
        >>> get_evaluator("builtin")
        Traceback (most recent call last):
        ...
        kinmerge.errors.ConfigError: the builtin evaluator needs the setting(s) tasks_dir
    """
    factory = _factory(name)
    params = _parameters(factory)
    if params is not None:
        unknown = sorted(set(settings) - set(params))
        if unknown:
            raise ConfigError(f"unknown setting {', '.join(map(repr, unknown))} for evaluator {name!r}; "
                              f"it takes: {', '.join(sorted(params))}")
        missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in settings]
        if missing:
            raise ConfigError(f"the {name} evaluator needs the setting(s) {', '.join(missing)}")
    return factory(**settings)
