"""The store checks itself: what a finished generation promised and the records no longer show.

A generation marked done promised that each of its planned merges is in the run's pool, with its
parents and a full set of scores, and that every foundation model is there and scored. A record
lost afterwards (a row deleted by hand, a restored backup, a half-copied file) would otherwise
go unnoticed: the strategy would rank a pool with a hole in it and name another best model. So
the runner checks before it plans and redoes what is missing — every step is idempotent, so a
lost score is simply recomputed — and ``kinmerge status`` reports the same problems.

Example:
    ``[p.describe() for p in check_run(store, "kinship")]`` ->
    ``["generation 2: merge 1a2b3c4d of 0ab0718c+9e9acbc8 has no score"]``
"""

from __future__ import annotations

from dataclasses import dataclass

from kinmerge.pool import short_id
from kinmerge.store.db import RunStore

__all__ = ["Problem", "check_run"]


@dataclass(frozen=True)
class Problem:
    """One thing the records of a done generation lack (generation 0: the foundation models)."""

    generation: int
    what: str

    def describe(self) -> str:
        return f"generation {self.generation}: {self.what}"


def check_run(store: RunStore, run_id: str) -> list[Problem]:
    """Everything missing from the records of run ``run_id``'s completed generations.

    Raises:
        StoreError: no such run.
    """
    run = store.pick_run(run_id)
    fp = run.fingerprint
    evaluator = fp.evaluator if fp and fp.evaluator in store.evaluators() else None
    if evaluator is None and len(store.evaluators()) > 1:
        return []  # scores cannot be judged without knowing whose; the caller reports that
    pool = {m.id: m for m in store.pool(run_id, evaluator=evaluator)}
    problems: list[Problem] = []
    for fid in fp.foundation if fp else ():
        model = pool.get(fid)
        if model is None:
            problems.append(Problem(0, f"foundation model {short_id(fid)} is missing from the pool"))
        elif model.score is None and evaluator is not None:
            problems.append(Problem(0, f"foundation model {short_id(fid)} has no score"))
    children = {m.parents: m for m in pool.values() if m.parents}
    for generation, (plan, status) in sorted(store.plans(run_id).items()):
        if status != "done":
            continue
        for merge in plan.merges:
            names = "+".join(short_id(p) for p in merge.parents)
            child = children.get(merge.parents)
            if child is None:
                problems.append(Problem(generation, f"the merge of {names} is missing from the pool"))
            elif child.score is None and evaluator is not None:
                problems.append(Problem(generation, f"merge {short_id(child.id)} of {names} has no score"))
    return problems
