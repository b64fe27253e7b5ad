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
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kinmerge.errors import ConfigError

__all__ = ["EVALUATORS", "PATH_SETTINGS", "EvalResult", "Evaluator", "evaluator_accepts", "get_evaluator",
           "register_evaluator", "resolve_paths"]


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


#: Evaluator settings that name local folders or files (``tasks_dir``: builtin; ``include_path``: lm_eval).
PATH_SETTINGS = ("tasks_dir", "include_path")


def resolve_paths(settings: Mapping[str, Any], *,
                  root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The evaluator ``settings`` with every folder they name made absolute.

    The one place where the Python API, ``kinmerge eval`` and a run config read the folders an
    evaluator is given, so each accepts the same references: ``zoo:tasks`` (a shipped task folder),
    ``~/tasks``, or a path relative to ``root`` (a config file's folder; default the working
    directory). lm_eval ``tasks`` that exist as paths under ``root`` become absolute; the others
    are harness task names and stay as given.

    Raises:
        ConfigError: a ``zoo:`` reference names no shipped folder (the message starts with the
            setting's name). A folder that does not exist is left for the evaluator to refuse,
            in its own words ("task folder not found; expected a folder of <task>.jsonl files").

    Example:
        >>> resolve_paths({"tasks_dir": "zoo:tasks", "limit": 5})["tasks_dir"].endswith("data/zoo/tasks")
        True
    """
    from kinmerge.errors import SourceError
    from kinmerge.sources.refs import ZOO_PREFIX, zoo_path

    here = Path(root).expanduser() if root is not None else Path.cwd()
    out = dict(settings)
    for key in PATH_SETTINGS:
        value = out.get(key)
        if value is None:
            continue
        resolved = []
        for item in value if isinstance(value, list | tuple) else [value]:
            if str(item).startswith(ZOO_PREFIX):
                try:
                    path = zoo_path(str(item))
                except SourceError as exc:
                    raise ConfigError(f"{key}: {exc}") from None
            else:
                path = Path(os.fspath(item)).expanduser()
                path = path if path.is_absolute() else here / path
            resolved.append(str(path.resolve()))  # a missing folder is the evaluator's to name
        out[key] = resolved if isinstance(value, list | tuple) else resolved[0]
    if isinstance(out.get("tasks"), list | tuple):
        out["tasks"] = [str((here / t).resolve())
                        if isinstance(t, str) and not Path(t).is_absolute() and (here / t).exists() else t
                        for t in out["tasks"]]
    return out


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
