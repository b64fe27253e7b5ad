"""A run's history as plain data: what reports, figures and ``compare`` are drawn from.

Two halves:

- **Pure functions over pool rows** (:func:`generation_rows`, :func:`topk_rows`,
  :func:`merge_gain_rows`): the per-generation table, the top-k kinship curve and the merge-gain
  scatter of the paper (§2, §5), computed from :class:`~kinmerge.pool.PoolModel` rows, scores and
  kinship values. No I/O; tested on made-up pools.
- **Loading** (:func:`load_runs`): every run of every store given, read without the run lock
  (so a report can be made while a run writes) into one :class:`RunHistory` per run.

Example:
    ``runs = load_runs(["runs/greedy", "runs/kinship"])``; ``runs[0].generations[-1].pool_best``
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kinmerge.errors import StoreError
from kinmerge.kinship import METRICS, check_metric
from kinmerge.pool import (
    STOP_KINSHIP,
    Plan,
    PoolModel,
    RunFingerprint,
    best_by_generation,
    mean_kinship_bound,
    parents_mean,
    short_id,
    topk_by_generation,
    with_merge_facts,
)
from kinmerge.report.anytime import Anytime, curve
from kinmerge.report.stats import score_sem
from kinmerge.store import RunRecord, RunStore

__all__ = [
    "GenerationRow",
    "MergeGainRow",
    "RunHistory",
    "TopkRow",
    "generation_rows",
    "load_runs",
    "merge_gain_rows",
    "topk_rows",
]


# ---------------------------------------------------------------------------------------------
# Pure analytics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationRow:
    """One generation of a run (one row of the paper's §5 table).

    ``best_score``/``mean_score`` are over the models that joined in this generation;
    ``pool_best`` is the best of the whole pool after it (what the paper's table reports).
    """

    generation: int
    models: int
    merges: int
    best_score: float | None
    mean_score: float | None
    pool_best: float | None


@dataclass(frozen=True)
class TopkRow:
    """The top-k after a generation and their mean pairwise kinship (``None`` if not computed)."""

    generation: int
    top_k: tuple[str, ...]
    kinship: float | None


@dataclass(frozen=True)
class MergeGainRow:
    """One merge: its gain over its parents and its parents' kinship (paper §2's scatter plot)."""

    child: str
    parents: tuple[str, ...]
    generation: int
    reason: str | None
    child_score: float | None
    parents_mean: float | None
    merge_gain: float | None
    kinship: float | None


def generation_rows(pool: Sequence[PoolModel]) -> list[GenerationRow]:
    """Per generation: models added, merges made, best and mean score, best of the pool.

    Unscored models count in ``models``/``merges`` but not in the scores.
    """
    best = best_by_generation(pool)
    out = []
    for g in sorted({m.generation for m in pool}):
        new = [m for m in pool if m.generation == g]
        scores = [m.score for m in new if m.score is not None]
        out.append(GenerationRow(g, len(new), sum(1 for m in new if m.parents), max(scores) if scores else None,
                                 math.fsum(scores) / len(scores) if scores else None, best[g]))
    return out


def topk_rows(pool: Sequence[PoolModel], k: int, kinship: Mapping[frozenset[str], float]) -> list[TopkRow]:
    """Per generation: the top-k of the pool after it and their mean pairwise kinship (paper §4's
    early-stop quantity); ``None`` where a pair was never computed."""
    return [TopkRow(g, top, value) for g, top, value in topk_by_generation(pool, k, kinship)]


def merge_gain_rows(pool: Sequence[PoolModel], *, scores: Mapping[str, float | None],
                    kinship: Mapping[frozenset[str], float],
                    reasons: Mapping[frozenset[str], str]) -> list[MergeGainRow]:
    """One row per merge of the pool (by generation, then id): gain vs the parents' kinship.

    Args:
        scores: average scores of the models and their parents.
        kinship: pairwise kinship of one metric.
        reasons: why each parent pair was planned.
    """
    merges = sorted((m for m in pool if m.parents), key=lambda m: (m.generation, m.id))
    return [
        MergeGainRow(m.id, m.parents, m.generation, m.reason, m.score, parents_mean(m, scores), m.merge_gain,
                     m.kinship)
        for m in with_merge_facts(merges, scores=scores, kinship=kinship, reasons=reasons)
    ]


# ---------------------------------------------------------------------------------------------
# One run's history
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunHistory:
    """Everything a report shows about one run (plain data; the store is closed).

    ``models`` holds the pool by id, with merge gain, parents' kinship (the report's metric) and
    the reason each merge was planned; ``labels`` gives each a short unique display name.
    """

    run_dir: Path
    run: RunRecord
    fingerprint: RunFingerprint | None
    evaluator: str | None
    tasks: tuple[str, ...]
    k: int
    metric: str
    threshold: float | None
    models: dict[str, PoolModel]
    labels: dict[str, str]
    generations: list[GenerationRow]
    topk: list[TopkRow]
    gains: dict[str, list[MergeGainRow]]
    kinship: dict[str, dict[frozenset[str], float]]
    stop_reason: str | None
    stop_generation: int | None
    pending_generation: int | None
    plans: dict[int, Plan] = field(default_factory=dict)
    merge_order: tuple[str, ...] = ()
    examples: dict[str, int] = field(default_factory=dict)
    task_examples: dict[str, dict[str, int]] = field(default_factory=dict)
    heldout: dict[str, float] = field(default_factory=dict)
    #: per metric, the 99% bound of each value that is an estimate (``kinship_source: sketch``)
    kinship_bounds: dict[str, dict[frozenset[str], float]] = field(default_factory=dict)
    kinship_source: str = "exact"
    #: decisions an estimate could have flipped, re-checked exactly (``kinship_recheck`` events)
    kinship_rechecks: int = 0

    def topk_kinship_bound_at(self, generation: int) -> float | None:
        """The bound of :meth:`topk_kinship_at` when some of its values are estimates, else ``None``."""
        row = next((t for t in self.topk if t.generation == generation), None)
        if row is None or row.kinship is None:
            return None
        return mean_kinship_bound(row.top_k, self.kinship_bounds.get(self.metric, {}))

    @property
    def anytime(self) -> Anytime:
        """Best score of the pool after each merge, in the order the merges were made."""
        return curve(list(self.models.values()), merge_order=self.merge_order,
                     examples=self.examples if self.examples else None)

    @property
    def testbed(self) -> tuple[tuple[str, ...], str | None]:
        """What makes two runs comparable pair by pair: the same foundation models (as a set) scored
        by the same evaluator (task set, held-out sample and settings)."""
        return tuple(sorted(m.id for m in self.foundations)), self.evaluator

    @property
    def variant(self) -> str:
        """The strategy variant: the run id without a trailing seed (``random-s1`` -> ``random``)."""
        return re.sub(r"-s\d+$", "", self.run.id)

    @property
    def run_metric(self) -> str:
        """The kinship metric the run itself decided with (its config), whatever metric the report
        draws (``report --metric`` changes the figures, not what the run did)."""
        return self.fingerprint.metric if self.fingerprint is not None else self.metric

    @property
    def examples_per_task(self) -> int | None:
        """``n``: examples behind each task score, when every scored task of the pool used the same
        number (``None``: not recorded, or it varies; then see :attr:`task_examples`)."""
        counts = {n for per_task in self.task_examples.values() for n in per_task.values()}
        return counts.pop() if len(counts) == 1 else None

    def score_sem(self, model_id: str) -> float | None:
        """Standard error of a model's average score from its examples (``stats.score_sem``)."""
        m = self.models.get(model_id)
        if m is None or m.score is None:
            return None
        return score_sem(m.task_scores, self.task_examples.get(model_id, {}))

    def label_of(self, model_id: str) -> str:
        """The short display name of a model (a parent outside the pool: its id's prefix)."""
        return self.labels.get(model_id, short_id(model_id))

    @property
    def label(self) -> str:
        """A short name for legends: ``run dir · run id`` (plus the strategy if the id hides it).

        The run directory names the foundation set in the demo, so curves of several sets
        stay distinguishable.
        """
        strategy = "" if self.run.strategy in self.run.id else f" ({self.run.strategy})"
        return f"{self.run_dir.name} · {self.run.id}{strategy}"

    @property
    def merges_used(self) -> int:
        """How many merges the run's pool holds (the paper's "merges" column)."""
        return sum(1 for m in self.models.values() if m.parents)

    @property
    def foundations(self) -> list[PoolModel]:
        """The foundation models of the pool, by label."""
        return sorted((m for m in self.models.values() if not m.parents), key=lambda m: self.label_of(m.id))

    @property
    def final_topk(self) -> tuple[str, ...]:
        """The top-k of the whole pool now (best first); empty when nothing is scored."""
        return self.topk[-1].top_k if self.topk else ()

    @property
    def early_stop_generation(self) -> int | None:
        """The generation kinship early stopping skipped (it was planned as a stop), or ``None``."""
        return self.stop_generation if self.stop_reason == STOP_KINSHIP else None

    @property
    def foundation_best(self) -> float | None:
        """Best average score among the foundation models."""
        scores = [m.score for m in self.foundations if m.score is not None]
        return max(scores) if scores else None

    @property
    def final_best(self) -> float | None:
        """Best average score in the whole pool."""
        scores = [m.score for m in self.models.values() if m.score is not None]
        return max(scores) if scores else None

    def best_model(self, generation: int | None = None) -> PoolModel | None:
        """The model the run would hand over after ``generation`` (default: now): the best by the
        score it ranks with (ties by id), among models from generations ``<= generation``."""
        scored = [m for m in self.models.values() if m.score is not None
                  and (generation is None or m.generation <= generation)]
        rank = self.fingerprint.fitness.key if self.fingerprint is not None else float
        return min(scored, key=lambda m: (-rank(m.score or 0.0), m.id)) if scored else None

    @property
    def final_best_heldout(self) -> float | None:
        """The held-out score of :meth:`best_model` (``None``: the run did not split, or has not
        scored it yet): the number a user of the chosen model can expect."""
        best = self.best_model()
        return self.heldout.get(best.id) if best is not None else None

    def best_heldout_per_generation(self) -> dict[int, float | None]:
        """The held-out score of the best model after each generation."""
        out: dict[int, float | None] = {}
        for s in self.generations:
            best = self.best_model(s.generation)
            out[s.generation] = self.heldout.get(best.id) if best is not None else None
        return out

    def best_per_generation(self) -> dict[int, float | None]:
        """Best score of the pool after each generation (the paper's §5 table row)."""
        return {s.generation: s.pool_best for s in self.generations}

    def topk_kinship_at(self, generation: int) -> float | None:
        """Mean pairwise kinship of the top-k after ``generation`` (``None`` if not computed)."""
        return next((t.kinship for t in self.topk if t.generation == generation), None)

    def kinship_matrix(self, metric: str | None = None) -> tuple[list[str], list[list[float]]]:
        """Ids of the pool (generation, label order) and their kinship matrix (NaN = unknown).

        The diagonal is each model with itself: 1 for PCC/CS, 0 for ED.
        """
        metric = metric or self.metric
        ids = [m.id for m in sorted(self.models.values(), key=lambda m: (m.generation, self.label_of(m.id)))]
        values = self.kinship.get(metric, {})
        self_value = 0.0 if metric == "ed" else 1.0
        return ids, [[self_value if a == b else values.get(frozenset((a, b)), math.nan) for b in ids] for a in ids]


def _pick_evaluator(store: RunStore, fingerprint: RunFingerprint | None, evaluator: str | None) -> str | None:
    keys = store.evaluators()
    if evaluator is not None:
        if keys and evaluator not in keys:
            raise StoreError(f"no scores from evaluator {evaluator!r} in {store.db_path}; it holds: {', '.join(keys)}")
        return evaluator
    if fingerprint is not None and fingerprint.evaluator in keys:
        return fingerprint.evaluator
    if len(keys) > 1:
        raise StoreError(f"{store.db_path} holds scores from several evaluators ({', '.join(keys)}); "
                         "choose one with --evaluator")
    return keys[0] if keys else None


def _labels(models: Sequence[PoolModel]) -> dict[str, str]:
    """Short, unique display names: a foundation's folder name, a merge's ``g<gen>:<short id>``
    (``g1:afea62a8``, the id as ``status`` and ``lineage`` print it)."""
    out: dict[str, str] = {}
    for m in models:
        name = ""
        if not m.parents and m.path:
            name = Path(str(m.path).rstrip("/\\")).name or str(m.path)
            if name == m.id:
                name = ""  # a content-addressed folder: the id says more
            elif len(name) > 24:
                name = name[:22] + "…"
        out[m.id] = name or (f"g{m.generation}:{short_id(m.id)}" if m.parents else short_id(m.id))
    counts: dict[str, int] = {}
    for lab in out.values():
        counts[lab] = counts.get(lab, 0) + 1
    return {mid: (lab if counts[lab] == 1 else f"{lab}·{short_id(mid)}") for mid, lab in out.items()}


def _load_run(store: RunStore, run: RunRecord, evaluator: str | None, metric: str) -> RunHistory:
    fp = run.fingerprint
    key = _pick_evaluator(store, fp, evaluator)
    k = fp.k if fp else int(run.config.get("k", 3)) if isinstance(run.config.get("k"), int) else 3
    threshold = fp.threshold if fp and fp.metric == metric else None
    fitness = fp.fitness if fp is not None and key == fp.evaluator else None  # weights are the run's tasks'
    pool = store.pool(run.id, evaluator=key, fitness=fitness)
    ids = [m.id for m in pool]
    plans = {g: plan for g, (plan, _) in store.plans(run.id).items()}
    statuses = {g: status for g, (_, status) in store.plans(run.id).items()}
    reasons: dict[frozenset[str], str] = {}
    for plan in plans.values():
        for pm in plan.merges:
            reasons.setdefault(pm.pair, pm.reason)
    scores = {m.id: m.score for m in pool}
    read = {m: store.kinship_of_run(run.id, m, model_ids=ids) for m in METRICS}  # exact re-checks in place
    kinship, bounds = {m: v for m, (v, _) in read.items()}, {m: b for m, (_, b) in read.items()}
    gains = {m: merge_gain_rows(pool, scores=scores, kinship=kinship[m], reasons=reasons) if key else []
             for m in METRICS}
    models = {m.id: m for m in with_merge_facts(pool, scores=scores, kinship=kinship[metric], reasons=reasons,
                                                bounds=bounds[metric])}
    stops = [g for g, p in plans.items() if p.stop is not None]
    pending = [g for g, s in statuses.items() if s == "planned"]
    children = {m.parents: m.id for m in pool if m.parents}
    order = tuple(children[pm.parents] for _, plan in sorted(plans.items()) for pm in plan.merges
                  if pm.parents in children)
    per_task = store.examples_by_task(ids, evaluator=key) if key is not None else {}
    return RunHistory(
        run_dir=store.run_dir,
        run=run,
        fingerprint=fp,
        evaluator=key,
        tasks=tuple(sorted({t for m in pool for t in m.task_scores})),
        k=k,
        metric=metric,
        threshold=threshold,
        models=models,
        labels=_labels(pool),
        generations=generation_rows(pool),
        topk=topk_rows(pool, k, kinship[metric]) if key is not None else [],
        gains=gains,
        kinship=kinship,
        stop_reason=store.stop_reason(run.id),
        stop_generation=max(stops) if stops else None,
        pending_generation=min(pending) if pending else None,
        plans=plans,
        merge_order=order,
        examples={mid: sum(n.values()) for mid, n in per_task.items()},
        task_examples=per_task,
        heldout={mid: v for mid, v in store.average_scores(ids, evaluator=fp.heldout, fitness=fp.fitness).items()
                 if v is not None}
        if fp is not None and fp.heldout is not None else {},
        kinship_bounds=bounds,
        kinship_source=store.kinship_key(run.id)[1] or "exact",
        kinship_rechecks=len(store.events(run.id, kind="kinship_recheck")),
    )


def counted_runs(runs: Sequence[RunHistory]) -> list[RunHistory]:
    """The runs whose numbers enter means across runs: finished ones. An interrupted, failed or
    still-running run has a pool cut short at some generation; averaged with finished runs it
    would pull a strategy's curve down for a reason that is not the strategy."""
    return [r for r in runs if r.run.status == "finished"]


def left_out_line(runs: Sequence[RunHistory]) -> str | None:
    """The one line that says which runs are shown but left out of the means, and why; ``None``
    when every run finished."""
    left = [r for r in runs if r.run.status != "finished"]
    if not left:
        return None
    names = ", ".join(f"{r.run.id} in {r.run_dir} ({unfinished(r.run.status)})" for r in left)
    return (f"left out of the means across runs, not finished: {names}; resume with `kinmerge evolve CONFIG` "
            "to count them")


def unfinished(status: str) -> str:
    """How a run that is not finished is described (a run marked running with no process is
    one that was killed)."""
    return "interrupted or still running" if status == "running" else status


def unique_run_dirs(run_dirs: Sequence[str | os.PathLike[str]]) -> list[str | os.PathLike[str]]:
    """``run_dirs`` without repeats, first mention kept: ``runs/a``, ``./runs/a/`` and a link to it
    name one store, whose runs must count once in every mean.

    Example:
        >>> unique_run_dirs(["runs/a", "runs/a/", "./runs/a", "runs/b"])
        ['runs/a', 'runs/b']
    """
    seen: set[Path] = set()
    out = []
    for run_dir in run_dirs:
        key = Path(run_dir).resolve()
        if key not in seen:
            seen.add(key)
            out.append(run_dir)
    return out


def load_runs(run_dirs: Sequence[str | os.PathLike[str]], *, evaluator: str | None = None,
              metric: str | None = None) -> list[RunHistory]:
    """Every run of every store in ``run_dirs``, in the order given (runs oldest first).

    Args:
        evaluator: which evaluator's scores to use when a store holds several (default: the
            run's own, else the only one).
        metric: the kinship metric of the top-k curve and heatmap (default: the metric the first
            kinship-watching run used, else PCC, the paper's main metric).

    Raises:
        StoreError: a directory has no store, a store has no run, or the evaluator is ambiguous.
    """
    if metric is not None:
        try:
            check_metric(metric)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
    stores = []
    for run_dir in unique_run_dirs(run_dirs):  # a directory given twice (runs/a runs/a/) counts once
        with RunStore(run_dir, lock=False) as store:
            runs = store.runs()
        if not runs:
            raise StoreError(f"the store in {run_dir} holds no run yet; start one there first")
        stores.append((run_dir, runs))
    if metric is None:
        # One metric for the whole report (the runs share its charts): the first run that
        # watches one (a kinship strategy) decides; else PCC.
        watched = [r.fingerprint.settings.get("metric") for _, runs in stores for r in runs if r.fingerprint]
        metric = next((m for m in watched if m in METRICS), "pcc")
    out: list[RunHistory] = []
    for run_dir, runs in stores:
        with RunStore(run_dir, lock=False) as store:
            out.extend(_load_run(store, run, evaluator, metric) for run in runs)
    return out
