"""The evolution loop: the paper's top-k merging (§3-§4) as resumable plan-then-execute steps.

``evolve(config, run_dir)`` drives a strategy (:mod:`kinmerge.evolve.strategies`, pure) with real
merges, evaluations and kinship scans (:mod:`kinmerge.evolve.steps`, run by an executor) and
records everything in the run store (``RUN_DIR/kinmerge.db``). Per generation:

1. **Plan.** Build the pool state from the store and ask the strategy. If it asks for kinship,
   compute every requested pair (plus the top-k's, for the progress line and the reports) in one
   scan against the base, record pcc, cs and ed for every pair scanned, and ask again. Save the
   plan to the store *before* anything runs.
2. **Execute.** Record the kinship of every merge's parents (all metrics), make the merges into
   ``RUN_DIR/models/<id>`` (content-addressed: an existing merge is reused), evaluate each child
   (the store's evaluations are the cache), and mark the plan done. Pipelined (``executor.chain``):
   a child is evaluated as soon as its merge lands, while the generation's other merges may run.

With ``schedule: steady`` steps 1 and 2 are :mod:`kinmerge.evolve.steady`'s (no generation barrier).
Generation 0 is the foundation models, evaluated once. When the strategy stops, the kinship of
every pair of the final pool is recorded (the report's heatmap) and the run is marked finished.

Why a kill at any instant loses at most the step in flight: every step writes its output
completely before the store records it (merges: temp folder -> rename; evaluations and kinship:
one transaction each), every step is keyed by content so replaying it is harmless, and a saved
plan is executed as saved. Rerunning the same command therefore resumes and ends with the same
pool as an uninterrupted run. The store's lock refuses a second concurrent run on the same
directory; temp folders left by a killed merge are removed on the next start.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kinmerge.errors import ConfigError, KinmergeError, StoreError
from kinmerge.evolve.config import RunConfig, evaluator_key, load_config
from kinmerge.evolve.executors import Executor, get_executor
from kinmerge.evolve.heldout import HeldOut, evaluator_for_run
from kinmerge.evolve.racing import RaceSettings, race
from kinmerge.evolve.recheck import Recheck, record_exact, settle
from kinmerge.evolve.resume import check_remerge, raise_budget, reconcile, remerge_task, repair
from kinmerge.evolve.signals import sigterm_interrupts, stop_if_terminated
from kinmerge.evolve.sketch_kinship import SketchKinship
from kinmerge.evolve.steady import run_steady, steady_fingerprint
from kinmerge.evolve.steps import (
    EvaluateTask,
    KinshipTask,
    MergeTask,
    hash_model,
    run_evaluation,
    run_kinship,
    run_merge,
)
from kinmerge.evolve.steps import where_ran as _where
from kinmerge.evolve.summary import RunSummary, generation_line, summarize
from kinmerge.evolve.tracking import RunTracking
from kinmerge.kinship import METRICS
from kinmerge.merge import METADATA_FILE, remove_stale_temp, write_card
from kinmerge.pool import ModelRecord, Plan, PoolState, RunFingerprint, short_id, topk
from kinmerge.progress import StatusLines
from kinmerge.sources.content_ids import ID_VERSION
from kinmerge.store import RunStore, copy_store, discard_unused_store, first_missing

__all__ = ["MODELS_DIR", "evolve"]

#: Merges live in ``RUN_DIR/models/<id>``.
MODELS_DIR = "models"


def evolve(config: RunConfig | str | os.PathLike[str], run_dir: str | os.PathLike[str] | None = None, *,
           progress: bool = True, dry_run: bool = False) -> RunSummary:
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

    Example (not run here: minutes of merging; docs/api.md runs a one-generation evolution):
        >>> evolve("examples/evolve.yaml", "runs/demo").stop        # doctest: +SKIP
        'top-k unchanged'
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    target = cfg.run_dir(run_dir)
    with sigterm_interrupts():
        return _evolve(cfg, target, progress=progress, dry_run=dry_run)


def _evolve(cfg: RunConfig, target: Path, *, progress: bool, dry_run: bool) -> RunSummary:
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="kinmerge-dry-run-") as scratch:
            copy_store(target, scratch)
            with RunStore(scratch) as store:
                return _Run(cfg, store, target, progress=progress, dry_run=True).run()
    created = first_missing(target)
    try:
        with RunStore(target) as store:
            return _Run(cfg, store, target, progress=progress, dry_run=False).run()
    except BaseException:
        discard_unused_store(target, created=created)  # failed before the run started: leave nothing
        raise


class _Run:
    """One invocation of ``evolve`` against an open (locked) store."""

    def __init__(self, cfg: RunConfig, store: RunStore, run_dir: Path, *, progress: bool, dry_run: bool) -> None:
        from kinmerge.merge import get_recipe

        self.cfg = cfg
        self.store = store
        self.run_dir = run_dir
        self.dry_run = dry_run
        self.run_id = cfg.name
        self.metric = cfg.metric
        self.strategy = cfg.build_strategy()
        self.k = int(self.strategy.settings().get("k", 3))
        self.evaluator_cfg = evaluator_for_run(cfg, store)
        evaluator = self.evaluator_cfg.build()
        self.eval_key, self.eval_identity = evaluator_key(evaluator), evaluator.settings()
        self.eval_settings = self.evaluator_cfg.run_settings()
        self.recipe_kwargs = cfg.merge.recipe_kwargs(seed=cfg.seed)
        self.recipe = get_recipe(cfg.merge.method, **self.recipe_kwargs)
        self.models_dir = run_dir / MODELS_DIR
        self.report = StatusLines(progress)
        self.made = {"merges": 0, "merges_reused": 0, "evaluations": 0, "heldout_evaluations": 0, "kinship_pairs": 0,
                     "kinship_scans": 0, "kinship_rechecks": 0}
        self._scanned: set[frozenset[str]] = set()  # pairs scanned by this call (some undefined)
        self._paths: dict[str, str] = {}
        self._foundations: set[str] = set()
        self._gen_started: dict[int, float] = {}
        self.tracking = RunTracking.for_run(cfg.tracking, dry_run=dry_run, store=store, run_id=self.run_id,
                                            run_dir=run_dir, config=cfg.model_dump(mode="json"), say=self.report.line)
        self.executor: Executor = get_executor(cfg.executor.name, **cfg.executor.settings())
        self.race = RaceSettings(**cfg.racing.model_dump()) if cfg.racing is not None else None
        self.sketches = SketchKinship(cfg.base, store.run_dir) if cfg.kinship_source == "sketch" else None
        self.heldout = HeldOut.for_run(self.evaluator_cfg, store=store, executor=self.executor, run_id=self.run_id,
                                       path_of=self._path, step=self.report.step)
        self.base_id = ""  # the base's content id, once _start has hashed it: every kinship is keyed by it

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        start = time.perf_counter()
        try:
            return self._run(start)
        finally:
            if self.tracking is not None:
                self.tracking.close()
            self.report.close()
            self.executor.close()

    def _run(self, start: float) -> RunSummary:
        if not self.dry_run:
            self._remove_stale_temp()
        self.executor.check_storage(self.cfg.shared_paths(), None if self.dry_run else str(self.models_dir))
        foundations = self._start()
        try:
            if not self.dry_run:
                self._evaluate(foundations, generation=0)
                repair(self.store, self.run_id, say=self.report.line)
                self._score_heldout(0)
            while True:
                stop_if_terminated()
                plan = run_steady(self) if self.cfg.schedule == "steady" else self._next_plan()
                if self.dry_run:
                    return self._summary(start, next_plan=plan)
                if plan.stop is not None:
                    break
                self._execute(plan)
                self._score_heldout(plan.generation)
            self._finish(plan.stop)
        except Exception as exc:
            if not self.dry_run:
                self.store.log_event(self.run_id, "run_failed", f"{type(exc).__name__}: {exc}")
                self.store.finish_run(self.run_id, "failed")
            raise
        except BaseException:  # Ctrl-C or SIGTERM: the run stays resumable
            if not self.dry_run:
                self.store.log_event(self.run_id, "run_interrupted", "interrupted")
                self.store.finish_run(self.run_id, "interrupted")
            raise
        return self._summary(start)

    def _start(self) -> list[str]:
        """Content ids of base and foundations, the run row (resume check), the foundation models."""
        self.report.step("hashing the foundation models")
        ids = self.executor.map(hash_model, [self.cfg.base, *self.cfg.foundation])
        base_id, foundation_ids = ids[0], ids[1:]
        self.base_id = base_id
        seen: dict[str, str] = {}
        for ref, cid in zip(self.cfg.foundation, foundation_ids, strict=True):
            if cid == base_id:
                raise ConfigError(f"foundation model {ref} has the same weights as the base {self.cfg.base}")
            if cid in seen:
                raise ConfigError(f"foundation models {seen[cid]} and {ref} have the same weights; list each once")
            seen[cid] = ref
        fingerprint = RunFingerprint(
            foundation=tuple(foundation_ids), base=base_id, strategy=self.strategy.name,
            settings=self.strategy.settings(), recipe=self.recipe.params(), evaluator=self.eval_key,
            metric=self.metric, identity=ID_VERSION,
            racing=self.cfg.racing.model_dump() if self.cfg.racing is not None else None,
            evaluator_settings=self.eval_identity, kinship_source=self.cfg.kinship_source,
            heldout=self.heldout.key if self.heldout is not None else None, fitness=self.evaluator_cfg.fitness,
            **steady_fingerprint(self.cfg, self.executor.workers),
        )
        existing = self.store.get_run(self.run_id)
        resumed = existing is not None
        if existing is not None:
            resume = reconcile(existing.fingerprint, existing.seed, fingerprint, self.cfg.seed, run=self.run_id,
                               where=str(self.run_dir), decided=bool(self.store.plans(self.run_id)))
            fingerprint = resume.fingerprint
            if resume.raised_budget is not None:  # a dry run too (on its scratch copy): it plans as the run will
                raise_budget(self.store, self.run_id, fingerprint, *resume.raised_budget, say=self.report.line)
            elif fingerprint.to_dict() != existing.config:  # nothing decided yet: the new settings hold
                self.store.update_run_config(self.run_id, fingerprint.to_dict())
                self.store.drop_foundations(self.run_id, keep=foundation_ids)
        else:
            self._check_family()
        self.store.start_run(self.run_id, strategy=self.strategy.name, config=fingerprint.to_dict(), seed=self.cfg.seed)
        for ref, cid in zip(self.cfg.foundation, foundation_ids, strict=True):
            self.store.add_model(cid, origin="foundation", generation=0, path=ref, run_id=self.run_id)
            self._paths[cid] = ref
            self._foundations.add(cid)
        if not self.dry_run:
            verb = "resumed" if resumed else "started"
            self.store.log_event(
                self.run_id, f"run_{verb}", f"{verb} run {self.run_id} in {self.run_dir}",
                payload={"config": self.cfg.model_dump(mode="json"), "fingerprint": fingerprint.to_dict(),
                         "pid": os.getpid()},
            )
            self.report.line(
                f"{'resuming' if resumed else 'starting'} run {self.run_id!r} in {self.run_dir}: "
                f"{len(foundation_ids)} foundation models, strategy {self.strategy.name}, evaluator {self.eval_key}"
            )
        return foundation_ids

    def _check_family(self) -> None:
        """Before anything is evaluated: every foundation must fit the base tensor for tensor (a
        model of another size or family fails here, naming it, not after minutes of scoring)."""
        from kinmerge.evolve.family import check_family

        self.report.step("checking that the models fit the base")
        check_family(self.cfg.base, self.cfg.foundation)  # full models and LoRA adapters

    def _next_plan(self) -> Plan:
        """The saved pending plan, or a new one (kinship computed as the strategy asks), saved."""
        pending = self.store.pending_plan(self.run_id)
        if pending is not None:
            self.report.line(f"gen {pending.generation}: resuming the saved plan ({pending.describe()})")
            return pending
        if self.store.stop_reason(self.run_id) is not None:  # a finished run: nothing to decide
            stored = self.store.get_plan(self.run_id, self.store.last_completed_generation(self.run_id) + 1)
            if stored is not None and stored.stop is not None:
                return stored
        plan, state = self._decide(self._state)
        self._report_generation(state)
        if self.dry_run:
            return plan
        self.store.save_plan(self.run_id, plan)
        self.store.log_event(self.run_id, "plan", plan.describe(), generation=plan.generation,
                             payload=plan.to_dict())
        if plan.stop is None:
            self.report.line(f"gen {plan.generation}: planned {plan.describe()}")
        return plan

    def _decide(self, read_state: Callable[[], PoolState], what: str = "planning") -> tuple[Plan, PoolState]:
        """The strategy's plan for ``read_state()``'s pool, with the kinship it asks for (and the top-k's)."""
        state = read_state()
        self.report.step(f"gen {state.generation + 1}: {what}")
        plan = self.strategy.plan(state)
        wanted = {frozenset(p) for p in plan.kinship_requests} | self._topk_pairs(state)
        if wanted:
            self._ensure_kinship(wanted, generation=state.generation, why="plan")
            state = read_state()
            plan = self.strategy.plan(state)
        if plan.kinship_requests:
            raise KinmergeError(self._undefined_message(plan.kinship_requests))
        if self.sketches is not None:  # a decision an estimate's bound could flip is re-checked exactly
            plan, state, checked = settle(self.strategy, state, plan, read_state=read_state,
                                          scan_exact=lambda r: self._recheck(r, state.generation))
            self.made["kinship_rechecks"] += checked
        return plan, state

    def _execute(self, plan: Plan) -> None:
        """Make, record and evaluate the merges of a saved plan; then mark it done."""
        g = plan.generation
        self._gen_started.setdefault(g, time.perf_counter())
        pairs = {m.pair for m in plan.merges}
        self._ensure_kinship(pairs, generation=g, why="parents")
        kin = {m: self.store.get_kinship(m, model_ids={p for pr in pairs for p in pr}, **self._kinship_key())
               for m in METRICS}
        tasks = [
            MergeTask(
                parents=tuple(self._path(p) for p in m.parents), method=self.cfg.merge.method,
                params=self.recipe_kwargs, out_root=str(self.models_dir),
                base=self.cfg.base if self.recipe.uses_base else None,
                kinship={metric: kin[metric][m.pair] for metric in METRICS if m.pair in kin[metric]} or None,
                cuda=self.cfg.merge.cuda,
            )
            for m in plan.merges
        ]

        def started(items: list[MergeTask]) -> Iterator[MergeTask]:
            for i, item in enumerate(items):
                stop_if_terminated()
                merge = plan.merges[i]
                self.report.step(f"gen {g}: merging {i + 1}/{len(items)}")
                self.store.log_event(self.run_id, "merge_start", "+".join(merge.parents), generation=g,
                                     payload={"parents": list(merge.parents), "reason": merge.reason})
                yield item

        children: dict[int, str] = {}  # each recorded as its merge lands, then evaluated unless scored

        def evaluation(i: int, _: object) -> EvaluateTask | None:
            if self.race is not None:  # a race scores the whole generation together, below
                return None
            stop_if_terminated()
            self.report.step(f"gen {g}: {len(children)}/{len(tasks)} merged, evaluating {short_id(children[i])}")
            scored = self.store.average_scores([children[i]], evaluator=self.eval_key).get(children[i]) is not None
            return None if scored else self._start_evaluation(children[i], g)

        for i, stage, res in self.executor.chain(run_merge, run_evaluation, started(tasks), evaluation):
            if stage == 0:
                children[i] = self._record_merge(plan, i, tasks[i], res)
            else:
                self._record_evaluation(children[i], res, generation=g, card=True)
        if self.race is not None:
            self._evaluate([children[i] for i in sorted(children)], generation=g, cards=True)
        self._remove_stale_temp()  # left by a worker that died mid-merge (its step was run again)
        self.store.mark_plan_done(self.run_id, g)

    def _record_merge(self, plan: Plan, i: int, task: MergeTask, res: dict[str, Any]) -> str:
        """Record the plan's ``i``-th merge, made or reused: the model, its parents, its event; its id."""
        merge, generation = plan.merges[i], plan.generation
        self.store.add_model(res["id"], origin="merge", generation=generation,
                             path=self.store.stored_path(res["path"]), recipe=res["recipe"],
                             parents=merge.parents, run_id=self.run_id)
        self._paths[res["id"]] = res["path"]
        self.made["merges_reused" if res["reused"] else "merges"] += 1
        self.store.log_event(
            self.run_id, "merge", f"{'+'.join(merge.parents)} -> {res['id']}", generation=generation,
            duration_s=res["seconds"],
            payload={"id": res["id"], "parents": list(merge.parents), "reason": merge.reason,
                     "reused": res["reused"], "kinship": task.kinship, **_where(res)},
        )
        return str(res["id"])

    def _finish(self, stop: str | None) -> None:
        ids = [m.id for m in self._state().models]
        if self.cfg.final_kinship_matrix and len(ids) > 1:
            self._ensure_kinship({frozenset(p) for p in itertools.combinations(ids, 2)}, generation=None,
                                 why="final matrix")
        self.store.finish_run(self.run_id)
        self.store.log_event(self.run_id, "run_finished", f"stopped: {stop}", payload={"stop": stop, "made": self.made})
        self.report.line(f"stopped: {stop}")

    # -- steps ------------------------------------------------------------------------------------

    def _evaluate(self, ids: list[str], *, generation: int, cards: bool = False) -> None:
        """Evaluate the models that have no score under this evaluator yet; record each.

        ``cards``: the models are this run's merges; their model cards get the scores, the
        generation and the run (the hub's ``model-index``).
        """
        averages = self.store.average_scores(ids, evaluator=self.eval_key, partial=self.race is not None)
        todo = [i for i in ids if averages.get(i) is None]
        if self.race is not None and generation > 0:
            self._race(todo, generation=generation, cards=cards)
            return

        def started(items: list[str]) -> Iterator[EvaluateTask]:
            for n, mid in enumerate(items):
                stop_if_terminated()
                self.report.step(f"gen {generation}: evaluating {n + 1}/{len(items)}")
                yield self._start_evaluation(mid, generation)

        for n, res in self.executor.imap(run_evaluation, started(todo)):
            self._record_evaluation(todo[n], res, generation=generation, card=cards)

    def _score_heldout(self, generation: int) -> None:  # the top-k after `generation` (evolve.heldout)
        if self.heldout is not None:
            self.made["heldout_evaluations"] = self.heldout.after_generation(self._state(), self.k, generation)

    def _start_evaluation(self, mid: str, generation: int) -> EvaluateTask:
        """The evaluation of ``mid``, logged as started (the executor pulls it when it starts)."""
        self.store.log_event(self.run_id, "evaluate_start", mid, generation=generation)
        return EvaluateTask(self._path(mid), self.evaluator_cfg.name, self.eval_settings)

    def _record_evaluation(self, mid: str, res: dict[str, Any], *, generation: int, card: bool,
                           race: dict[str, Any] | None = None) -> None:
        """Record one evaluation; ``card``: a merge of this run, whose model card gets the scores;
        ``race``: how a raced evaluation went (``stopped_early``, ``examples``)."""
        self.store.record_evaluations(mid, self.eval_key, res["scores"], details=res["details"])
        if card:
            write_card(self._path(mid), scores=res["scores"], generation=generation, run=self.run_id)
        self.made["evaluations"] += 1
        early = " (stopped early)" if race and race["stopped_early"] else ""
        self.store.log_event(
            self.run_id, "evaluate", f"{mid}: {res['average']:.4f}{early}", generation=generation,
            duration_s=res["seconds"],
            payload={"id": mid, "scores": res["scores"], "average": res["average"], **(race or {}), **_where(res)},
        )

    def _race(self, todo: list[str], *, generation: int, cards: bool) -> None:
        """Score a generation's children in rounds; stop those that cannot reach the top-k."""
        assert self.race is not None
        before = [m.score for m in self.store.pool(self.run_id, evaluator=self.eval_key, partial=True)
                  if m.generation < generation and m.score is not None]

        def score_part(ids: Sequence[str], part: tuple[int, int]) -> Iterator[tuple[str, dict[str, Any]]]:
            self.report.step(f"gen {generation}: racing {len(ids)} children on examples {part[0]}-{part[1]}")
            tasks = [EvaluateTask(self._path(i), self.cfg.evaluator.name, self.eval_settings, part=part) for i in ids]
            for n, res in self.executor.imap(run_evaluation, tasks):
                yield ids[n], res

        for mid, res, early in race(todo, score_part, pool=before, k=self.k, settings=self.race):
            used = sum(int(d["n"]) for d in res["details"].values())
            self._record_evaluation(mid, res, generation=generation, card=cards and not early,
                                    race={"examples": used, "stopped_early": early})

    def _ensure_kinship(self, pairs: Iterable[frozenset[str]], *, generation: int | None, why: str) -> None:
        """Scan, in one pass, every model of the pairs whose kinship is unknown; record all metrics.

        Every pair among the scanned models is recorded (a scan gives them all for free).
        """
        pairs = set(pairs)
        known = self.store.get_kinship(self.metric, model_ids={m for p in pairs for m in p}, **self._kinship_key())
        missing = [p for p in pairs if p not in known and p not in self._scanned]
        if not missing:
            return
        models = sorted({m for p in missing for m in p})
        self.report.step(f"kinship: scanning {len(models)} models ({why})")
        res = self.sketches.values(models, self._path, base_id=self.base_id) if self.sketches is not None else \
            self.executor.map(run_kinship, [KinshipTask(self.cfg.base, tuple(self._path(m) for m in models))])[0]
        count = 0
        for metric in METRICS:
            values = {(models[i], models[j]): v for i, j, v in res["values"][metric]}
            bounds = {(models[i], models[j]): b for i, j, b in res.get("bounds", {}).get(metric, [])}
            if values:
                self.store.record_kinships(values, metric, bounds=bounds or None, **self._kinship_key())
            count = max(count, len(values))
        self._scanned |= {frozenset(p) for p in itertools.combinations(models, 2)}
        self.made["kinship_pairs"] += count
        self.made["kinship_scans"] += 1
        undefined = {m: [[models[i], models[j], w] for i, j, w in rows] for m, rows in res["undefined"].items() if rows}
        self.store.log_event(
            self.run_id, "kinship", f"{len(models)} models scanned ({why})", generation=generation,
            duration_s=res["seconds"],
            payload={"models": models, "pairs": count, "bytes_read": res["bytes_read"], "undefined": undefined,
                     "notes": res["notes"], "sketched": res.get("sketched")},
        )

    def _recheck(self, r: Recheck, generation: int) -> None:
        self.report.step(f"kinship: re-checking the {r.decision} exactly ({len(r.models)} models)")
        res = self.executor.map(run_kinship, [KinshipTask(self.cfg.base, tuple(self._path(m) for m in r.models))])[0]
        self.made["kinship_pairs"] += record_exact(self.store, self.run_id, r, res, base=self.base_id,
                                                   generation=generation)
        self.made["kinship_scans"] += 1

    # -- helpers ----------------------------------------------------------------------------------

    def _kinship_key(self) -> dict[str, str]:
        return {"base": self.base_id, "source": self.cfg.kinship_source}

    def _remove_stale_temp(self) -> None:
        for p in remove_stale_temp(self.models_dir):
            self.store.log_event(None, "cleanup", f"removed unfinished merge folder {p.name}")

    def _state(self) -> PoolState:
        return self.store.pool_state(self.run_id, evaluator=self.eval_key, metric=self.metric,
                                     partial=self.race is not None, fitness=self.evaluator_cfg.fitness)

    def _topk_pairs(self, state: PoolState) -> set[frozenset[str]]:
        if not state.models or any(m.score is None for m in state.models):
            return set()
        return {frozenset(p) for p in itertools.combinations(topk(state, self.k), 2)}

    def _located(self, rec: ModelRecord) -> str:
        """Where a recorded model is now. The store resolves paths it keeps relative; an absolute
        merge path (kinmerge 0.1) of a run directory that has since moved is found by its id."""
        assert rec.path is not None
        if rec.origin == "merge" and not Path(rec.path).exists() and (self.models_dir / rec.id).exists():
            return str(self.models_dir / rec.id)
        return rec.path

    def _path(self, model_id: str) -> str:
        """The folder of a model. A merge whose folder is gone — deleted before or *during* the
        run — is merged again from its recorded parents and recipe (same id, same bytes)."""
        path = self._paths.get(model_id)
        if path is None or (model_id not in self._foundations and not (Path(path) / METADATA_FILE).is_file()):
            rec = self.store.get_model(model_id)
            if rec is None or rec.path is None:
                raise StoreError(f"model {model_id} has no recorded folder in {self.store.db_path}; "
                                 "rerun to let the store repair itself, or restore the run directory")
            path = self._located(rec)
            if rec.origin == "merge" and not (Path(path) / METADATA_FILE).is_file():
                self.report.step(f"re-merging deleted {rec.id}")
                task = remerge_task(rec, Path(path), parents=[self._path(p) for p in rec.parents],
                                    base=self.cfg.base, cuda=self.cfg.merge.cuda)
                check_remerge(rec, self.executor.map(run_merge, [task])[0], Path(path), store=self.store,
                              run_id=self.run_id)
            self._paths[model_id] = path
        return path

    def _undefined_message(self, requests: Iterable[tuple[str, str]]) -> str:
        a, b = next(iter(requests))
        return (
            f"{self.metric} kinship of {self._path(a)} and {self._path(b)} is undefined (a delta is zero or "
            f"constant: a model equal to the base?); the {self.strategy.name} strategy needs it — "
            "remove that model or use kinship_metric: ed"
        )

    def _report_generation(self, state: PoolState) -> None:
        """The progress line of the last completed generation (once its top-k kinship is known)."""
        took = self._gen_started.get(state.generation)
        line, facts = generation_line(state, self.k, self.metric,
                                      seconds=None if took is None else time.perf_counter() - took,
                                      fitness=self.evaluator_cfg.fitness)
        if line is None:
            return
        self.report.line(line)
        if not self.dry_run:
            self.store.log_event(self.run_id, "generation", line, generation=state.generation, payload=facts)

    def _summary(self, start: float, next_plan: Plan | None = None) -> RunSummary:
        s = summarize(self.store, self.run_id, self.run_dir)
        status = "dry-run" if self.dry_run else s.status
        return RunSummary(**{**s.__dict__, "status": status, "made": dict(self.made),
                             "seconds": time.perf_counter() - start, "next_plan": next_plan})
