"""What the store hands back besides pool data: a run's row, a step of its log, a family tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kinmerge.pool import Origin, RunFingerprint

__all__ = ["Event", "LineageNode", "RunRecord", "RunStatus"]

RunStatus = Literal["running", "finished", "failed", "interrupted"]


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs``: which run, its settings, where it stands.

    ``config`` is the stored JSON as written; runs started by ``kinmerge evolve`` hold a
    :class:`~kinmerge.pool.RunFingerprint` there, read back typed by :attr:`fingerprint`.
    """

    id: str
    strategy: str
    config: dict[str, Any]
    seed: int | None
    status: RunStatus
    started: str
    finished: str | None

    @property
    def fingerprint(self) -> RunFingerprint | None:
        """The run's settings, typed; ``None`` for a run recorded by hand (tests, tools)."""
        return RunFingerprint.from_dict(self.config)


@dataclass(frozen=True)
class Event:
    """One row of the run's step log."""

    id: int
    run_id: str | None
    ts: str
    generation: int | None
    kind: str
    message: str
    duration_s: float | None
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class LineageNode:
    """A model and, recursively, its ancestors: the family tree behind one model."""

    id: str
    origin: Origin
    generation: int
    path: str | None
    recipe: dict[str, Any] | None
    parents: tuple[LineageNode, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain nested data (for ``--json`` and model cards)."""
        return {
            "id": self.id,
            "origin": self.origin,
            "generation": self.generation,
            "path": self.path,
            "recipe": self.recipe,
            "parents": [p.to_dict() for p in self.parents],
        }

    def ancestors(self) -> set[str]:
        """Ids of every ancestor (not including this model)."""
        out: set[str] = set()
        for p in self.parents:
            out.add(p.id)
            out |= p.ancestors()
        return out
