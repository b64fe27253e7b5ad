"""Estimates carry their bounds (``kinship_source: sketch``): the "could flip" rule on made-up
values, an old store's estimates after migration 0004, and real sketch-sourced runs on the micro
zoo whose bounds are stored and shown, with an early stop re-checked exactly."""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from evolve_helpers import run_config, write_config
from kinmerge.cli import cli
from kinmerge.evolve.recheck import Recheck, partner_contenders, rechecks, settle, stop_could_flip
from kinmerge.evolve.strategies import KinshipStrategy
from kinmerge.pool import STOP_KINSHIP, PoolModel, PoolState, pair, topk
from kinmerge.store import RunStore
from kinmerge.store.schema import MIGRATIONS

# == the rule, on made-up values =================================================================


def test_an_early_stop_could_flip_only_when_the_threshold_is_within_the_mean_bound() -> None:
    values = [0.90, 0.92, 0.94]  # mean 0.92
    assert stop_could_flip(values, [0.01, 0.02, 0.03], "pcc", 0.905)      # mean bound 0.02: 0.92 - 0.905 < 0.02
    assert stop_could_flip(values, [0.01, 0.02, 0.03], "pcc", 0.939)      # just inside, above: not sure
    assert not stop_could_flip(values, [0.01, 0.02, 0.03], "pcc", 0.899)  # 0.021 away: sure
    assert not stop_could_flip(values, [0.0, 0.0, 0.0], "pcc", 0.92)      # exact values: never re-checked
    assert stop_could_flip([3.0, 3.2], [0.5, math.inf], "ed", 9.0)        # an unknown bound: anything goes
    assert not stop_could_flip([3.0, 3.2], [0.2, 0.2], "ed", 2.5)         # ED: the same interval rule
    with pytest.raises(ValueError, match="one bound per value"):
        stop_could_flip([0.1], [], "pcc", 0.5)


def test_the_exploration_partner_could_flip_when_intervals_overlap() -> None:
    kin = {pair("b", "x"): 0.10, pair("b", "y"): 0.14, pair("b", "z"): 0.50}
    tight = {pair("b", "x"): 0.01, pair("b", "y"): 0.01, pair("b", "z"): 0.01}
    assert partner_contenders("b", ["x", "y", "z"], kin, tight, "pcc") == ()          # 0.11 < 0.13: sure
    wide = {pair("b", "x"): 0.03, pair("b", "y"): 0.03, pair("b", "z"): 0.03}
    assert partner_contenders("b", ["x", "y", "z"], kin, wide, "pcc") == ("x", "y")   # z stays out of reach
    assert partner_contenders("b", ["x", "y", "z"], kin, {}, "pcc") == ()             # exact: sure
    # ED: the partner is the *largest* distance; its contenders reach up to it
    dist = {pair("b", "x"): 4.0, pair("b", "y"): 3.9, pair("b", "z"): 1.0}
    assert partner_contenders("b", ["x", "y", "z"], dist, {pair("b", "y"): 0.2}, "ed") == ("x", "y")
    # exact ties are broken by id, not re-checked; a tie with an estimate is
    tie = {pair("b", "x"): 0.1, pair("b", "y"): 0.1}
    assert partner_contenders("b", ["x", "y"], tie, {}, "pcc") == ()
    assert partner_contenders("b", ["x", "y"], tie, {pair("b", "y"): 1e-9}, "pcc") == ("x", "y")


def _state(kinship: dict[frozenset[str], float], bounds: dict[frozenset[str], float]) -> PoolState:
    """Three foundations and two children after generation 1: the kinship strategy decides an early
    stop on the top-3 and an exploration partner for the best model."""
    models = (PoolModel("a", 0, score=0.50), PoolModel("b", 0, score=0.40), PoolModel("c", 0, score=0.30),
              PoolModel("ab", 1, ("a", "b"), 0.60), PoolModel("ac", 1, ("a", "c"), 0.20))
    return PoolState(models, kinship=kinship, merged_pairs=frozenset({pair("a", "b"), pair("a", "c"),
                                                                      pair("b", "c")}),
                     generation=1, kinship_metric="pcc", kinship_bounds=bounds)


def _all_pairs(value: float) -> dict[frozenset[str], float]:
    return {frozenset(p): value for p in itertools.combinations(["a", "b", "c", "ab", "ac"], 2)}


def test_rechecks_name_the_decisions_and_the_models_to_scan() -> None:
    strategy = KinshipStrategy(k=3, threshold=0.5, max_generations=5)
    kin = _all_pairs(0.3)
    kin.update({pair("ab", "a"): 0.52, pair("ab", "b"): 0.50, pair("a", "b"): 0.49})  # top-3 (ab, a, b): mean 0.503
    kin.update({pair("ab", "c"): 0.10, pair("ab", "ac"): 0.12})  # partners of ab: c and ac, close
    bounds = {p: 0.02 for p in kin}
    state = _state(kin, bounds)
    plan = strategy.plan(state)
    assert plan.stop == STOP_KINSHIP  # the estimate says stop, but 0.503 ± 0.02 straddles 0.5
    assert [(r.decision, r.models) for r in rechecks(strategy, state, plan)] == [("early stop", ("ab", "a", "b"))]
    # the same values, exact: nothing to re-check
    assert rechecks(strategy, _state(kin, {}), plan) == []
    # below the threshold for sure: no stop; then the exploration choice between c and ac could flip
    low = {**kin, pair("ab", "a"): 0.2, pair("ab", "b"): 0.2, pair("a", "b"): 0.2}
    state = _state(low, {p: 0.02 for p in low})
    plan = strategy.plan(state)
    assert plan.stop is None and [m.parents for m in plan.merges if m.reason == "exploration"] == [("ab", "c")]
    assert [(r.decision, r.models) for r in rechecks(strategy, state, plan)] == [
        ("exploration partner", ("ab", "c", "ac"))]
    assert rechecks(KinshipStrategy(k=3, threshold=0.5, exploration=False, max_generations=5), state, plan) == []


def test_settle_plans_again_from_exact_values_until_nothing_could_flip() -> None:
    """An estimate said stop; the exact values (scanned for the re-check) say go on, and the
    exploration choice that uncovers is re-checked too: two re-checks, each pair scanned once."""
    strategy = KinshipStrategy(k=3, threshold=0.5, max_generations=5)
    kin = _all_pairs(0.3)
    kin.update({pair("ab", "a"): 0.52, pair("ab", "b"): 0.50, pair("a", "b"): 0.49,
                pair("ab", "c"): 0.10, pair("ab", "ac"): 0.12})
    exact = {**kin, pair("ab", "a"): 0.47, pair("ab", "b"): 0.48, pair("a", "b"): 0.49,  # mean 0.48: go on
             pair("ab", "c"): 0.13, pair("ab", "ac"): 0.11}                                # ac is the partner
    known = {"values": dict(kin), "bounds": {p: 0.02 for p in kin}}
    scanned: list[Recheck] = []

    def scan_exact(r: Recheck) -> None:
        scanned.append(r)
        for p in itertools.combinations(r.models, 2):
            known["values"][frozenset(p)] = exact[frozenset(p)]
            known["bounds"].pop(frozenset(p), None)

    def read_state() -> PoolState:
        return _state(dict(known["values"]), dict(known["bounds"]))

    state = read_state()
    plan, state, count = settle(strategy, state, strategy.plan(state), scan_exact=scan_exact, read_state=read_state)
    assert count == 2 and [r.decision for r in scanned] == ["early stop", "exploration partner"]
    assert plan.stop is None and [m.parents for m in plan.merges if m.reason == "exploration"] == [("ab", "ac")]
    assert rechecks(strategy, state, plan) == []


# == an old store: estimates recorded before bounds were kept ====================================


def test_a_0003_store_opens_and_its_old_estimates_have_an_unknown_bound(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    conn = sqlite3.connect(run / "kinmerge.db", isolation_level=None)
    conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    for m in MIGRATIONS[:3]:
        for statement in m.statements:
            conn.execute(statement)
        conn.execute("INSERT INTO migrations VALUES (?, 'then')", (m.name,))
    for mid in ("ma", "mb"):
        conn.execute("INSERT INTO models (id, path, origin, generation, created) VALUES (?, ?, 'foundation', 0, 't')",
                     (mid, f"/m/{mid}"))
    conn.execute("INSERT INTO kinship (base, model_a, model_b, metric, scope, source, value, created) "
                 "VALUES ('B', 'ma', 'mb', 'pcc', 'global', 'sketch', 0.25, 't')")
    conn.close()
    with RunStore(run) as store:  # a resume opens it with the lock: 0004 is applied in place
        assert "0004_kinship_bounds" in store.applied_migrations()
        assert store.get_kinship("pcc", base="B", source="sketch") == {pair("ma", "mb"): 0.25}
        assert store.get_kinship_bounds("pcc", base="B") == {pair("ma", "mb"): math.inf}
        store.record_kinships({("ma", "mb"): 0.26}, "pcc", base="B", source="sketch", bounds={("ma", "mb"): 0.01})
        assert store.get_kinship_bounds("pcc", base="B") == {pair("ma", "mb"): 0.01}
        with pytest.raises(ValueError, match="only estimates"):
            store.record_kinships({("ma", "mb"): 0.2}, "pcc", base="B", source="exact", bounds={("ma", "mb"): 0.01})
    # the schema itself refuses a bound on an exact value, whatever writes it
    conn = sqlite3.connect(run / "kinmerge.db")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        conn.execute("INSERT INTO kinship VALUES ('B', 'ma', 'mb', 'cs', 'global', 'exact', 0.2, 't', 0.1)")
    conn.close()


# == real runs on the micro zoo ==================================================================


def _invoke(*args: object) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _evolve(tmp_path: Path, name: str, zoo, tasks: Path, **strategy) -> tuple[Path, dict]:
    run_dir = tmp_path / name
    cfg = run_config(zoo, tasks, strategy={"name": "kinship", "k": 3, "max_generations": 2, **strategy},
                     out={"run_dir": str(run_dir)}, kinship_source="sketch")
    return run_dir, json.loads(_invoke("evolve", write_config(tmp_path / f"{name}.yaml", cfg), "--json"))


def _rows(run_dir: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(run_dir / "kinmerge.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.slow
def test_a_sketch_run_stores_and_shows_bounds_and_rechecks_a_close_early_stop(micro_zoo, choice_tasks, tmp_path):
    run, summary = _evolve(tmp_path, "free", micro_zoo, choice_tasks, early_stop=False)
    assert summary["kinship_source"] == "sketch" and summary["generation"] == 2
    # every estimate is stored with its bound; an exact value (a re-checked pair) with none
    sketch = _rows(run, "SELECT bound FROM kinship WHERE source = 'sketch'")
    assert sketch and all(b is not None and 0 < b < 1 for (b,) in sketch)
    assert _rows(run, "SELECT count(*) FROM kinship WHERE source = 'exact' AND bound IS NOT NULL") == [(0,)]
    # status: each merge's parents' kinship says it is an estimate and shows its bound
    status = status_free = json.loads(_invoke("status", run, "--json"))
    merges = [m for m in status["pool"] if m["origin"] == "merge"]
    estimated = [m for m in merges if m["kinship_estimate"]]
    assert estimated and all(m["kinship_bound"] > 0 for m in estimated)
    assert status["top_k_kinship_bound"] > 0 and status["kinship_rechecks"] == summary["made"]["kinship_rechecks"]
    text = _invoke("status", run)
    assert f"{estimated[0]['kinship']:.4f} ± {estimated[0]['kinship_bound']:.4f}" in text
    assert "estimates from sketches" in text and "re-checked exactly" in text
    # lineage: a merge line carries its parents' kinship and its bound
    child = estimated[-1]
    lines = _invoke("lineage", child["id"], "--run", run).splitlines()
    assert f"pcc {child['kinship']:.4f} ± {child['kinship_bound']:.4f}" in lines[0]
    tree = json.loads(_invoke("lineage", child["id"], "--run", run, "--json"))
    assert tree["kinship_estimate"] is True and tree["kinship_bound"] == pytest.approx(child["kinship_bound"])

    # The early stop before generation 2 watches the top-3 after generation 1. A threshold at its
    # estimate is inside the estimate's bound: the run must re-check it with an exact scan.
    with RunStore(run, lock=False) as store:
        state = store.pool_state("kinship", evaluator=summary and store.pick_run().fingerprint.evaluator)
        values, _ = store.kinship_of_run("kinship")
    gen1 = PoolState(tuple(m for m in state.models if m.generation <= 1), generation=1)
    top = topk(gen1, 3)
    pairs = [frozenset(p) for p in itertools.combinations(top, 2)]
    estimate = math.fsum(values[p] for p in pairs) / 3
    close, summary = _evolve(tmp_path, "close", micro_zoo, choice_tasks, threshold=round(estimate, 12))
    assert summary["made"]["kinship_rechecks"] >= 1
    events = _rows(close, "SELECT payload FROM events WHERE kind = 'kinship_recheck'")
    decisions = [json.loads(p) for (p,) in events]
    stop = next(d for d in decisions if d["decision"] == "early stop")
    assert sorted(stop["models"]) == sorted(top) and stop["pairs"] == 3
    exact = dict(((a, b), v) for a, b, v in _rows(
        close, "SELECT model_a, model_b, value FROM kinship WHERE source = 'exact' AND metric = 'pcc'"))
    assert {tuple(sorted(p)) for p in pairs} <= set(exact)
    exact_mean = math.fsum(exact[tuple(sorted(p))] for p in pairs) / 3
    # the decision follows the exact values, not the estimate
    assert (summary["stop"] == STOP_KINSHIP and summary["generation"] == 1) == (exact_mean > estimate)
    status = json.loads(_invoke("status", close, "--json"))
    assert status["kinship_rechecks"] == len(decisions) >= 1
    # the re-checked pairs read exact now: no bound on the top-3's mean when it is all exact
    assert f"{len(decisions)} decision(s) an estimate could flip re-checked exactly" in _invoke("status", close)

    # compare and the report show the same: estimates with their bounds, and the re-checks
    rows = {Path(r["run_dir"]).name: r for r in json.loads(_invoke("compare", run, close, "--json"))["runs"]}
    free = rows["free"]
    assert free["kinship_source"] == "sketch" and free["final_top_k_kinship_estimate"]
    assert free["final_top_k_kinship_bound"] == pytest.approx(status_free["top_k_kinship_bound"])
    assert rows["close"]["kinship_rechecks"] == len(decisions)
    table = _invoke("compare", run, close)
    assert f"{free['final_top_k_kinship']:.4f} ± {free['final_top_k_kinship_bound']:.4f}" in table
    pytest.importorskip("matplotlib")
    _invoke("report", run, close, "--out", tmp_path / "page")
    page = (tmp_path / "page" / "index.html").read_text(encoding="utf-8")
    assert "estimated from sketches" in page and f"± {free['final_top_k_kinship_bound']:.3f}" in page
