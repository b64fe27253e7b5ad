"""The identity of an evolution run: the settings that make a run *that* run.

The store keeps a run's fingerprint as its ``config`` JSON; resuming compares the stored one with
the config given now (:meth:`RunFingerprint.changes`), and ``status``, ``compare`` and the
reports read it back typed. Resuming under other settings would mix two experiments in one pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kinmerge.evaluate.fitness import Fitness
from kinmerge.kinship import DEFAULT_THRESHOLDS, METRICS

__all__ = ["RunFingerprint"]


@dataclass(frozen=True)
class RunFingerprint:
    """The settings that identify a run: resuming under different ones would mix experiments.

    Stored as the run's ``config`` JSON (keys: ``foundation``, ``base``, ``strategy``,
    ``merge``, ``evaluator``, ``metric``); :meth:`to_dict` writes exactly that shape, so runs
    recorded by earlier versions read back unchanged.

    Attributes:
        foundation: content ids of the foundation models, in config order.
        base: content id of the shared base.
        strategy: the strategy's registry name.
        settings: the strategy's settings (``k``, ``max_generations``, ``metric``, ...).
        recipe: the merge recipe's parameters (``{"method": "slerp", ...}``).
        evaluator: the evaluator key (evaluator name + hash of its settings).
        metric: the kinship metric the run decides and reports with.
        identity: the content-id version the model ids were made with (``None``: kinmerge 0.1,
            whose ids covered the weight files only).
        racing: the racing settings, if children are scored in rounds (``evolve.racing``).
        evaluator_settings: what the evaluator key hashes (task contents, limit, dtype, ...), so a
            refused resume can name the setting that changed (``None``: recorded before 0.2).
        kinship_source: ``exact`` (scans) or ``sketch`` (estimates from sketches); stored only
            when not ``exact``, so earlier runs read back unchanged.
        heldout: the evaluator key of the held-out part of the tasks (``evaluator`` is then the
            selection part's): where status, compare and the reports find the scores of examples
            the run never chose with. ``None``: the run did not split (before 0.3, or
            ``heldout: false``).
        fitness: what the pool ranks by: task weights and the metric direction
            (``kinmerge.evaluate.fitness``); stored only when not the paper's plain mean, so
            earlier runs read back unchanged.
        schedule: ``generational`` (the paper's loop: plan, run the whole generation, plan) or
            ``steady`` (no barrier: ``kinmerge.evolve.steady``); stored only when steady.
        max_in_flight: a steady run's children merged or evaluated at once (its plans depend
            on it); ``None`` for a generational run.
    """

    foundation: tuple[str, ...]
    base: str
    strategy: str
    settings: Mapping[str, Any]
    recipe: Mapping[str, Any]
    evaluator: str
    metric: str = "pcc"
    identity: int | None = None
    racing: Mapping[str, Any] | None = None
    evaluator_settings: Mapping[str, Any] | None = None
    kinship_source: str = "exact"
    heldout: str | None = None
    fitness: Fitness = field(default_factory=Fitness)
    schedule: str = "generational"
    max_in_flight: int | None = None

    @property
    def k(self) -> int:
        """The top-k size (the paper's 3 when the settings do not say)."""
        k = self.settings.get("k", 3)
        return int(k) if isinstance(k, int) and not isinstance(k, bool) and k >= 1 else 3

    @property
    def threshold(self) -> float | None:
        """The kinship early-stop threshold the strategy watches, or ``None`` if it watches none."""
        if self.settings.get("early_stop", True) is False or "threshold" not in self.settings:
            return None
        t = self.settings["threshold"]
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            return float(t)
        return DEFAULT_THRESHOLDS.get(self.metric)

    def to_dict(self) -> dict[str, Any]:
        """The stored shape (see the class docstring)."""
        out: dict[str, Any] = {"foundation": list(self.foundation), "base": self.base,
                               "strategy": {"name": self.strategy, **dict(self.settings)},
                               "merge": dict(self.recipe), "evaluator": self.evaluator, "metric": self.metric}
        if self.identity is not None:
            out["identity"] = self.identity
        if self.racing is not None:
            out["racing"] = dict(self.racing)
        if self.evaluator_settings is not None:
            out["evaluator_settings"] = dict(self.evaluator_settings)
        if self.kinship_source != "exact":
            out["kinship_source"] = self.kinship_source
        if self.heldout is not None:
            out["heldout"] = self.heldout
        if fitness := self.fitness.to_dict():
            out["fitness"] = fitness
        if self.schedule != "generational":
            out["schedule"] = self.schedule
            out["max_in_flight"] = self.max_in_flight
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunFingerprint | None:
        """Read a stored run config back; ``None`` if it is not a fingerprint (a hand-made run)."""
        strategy = data.get("strategy")
        if not isinstance(strategy, Mapping) or not isinstance(data.get("evaluator"), str):
            return None
        settings = {k: v for k, v in strategy.items() if k != "name"}
        metric = data.get("metric") or settings.get("metric") or "pcc"
        return cls(foundation=tuple(data.get("foundation") or ()), base=str(data.get("base") or ""),
                   strategy=str(strategy.get("name", "")), settings=settings, recipe=dict(data.get("merge") or {}),
                   evaluator=data["evaluator"], metric=metric if metric in METRICS else "pcc",
                   identity=data.get("identity"), racing=data.get("racing"),
                   evaluator_settings=data.get("evaluator_settings"),
                   kinship_source=str(data.get("kinship_source") or "exact"),
                   heldout=data.get("heldout") if isinstance(data.get("heldout"), str) else None,
                   fitness=Fitness.from_dict(data["fitness"] if isinstance(data.get("fitness"), Mapping) else None),
                   schedule=str(data.get("schedule") or "generational"),
                   max_in_flight=data.get("max_in_flight") if isinstance(data.get("max_in_flight"), int) else None)

    def changes(self, other: RunFingerprint) -> dict[str, tuple[Any, Any]]:
        """The settings that differ from ``other``: ``{name: (mine, other's)}``.

        Foundation *order* is no change (the pool is a set); the model ids of the foundations and
        the base are compared as they are; the evaluator by its settings when both fingerprints
        have them (``evaluator.limit: 100 -> 50``), else by its key (a hash of them).

        Example:
            >>> a = RunFingerprint(("x", "y"), "b", "greedy", {"k": 3}, {"method": "slerp"}, "e")
            >>> a.changes(RunFingerprint(("y", "x"), "b", "greedy", {"k": 4}, {"method": "slerp"}, "e"))
            {'strategy.k': (3, 4)}
        """
        out: dict[str, tuple[Any, Any]] = {}
        if set(self.foundation) != set(other.foundation):
            out["foundation"] = (list(self.foundation), list(other.foundation))
        for name in ("base", "strategy", "evaluator", "metric", "identity", "racing", "kinship_source", "heldout",
                     "schedule", "max_in_flight"):
            if getattr(self, name) != getattr(other, name):
                out[name] = (getattr(self, name), getattr(other, name))
        sections = [("strategy", self.settings, other.settings), ("merge", self.recipe, other.recipe),
                    ("fitness", _fitness_fields(self.fitness), _fitness_fields(other.fitness))]
        if "evaluator" in out and self.evaluator_settings is not None and other.evaluator_settings is not None:
            del out["evaluator"]
            sections.append(("evaluator", self.evaluator_settings, other.evaluator_settings))
        for prefix, mine, theirs in sections:
            for k in sorted(set(mine) | set(theirs)):
                if mine.get(k) != theirs.get(k):
                    out[f"{prefix}.{k}"] = (mine.get(k), theirs.get(k))
        if "heldout" in out and None not in out["heldout"] and any(k.startswith("evaluator.") for k in out):
            del out["heldout"]  # a key hashed from the evaluator settings named above: no news
        return out


def _fitness_fields(fitness: Fitness) -> dict[str, Any]:
    """Both fitness settings, defaults spelled out, so a change names ``fitness.task_weights`` or
    ``fitness.direction`` (and ``{}`` vs ``direction: max`` is no change)."""
    return {"task_weights": dict(sorted(fitness.weights.items())), "direction": fitness.direction}
