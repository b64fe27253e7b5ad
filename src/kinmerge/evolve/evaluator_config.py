"""The run's evaluator: its registry name and settings, its selection / held-out split, its key.

``evaluator:`` in a run config (``kinmerge.evolve.config``). The run ranks its pool on the
selection part of every task and scores the top-k on the held-out part (``kinmerge.evolve.heldout``);
:func:`evaluator_key` names the scores an evaluator gives, so evaluations are shared exactly
when they would be equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from kinmerge._io import json_digest
from kinmerge.errors import ConfigError, KinmergeError
from kinmerge.evaluate.fitness import Fitness

if TYPE_CHECKING:
    from kinmerge.evaluate import Evaluator

__all__ = ["EvaluatorConfig", "evaluator_key"]


def _root(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("root") or Path.cwd())


class EvaluatorConfig(BaseModel):
    """``evaluator:`` the evaluator's registry ``name`` (``builtin``, ``lm_eval``) plus its
    settings, flat (builtin: ``tasks_dir``, ``limit``, ``batch_size``, ``device``, ...;
    lm_eval: ``tasks``, ``num_fewshot``, ``batch_size``, ``device``, ``limit``, ...).

    ``heldout`` (the run's, not the evaluator's): the share of every task's examples the loop
    never sees (default 0.5; ``false``: no split). The run chooses on the rest (``split:
    selection``; ``limit`` and ``sample_seed`` apply there) and scores every model that enters the
    top-k on the whole held-out part (``split: heldout``), for evaluators that can split
    (builtin; lm_eval: a task's validation split selects and its test split holds out, a task
    with one split is split by the same seeded rule); ``heldout_seed`` seeds the split.

    ``task_weights`` and ``direction`` (the run's too): the fitness the pool ranks by
    (``kinmerge.evaluate.fitness``): the weighted mean of the task scores (a task not named
    weighs 1), higher better (``max``, accuracy) or lower (``min``, perplexity-type metrics).
    Held-out scores use the same weights."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    heldout: float | Literal[False] = 0.5
    heldout_seed: int = 0
    task_weights: dict[str, float] = {}
    direction: Literal["max", "min"] = "max"

    @field_validator("heldout", mode="before")
    @classmethod
    def _check_heldout(cls, v: Any) -> Any:
        if v is False or v is None:
            return False
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ValueError(f"heldout must be a share between 0 and 1 (exclusive) or false, got {v!r}")
        return float(v)

    @property
    def fitness(self) -> Fitness:
        """What the run's pool ranks by: :attr:`task_weights` and :attr:`direction`."""
        return Fitness(self.task_weights, self.direction)

    @property
    def splits(self) -> bool:
        """Whether this run splits its tasks: ``heldout`` is on and the evaluator can split."""
        from kinmerge.evaluate import evaluator_accepts

        return self.heldout is not False and evaluator_accepts(self.name, "split")

    def settings(self, split: str | None = None) -> dict[str, Any]:
        """The evaluator's keyword arguments (paths already resolved), for one ``split`` part
        (``"selection"`` / ``"heldout"``) when the run splits; ``None``: the selection part."""
        out = dict(self.model_extra or {})
        if self.splits:
            out.update(split=split or "selection", heldout_fraction=self.heldout, split_seed=self.heldout_seed)
            if split == "heldout":  # scored whole: `limit` and `sample_seed` pick what the loop selects on
                out.pop("limit", None)
                out.pop("sample_seed", None)
        return out

    @model_validator(mode="after")
    def _resolve_paths(self, info: ValidationInfo) -> EvaluatorConfig:
        from kinmerge.evaluate import EVALUATORS, resolve_paths

        if self.name not in EVALUATORS:
            raise ValueError(f"unknown evaluator {self.name!r}; choose one of {', '.join(sorted(EVALUATORS))}")
        extra = self.model_extra if self.model_extra is not None else {}
        if "split" in extra or "heldout_fraction" in extra:
            raise ValueError("the run splits the tasks itself: set heldout (a share, or false), not split")
        try:
            extra.update(resolve_paths(extra, root=_root(info)))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        try:
            tasks = self.build().settings().get("tasks") or {}
            self.fitness.check(tasks)  # a weight for a task the run does not have is a typo
        except KinmergeError as exc:
            raise ValueError(str(exc)) from None
        return self

    def run_settings(self, split: str | None = None) -> dict[str, Any]:
        """The settings an evolution run evaluates with: the file's, with the evaluator's own
        progress bar off where it has one (the runner draws its own progress line)."""
        from kinmerge.evaluate import evaluator_accepts

        settings = self.settings(split)
        if evaluator_accepts(self.name, "progress"):
            settings.setdefault("progress", False)
        return settings

    def build(self, split: str | None = None) -> Evaluator:
        """The evaluator object (``kinmerge.evaluate.get_evaluator``) with :meth:`run_settings`."""
        from kinmerge.evaluate import get_evaluator

        return get_evaluator(self.name, **self.run_settings(split))


def evaluator_key(evaluator: Evaluator) -> str:
    """The store's cache key of an evaluator: its name and a hash of its ``settings()``.

    Two runs whose evaluators would give the same scores share evaluations; any setting that
    changes the scores (task contents, limit, dtype, ...) gives a new key.

    Example:
        ``evaluator_key(get_evaluator("builtin", tasks_dir="zoo/tasks"))`` -> ``"builtin-3f2a9c1d0b7e"``
    """
    return f"{evaluator.name}-{json_digest(evaluator.settings(), 12)}"
