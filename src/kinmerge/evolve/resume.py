"""Resuming a run: which changes of its settings continue the same experiment, and which start another.

A run is identified by its fingerprint (models, strategy and settings, recipe, evaluator, kinship
metric) and its seed. Rerunning the same config resumes it. Two changes are not changes: the
foundation models listed in another order (the pool is a set), and a larger generation budget,
which simply lets the same run go on ("three more generations" without starting over). Anything
else would mix two experiments in one pool, so it is refused with every difference named.

Example:
    >>> from kinmerge.pool import RunFingerprint
    >>> old = RunFingerprint(("a", "b"), "base", "greedy", {"k": 3, "max_generations": 3}, {}, "e")
    >>> reconcile(old, 0, RunFingerprint(("b", "a"), "base", "greedy", {"k": 3, "max_generations": 5}, {}, "e"), 0,
    ...           run="greedy").raised_budget
    (3, 5)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kinmerge.errors import SettingsChangedError, StoreError
from kinmerge.evolve.steps import MergeTask
from kinmerge.pool import STOP_BUDGET, ModelRecord, RunFingerprint
from kinmerge.store import RunStore, check_run

__all__ = ["Resume", "check_remerge", "raise_budget", "reconcile", "remerge_task", "repair"]

_BUDGET = "strategy.max_generations"


@dataclass(frozen=True)
class Resume:
    """How to resume: the fingerprint to keep, and the budget raise to apply (``None``: none)."""

    fingerprint: RunFingerprint
    raised_budget: tuple[int | None, int | None] | None = None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def reconcile(stored: RunFingerprint | None, stored_seed: int | None, new: RunFingerprint, seed: int | None, *,
              run: str, where: str = "", decided: bool = True) -> Resume:
    """Decide whether run ``run`` (stored with ``stored``/``stored_seed``) may resume as ``new``/``seed``.

    ``decided``: whether the run has saved any plan. A run that has decided nothing yet (it failed
    while scoring its foundation models, say, and the user fixed one) simply takes the new settings:
    no record depends on the old ones.

    Raises:
        SettingsChangedError: the settings differ in a way that starts another experiment; the
            message names each difference (``strategy.k: 3 -> 4``) and what to do.
    """
    if stored is None or not decided:  # hand-recorded (only the same text resumes), or nothing decided yet
        return Resume(new)
    changes = stored.changes(new)
    if stored_seed != seed:
        changes["seed"] = (stored_seed, seed)
    budget = changes.pop(_BUDGET, None)
    if budget is not None and not _is_raise(*budget):
        changes[_BUDGET] = budget
    if changes:
        detail = "; ".join(f"{name}: {_show(old)} -> {_show(now)}" for name, old, now in
                           ((n, *v) for n, v in changes.items()))
        hint = ""
        if "identity" in changes or ("foundation" in changes and stored.identity != new.identity):
            hint = (" (model ids now cover config and tokenizer files too, so a run recorded by kinmerge 0.1 "
                    "cannot continue; its records stay readable)")
        raise SettingsChangedError(
            f"run {run!r}{f' in {where}' if where else ''} was started with other settings: {detail}{hint}; "
            "rerun with the same settings (a larger max_generations continues the run) or give a new run_id",
            changes)
    # Keep the stored text (its foundation order) unless the budget grew.
    if budget is None:
        return Resume(stored)
    return Resume(replace(stored, settings={**stored.settings, "max_generations": budget[1]}), budget)


def _is_raise(old: Any, new: Any) -> bool:
    """A budget raise: a larger number, or none at all (``None``) where there was one."""
    if new is None:
        return old is not None
    return isinstance(old, int) and isinstance(new, int) and new > old


def raise_budget(store: RunStore, run_id: str, fingerprint: RunFingerprint, old: int | None, new: int | None, *,
                 say: Callable[[str], None]) -> None:
    """A larger generation budget continues the run: forget a stop made for the old budget."""
    store.update_run_config(run_id, fingerprint.to_dict())
    reopened = store.discard_stop(run_id, STOP_BUDGET)
    store.log_event(run_id, "budget_raised", f"max_generations {old} -> {new}",
                    payload={"old": old, "new": new, "reopened_generation": reopened})
    say(f"generation budget raised from {old} to {new}: the run goes on")


def repair(store: RunStore, run_id: str, *, say: Callable[[str], None]) -> None:
    """Reopen the done generations whose records are lost (the store checks itself): the loop then
    redoes their steps, which are idempotent — what exists is reused, what is missing is made."""
    problems = check_run(store, run_id)
    for generation in sorted({p.generation for p in problems if p.generation > 0}):
        lost = [p.what for p in problems if p.generation == generation]
        store.reopen_plan(run_id, generation)
        store.log_event(run_id, "repair", f"generation {generation}: {'; '.join(lost)}", generation=generation,
                        payload={"problems": lost})
        say(f"gen {generation}: the store lost {len(lost)} record(s) ({lost[0]}...); redoing those steps")


def remerge_task(rec: ModelRecord, folder: Path, *, parents: list[str], base: str, cuda: bool | None) -> MergeTask:
    """The merge that rebuilds a deleted merge folder from its recorded parents and recipe: same
    parents and recipe, so the same id and bytes (run where merges run: a GPU node on a cluster)."""
    params = dict(rec.recipe or {})
    method = params.pop("method", None)
    if method is None or method == "raw":
        raise StoreError(f"merge {rec.id} is missing from {folder} and its recipe cannot be replayed; "
                         "restore the folder")
    return MergeTask(parents=tuple(parents), method=method, params=params, out_root=str(folder.parent),
                     base=base, cuda=cuda)


def check_remerge(rec: ModelRecord, res: dict[str, Any], folder: Path, *, store: RunStore, run_id: str) -> None:
    """Refuse a rebuilt merge whose id differs from the recorded one; log the rebuild."""
    if res["id"] != rec.id:
        raise StoreError(f"re-merging deleted {rec.id} gave {res['id']}; restore the folder {folder}")
    store.log_event(run_id, "remerge", f"rebuilt deleted merge {rec.id}", duration_s=res["seconds"])
