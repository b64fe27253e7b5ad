"""Steady-state evolution (``schedule: steady``, issue 20 §1) on the micro zoo.

- the schedule is a pure function of the plans and the completion order, and a replay of the
  recorded completions rebuilds it (queue, in flight, whether to ask again);
- a steady run on 2 local worker processes finishes and records its completion order;
- a driver SIGKILLed mid-evaluation and right after a plan resumes to the pool, the plans and
  the completion order of an uninterrupted steady run (its completion order is made
  deterministic: one worker process, two children in flight);
- ``schedule`` and ``max_in_flight`` are part of the run's identity and validated.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evolve_helpers import run_config, write_config
from kinmerge.errors import ConfigError, StoreError
from kinmerge.evolve.config import RunConfig
from kinmerge.evolve.steady import Schedule, replay

pytest.importorskip("torch")


def _steady(zoo, tasks, path: Path, **over) -> Path:
    data = run_config(zoo, tasks, run_id="steady", schedule="steady", max_in_flight=2,
                      strategy={"name": "kinship", "k": 3, "max_generations": 3, "early_stop": False})
    data.update(over)
    return write_config(path, data)


def _record(run_dir: Path) -> tuple:
    """What a steady run decided: its pool, plans, completion order and stop."""
    from kinmerge.evolve import read_summary
    from kinmerge.store import RunStore

    s = read_summary(run_dir, "steady")
    with RunStore(run_dir, lock=False) as store:
        plans = {g: p for g, (p, _) in store.plans("steady").items()}
        return ([(m.id, m.generation, m.parents, m.score) for m in s.pool], plans, store.completions("steady"),
                store.plan_afters("steady"), s.stop, s.status)


# -- the schedule (pure) ----------------------------------------------------------------------------


def test_the_schedule_plans_when_a_slot_frees_and_replays_from_the_completions():
    asked: list[int] = []

    def ask(n: int):
        return lambda: asked.append(n) or n

    s = Schedule(limit=2)
    assert s.pull(ask(3)) == (1, 0) and s.pull(ask(9)) == (1, 1) and s.pull(ask(9)) is None  # full
    s.finish((1, 0))
    assert s.pull(ask(9)) == (1, 2) and s.pull(ask(9)) is None  # the queue first, no new plan
    s.finish((1, 1))
    assert s.pull(ask(0)) is None and asked == [3, 0]  # queue empty: asked once; a stop, 1 in flight
    assert s.pull(ask(2)) is None and asked == [3, 0]  # not again before the next completion
    s.finish((1, 2))
    assert s.pull(ask(2)) == (2, 0) and s.pull(ask(9)) == (2, 1) and asked == [3, 0, 2]
    # The replay of those records (plans made after 0 and 3 completions) is the same schedule.
    r = replay(2, [(3, 0), (2, 3)], [(1, 0), (1, 1), (1, 2)])
    assert (r.running, r.queue, r.plans, r.fresh) == (s.running, s.queue, s.plans, s.fresh)
    # Killed after the last completion, before (or after) a plan of no merges: it asks again.
    r = replay(2, [(3, 0)], [(1, 0), (1, 1), (1, 2)])
    assert (r.running, r.queue, r.fresh) == ([], [], True)
    with pytest.raises(StoreError, match="does not replay"):
        replay(2, [(3, 0), (1, 1)], [(1, 0)])  # nothing asked after 1 completion (a slot was taken)
    with pytest.raises(StoreError, match="finished without having been started"):
        replay(1, [(3, 0)], [(1, 1)])  # one in flight at a time: the second merge waited


def test_the_store_numbers_each_child_once_and_keeps_when_each_plan_was_made(tmp_path):
    from kinmerge.pool import Plan, PlannedMerge
    from kinmerge.store import RunStore

    with RunStore(tmp_path) as store:
        store.start_run("r", strategy="greedy", config={"base": "B"})
        for mid in ("a", "b", "c"):
            store.add_model(mid, origin="foundation", generation=0, run_id="r")
        store.save_plan("r", Plan(1, merges=(PlannedMerge(("a", "b")), PlannedMerge(("a", "c")))), after=0)
        store.add_model("ab", origin="merge", generation=1, parents=("a", "b"), run_id="r")
        store.add_model("ac", origin="merge", generation=1, parents=("a", "c"), run_id="r")
        assert [store.record_completion("r", m) for m in ("ac", "ab", "ac")] == [1, 2, 1]  # once each
        assert store.completions("r") == ["ac", "ab"] and store.plan_afters("r") == {1: 0}
        with pytest.raises(StoreError, match="not in the pool of run 'r'"):
            store.record_completion("r", "zz")


def test_schedule_settings_are_validated(micro_zoo, choice_tasks, tmp_path):
    data = run_config(micro_zoo, choice_tasks, max_in_flight=2)
    with pytest.raises(ConfigError, match="max_in_flight: only a steady run"):
        RunConfig.from_dict(data)
    with pytest.raises(ConfigError, match="racing: a race scores a whole generation"):
        RunConfig.from_dict({**data, "schedule": "steady", "racing": {"first": 2}})
    with pytest.raises(ConfigError, match="schedule: Input should be 'generational' or 'steady'"):
        RunConfig.from_dict({**data, "schedule": "async", "max_in_flight": None})


# -- runs ---------------------------------------------------------------------------------------------


def test_a_steady_run_on_two_workers_records_its_completion_order(micro_zoo, choice_tasks, tmp_path):
    from kinmerge.evolve import evolve

    cfg = _steady(micro_zoo, choice_tasks, tmp_path / "w2.yaml", executor={"name": "local", "workers": 2},
                  strategy={"name": "kinship", "k": 3, "max_generations": 2, "early_stop": False})
    s = evolve(cfg, tmp_path / "run", progress=False)
    _pool, plans, order, afters, stop, status = _record(tmp_path / "run")
    children = [m for m in s.pool if m.origin == "merge"]
    assert status == "finished" and stop == "generation budget" and plans[3].stop == stop
    assert sorted(order) == sorted(m.id for m in children) and len(order) == 3 + len(plans[2].merges)
    # Plan 1 at the start; the stop once nothing was in flight. Plan 2 when a slot freed with
    # nothing queued: after the 2nd completion, or after the 3rd where the strategy, asked at the
    # 2nd, stopped (its top-k pairs all merged or planned), a stop that is not final while a child
    # is in flight. Which children finish first, and so the top-k, is up to the two workers.
    assert afters[1] == 0 and afters[2] in (2, 3) and afters[3] == len(order)
    by_id = {m.id: m for m in children}
    merges = {g: [frozenset(m.parents) for m in p.merges] for g, p in plans.items() if p.stop is None}
    done = [(by_id[c].generation, merges[by_id[c].generation].index(frozenset(by_id[c].parents))) for c in order]
    replay(2, [(len(merges[g]), afters[g]) for g in sorted(merges)], done)  # the records replay
    assert all(m.score is not None for m in s.pool)
    with pytest.raises(StoreError, match=r"other settings: max_in_flight: 2 -> 1"):
        evolve(_steady(micro_zoo, choice_tasks, tmp_path / "m1.yaml", max_in_flight=1,
                       strategy={"name": "kinship", "k": 3, "max_generations": 2, "early_stop": False}),
               tmp_path / "run", progress=False)
    data = run_config(micro_zoo, choice_tasks, run_id="steady",
                      strategy={"name": "kinship", "k": 3, "max_generations": 2, "early_stop": False})
    with pytest.raises(StoreError, match=r"other settings: schedule: 'steady' -> 'generational'"):
        evolve(write_config(tmp_path / "gen.yaml", data), tmp_path / "run", progress=False)


def _events(db: Path) -> list[tuple[str, int | None]]:
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT kind, generation FROM events ORDER BY id").fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError:  # the schema is being created
        return []


def _kill_when(cmd: list[str], run_dir: Path, until, log: Path) -> str:
    """Run ``cmd``; SIGKILL it once ``until(events since it started)`` holds."""
    seen = len(_events(run_dir / "kinmerge.db"))
    with log.open("ab") as err:
        proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if until(_events(run_dir / "kinmerge.db")[seen:]):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return "killed"
            time.sleep(0.01)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0, log.read_text()[-2000:]
    return "finished"


def test_a_killed_steady_driver_resumes_to_the_uninterrupted_pool(micro_zoo, choice_tasks, tmp_path):
    from kinmerge.evolve import evolve

    cfg = _steady(micro_zoo, choice_tasks, tmp_path / "steady.yaml")
    evolve(cfg, tmp_path / "ref", progress=False)
    want = _record(tmp_path / "ref")
    assert want[4] == "generation budget" and len(want[2]) >= 8

    def mid_evaluation(evs) -> bool:  # a child evaluated while another is in flight, after 3 completions
        return sum(k == "completion" for k, _ in evs) >= 3 and evs[-1][0] == "evaluate_start"

    def after_a_plan(evs) -> bool:
        return any(k == "plan" and (g or 0) >= 3 for k, g in evs)

    run_dir, log = tmp_path / "killed", tmp_path / "stderr.log"
    cmd = [sys.executable, "-m", "kinmerge.cli", "evolve", str(cfg), "--run-dir", str(run_dir), "--no-progress"]
    assert [_kill_when(cmd, run_dir, until, log) for until in (mid_evaluation, after_a_plan)] == ["killed"] * 2
    assert evolve(cfg, run_dir, progress=False).status == "finished"  # resumed here: no third start-up
    got = _record(run_dir)
    assert got == want  # pool (ids, generations, parents, scores), plans, completion order, stop
    from kinmerge.store import RunStore

    with RunStore(run_dir, lock=False) as store:  # no finished step was done again
        assert [e.kind for e in store.events("steady")].count("run_resumed") == 2  # after each kill
        merges = store.events("steady", kind="merge")
        assert {e.payload["id"] for e in merges} == set(got[2])
        assert sum(not e.payload["reused"] for e in merges) <= len(got[2])  # a merge in flight is found by content
        assert len(store.events("steady", kind="evaluate")) == len(got[0])  # each model scored once
    # A finished child's score lost from the store: the next evolve scores it again, nothing else.
    with sqlite3.connect(run_dir / "kinmerge.db") as con:
        con.execute("DELETE FROM evaluations WHERE model_id = ?", (got[2][0],))
    again = evolve(cfg, run_dir, progress=False)
    assert again.made["evaluations"] == 1 and again.made["merges"] == 0 and _record(run_dir) == want
    assert again.pending is None
