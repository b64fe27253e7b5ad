"""Held-out scores: what a chosen model scores on examples the choice never saw.

Evolutionary merging over-fits the set it selects on (in the NeurIPS 2024 LLM merging
competition a winning entry scored 0.83 on the public set and 0.41 in the finals), so a run
splits every task into a selection part, which ranks the pool and so decides every merge, and a
held-out part, which decides nothing (``kinmerge.evaluate.tasks.split_task``). After each
generation, every model in the top-k by selection score that has no held-out score yet is scored
on the held-out part: each generation's best and every model that ever entered the top-k have
one. Held-out scores live in the store's evaluations under their own evaluator key (the
fingerprint's ``heldout``), so nothing that ranks the pool ever reads them.

Example:
    >>> needs_heldout(("a", "b"), scored={"a", "c"})
    ['b']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kinmerge.evolve.config import EvaluatorConfig, RunConfig, evaluator_key
from kinmerge.evolve.steps import EvaluateTask, run_evaluation
from kinmerge.pool import PoolState, topk
from kinmerge.store import RunStore

__all__ = ["HeldOut", "evaluator_for_run", "needs_heldout"]


def needs_heldout(top: Sequence[str], *, scored: Iterable[str]) -> list[str]:
    """The ids of the top-k (best first, ``kinmerge.pool.topk``) that have no held-out score yet."""
    have = set(scored)
    return [mid for mid in top if mid not in have]


def evaluator_for_run(cfg: RunConfig, store: RunStore) -> EvaluatorConfig:
    """The run's evaluator config: a run recorded before held-out splits (0.3) resumes without one
    unless its config asks for ``heldout`` explicitly (which is then a refused change)."""
    existing = store.get_run(cfg.name)
    fp = existing.fingerprint if existing is not None else None
    if (fp is not None and fp.heldout is None and "split" not in (fp.evaluator_settings or {})
            and "heldout" not in cfg.evaluator.model_fields_set):
        return cfg.evaluator.model_copy(update={"heldout": False})
    return cfg.evaluator


class HeldOut:
    """Scores the top-k of a run on the held-out part (the runner's one collaborator for it).

    Args:
        key: the held-out evaluator key (``evolve.config.evaluator_key``).
        name: the evaluator's registry name; ``settings``: its held-out settings.
        store: the run's store; ``executor``: where evaluations run.
        path_of: a model id's folder; ``step``: shows a progress line.
    """

    def __init__(self, key: str, name: str, settings: dict[str, Any], *, store: Any, executor: Any,
                 run_id: str, path_of: Callable[[str], str], step: Callable[[str], None]) -> None:
        self.key, self.name, self.settings = key, name, settings
        self.store, self.executor, self.run_id = store, executor, run_id
        self.path_of, self.step = path_of, step
        self.made = 0

    @classmethod
    def for_run(cls, evaluator: EvaluatorConfig, **kwargs: Any) -> HeldOut | None:
        """The held-out scorer of a run's evaluator config; ``None`` when the run does not split."""
        if not evaluator.splits:
            return None
        return cls(evaluator_key(evaluator.build("heldout")), evaluator.name, evaluator.run_settings("heldout"),
                   **kwargs)

    def after_generation(self, state: PoolState, k: int, generation: int) -> int:
        """Score the top-k of ``state`` once every model in it is scored; the count made so far."""
        if state.models and all(m.score is not None for m in state.models):
            self.score_topk(topk(state, k), generation=generation)
        return self.made

    def score_topk(self, top: Sequence[str], *, generation: int) -> None:
        """Score, on the held-out part, the models of the top-k ``top`` that lack a held-out score."""
        have = {m for m, v in self.store.average_scores(list(top), evaluator=self.key).items() if v is not None}
        todo = needs_heldout(top, scored=have)
        if not todo:
            return

        def started() -> Iterable[EvaluateTask]:
            for n, mid in enumerate(todo):
                self.step(f"gen {generation}: held-out scoring {n + 1}/{len(todo)}")
                yield EvaluateTask(self.path_of(mid), self.name, self.settings)

        for n, res in self.executor.imap(run_evaluation, started()):
            mid = todo[n]
            self.store.record_evaluations(mid, self.key, res["scores"], details=res["details"])
            self.made += 1
            self.store.log_event(self.run_id, "evaluate_heldout", f"{mid}: {res['average']:.4f}",
                                 generation=generation, duration_s=res["seconds"],
                                 payload={"id": mid, "scores": res["scores"], "average": res["average"]})
