"""The evolution runner: the paper's top-k loop (§3-§4) as resumable plan-then-execute steps.

``evolve(config, run_dir)`` drives a strategy (``kinmerge.evolve.strategies``, pure) with real
merges, evaluations and kinship scans, and records everything in the run store
(``RUN_DIR/kinmerge.db``). Per generation:

1. **Plan.** Build the pool state from the store and ask the strategy. If it asks for kinship,
   compute every requested pair (plus the top-k's, for the progress line and the reports) in one
   scan against the base, record pcc, cs and ed for every pair scanned, and ask again. Save the
   plan to the store *before* anything runs.
2. **Execute.** Record the kinship of every merge's parents (all metrics), make the merges into
   ``RUN_DIR/models/<id>`` (content-addressed: a merge that exists is reused), evaluate each child
   (the store's evaluations are the cache, keyed by model id and evaluator settings), and mark
   the plan done.

Generation 0 is the foundation models: content ids, evaluated once. When the strategy stops, the
kinship of every pair of the final pool is recorded (the report's heatmap) and the run is marked
finished.

Why a kill at any instant loses at most the step in flight: every step writes its output
completely before the store records it (merges: temp folder -> rename, by ``kinmerge.merge``;
evaluations and kinship: one transaction each), every step is keyed by content so replaying it is
harmless, and a saved plan is executed as saved. Rerunning the same command therefore resumes and
ends with the same pool as an uninterrupted run. The store's lock refuses a second concurrent run
on the same directory. Temp folders left by a killed merge are removed on the next start.

Step functions (``content_id_step``, ``merge_step``, ``evaluate_step``, ``kinship_step``) are
module-level and take and return plain data (paths, ids, settings), so an executor can run them
in other processes or on other machines; only this driver touches the store.

Example:
    >>> from kinmerge.evolve.runner import evolve                   # doctest: +SKIP
    >>> summary = evolve("examples/evolve.yaml", "runs/demo")       # doctest: +SKIP
    >>> summary.stop, summary.best.score                            # doctest: +SKIP
    ('top-k unchanged', 0.61)
"""

from __future__ import annotations

import itertools
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kinmerge.errors import ConfigError, KinmergeError, StoreError
from kinmerge.evolve.config import RunConfig, evaluator_key, load_config
from kinmerge.evolve.executors import Executor, get_executor
from kinmerge.evolve.strategies import METRICS, Plan, PoolState, mean_pairwise_kinship, missing_kinship, topk
from kinmerge.store import DB_NAME, LOCK_NAME, RunStore

__all__ = [
    "MODELS_DIR",
    "PoolEntry",
    "RunSummary",
    "content_id_step",
    "evaluate_step",
    "evolve",
    "kinship_step",
    "merge_step",
    "read_summary",
]

#: Merges live in ``RUN_DIR/models/<id>``.
MODELS_DIR = "models"


# ---------------------------------------------------------------------------------------------
# Step functions: module-level, plain data in and out
# ---------------------------------------------------------------------------------------------


def content_id_step(ref: str) -> str:
    """The content id (hash of the weight files) of a model folder or hub id."""
    from kinmerge.sources import content_id

    return content_id(ref)


def merge_step(task: Mapping[str, Any]) -> dict[str, Any]:
    """Make one merge (or find it made): ``kinmerge.merge.merge`` on plain data.

    Args:
        task: ``{"parents": [path, ...], "method": str, "params": {...}, "out_root": str,
            "base": str | None, "kinship": {metric: value} | None, "cuda": bool}``.

    Returns:
        ``{"id", "path", "reused", "recipe" (the recipe's params), "seconds"}``.
    """
    from kinmerge.merge import get_recipe, merge

    start = time.perf_counter()
    recipe = get_recipe(task["method"], **dict(task.get("params") or {}))
    res = merge(
        list(task["parents"]),
        recipe,
        task["out_root"],
        base=task.get("base") if recipe.uses_base else None,
        kinship=task.get("kinship"),
        cuda=bool(task.get("cuda", False)),
        quiet=True,
    )
    return {
        "id": res.id,
        "path": str(res.path),
        "reused": res.reused,
        "recipe": res.recipe.params(),
        "seconds": time.perf_counter() - start,
    }


def evaluate_step(task: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate one model folder.

    Args:
        task: ``{"model": path, "evaluator": name, "settings": {...}}``.

    Returns:
        ``{"scores": {task: score}, "details": {task: {...}}, "average", "seconds"}``.
    """
    from kinmerge.evaluate import get_evaluator

    start = time.perf_counter()
    evaluator = get_evaluator(task["evaluator"], **dict(task.get("settings") or {}))
    result = evaluator.evaluate(Path(task["model"]))
    return {**result.to_dict(), "seconds": time.perf_counter() - start}


def kinship_step(task: Mapping[str, Any]) -> dict[str, Any]:
    """One streaming scan of several models against the base: every pair, every metric.

    Args:
        task: ``{"base": path, "models": [path, ...]}``.

    Returns:
        ``{"values": {metric: [[i, j, value], ...]}, "undefined": {metric: [[i, j, why], ...]},
        "seconds", "bytes_read", "notes"}`` with ``i < j`` indexing ``models``.
    """
    from kinmerge.scan import scan
    from kinmerge.sources import open_models

    start = time.perf_counter()
    with open_models([task["base"], *task["models"]]) as sources:
        result = scan(sources[0], sources[1:])
    n = len(task["models"])
    values: dict[str, list[list[Any]]] = {m: [] for m in METRICS}
    undefined: dict[str, list[list[Any]]] = {m: [] for m in METRICS}
    for metric in METRICS:
        for i, j in itertools.combinations(range(n), 2):
            v = result.stats.value(metric, i, j)
            if v is None or not math.isfinite(v):
                undefined[metric].append([i, j, result.stats.why_undefined(metric, i, j) or "undefined"])
            else:
                values[metric].append([i, j, float(v)])
    return {
        "values": values,
        "undefined": undefined,
        "seconds": time.perf_counter() - start,
        "bytes_read": result.bytes_read,
        "notes": list(result.notes),
    }


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolEntry:
    """One model of a run's pool, as ``kinmerge status`` shows it.

    Attributes:
        id: content id (foundations) or merge id (merges).
        generation: the generation it joined the pool (0 = foundation).
        origin: ``"foundation"`` or ``"merge"``.
        parents: its parents, parent A (SLERP base) first.
        score: average task score ``P̄``; ``None`` while not evaluated.
        path: its folder (or hub id).
        in_top_k: among the top-k of the pool.
        reason: why it was merged (greedy / exploration / random).
        merge_gain: score minus the mean of its parents' scores.
        kinship: its parents' kinship (the run's metric).
    """

    id: str
    generation: int
    origin: str
    parents: tuple[str, ...] = ()
    score: float | None = None
    path: str | None = None
    in_top_k: bool = False
    reason: str | None = None
    merge_gain: float | None = None
    kinship: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "id": self.id,
            "generation": self.generation,
            "origin": self.origin,
            "parents": list(self.parents),
            "score": self.score,
            "path": self.path,
            "in_top_k": self.in_top_k,
            "reason": self.reason,
            "merge_gain": self.merge_gain,
            "kinship": self.kinship,
        }


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
        pool: every model of the pool, by generation then id.
        merges: merges in the pool (the paper's "merges" column).
        pending: the generation planned but not finished, if any.
        made: what this call did: ``merges``, ``merges_reused``, ``evaluations``,
            ``kinship_pairs``, ``kinship_scans``.
        seconds: how long this call took.
        next_plan: the plan a dry run would execute next.
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
    pool: tuple[PoolEntry, ...]
    merges: int
    pending: int | None = None
    made: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    next_plan: Plan | None = None

    @property
    def best(self) -> PoolEntry | None:
        """The best-scored model of the pool (ties by id), or ``None``."""
        scored = [m for m in self.pool if m.score is not None]
        return min(scored, key=lambda m: (-(m.score or 0.0), m.id)) if scored else None

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
            "best": best.id if best else None,
            "best_score": best.score if best else None,
            "merges": self.merges,
            "pool": [m.to_dict() for m in self.pool],
            "made": dict(self.made),
            "seconds": round(self.seconds, 3),
            "next_plan": self.next_plan.to_dict() if self.next_plan else None,
        }


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def evolve(
    config: RunConfig | str | os.PathLike[str],
    run_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    dry_run: bool = False,
) -> RunSummary:
    """Run (or resume) an evolution until the strategy stops.

    Args:
        config: a :class:`RunConfig` or the path of its YAML file.
        run_dir: the run directory (store + merges); default from the config
            (``out.run_dir``, else ``runs/<config stem>`` next to the config file).
        progress: print a line per generation (best score, top-k kinship, merges) on stderr.
        dry_run: decide the next plan and return it in ``next_plan`` without executing it. Works
            on a scratch copy of the store, so the run directory is left untouched (kinship
            computed for the decision is not kept).

    Returns:
        The :class:`RunSummary` of the run after this call.

    Raises:
        ConfigError: invalid config, duplicate foundation models, a foundation equal to the base.
        StoreError: another process is running on ``run_dir``, or the run id exists there with
            different settings.
        MergeError, EvaluationError, SourceError: a step failed (the run is marked failed; rerun
            after fixing the cause to resume).

    Example:
        >>> evolve("examples/evolve.yaml", "runs/demo").stop        # doctest: +SKIP
        'top-k unchanged'
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    target = cfg.run_dir(run_dir)
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="kinmerge-dry-run-") as scratch:
            _copy_store(target, Path(scratch))
            with RunStore(scratch) as store:
                return _Run(cfg, store, target, progress=progress, dry_run=True).run()
    with RunStore(target) as store:
        return _Run(cfg, store, target, progress=progress, dry_run=False).run()


def read_summary(run_dir: str | os.PathLike[str], run_id: str | None = None) -> RunSummary:
    """The :class:`RunSummary` of a run, read without locking (safe while it runs).

    Args:
        run_id: which run of the store; default: the only one, else the latest started.

    Raises:
        StoreError: no store in ``run_dir``, or no such run.
    """
    run_dir = Path(run_dir)
    with RunStore(run_dir, lock=False) as store:
        run_id = pick_run(store, run_id)
        return _summarize(store, run_id, run_dir)


def pick_run(store: RunStore, run_id: str | None) -> str:
    """``run_id`` if the store has it; with ``None``, the only run (or the latest started).

    Raises:
        StoreError: the store has no runs, or not that one.
    """
    runs = store.runs()
    if not runs:
        raise StoreError(f"{store.db_path} holds no runs yet; start one with `kinmerge evolve CONFIG`")
    if run_id is None:
        return runs[-1].id
    if run_id not in {r.id for r in runs}:
        raise StoreError(f"no run {run_id!r} in {store.db_path}; runs: {', '.join(r.id for r in runs)}")
    return run_id


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


class _Reporter:
    """One line per generation on stderr; on a terminal also a live status of the step running."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._status: Any = None
        self._console: Any = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console

            self._console = Console(stderr=True)
            self._status = self._console.status("starting")
            self._status.start()

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self._console is not None:
            self._console.print(text, soft_wrap=True, highlight=False, markup=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def step(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


class _Run:
    """One invocation of ``evolve`` against an open (locked) store."""

    def __init__(self, cfg: RunConfig, store: RunStore, run_dir: Path, *, progress: bool, dry_run: bool) -> None:
        self.cfg = cfg
        self.store = store
        self.run_dir = run_dir
        self.dry_run = dry_run
        self.run_id = cfg.name
        self.metric = cfg.metric
        self.strategy = cfg.build_strategy()
        self.k = int(self.strategy.settings().get("k", 3))
        self.evaluator = cfg.evaluator.build()
        self.eval_key = evaluator_key(self.evaluator)
        self.eval_settings = cfg.evaluator.settings()
        if cfg.evaluator.name == "builtin":
            self.eval_settings.setdefault("progress", False)
        self.recipe_kwargs = cfg.merge.recipe_kwargs(seed=cfg.seed)
        from kinmerge.merge import get_recipe

        self.recipe = get_recipe(cfg.merge.method, **self.recipe_kwargs)
        self.models_dir = run_dir / MODELS_DIR
        self.report = _Reporter(progress)
        self.made = {"merges": 0, "merges_reused": 0, "evaluations": 0, "kinship_pairs": 0, "kinship_scans": 0}
        self._scanned: set[frozenset[str]] = set()  # pairs scanned by this call (some undefined)
        self._paths: dict[str, str] = {}
        self._gen_started: dict[int, float] = {}
        self.executor: Executor | None = None

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        start = time.perf_counter()
        self.executor = get_executor(self.cfg.executor.name, workers=self.cfg.executor.workers)
        try:
            return self._run(start)
        finally:
            self.report.close()
            self.executor.close()

    def _run(self, start: float) -> RunSummary:
        if not self.dry_run:
            self._remove_stale_temp()
        foundations = self._start()
        try:
            if not self.dry_run:
                self._evaluate(foundations, generation=0)
            while True:
                plan = self._next_plan()
                if self.dry_run:
                    return self._summary(start, next_plan=plan)
                if plan.stop is not None:
                    break
                self._execute(plan)
            self._finish(plan.stop)
        except Exception as exc:
            if not self.dry_run:
                self.store.log_event(self.run_id, "run_failed", f"{type(exc).__name__}: {exc}")
                self.store.finish_run(self.run_id, "failed")
            raise
        except BaseException:  # KeyboardInterrupt: the run stays resumable
            if not self.dry_run:
                self.store.log_event(self.run_id, "run_interrupted", "interrupted")
                self.store.finish_run(self.run_id, "failed")
            raise
        return self._summary(start)

    def _start(self) -> list[str]:
        """Content ids of base and foundations, the run row (resume check), the foundation models."""
        self.report.step("hashing the foundation models")
        refs = [self.cfg.base, *self.cfg.foundation]
        ids = self.executor.map(content_id_step, refs)  # type: ignore[union-attr]
        base_id, foundation_ids = ids[0], ids[1:]
        seen: dict[str, str] = {}
        for ref, cid in zip(self.cfg.foundation, foundation_ids):
            if cid == base_id:
                raise ConfigError(f"foundation model {ref} has the same weights as the base {self.cfg.base}")
            if cid in seen:
                raise ConfigError(f"foundation models {seen[cid]} and {ref} have the same weights; list each once")
            seen[cid] = ref
        self.base_id = base_id
        fingerprint = {
            "foundation": foundation_ids,
            "base": base_id,
            "strategy": {"name": self.strategy.name, **self.strategy.settings()},
            "merge": self.recipe.params(),
            "evaluator": self.eval_key,
            "metric": self.metric,  # the kinship metric the run decides and reports with
        }
        resumed = self.store.get_run(self.run_id) is not None
        self.store.start_run(self.run_id, strategy=self.strategy.name, config=fingerprint, seed=self.cfg.seed)
        for ref, cid in zip(self.cfg.foundation, foundation_ids):
            self.store.add_model(cid, origin="foundation", generation=0, path=ref, run_id=self.run_id)
            self._paths[cid] = ref
        if not self.dry_run:
            self.store.log_event(
                self.run_id,
                "run_resumed" if resumed else "run_started",
                f"{'resumed' if resumed else 'started'} run {self.run_id} in {self.run_dir}",
                payload={"config": self.cfg.model_dump(mode="json"), "fingerprint": fingerprint, "pid": os.getpid()},
            )
            self.report.line(
                f"{'resuming' if resumed else 'starting'} run {self.run_id!r} in {self.run_dir}: "
                f"{len(foundation_ids)} foundation models, strategy {self.strategy.name}, "
                f"evaluator {self.eval_key}"
            )
        return foundation_ids

    def _next_plan(self) -> Plan:
        """The saved pending plan, or a new one (kinship computed as the strategy asks), saved."""
        if self.store.stop_reason(self.run_id) is not None:  # a finished run: nothing to decide
            done = self.store.last_completed_generation(self.run_id)
            stored = self.store.get_plan(self.run_id, done + 1)
            if stored is not None and stored.stop is not None:
                return stored
        pending = self.store.pending_plan(self.run_id)
        if pending is not None:
            self.report.line(f"gen {pending.generation}: resuming the saved plan ({_plan_text(pending)})")
            return pending
        state = self._state()
        self.report.step(f"gen {state.generation + 1}: planning")
        plan = self.strategy.plan(state)
        wanted = {frozenset(p) for p in plan.kinship_requests} | self._topk_pairs(state)
        if wanted:
            self._ensure_kinship(wanted, generation=state.generation, why="plan")
            self.report.step(f"gen {state.generation + 1}: planning")
            state = self._state()
            plan = self.strategy.plan(state)
        if plan.kinship_requests:
            raise KinmergeError(self._undefined_message(plan.kinship_requests))
        self._report_generation(state)
        if self.dry_run:
            return plan
        self.store.save_plan(self.run_id, plan)
        self.store.log_event(
            self.run_id, "plan", _plan_text(plan), generation=plan.generation, payload=plan.to_dict()
        )
        if plan.stop is None:
            self.report.line(f"gen {plan.generation}: planned {_plan_text(plan)}")
        return plan

    def _execute(self, plan: Plan) -> None:
        """Make, record and evaluate the merges of a saved plan; then mark it done."""
        g = plan.generation
        self._gen_started.setdefault(g, time.perf_counter())
        pairs = {m.pair for m in plan.merges}
        self._ensure_kinship(pairs, generation=g, why="parents")
        kin = {m: self.store.get_kinship(m, model_ids={p for pr in pairs for p in pr}) for m in METRICS}
        base = self.cfg.base if self.recipe.uses_base else None
        tasks = [
            {
                "parents": [self._path(p) for p in m.parents],
                "method": self.cfg.merge.method,
                "params": self.recipe_kwargs,
                "out_root": str(self.models_dir),
                "base": base,
                "kinship": {metric: kin[metric][m.pair] for metric in METRICS if m.pair in kin[metric]} or None,
                "cuda": self.cfg.merge.cuda,
            }
            for m in plan.merges
        ]

        def started(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for i, item in enumerate(items):
                merge = plan.merges[i]
                self.report.step(f"gen {g}: merging {i + 1}/{len(items)}")
                self.store.log_event(
                    self.run_id, "merge_start", "+".join(merge.parents), generation=g,
                    payload={"parents": list(merge.parents), "reason": merge.reason},
                )
                yield item

        children: list[str] = [""] * len(tasks)
        for i, res in self.executor.imap(merge_step, started(tasks)):  # type: ignore[union-attr]
            merge = plan.merges[i]
            self.store.add_model(
                res["id"], origin="merge", generation=g, path=res["path"], recipe=res["recipe"],
                parents=merge.parents, run_id=self.run_id,
            )
            self._paths[res["id"]] = res["path"]
            children[i] = res["id"]
            self.made["merges_reused" if res["reused"] else "merges"] += 1
            self.store.log_event(
                self.run_id, "merge", f"{'+'.join(merge.parents)} -> {res['id']}", generation=g,
                duration_s=res["seconds"],
                payload={"id": res["id"], "parents": list(merge.parents), "reason": merge.reason,
                         "reused": res["reused"], "kinship": tasks[i]["kinship"]},
            )
        self._evaluate(children, generation=g)
        self.store.mark_plan_done(self.run_id, g)

    def _finish(self, stop: str | None) -> None:
        ids = [m.id for m in self._state().models]
        if self.cfg.final_kinship_matrix and len(ids) > 1:
            pairs = {frozenset(p) for p in itertools.combinations(ids, 2)}
            self._ensure_kinship(pairs, generation=None, why="final matrix")
        self.store.finish_run(self.run_id)
        self.store.log_event(self.run_id, "run_finished", f"stopped: {stop}", payload={"stop": stop, "made": self.made})
        self.report.line(f"stopped: {stop}")

    # -- steps ------------------------------------------------------------------------------------

    def _evaluate(self, ids: list[str], *, generation: int) -> None:
        """Evaluate the models that have no score under this evaluator yet; record each."""
        averages = self.store.average_scores(ids, evaluator=self.eval_key)
        todo = [i for i in ids if averages.get(i) is None]
        if not todo:
            return
        tasks = [{"model": self._path(i), "evaluator": self.cfg.evaluator.name, "settings": self.eval_settings}
                 for i in todo]

        def started(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for n, item in enumerate(items):
                self.report.step(f"gen {generation}: evaluating {n + 1}/{len(items)}")
                self.store.log_event(self.run_id, "evaluate_start", todo[n], generation=generation)
                yield item

        for n, res in self.executor.imap(evaluate_step, started(tasks)):  # type: ignore[union-attr]
            mid = todo[n]
            self.store.record_evaluations(mid, self.eval_key, res["scores"], details=res["details"])
            self.made["evaluations"] += 1
            self.store.log_event(
                self.run_id, "evaluate", f"{mid}: {res['average']:.4f}", generation=generation,
                duration_s=res["seconds"], payload={"id": mid, "scores": res["scores"], "average": res["average"]},
            )

    def _ensure_kinship(self, pairs: Iterable[frozenset[str]], *, generation: int | None, why: str) -> None:
        """Scan, in one pass, every model of the pairs whose kinship is unknown; record all metrics.

        Every pair among the scanned models is recorded (a scan gives them all for free).
        """
        pairs = set(pairs)
        known = self.store.get_kinship(self.metric, model_ids={m for p in pairs for m in p})
        missing = [p for p in pairs if p not in known and p not in self._scanned]
        if not missing:
            return
        models = sorted({m for p in missing for m in p})
        self.report.step(f"kinship: scanning {len(models)} models ({why})")
        task = {"base": self.cfg.base, "models": [self._path(m) for m in models]}
        res = self.executor.map(kinship_step, [task])[0]  # type: ignore[union-attr]
        count = 0
        for metric in METRICS:
            values = {(models[i], models[j]): v for i, j, v in res["values"][metric]}
            if values:
                self.store.record_kinships(values, metric)
            count = max(count, len(values))
        self._scanned |= {frozenset(p) for p in itertools.combinations(models, 2)}
        self.made["kinship_pairs"] += count
        self.made["kinship_scans"] += 1
        undefined = {m: [[models[i], models[j], w] for i, j, w in rows] for m, rows in res["undefined"].items() if rows}
        self.store.log_event(
            self.run_id, "kinship", f"{len(models)} models scanned ({why})", generation=generation,
            duration_s=res["seconds"],
            payload={"models": models, "pairs": count, "bytes_read": res["bytes_read"], "undefined": undefined,
                     "notes": res["notes"]},
        )

    # -- helpers ----------------------------------------------------------------------------------

    def _state(self) -> PoolState:
        return self.store.pool_state(self.run_id, evaluator=self.eval_key, metric=self.metric)

    def _topk_pairs(self, state: PoolState) -> set[frozenset[str]]:
        if not state.models or any(m.score is None for m in state.models):
            return set()
        return {frozenset(p) for p in itertools.combinations(topk(state, self.k), 2)}

    def _path(self, model_id: str) -> str:
        """The folder of a model; a merge whose folder was deleted is merged again (same id)."""
        if model_id not in self._paths:
            rec = self.store.get_model(model_id)
            if rec is None or rec.path is None:
                raise StoreError(f"model {model_id} has no recorded folder in {self.store.db_path}")
            if rec.origin == "merge" and not (Path(rec.path) / "kinmerge.json").is_file():
                self._remerge(rec)
            self._paths[model_id] = rec.path
        return self._paths[model_id]

    def _remerge(self, rec: Any) -> None:
        """Rebuild a deleted merge folder from its recorded parents and recipe."""
        params = dict(rec.recipe or {})
        method = params.pop("method", None)
        if method is None or method == "raw":
            raise StoreError(f"merge {rec.id} is missing from {rec.path} and its recipe cannot be replayed; "
                             "restore the folder")
        self.report.step(f"re-merging deleted {rec.id}")
        res = merge_step({"parents": [self._path(p) for p in rec.parents], "method": method, "params": params,
                          "out_root": str(Path(rec.path).parent), "base": self.cfg.base, "cuda": self.cfg.merge.cuda})
        if res["id"] != rec.id:
            raise StoreError(f"re-merging deleted {rec.id} gave {res['id']}; restore the folder {rec.path}")
        self.store.log_event(self.run_id, "remerge", f"rebuilt deleted merge {rec.id}", duration_s=res["seconds"])

    def _undefined_message(self, requests: Iterable[tuple[str, str]]) -> str:
        a, b = next(iter(requests))
        return (
            f"{self.metric} kinship of {self._path(a)} and {self._path(b)} is undefined (a delta is zero or "
            f"constant: a model equal to the base?); the {self.strategy.name} strategy needs it — "
            "remove that model or use kinship_metric: ed"
        )

    def _report_generation(self, state: PoolState) -> None:
        """The progress line of the last completed generation (once its top-k kinship is known)."""
        g = state.generation
        scored = [m for m in state.models if m.score is not None]
        if not scored:
            return
        new = [m for m in state.models if m.generation == g]
        best = max(m.score for m in scored)  # type: ignore[type-var]
        before = [m.score for m in scored if m.generation < g]
        gain = f" ({best - max(before):+.4f})" if before else ""  # type: ignore[type-var]
        kin_text = "n/a"
        if len(scored) == len(state.models):
            top = topk(state, self.k)
            pairs = [frozenset(p) for p in itertools.combinations(top, 2)]
            if len(top) > 1 and not missing_kinship(pairs, state.kinship):
                kin_text = f"{mean_pairwise_kinship(top, state.kinship):.4f}"
        merges = sum(1 for m in state.models if m.parents)
        took = self._gen_started.get(g)
        timing = f" | {time.perf_counter() - took:.1f}s" if took is not None else ""
        what = f"{len(new)} foundation models" if g == 0 else f"{len(new)} merges"
        line = (f"gen {g}: {what} | best {best:.4f}{gain} | top-{self.k} {self.metric} kinship {kin_text} | "
                f"merges {merges}{timing}")
        self.report.line(line)
        if not self.dry_run:
            self.store.log_event(self.run_id, "generation", line, generation=g,
                                 payload={"best": best, "top_k_kinship": None if kin_text == "n/a" else float(kin_text),
                                          "merges": merges})

    def _remove_stale_temp(self) -> None:
        """Remove merge temp folders a killed run left (we hold the run lock: none is live)."""
        from kinmerge.merge import remove_stale_temp

        for p in remove_stale_temp(self.models_dir):
            self.store.log_event(self.run_id if self.store.get_run(self.run_id) else None,
                                 "cleanup", f"removed unfinished merge folder {p.name}")

    def _summary(self, start: float, next_plan: Plan | None = None) -> RunSummary:
        s = _summarize(self.store, self.run_id, self.run_dir)
        status = "dry-run" if self.dry_run else s.status
        return RunSummary(**{**s.__dict__, "status": status, "made": dict(self.made),
                             "seconds": time.perf_counter() - start, "next_plan": next_plan})


def _plan_text(plan: Plan) -> str:
    if plan.stop is not None:
        return f"stop ({plan.stop})"
    reasons: dict[str, int] = {}
    for m in plan.merges:
        reasons[m.reason] = reasons.get(m.reason, 0) + 1
    detail = ", ".join(f"{n} {r}" for r, n in reasons.items())
    return f"{len(plan.merges)} merge{'s' if len(plan.merges) != 1 else ''} ({detail})"


def _copy_store(run_dir: Path, scratch: Path) -> None:
    """Copy ``run_dir``'s store (if any) into ``scratch`` with SQLite's online backup (WAL-safe)."""
    db = run_dir / DB_NAME
    if not db.exists():
        return
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    dst = sqlite3.connect(scratch / DB_NAME)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _is_running(run_dir: Path) -> bool:
    """Whether a process holds the run lock of ``run_dir`` right now."""
    import fcntl

    lock = run_dir / LOCK_NAME
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _summarize(store: RunStore, run_id: str, run_dir: Path) -> RunSummary:
    """The pool table of a run from the store (public queries only)."""
    run = store.get_run(run_id)
    if run is None:
        raise StoreError(f"no run {run_id!r} in {store.db_path}")
    fp = run.config
    key = fp.get("evaluator")
    metric = fp.get("metric", "pcc")
    k = int(fp.get("strategy", {}).get("k", 3))
    foundations = [f for f in fp.get("foundation", []) if store.get_model(f) is not None]
    merges = store.merge_gains(run_id, evaluator=key, metric=metric)
    ids = foundations + [r.child for r in merges]
    scores = store.average_scores(ids, evaluator=key) if ids else {}
    scored = [(i, scores.get(i)) for i in ids if scores.get(i) is not None]
    top = tuple(i for i, _ in sorted(scored, key=lambda x: (-(x[1] or 0.0), x[0]))[:k])
    kinship = store.get_kinship(metric, model_ids=top) if len(top) > 1 else {}
    pairs = [frozenset(p) for p in itertools.combinations(top, 2)]
    top_kin = mean_pairwise_kinship(top, kinship) if pairs and not missing_kinship(pairs, kinship) else None
    entries = []
    for f in foundations:
        rec = store.get_model(f)
        entries.append(PoolEntry(id=f, generation=0, origin="foundation", score=scores.get(f),
                                 path=rec.path if rec else None, in_top_k=f in top))
    for r in merges:
        rec = store.get_model(r.child)
        entries.append(PoolEntry(id=r.child, generation=r.generation, origin="merge", parents=r.parents,
                                 score=r.child_score, path=rec.path if rec else None, in_top_k=r.child in top,
                                 reason=r.reason, merge_gain=r.merge_gain, kinship=r.kinship))
    entries.sort(key=lambda e: (e.generation, e.id))
    pending = store.pending_plan(run_id)
    status = run.status
    if status == "running" and not _is_running(Path(run_dir)):
        status = "interrupted"
    return RunSummary(
        run_id=run_id,
        run_dir=Path(run_dir),
        status=status,
        stop=store.stop_reason(run_id),
        generation=store.last_completed_generation(run_id),
        metric=metric,
        k=k,
        top_k=top,
        top_k_kinship=top_kin,
        pool=tuple(entries),
        merges=sum(1 for e in entries if e.origin == "merge"),
        pending=pending.generation if pending else None,
    )


# ---------------------------------------------------------------------------------------------
# Lineage helpers (``kinmerge lineage``)
# ---------------------------------------------------------------------------------------------


def resolve_model_id(store: RunStore, ref: str) -> str:
    """A model id from an id or a unique prefix of one (as ``kinmerge status`` shows them).

    Raises:
        StoreError: no model, or several, match ``ref``.
    """
    if store.get_model(ref) is not None:
        return ref
    ids: set[str] = set()
    for run in store.runs():
        ids |= {f for f in run.config.get("foundation", [])}
        ids |= {r.child for r in store.merge_gains(run.id, evaluator=run.config.get("evaluator"))}
    matches = sorted(i for i in ids if i.startswith(ref))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise StoreError(f"no model {ref!r} in {store.db_path}; `kinmerge status` lists the pool")
    raise StoreError(f"{ref!r} matches {len(matches)} models ({', '.join(m[:16] for m in matches[:4])}, ...); "
                     "give more characters")


def lineage_lines(node: Any, scores: Mapping[str, float | None], *, width: int = 16) -> list[str]:
    """A family tree (``RunStore.lineage``) as indented text lines, the model first.

    Example output::

        0ab0718cc0970b8b  gen 2  merge  score 0.5417  slerp
        ├── 2458350c8c7cb6e6  gen 0  foundation  score 0.4100  specialists/caesar
        └── 9e9acbc8b7a01b25  gen 1  merge  score 0.5000  slerp
            ├── ...
    """

    def label(n: Any) -> str:
        score = scores.get(n.id)
        what = (n.recipe or {}).get("method", "") if n.origin == "merge" else _short_path(n.path)
        text = f"{n.id[:width]}  gen {n.generation}  {n.origin}"
        text += f"  score {score:.4f}" if score is not None else "  score -"
        return f"{text}  {what}".rstrip()

    lines = [label(node)]

    def walk(n: Any, prefix: str) -> None:
        for i, p in enumerate(n.parents):
            last = i == len(n.parents) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{label(p)}")
            walk(p, prefix + ("    " if last else "│   "))

    walk(node, "")
    return lines


def _short_path(path: str | None) -> str:
    if not path:
        return ""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else path
