"""The SQLite run store, on real files in tmp_path."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kinmerge.errors import StoreError
from kinmerge.evolve import (
    STOP_TOPK_UNCHANGED,
    GreedyStrategy,
    KinshipStrategy,
    Plan,
    PlannedMerge,
    get_strategy,
    pair,
)
from kinmerge.report.queries import generation_rows, merge_gain_rows, topk_rows
from kinmerge.store import DB_NAME, MIGRATIONS, RunStore

EVAL = "builtin:v1"


@pytest.fixture
def store(tmp_path: Path):
    with RunStore(tmp_path / "run") as s:
        yield s


def _raw(run_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(run_dir / DB_NAME)


def _seed_run(store: RunStore, run_id: str = "r1") -> None:
    """Three scored foundations in a run's pool: a (3.0) > b (2.0) > c (1.0)."""
    store.start_run(run_id, strategy="greedy", config={"k": 3}, seed=0)
    for mid, score in (("a", 3.0), ("b", 2.0), ("c", 1.0)):
        store.add_model(mid, origin="foundation", generation=0, path=f"/m/{mid}", run_id=run_id)
        store.record_evaluations(mid, EVAL, {"t1": score, "t2": score})


def _execute(store: RunStore, run_id: str, plan: Plan, scores: dict[str, float]) -> None:
    """What the runner does with a plan: save it, make + evaluate each child, mark it done."""
    store.save_plan(run_id, plan)
    for m in plan.merges:
        child = "(" + "+".join(sorted(m.parents)) + ")"
        store.add_model(child, origin="merge", generation=plan.generation, parents=m.parents,
                        recipe={"method": "slerp"}, run_id=run_id)
        s = scores.get(child, 0.0)
        store.record_evaluations(child, EVAL, {"t1": s, "t2": s})
    store.mark_plan_done(run_id, plan.generation)


# ---------------------------------------------------------------------------------------------
# schema and migrations
# ---------------------------------------------------------------------------------------------


def test_migrations_apply_once_and_are_recorded(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunStore(run) as s:
        assert s.applied_migrations() == [m.name for m in MIGRATIONS]
    with _raw(run) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"migrations", "runs", "models", "parents", "pool", "evaluations", "kinship",
                "plans", "events"} <= tables
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = conn.execute("SELECT name, applied_at FROM migrations").fetchall()
    assert [r[0] for r in rows] == [m.name for m in MIGRATIONS] and rows[0][1]


def test_reopening_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunStore(run) as s:
        _seed_run(s)
        first = s.applied_migrations()
    for _ in range(2):
        with RunStore(run) as s:
            assert s.applied_migrations() == first
            assert s.get_model("a") is not None
            assert s._query("PRAGMA foreign_keys")[0][0] == 1
    with _raw(run) as conn:
        assert conn.execute("SELECT COUNT(*) FROM migrations").fetchone()[0] == len(MIGRATIONS)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    RunStore(run).close()
    with _raw(run) as conn:
        conn.execute("INSERT INTO migrations VALUES ('0099_future', '2030-01-01')")
    with pytest.raises(StoreError, match=r"written by a newer kinmerge \(unknown schema "
                                         r"migrations: 0099_future\); upgrade kinmerge"):
        RunStore(run)
    # The refused open released its lock: a fixed store opens again.
    with _raw(run) as conn:
        conn.execute("DELETE FROM migrations WHERE name = '0099_future'")
    RunStore(run).close()


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    with sqlite3.connect(other / DB_NAME) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a kinmerge store"):
        RunStore(other)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable kinmerge store"):
        RunStore(junk)


def test_reader_without_lock_needs_an_existing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no kinmerge store"):
        RunStore(tmp_path / "nothing", lock=False)


# ---------------------------------------------------------------------------------------------
# idempotent writes
# ---------------------------------------------------------------------------------------------


def test_idempotent_reinserts(store: RunStore) -> None:
    _seed_run(store)
    # Replaying the same steps (as after a kill) changes nothing.
    assert store.add_model("a", origin="foundation", generation=0, run_id="r1") is False
    assert store.add_model("ab", origin="merge", generation=1, parents=("a", "b"), run_id="r1")
    assert not store.add_model("ab", origin="merge", generation=1, parents=("a", "b"), run_id="r1")
    store.add_parents("ab", ("a", "b"))
    store.add_to_pool("r1", "ab", 1)
    store.record_kinship("a", "b", "pcc", 0.5)
    store.record_kinship("b", "a", "pcc", 0.25)  # same pair, other order: an upsert
    store.record_evaluation("ab", EVAL, "t1", 1.0)
    store.record_evaluation("ab", EVAL, "t1", 1.5)
    plan = Plan(1, merges=(PlannedMerge(("a", "b")),))
    assert store.save_plan("r1", plan) == plan
    assert store.save_plan("r1", plan) == plan
    store.mark_plan_done("r1", 1)
    store.mark_plan_done("r1", 1)

    def count(table: str) -> int:
        return store._query(f"SELECT COUNT(*) FROM {table}")[0][0]

    assert (count("models"), count("parents"), count("pool"), count("kinship"),
            count("plans")) == (4, 2, 4, 1, 1)
    assert store.get_kinship("pcc") == {pair("a", "b"): 0.25}
    assert store.get_scores(["ab"], evaluator=EVAL) == {"ab": {"t1": 1.5}}
    assert store.get_model("ab").parents == ("a", "b")  # type: ignore[union-attr]


def test_conflicting_writes_are_refused(store: RunStore) -> None:
    _seed_run(store)
    store.add_model("ab", origin="merge", generation=1, parents=("a", "b"))
    with pytest.raises(StoreError, match=r"already has parents \['a', 'b'\]"):
        store.add_parents("ab", ("a", "c"))
    store.save_plan("r1", Plan(1, merges=(PlannedMerge(("a", "b")),)))
    with pytest.raises(StoreError, match="different plan for generation 1"):
        store.save_plan("r1", Plan(1, merges=(PlannedMerge(("a", "c")),)))
    with pytest.raises(StoreError, match="requests kinship"):
        store.save_plan("r1", Plan(2, kinship_requests=(("a", "b"),)))
    with pytest.raises(StoreError, match="FOREIGN KEY"):
        store.add_parents("ab2", ("a", "b"))  # unknown child
    with pytest.raises(ValueError, match="itself"):
        store.record_kinship("a", "a", "pcc", 1.0)
    with pytest.raises(ValueError, match="unknown kinship metric"):
        store.record_kinship("a", "b", "l2", 1.0)
    with pytest.raises(ValueError, match="finite"):
        store.record_evaluation("a", EVAL, "t1", float("nan"))


def test_a_failed_transaction_leaves_nothing(store: RunStore) -> None:
    _seed_run(store)
    with pytest.raises(RuntimeError), store.transaction():
        store.add_model("ab", origin="merge", generation=1, parents=("a", "b"), run_id="r1")
        store.record_evaluations("ab", EVAL, {"t1": 1.0, "t2": 1.0})
        raise RuntimeError("killed mid-step")
    assert store.get_model("ab") is None
    assert "ab" not in store.get_scores(evaluator=EVAL)


# ---------------------------------------------------------------------------------------------
# runs, evaluations, events
# ---------------------------------------------------------------------------------------------


def test_runs_resume_only_with_the_same_settings(store: RunStore) -> None:
    run = store.start_run("r1", strategy="kinship", config={"k": 3, "metric": "pcc"}, seed=1)
    assert run.status == "running" and run.config == {"k": 3, "metric": "pcc"}
    store.finish_run("r1", "failed")
    assert store.get_run("r1").status == "failed"  # type: ignore[union-attr]
    again = store.start_run("r1", strategy="kinship", config={"metric": "pcc", "k": 3}, seed=1)
    assert again.status == "running" and again.finished is None
    with pytest.raises(StoreError, match="different config and seed"):
        store.start_run("r1", strategy="kinship", config={"k": 4, "metric": "pcc"}, seed=2)
    store.finish_run("r1")
    assert [r.status for r in store.runs()] == ["finished"]


def test_average_scores_need_every_task_and_one_evaluator(store: RunStore) -> None:
    _seed_run(store)
    store.add_model("d", origin="foundation", generation=0)
    store.record_evaluation("d", EVAL, "t1", 9.0)  # t2 missing: not comparable
    assert store.average_scores(evaluator=EVAL) == {"a": 3.0, "b": 2.0, "c": 1.0, "d": None}
    assert store.average_scores() == store.average_scores(evaluator=EVAL)  # only one evaluator
    store.record_evaluation("a", "lm_eval:v1", "gsm8k", 0.5)
    with pytest.raises(StoreError, match=r"several evaluators \(builtin:v1, lm_eval:v1\)"):
        store.average_scores()


def test_events_and_timed_steps(store: RunStore) -> None:
    _seed_run(store)
    store.log_event("r1", "plan", "generation 1: 3 merges", generation=1, payload={"n": 3})
    with store.timed("r1", "merge", "a+b", generation=1) as info:
        info["method"] = "slerp"
    with pytest.raises(ZeroDivisionError), store.timed("r1", "evaluate", "a+b", generation=1):
        1 / 0  # noqa: B018
    events = store.events("r1")
    assert [e.kind for e in events] == ["plan", "merge", "evaluate_failed"]
    assert events[0].payload == {"n": 3} and events[0].generation == 1
    assert events[1].payload == {"method": "slerp"} and events[1].duration_s >= 0  # type: ignore[operator]
    assert "ZeroDivisionError" in events[2].payload["error"]  # type: ignore[index]
    assert [e.kind for e in store.events("r1", kind="merge")] == ["merge"]


# ---------------------------------------------------------------------------------------------
# the run lock
# ---------------------------------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from kinmerge.store import RunStore
    store = RunStore(sys.argv[1])
    print("ready", flush=True)
    time.sleep(120)
    """
)


def test_lock_refuses_a_second_run_and_frees_itself_on_sigkill(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError) as exc:
            RunStore(run)
        assert str(exc.value).startswith(f"run directory {run} is in use by pid {holder.pid};")
        assert "wait for it" in str(exc.value)
        # A report may still read while the run writes.
        with RunStore(run, lock=False) as reader:
            assert reader.applied_migrations() == [m.name for m in MIGRATIONS]
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    # No stale lock: resume right away, with no file to delete.
    with RunStore(run) as s:
        assert s.applied_migrations() == [m.name for m in MIGRATIONS]


def test_lock_refuses_a_second_opener_in_the_same_process(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunStore(run), pytest.raises(StoreError, match=f"in use by pid {os.getpid()}"):
        RunStore(run)
    RunStore(run).close()  # released on close


# ---------------------------------------------------------------------------------------------
# pool state <-> strategies
# ---------------------------------------------------------------------------------------------


def test_pool_state_round_trips_into_the_strategies(store: RunStore) -> None:
    _seed_run(store)
    state = store.pool_state("r1")
    assert state.generation == 0 and state.kinship_metric == "pcc"
    assert {m.id: m.score for m in state.models} == {"a": 3.0, "b": 2.0, "c": 1.0}
    plan = GreedyStrategy().plan(state)
    assert [m.parents for m in plan.merges] == [("a", "b"), ("a", "c"), ("b", "c")]

    _execute(store, "r1", plan, {"(a+b)": 5.0, "(a+c)": 0.5, "(b+c)": 0.4})
    state = store.pool_state("r1")
    assert state.generation == 1 and len(state.models) == 6
    assert state.by_id["(a+b)"].parents == ("a", "b")
    assert state.merged_pairs == {pair("a", "b"), pair("a", "c"), pair("b", "c")}
    plan2 = GreedyStrategy().plan(state)
    assert [m.parents for m in plan2.merges] == [("(a+b)", "a"), ("(a+b)", "b")]

    # Saved but not executed (a kill after planning): its pairs count as merged, the
    # half-made generation is not in the pool state, and the runner finds the pending plan.
    store.save_plan("r1", plan2)
    store.add_model("((a+b)+a)", origin="merge", generation=2, parents=("(a+b)", "a"), run_id="r1")
    state = store.pool_state("r1")
    assert state.generation == 1 and "((a+b)+a)" not in state.by_id
    assert {pair("(a+b)", "a"), pair("(a+b)", "b")} <= state.merged_pairs
    assert store.pending_plan("r1") == plan2
    assert store.plan_status("r1", 2) == "planned"


def test_pool_state_carries_kinship_for_the_kinship_strategy(store: RunStore) -> None:
    _seed_run(store)
    _execute(store, "r1", GreedyStrategy().plan(store.pool_state("r1")),
             {"(a+b)": 5.0, "(a+c)": 0.5, "(b+c)": 0.4})
    strategy = KinshipStrategy()
    plan = strategy.plan(store.pool_state("r1"))
    assert plan.kinship_requests  # nothing computed yet: asked for, not guessed
    store.record_kinships({p: 0.1 for p in plan.kinship_requests}, "pcc")
    store.record_kinship("a", "b", "ed", 123.0)  # another metric never leaks in
    state = store.pool_state("r1")
    assert set(state.kinship.values()) == {0.1}
    plan = strategy.plan(state)
    assert plan.merges and {m.reason for m in plan.merges} == {"greedy", "exploration"}
    with pytest.raises(ValueError, match="holds 'ed' kinship"):
        strategy.plan(store.pool_state("r1", metric="ed"))


def test_a_whole_greedy_run_through_the_store(store: RunStore) -> None:
    """Drive the greedy loop through the store until it stops; record the stop plan."""
    _seed_run(store)
    strategy = get_strategy("greedy", k=3)
    scores = {"(a+b)": 5.0, "(a+c)": 0.5, "(b+c)": 0.4, "((a+b)+a)": 4.0, "((a+b)+b)": 2.5}
    plans = []
    while True:
        plan = strategy.plan(store.pool_state("r1"))
        plans.append(plan)
        if plan.stop:
            store.save_plan("r1", plan)
            break
        _execute(store, "r1", plan, scores)
    # Generation 3 = the new pairs of S_2 = [(a+b), ((a+b)+a), a]; its children score 0, so
    # S_3 == S_2 and the loop stops.
    assert [m.parents for m in plans[2].merges] == [("(a+b)", "((a+b)+a)"), ("((a+b)+a)", "a")]
    assert plan == Plan(4, stop=STOP_TOPK_UNCHANGED)
    assert store.stop_reason("r1") == STOP_TOPK_UNCHANGED
    assert store.last_completed_generation("r1") == 3
    assert store.pending_plan("r1") is None
    assert sum(1 for m in store.pool("r1") if m.parents) == 3 + 2 + 2


# ---------------------------------------------------------------------------------------------
# lineage and report queries
# ---------------------------------------------------------------------------------------------


def test_lineage(store: RunStore) -> None:
    _seed_run(store)
    store.add_model("ab", origin="merge", generation=1, parents=("a", "b"), run_id="r1",
                    recipe={"method": "slerp"})
    store.add_model("ac", origin="merge", generation=1, parents=("a", "c"), run_id="r1")
    store.add_model("ab_ac", origin="merge", generation=2, parents=("ab", "ac"), run_id="r1")
    tree = store.lineage("ab_ac")
    assert [p.id for p in tree.parents] == ["ab", "ac"]
    assert [p.id for p in tree.parents[0].parents] == ["a", "b"]
    assert tree.parents[0].recipe == {"method": "slerp"}
    assert tree.ancestors() == {"ab", "ac", "a", "b", "c"}  # "a" is shared: listed once
    assert tree.parents[0].parents[0] is tree.parents[1].parents[0]  # read once
    as_dict = tree.to_dict()
    assert as_dict["parents"][1]["parents"][1] == {
        "id": "c", "origin": "foundation", "generation": 0, "path": "/m/c", "recipe": None,
        "parents": [],
    }
    assert store.lineage("a").parents == ()
    with pytest.raises(StoreError, match="model 'zz' is not in the store"):
        store.lineage("zz")


def test_report_queries_over_the_stored_pool(store: RunStore) -> None:
    _seed_run(store)
    gen1 = Plan(1, merges=(PlannedMerge(("a", "b")), PlannedMerge(("a", "c")),
                           PlannedMerge(("b", "c"))))
    _execute(store, "r1", gen1, {"(a+b)": 5.0, "(a+c)": 2.5, "(b+c)": 0.5})
    gen2 = Plan(2, merges=(PlannedMerge(("(a+b)", "a")),
                           PlannedMerge(("(a+b)", "c"), "exploration")))
    _execute(store, "r1", gen2, {"((a+b)+a)": 4.0, "((a+b)+c)": 6.0})
    store.record_kinships({("a", "b"): 0.2, ("a", "c"): 0.1, ("b", "c"): 0.3,
                           ("(a+b)", "c"): -0.02}, "pcc")

    pool = store.pool("r1")
    summary = generation_rows(pool)
    assert [(s.generation, s.models, s.merges) for s in summary] == [(0, 3, 0), (1, 3, 3), (2, 2, 2)]
    assert [s.best_score for s in summary] == [3.0, 5.0, 6.0]
    assert [s.pool_best for s in summary] == [3.0, 5.0, 6.0]
    assert summary[1].mean_score == pytest.approx((5.0 + 2.5 + 0.5) / 3)
    assert sum(1 for m in pool if m.parents) == 5

    kinship = store.get_kinship("pcc")
    tk = topk_rows(pool, 3, kinship)
    assert tk[0].top_k == ("a", "b", "c") and tk[0].kinship == pytest.approx(0.2)
    assert tk[1].top_k == ("(a+b)", "a", "(a+c)") and tk[1].kinship is None  # never computed

    reasons = {m.pair: m.reason for plan, _ in store.plans("r1").values() for m in plan.merges}
    rows = {r.child: r for r in merge_gain_rows(pool, scores={m.id: m.score for m in pool}, kinship=kinship,
                                                reasons=reasons)}
    assert rows["((a+b)+c)"].reason == "exploration"
    assert rows["((a+b)+c)"].merge_gain == pytest.approx(6.0 - (5.0 + 1.0) / 2)
    assert rows["((a+b)+c)"].kinship == -0.02
    assert rows["(a+b)"].merge_gain == pytest.approx(2.5) and rows["(a+b)"].kinship == 0.2
    assert rows["((a+b)+a)"].kinship is None and rows["((a+b)+a)"].reason == "greedy"
