"""Read runs out of their stores into plain data for plots, the HTML report and ``compare``.

One :class:`RunData` per run: a run directory may hold several runs (one store, shared models),
so a report over ``RUN_DIR...`` covers every run of every store, in order. Stores are opened
read-only (``lock=False``), so a report can be made while a run is still writing.

Example:
    ``runs = load_runs(["runs/greedy", "runs/kinship"])``; ``runs[0].summary[-1].pool_best``
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kinmerge.errors import StoreError
from kinmerge.evolve.strategies import DEFAULT_THRESHOLDS, METRICS, STOP_KINSHIP, Plan
from kinmerge.store import GenerationSummary, MergeGainRow, RunInfo, RunStore, TopkKinship

#: The k of the paper's runs, used when a run's config does not say.
DEFAULT_K = 3


@dataclass(frozen=True)
class ModelView:
    """One model of a run's pool, as the report shows it.

    ``generation`` is when it joined this run's pool; ``reason`` is why the strategy planned it
    (greedy / exploration / random; ``None`` for foundations or unknown).
    """

    id: str
    label: str
    origin: str
    generation: int
    parents: tuple[str, ...]
    path: str | None
    score: float | None
    task_scores: Mapping[str, float]
    reason: str | None


@dataclass(frozen=True)
class RunData:
    """Everything the report needs about one run (plain data; the store is closed)."""

    run_dir: Path
    run: RunInfo
    evaluator: str | None
    tasks: tuple[str, ...]
    k: int
    metric: str
    threshold: float | None
    models: dict[str, ModelView]
    summary: list[GenerationSummary]
    topk: list[TopkKinship]
    gains: dict[str, list[MergeGainRow]]
    kinship: dict[str, dict[frozenset[str], float]]
    merges_used: int
    stop_reason: str | None
    stop_generation: int | None
    pending_generation: int | None
    plans: dict[int, Plan] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A short name for legends: ``run dir · run id`` (plus the strategy if the id hides it).

        The run directory names the foundation set in the demo, so curves of several sets
        stay distinguishable.
        """
        strategy = "" if self.run.strategy in self.run.id else f" ({self.run.strategy})"
        return f"{self.run_dir.name} · {self.run.id}{strategy}"

    @property
    def foundations(self) -> list[ModelView]:
        """The foundation models of the pool, by label."""
        return sorted((m for m in self.models.values() if not m.parents), key=lambda m: m.label)

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

    def best_per_generation(self) -> dict[int, float | None]:
        """Best score of the pool after each generation (the paper's §5 table row)."""
        return {s.generation: s.pool_best for s in self.summary}

    def topk_kinship_at(self, generation: int) -> float | None:
        """Mean pairwise kinship of the top-k after ``generation`` (``None`` if not computed)."""
        for t in self.topk:
            if t.generation == generation:
                return t.kinship
        return None

    def kinship_matrix(self, metric: str | None = None) -> tuple[list[str], list[list[float]]]:
        """Ids of the pool (generation, label order) and their kinship matrix (NaN = unknown).

        The diagonal is each model with itself: 1 for PCC/CS, 0 for ED.
        """
        metric = metric or self.metric
        ids = [m.id for m in sorted(self.models.values(), key=lambda m: (m.generation, m.label))]
        values = self.kinship.get(metric, {})
        self_value = 0.0 if metric == "ed" else 1.0
        matrix = [
            [self_value if a == b else values.get(frozenset((a, b)), math.nan) for b in ids]
            for a in ids
        ]
        return ids, matrix


def setting(config: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A setting from a run's config: top level first, then one or two levels of nesting.

    The runner may record strategy settings flat (``{"k": 3}``) or grouped
    (``{"strategy": {"settings": {"k": 3}}}``); the report reads either.
    """
    if name in config:
        return config[name]
    for value in config.values():
        if isinstance(value, Mapping):
            found = setting(value, name, None)
            if found is not None:
                return found
    return default


def _pick_evaluator(store: RunStore, run: RunInfo, evaluator: str | None) -> str | None:
    keys = store.evaluators()
    if evaluator is not None:
        if keys and evaluator not in keys:
            raise StoreError(
                f"no scores from evaluator {evaluator!r} in {store.db_path}; "
                f"it holds: {', '.join(keys)}"
            )
        return evaluator
    wanted = setting(run.config, "evaluator")
    if isinstance(wanted, str) and wanted in keys:
        return wanted
    if len(keys) > 1:
        raise StoreError(
            f"{store.db_path} holds scores from several evaluators ({', '.join(keys)}); "
            "choose one with --evaluator"
        )
    return keys[0] if keys else None


def _labels(records: Mapping[str, Any]) -> dict[str, str]:
    """Short, unique display names: a foundation's folder name, a merge's ``g<gen>:<id[:6]>``."""
    out: dict[str, str] = {}
    for mid, (origin, generation, path) in records.items():
        name = ""
        if origin == "foundation" and path:
            name = Path(str(path).rstrip("/\\")).name or str(path)
            if name == mid:
                name = ""  # a content-addressed folder: the id says more
            elif len(name) > 24:
                name = name[:22] + "…"
        out[mid] = name or (f"g{generation}:{mid[:6]}" if origin == "merge" else mid[:10])
    seen: dict[str, int] = {}
    for lab in out.values():
        seen[lab] = seen.get(lab, 0) + 1
    return {mid: (lab if seen[lab] == 1 else f"{lab}·{mid[:6]}") for mid, lab in out.items()}


def _load_run(store: RunStore, run: RunInfo, evaluator: str | None, metric: str) -> RunData:
    key = _pick_evaluator(store, run, evaluator)
    k = setting(run.config, "k", DEFAULT_K)
    k = int(k) if isinstance(k, int) and not isinstance(k, bool) and k >= 1 else DEFAULT_K
    run_metric = setting(run.config, "metric")
    run_metric = run_metric if run_metric in METRICS else None
    chosen = metric
    threshold: float | None = None
    if run.strategy == "kinship" and setting(run.config, "early_stop", True) is not False:
        t = setting(run.config, "threshold")
        threshold = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None
        if threshold is None and (run_metric or "pcc") == chosen:
            threshold = DEFAULT_THRESHOLDS.get(chosen)
        if (run_metric or "pcc") != chosen:
            threshold = None  # the run watched another metric: its threshold means nothing here

    pool_rows = store._pool_rows(run.id)  # noqa: SLF001  (the pool with its join generation)
    ids = [r["id"] for r in pool_rows]
    records = {r["id"]: store.get_model(r["id"]) for r in pool_rows}
    labels = _labels({mid: (rec.origin, rec.generation, rec.path) for mid, rec in records.items() if rec})
    task_scores = store.get_scores(ids, evaluator=key) if key is not None else {}
    averages = store.average_scores(ids, evaluator=key) if key is not None else {}
    tasks = sorted({t for s in task_scores.values() for t in s})

    plans: dict[int, Plan] = {}
    statuses: dict[int, str] = {}
    for g in range(1, 1 + max([r["generation"] for r in pool_rows] + [0]) + 1):
        plan = store.get_plan(run.id, g)
        if plan is not None:
            plans[g] = plan
            statuses[g] = store.plan_status(run.id, g) or ""
    reasons = {m.pair: m.reason for p in plans.values() for m in p.merges}
    models = {}
    for r in pool_rows:
        rec = records[r["id"]]
        assert rec is not None
        models[rec.id] = ModelView(
            id=rec.id,
            label=labels[rec.id],
            origin=rec.origin,
            generation=r["generation"],
            parents=rec.parents,
            path=rec.path,
            score=averages.get(rec.id),
            task_scores=dict(task_scores.get(rec.id, {})),
            reason=reasons.get(frozenset(rec.parents)) if rec.parents else None,
        )

    stop_reason = store.stop_reason(run.id)
    stop_generation = None
    if stop_reason is not None:
        stop_generation = max(g for g, p in plans.items() if p.stop is not None)
    pending = [g for g, s in statuses.items() if s == "planned"]
    summary = store.generation_summary(run.id, evaluator=key) if key is not None else [
        GenerationSummary(g, sum(1 for m in models.values() if m.generation == g),
                          sum(1 for m in models.values() if m.generation == g and m.parents),
                          None, None, None)
        for g in sorted({m.generation for m in models.values()})
    ]
    return RunData(
        run_dir=store.run_dir,
        run=run,
        evaluator=key,
        tasks=tuple(tasks),
        k=k,
        metric=chosen,
        threshold=threshold,
        models=models,
        summary=summary,
        topk=store.topk_kinship(run.id, k, evaluator=key, metric=chosen) if key is not None else [],
        gains={
            m: store.merge_gains(run.id, evaluator=key, metric=m) if key is not None else []
            for m in METRICS
        },
        kinship={m: store.get_kinship(m, model_ids=ids) for m in METRICS},
        merges_used=store.merges_used(run.id),
        stop_reason=stop_reason,
        stop_generation=stop_generation,
        pending_generation=min(pending) if pending else None,
        plans=plans,
    )


def load_runs(
    run_dirs: Sequence[str | os.PathLike[str]],
    *,
    evaluator: str | None = None,
    metric: str | None = None,
) -> list[RunData]:
    """Every run of every store in ``run_dirs``, in the order given (runs oldest first).

    Args:
        evaluator: which evaluator's scores to use when a store holds several (default: the
            run config's ``evaluator`` if it names one, else the only one).
        metric: the kinship metric of the top-k curve and heatmap (default: the run's strategy
            metric, else PCC, the paper's main metric).

    Raises:
        StoreError: a directory has no store, a store has no run, or the evaluator is ambiguous.
    """
    if metric is not None and metric not in METRICS:
        raise StoreError(f"unknown kinship metric {metric!r}; choose one of {', '.join(METRICS)}")
    stores = []
    for run_dir in run_dirs:
        with RunStore(run_dir, lock=False) as store:
            runs = store.runs()
        if not runs:
            raise StoreError(f"the store in {run_dir} holds no run yet; start one there first")
        stores.append((run_dir, runs))
    if metric is None:
        # One metric for the whole report (the runs share its charts): the first run that
        # watches one (a kinship strategy) decides; else PCC.
        watched = [setting(r.config, "metric") for _, runs in stores for r in runs]
        metric = next((m for m in watched if m in METRICS), "pcc")
    out: list[RunData] = []
    for run_dir, runs in stores:
        with RunStore(run_dir, lock=False) as store:
            out.extend(_load_run(store, run, evaluator, metric) for run in runs)
    return out
