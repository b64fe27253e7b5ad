"""Steady-state evolution (``schedule: steady``): no barrier between generations.

The paper's loop is generational: plan a generation, make and score all of its children, plan
the next. With several workers the last, slowest child of each generation leaves the others
idle. A steady run keeps up to ``max_in_flight`` children being merged or evaluated at once;
each child that finishes (merged *and* scored: a *completion*) enters the pool at once, and the
strategy plans from the pool as it is then. The strategies are unchanged; they see a pool state
defined so that their words keep a meaning:

- **A plan is a generation.** The strategy is asked for a plan when a slot is free, no planned
  merge is waiting, and a child finished since it was last asked (and once at the start); the
  plan's merges queue for free slots. Plans are numbered 1, 2, ... as they are made, so
  ``max_generations`` caps the number of plans (about as many merges as a generational run).
- **A child's generation, as the strategy sees it, is the number of plans made before it
  finished** (foundations: 0); the state's generation is the number of plans made. So "the top-k
  did not change over the last generation" reads "the children that finished since the last plan
  did not change the top-k", and ``exploration_candidates: previous`` are those children.
- **A stop while children are in flight is not final**: they may still change the pool, so the
  strategy is asked again after the next completion (kinship early stop is thereby checked on the
  top-k after each completion). A stop with nothing in flight ends the run, and is saved.
  Exploration stays one merge per plan.

Deterministic given the order of completions: the store numbers each finished child (the pool's
``completed``) and records after how many completions each plan was made, and the scheduling
rule above is a pure function of them (:class:`Schedule`). A resumed run replays the recorded
completions in order through the same rule, which rebuilds the queue and the in-flight set of the
killed run; it then restarts the merges that were in flight (finished merges are found by content
id and scored children are not scored again) and plans exactly as the uninterrupted run would
have after the same completions.

Example:
    >>> s = Schedule(limit=2)
    >>> s.pull(lambda: 3), s.pull(lambda: 0), s.running, s.queue
    ((1, 0), (1, 1), [(1, 0), (1, 1)], [(1, 2)])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kinmerge.errors import StoreError
from kinmerge.evolve.signals import stop_if_terminated
from kinmerge.evolve.steps import EvaluateTask, MergeTask, run_evaluation, run_merge
from kinmerge.kinship import METRICS
from kinmerge.pool import Plan, PoolModel, PoolState
from kinmerge.store import RunStore

__all__ = ["Schedule", "replay", "run_steady", "steady_fingerprint", "steady_state"]

#: A planned merge's place: (its plan's generation, its index in the plan).
Key = tuple[int, int]


@dataclass
class Schedule:
    """Which planned merges run and which wait: a pure function of the plans and the completions.

    ``pull(ask)`` hands out the next merge to start, or ``None`` (nothing now). It starts a queued
    merge when a slot is free; with none queued it calls ``ask()`` — at most once per completion
    (and once at the start) — which makes the next plan and returns its number of merges (0: the
    strategy stopped). ``finish(key)`` records a completion.
    """

    limit: int
    queue: list[Key] = field(default_factory=list)
    running: list[Key] = field(default_factory=list)
    plans: int = 0
    fresh: bool = True  # a child finished (or the run started) since the strategy was last asked

    def pull(self, ask: Callable[[], int]) -> Key | None:
        if len(self.running) >= self.limit:
            return None
        if not self.queue and self.fresh:
            self.fresh = False
            n = ask()
            if n:
                self.plans += 1
                self.queue += [(self.plans, i) for i in range(n)]
        if not self.queue:
            return None
        key = self.queue.pop(0)
        self.running.append(key)
        return key

    def finish(self, key: Key) -> None:
        (self.running if key in self.running else self.queue).remove(key)
        self.fresh = True


def replay(limit: int, plans: Sequence[tuple[int, int]], completions: Sequence[Key]) -> Schedule:
    """The schedule of a killed steady run, rebuilt from the store: ``plans`` as
    ``(merges, completions it was made after)`` in plan order, ``completions`` in order.

    The strategy is not asked: where the run asked, the plan it saved then is taken (none saved:
    it stopped for the moment). After the last completion the schedule may ask again (the run may
    have been killed before it saved that plan; asking twice gives the same answer).

    Raises:
        StoreError: the records do not replay (a plan no completion could have asked for).

    Example:
        >>> s = replay(1, [(1, 0), (2, 1)], [(1, 0)])  # plan 2 was made after the 1st completion
        >>> s.running, s.queue, s.plans
        ([(2, 0)], [(2, 1)], 2)
    """
    todo = list(plans)
    done = 0

    def ask() -> int:
        if todo and todo[0][1] == done:
            return todo.pop(0)[0]
        return 0

    def fill(s: Schedule) -> None:
        while s.pull(ask) is not None:
            pass

    schedule = Schedule(limit)
    fill(schedule)
    for key in completions:
        if key not in schedule.running:
            raise StoreError(f"the run's steady schedule does not replay: merge {key[1] + 1} of plan {key[0]} "
                             "finished without having been started (max_in_flight changed?); give a new run_id")
        schedule.finish(key)
        done += 1
        fill(schedule)
    if todo:
        raise StoreError(f"the run's steady schedule does not replay: a plan made after {todo[0][1]} completions "
                         "was never asked for (max_in_flight changed?); give a new run_id")
    if not schedule.fresh and not schedule.queue and plans and plans[-1][1] != done:
        schedule.fresh = True  # the last ask stopped, or never came: ask again
    elif not plans:
        schedule.fresh = True
    return schedule


def steady_state(models: Sequence[PoolModel], completions: Sequence[str], afters: Sequence[int], *,
                 kinship: Mapping[frozenset[str], float], bounds: Mapping[frozenset[str], float],
                 merged_pairs: frozenset[frozenset[str]], metric: str) -> PoolState:
    """The pool a steady run's strategy plans from: the foundations and the finished children,
    each child's generation being the number of plans made before it finished (``afters``: after
    how many completions each plan was made); the state's generation is the number of plans.

    Example:
        >>> state = steady_state([PoolModel("a", 0, score=0.1), PoolModel("b", 0, score=0.2),
        ...                       PoolModel("c", 1, ("a", "b"), 0.3), PoolModel("d", 2, ("b", "c"))],
        ...                      ["c"], [0, 0], kinship={}, bounds={}, merged_pairs=frozenset(), metric="pcc")
        >>> [(m.id, m.generation) for m in state.models], state.generation
        ([('a', 0), ('b', 0), ('c', 2)], 2)
    """
    seq = {mid: n for n, mid in enumerate(completions, start=1)}
    out = []
    for m in models:
        if m.parents and m.id not in seq:
            continue  # merged but not finished, or planned: not in the pool yet
        g = sum(1 for a in afters if a < seq[m.id]) if m.parents else 0
        out.append(PoolModel(m.id, g, m.parents, m.score))
    ids = {m.id for m in out}
    return PoolState(models=tuple(out), kinship={p: v for p, v in kinship.items() if p <= ids},
                     kinship_bounds={p: v for p, v in bounds.items() if p <= ids},
                     merged_pairs=merged_pairs | {frozenset(m.parents) for m in out if len(set(m.parents)) == 2},
                     generation=len(afters), kinship_metric=metric)


def steady_fingerprint(cfg: Any, workers: int) -> dict[str, Any]:
    """The fingerprint fields of a run's schedule: none for a generational run; for a steady one,
    ``schedule`` and ``max_in_flight`` (default: the executor's ``workers``), which its plans
    depend on.

    Example:
        >>> from types import SimpleNamespace as Cfg
        >>> steady_fingerprint(Cfg(schedule="steady", max_in_flight=None), 8)
        {'schedule': 'steady', 'max_in_flight': 8}
    """
    if cfg.schedule != "steady":
        return {}
    return {"schedule": "steady", "max_in_flight": cfg.max_in_flight or workers}


def run_steady(run: Any) -> Plan:
    """Drive a steady run (``kinmerge.evolve.runner._Run``) until the strategy stops with nothing
    in flight; returns the saved stop plan (a dry run: the next plan, saved nowhere)."""
    return _Steady(run).run()


class _Steady:
    """One steady run's loop over the runner's steps and records."""

    def __init__(self, run: Any) -> None:
        self.r = run
        self.store: RunStore = run.store
        self.run_id: str = run.run_id
        fp = self.store.get_run(self.run_id).fingerprint
        self.limit = int(fp.max_in_flight if fp is not None and fp.max_in_flight else run.executor.workers)
        self.plans: dict[int, Plan] = {}
        self.stop: Plan | None = None
        self.children: dict[Key, str] = {}  # merged, by key
        self.done_pairs: set[frozenset[str]] = set()  # parent pairs of the finished children
        self.restart: list[Key] = []  # in flight when the run was killed: started again first

    # -- reading the store ----------------------------------------------------------------------

    def _saved(self) -> tuple[list[Plan], list[int]]:
        afters = self.store.plan_afters(self.run_id)
        plans = [p for g, (p, _) in sorted(self.store.plans(self.run_id).items()) if p.stop is None]
        missing = [p.generation for p in plans if p.generation not in afters]
        if missing:
            raise StoreError(f"run {self.run_id!r} has plans made without the steady schedule (generation "
                             f"{missing[0]}); resume it with schedule: generational, or give a new run_id")
        return plans, [afters[p.generation] for p in plans]

    def state(self) -> PoolState:
        r = self.r
        fitness = r.evaluator_cfg.fitness
        raw = self.store.pool(self.run_id, evaluator=r.eval_key, fitness=fitness)  # ranked by Fitness.key
        models = [PoolModel(m.id, m.generation, m.parents, m.score if m.score is None else fitness.key(m.score))
                  for m in raw]
        kinship, bounds = self.store.kinship_of_run(self.run_id, r.metric, model_ids=[m.id for m in models])
        return steady_state(models, self.store.completions(self.run_id), self._saved()[1], kinship=kinship,
                            bounds=bounds, merged_pairs=self.store.merged_pairs(self.run_id), metric=r.metric)

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> Plan:
        r = self.r
        plans, afters = self._saved()
        self.plans = {p.generation: p for p in plans}
        by_pair = {m.pair: (p.generation, i) for p in plans for i, m in enumerate(p.merges)}
        parents = {m.id: m.parents for m in self.store.pool(self.run_id, evaluator=r.eval_key)}
        self.done_pairs = {frozenset(parents[c]) for c in self.store.completions(self.run_id)}
        if not r.dry_run:  # a finished child whose score the store lost (it checks itself) is scored again
            r._evaluate(self.store.completions(self.run_id), generation=len(plans), cards=True)
            for p in plans:  # and a plan the store's repair reopened is done again
                if all(m.pair in self.done_pairs for m in p.merges):
                    self.store.mark_plan_done(self.run_id, p.generation)
        if self.store.stop_reason(self.run_id) is not None:  # a finished run: nothing to decide
            return max((p for p, _ in self.store.plans(self.run_id).values() if p.stop is not None),
                       key=lambda p: p.generation)
        done = [by_pair[p] for p in map(frozenset, (parents[c] for c in self.store.completions(self.run_id)))]
        schedule = replay(self.limit, [(len(p.merges), a) for p, a in zip(plans, afters, strict=True)], done)
        if r.dry_run:  # the plan being executed (as a generational dry run shows), else the next one
            waiting = schedule.running + schedule.queue
            return self.plans[waiting[0][0]] if waiting else self.ask(save=False)[0]
        if plans:
            r.report.line(f"steady: resuming after {len(done)} completions, {len(schedule.running)} in flight, "
                          f"{len(schedule.queue)} queued")
            self._ensure_parents([k for k in schedule.running + schedule.queue])
            self.restart = list(schedule.running)
        while True:
            for key, stage, res in r.executor.flow(run_merge, run_evaluation, lambda: self._pull(schedule),
                                                   self._link, limit=self.limit):
                if stage == 0:
                    self.children[key] = r._record_merge(self.plans[key[0]], key[1], self._task(key), res)
                    if self._scored(self.children[key]):
                        self._complete(schedule, key)
                else:
                    g = key[0]
                    r._record_evaluation(self.children[key], res, generation=g, card=True)
                    self._complete(schedule, key)
            r._remove_stale_temp()
            if self.stop is not None:
                break
            schedule.fresh = True  # cannot happen by the rule; ask again rather than end without a stop
        self.store.save_plan(self.run_id, self.stop, after=len(self.store.completions(self.run_id)))
        self.store.log_event(self.run_id, "plan", self.stop.describe(), generation=self.stop.generation,
                             payload=self.stop.to_dict())
        return self.stop

    def _pull(self, schedule: Schedule) -> tuple[Key, MergeTask] | None:
        stop_if_terminated()
        key = self.restart.pop(0) if self.restart else schedule.pull(self._ask_live)
        if key is None:
            return None
        g, i = key
        merge = self.plans[g].merges[i]
        self.r.report.step(f"gen {g}: merging {'+'.join(p[:8] for p in merge.parents)} "
                           f"({len(schedule.running)} in flight)")
        self.store.log_event(self.run_id, "merge_start", "+".join(merge.parents), generation=g,
                             payload={"parents": list(merge.parents), "reason": merge.reason})
        return key, self._task(key)

    def _ask_live(self) -> int:
        plan, state = self.ask(save=True)
        self.stop = plan if plan.stop is not None else None
        if plan.stop is None:
            self._ensure_parents([(plan.generation, i) for i in range(len(plan.merges))])
            self._heldout(state, plan.generation - 1)
        return len(plan.merges)

    def ask(self, *, save: bool) -> tuple[Plan, PoolState]:
        """Plan from the pool as it is now (kinship computed as the strategy asks); save a plan
        of merges with the number of completions it was made after."""
        r = self.r
        plan, state = r._decide(self.state, "planning (steady)")
        if plan.stop is None and save:
            r._report_generation(state)
            self.store.save_plan(self.run_id, plan, after=len(self.store.completions(self.run_id)))
            self.store.log_event(self.run_id, "plan", plan.describe(), generation=plan.generation,
                                 payload={**plan.to_dict(), "schedule": "steady"})
            r.report.line(f"gen {plan.generation}: planned {plan.describe()}")
            self.plans[plan.generation] = plan
        elif plan.stop is not None and save:
            self._heldout(state, state.generation)
        return plan, state

    # -- steps ----------------------------------------------------------------------------------

    def _ensure_parents(self, keys: Sequence[Key]) -> None:
        """Every parent pair's kinship recorded (one scan): it goes into the child's metadata."""
        pairs = {self.plans[g].merges[i].pair for g, i in keys}
        if pairs:
            self.r._ensure_kinship(pairs, generation=max(g for g, _ in keys), why="parents")

    def _task(self, key: Key) -> MergeTask:
        r, merge = self.r, self.plans[key[0]].merges[key[1]]
        kin = {m: self.store.get_kinship(m, model_ids=set(merge.parents), **r._kinship_key()) for m in METRICS}
        return MergeTask(
            parents=tuple(r._path(p) for p in merge.parents), method=r.cfg.merge.method, params=r.recipe_kwargs,
            out_root=str(r.models_dir), base=r.cfg.base if r.recipe.uses_base else None,
            kinship={m: kin[m][merge.pair] for m in METRICS if merge.pair in kin[m]} or None, cuda=r.cfg.merge.cuda)

    def _scored(self, mid: str) -> bool:
        return self.store.average_scores([mid], evaluator=self.r.eval_key).get(mid) is not None

    def _link(self, key: Key, _: object) -> EvaluateTask | None:
        if self._scored(self.children[key]):
            return None
        stop_if_terminated()
        self.r.report.step(f"gen {key[0]}: evaluating {self.children[key][:8]}")
        return self.r._start_evaluation(self.children[key], key[0])  # type: ignore[no-any-return]

    def _complete(self, schedule: Schedule, key: Key) -> None:
        seq = self.store.record_completion(self.run_id, self.children[key])
        schedule.finish(key)
        g = key[0]
        self.done_pairs.add(self.plans[g].merges[key[1]].pair)
        self.store.log_event(self.run_id, "completion", f"{self.children[key]} finished (#{seq})", generation=g,
                             payload={"id": self.children[key], "completed": seq})
        if all(m.pair in self.done_pairs for m in self.plans[g].merges):  # the plan's every child finished
            self.store.mark_plan_done(self.run_id, g)

    def _heldout(self, state: PoolState, generation: int) -> None:
        r = self.r
        if r.heldout is not None:
            r.made["heldout_evaluations"] = r.heldout.after_generation(state, r.k, generation)

