"""Where a run stands: its pool with scores and lineage facts, its top-k, why it stopped.

:class:`RunSummary` is what ``kinmerge evolve`` returns and ``kinmerge status`` prints. It is a
view of the store (read without the run lock, so it works while the run is going), built with
the pool's pure helpers.

Example:
    >>> # not run here: needs a run (kinmerge evolve examples/evolve.yaml makes this one)
    >>> summary = read_summary("runs/evolve-kinship")              # doctest: +SKIP
    >>> summary.status, summary.best.id                       # doctest: +SKIP
    ('finished', '0ab0718cc0970b8b')
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kinmerge.evaluate.fitness import Fitness
from kinmerge.pool import (
    Plan,
    PoolModel,
    PoolState,
    known_mean_kinship,
    mean_kinship_bound,
    topk,
    with_merge_facts,
)
from kinmerge.store import RunStore, check_run, is_locked

__all__ = ["RunSummary", "format_bound", "generation_line", "read_summary", "summarize"]


def format_bound(bound: float | None, digits: int = 4) -> str:
    """How a value shows that it is an estimate: `` ± 0.0123`` after it (`` ± ?`` for a bound not
    recorded), nothing for an exact value.

    Example:
        >>> f"0.5120{format_bound(0.0101)}", f"0.5120{format_bound(None)}"
        ('0.5120 ± 0.0101', '0.5120')
    """
    if bound is None:
        return ""
    return f" ± {bound:.{digits}f}" if math.isfinite(bound) else " ± ?"


@dataclass(frozen=True)
class RunSummary:
    """Where a run stands: its pool, its top-k, why it stopped, what this call did.

    Attributes:
        run_id, run_dir: which run.
        status: ``"running"``, ``"finished"``, ``"failed"``, ``"interrupted"`` (marked running
            but no process holds the run: rerun to resume) or ``"dry-run"``.
        stop: the stop reason, once the strategy stopped.
        generation: the last completed generation.
        metric, k: the run's kinship metric and top-k size.
        top_k, top_k_kinship: the current top-k and its mean pairwise kinship.
        top_k_kinship_bound: that mean's 99% bound when some of its values are estimates
            (``kinship_source: sketch``), else ``None``.
        kinship_source: ``"exact"`` or ``"sketch"`` (estimates; a pair re-checked exactly reads
            its exact value).
        kinship_rechecks: decisions an estimate could have flipped, re-checked exactly (all
            calls of the run; ``made["kinship_rechecks"]`` counts this call's).
        pool: every model of the pool, by generation then id, with merge gain, parents' kinship
            and the reason it was merged.
        merges: merges in the pool (the paper's "merges" column).
        pending: the generation planned but not finished, if any.
        made: what this call did: ``merges``, ``merges_reused``, ``evaluations``,
            ``kinship_pairs``, ``kinship_scans``, ``kinship_rechecks``.
        seconds: how long this call took.
        next_plan: the plan a dry run would execute next.
        problems: records a done generation promised and the store lacks (the next
            ``kinmerge evolve`` redoes those steps).
        heldout: whether the run splits its tasks: ``score`` is then the selection part's, and
            each model that entered the top-k has a ``heldout_score``.
        fitness: what the run ranks by; ``score`` and ``heldout_score`` are its weighted means
            (raw: with ``direction: min`` the best model has the lowest score).
    """

    run_id: str
    run_dir: Path
    status: str
    stop: str | None
    generation: int
    metric: str
    k: int
    top_k: tuple[str, ...]
    top_k_kinship: float | None
    pool: tuple[PoolModel, ...]
    merges: int
    pending: int | None = None
    made: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    next_plan: Plan | None = None
    problems: tuple[str, ...] = ()
    heldout: bool = False
    top_k_kinship_bound: float | None = None
    kinship_source: str = "exact"
    kinship_rechecks: int = 0
    fitness: Fitness = field(default_factory=Fitness)
    #: examples behind each task score, selection and held-out part (``None``: varies or unknown)
    examples_per_task: int | None = None
    heldout_examples_per_task: int | None = None
    tasks: int = 0

    @property
    def best(self) -> PoolModel | None:
        """The best-scored model of the pool by the run's fitness (ties by id), or ``None``."""
        scored = [m for m in self.pool if m.score is not None]
        return min(scored, key=lambda m: (-self.fitness.key(m.score or 0.0), m.id)) if scored else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``kinmerge status --json``)."""
        best = self.best
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "status": self.status,
            "stop": self.stop,
            "generation": self.generation,
            "pending": self.pending,
            "metric": self.metric,
            "k": self.k,
            "top_k": list(self.top_k),
            "top_k_kinship": self.top_k_kinship,
            "top_k_kinship_bound": _finite(self.top_k_kinship_bound),
            "kinship_source": self.kinship_source,
            "kinship_rechecks": self.kinship_rechecks,
            "best": best.id if best else None,
            "best_score": best.score if best else None,
            "best_heldout_score": best.heldout_score if best else None,
            "heldout": self.heldout,
            "tasks": self.tasks,
            "examples_per_task": self.examples_per_task,
            "heldout_examples_per_task": self.heldout_examples_per_task,
            "merges": self.merges,
            "pool": [{**m.to_dict(), "in_top_k": m.id in self.top_k} for m in self.pool],
            "made": dict(self.made),
            "seconds": round(self.seconds, 3),
            "next_plan": self.next_plan.to_dict() if self.next_plan else None,
            "problems": list(self.problems),
        }


def summarize(store: RunStore, run_id: str, run_dir: str | os.PathLike[str] | None = None) -> RunSummary:
    """The summary of run ``run_id`` from an open store (public queries only).

    Raises:
        StoreError: no such run.
    """
    run = store.pick_run(run_id)
    fp = run.fingerprint
    metric, k = (fp.metric, fp.k) if fp else ("pcc", 3)
    fitness = fp.fitness if fp else Fitness()
    models = store.pool(run_id, evaluator=fp.evaluator if fp else None, fitness=fitness)
    ids = [m.id for m in models]
    kinship, bounds = store.kinship_of_run(run.id, metric, model_ids=ids)
    reasons: dict[frozenset[str], str] = {}
    for plan, _ in store.plans(run_id).values():
        for m in plan.merges:
            reasons.setdefault(m.pair, m.reason)
    pool = with_merge_facts(models, scores={m.id: m.score for m in models}, kinship=kinship, reasons=reasons,
                             bounds=bounds)
    if fp is not None and fp.heldout is not None:
        heldout = store.average_scores(ids, evaluator=fp.heldout, fitness=fitness)
        pool = tuple(replace(m, heldout_score=heldout.get(m.id)) for m in pool)
    scored = sorted((m for m in pool if m.score is not None), key=lambda m: (-fitness.key(m.score or 0.0), m.id))
    top = tuple(m.id for m in scored[:k])
    pending = store.pending_plan(run_id)
    run_dir = Path(run_dir) if run_dir is not None else store.run_dir
    status = run.status
    if status == "running" and not is_locked(run_dir):
        status = "interrupted"
    return RunSummary(
        run_id=run_id,
        run_dir=run_dir,
        status=status,
        stop=store.stop_reason(run_id),
        generation=store.last_completed_generation(run_id),
        metric=metric,
        k=k,
        top_k=top,
        top_k_kinship=known_mean_kinship(top, kinship),
        top_k_kinship_bound=mean_kinship_bound(top, bounds) if known_mean_kinship(top, kinship) is not None else None,
        kinship_source=store.kinship_key(run.id)[1] or "exact",
        kinship_rechecks=len(store.events(run_id, kind="kinship_recheck")),
        pool=pool,
        merges=sum(1 for m in pool if m.parents),
        pending=pending.generation if pending else None,
        problems=tuple(p.describe() for p in check_run(store, run_id)),
        heldout=fp is not None and fp.heldout is not None,
        fitness=fitness,
        examples_per_task=_uniform(store.examples_by_task(ids, evaluator=fp.evaluator if fp else None)),
        heldout_examples_per_task=_uniform(store.examples_by_task(ids, evaluator=fp.heldout))
        if fp is not None and fp.heldout is not None else None,
        tasks=len({t for m in pool for t in m.task_scores}),
    )


def _uniform(per_model: dict[str, dict[str, int]]) -> int | None:
    """The examples behind every task score when all are equal (``None``: none, or they vary)."""
    counts = {n for per_task in per_model.values() for n in per_task.values()}
    return counts.pop() if len(counts) == 1 else None


def _finite(bound: float | None) -> float | None:
    return bound if bound is None or math.isfinite(bound) else None  # JSON has no inf: unknown is null


def read_summary(run_dir: str | os.PathLike[str], run_id: str | None = None) -> RunSummary:
    """The :class:`RunSummary` of a run, read without locking (safe while it runs).

    Args:
        run_id: which run of the store; default: the latest started.

    Raises:
        StoreError: no store in ``run_dir``, or no such run.
    """
    with RunStore(run_dir, lock=False) as store:
        return summarize(store, store.pick_run(run_id).id, run_dir)


def generation_line(state: PoolState, k: int, metric: str, *, seconds: float | None = None,
                    fitness: Fitness | None = None) -> tuple[str | None, dict[str, Any]]:
    """The progress line of the state's last generation and its facts (the ``generation`` event).

    Returns ``(None, {})`` before anything is scored. The top-k kinship is left out (``n/a``)
    until every model is scored, because the top-k is not known before. ``fitness``: the one the
    state's scores are ranking keys of; the line shows its weighted means (raw).

    Example output::

        gen 2: 2 merges | best 0.5133 (+0.0100) | top-3 pcc kinship 0.4940 | merges 5 | 9.8s
    """
    g = state.generation
    scored = [m.score for m in state.models if m.score is not None]
    if not scored:
        return None, {}
    raw = (fitness or Fitness()).value_of_key
    best = raw(max(scored))
    before = [m.score for m in state.models if m.score is not None and m.generation < g]
    gain = f" ({best - raw(max(before)):+.4f})" if before else ""
    kin = known_mean_kinship(topk(state, k), state.kinship) if len(scored) == len(state.models) else None
    merges = sum(1 for m in state.models if m.parents)
    new = sum(1 for m in state.models if m.generation == g)
    what = f"{new} foundation models" if g == 0 else f"{new} merges"
    timing = f" | {seconds:.1f}s" if seconds is not None else ""
    bound = None if kin is None else mean_kinship_bound(topk(state, k), state.kinship_bounds)
    line = (f"gen {g}: {what} | best {best:.4f}{gain} | top-{k} {metric} kinship "
            f"{'n/a' if kin is None else f'{kin:.4f}'}{format_bound(bound)} | merges {merges}{timing}")
    return line, {"best": best, "top_k_kinship": None if kin is None else round(kin, 4), "merges": merges}
