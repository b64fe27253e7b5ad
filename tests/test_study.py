"""The study's arithmetic on known inputs: statistics, anytime curves, budget-matched tables,
early-stop replay (hand-made stores: every number below is checked by hand)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from kinmerge.pool import Plan, PlannedMerge, PoolModel, RunFingerprint
from kinmerge.report.anytime import area, curve, replay_early_stop
from kinmerge.report.budget import anytime_bands, budget_table, default_budgets, early_stop_table
from kinmerge.report.queries import load_runs
from kinmerge.report.stats import bootstrap_ci, paired, sign_test, spread
from kinmerge.store import RunStore

# -- statistics --------------------------------------------------------------------------------


def test_spread_and_sign_test_on_known_values() -> None:
    s = spread([0.1, 0.2, 0.3, None])
    assert s.n == 3 and s.mean == pytest.approx(0.2) and s.std == pytest.approx(0.1)
    assert s.sem == pytest.approx(0.1 / 3**0.5) and (s.low, s.high) == (0.1, 0.3)
    assert spread([]).mean is None and spread([2.0]).std is None
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(3, 3) == 1.0


def test_bootstrap_interval_is_seeded_and_covers_the_mean() -> None:
    values = [0.01 * i for i in range(20)]
    lo, hi = bootstrap_ci(values)
    assert lo < sum(values) / 20 < hi and bootstrap_ci(values) == (lo, hi)
    assert bootstrap_ci([1.0]) is None
    constant = bootstrap_ci([0.5] * 8)
    assert constant == (pytest.approx(0.5), pytest.approx(0.5))


def test_paired_counts_ties_as_ties() -> None:
    d = paired([0.5, 0.6, 0.7, 0.4], [0.5, 0.5, 0.6, 0.5])
    assert (d.n, d.wins, d.ties, d.losses) == (4, 2, 1, 1) and d.mean == pytest.approx(0.025)
    with pytest.raises(ValueError, match="equal lengths"):
        paired([1.0], [1.0, 2.0])


# -- anytime curves and replay -------------------------------------------------------------------


def _pool() -> list[PoolModel]:
    return [PoolModel("a", 0, score=0.50), PoolModel("b", 0, score=0.40), PoolModel("c", 0, score=0.30),
            PoolModel("ab", 1, ("a", "b"), 0.55), PoolModel("ac", 1, ("a", "c"), 0.45),
            PoolModel("bc", 1, ("b", "c"), 0.35), PoolModel("x", 2, ("ab", "a"), 0.60),
            PoolModel("y", 3, ("x", "ab"), 0.61)]


def test_anytime_curve_counts_merges_in_the_order_made() -> None:
    c = curve(_pool(), merge_order=["ab", "ac", "bc", "x", "y"], examples={m.id: 10 for m in _pool()})
    assert c.best == (0.5, 0.55, 0.55, 0.55, 0.60, 0.61)
    assert c.evaluations == (3, 4, 5, 6, 7, 8) and c.examples == (30, 40, 50, 60, 70, 80)
    assert c.best_after(100) == 0.61 and c.best_within(5) == 0.55 and c.best_within(2) is None
    assert c.best_within(55, unit="examples") == 0.55
    assert area(c, 2) == pytest.approx((0.5 + 0.55 + 0.55) / 3)


def test_early_stop_replay() -> None:
    kin = {0: 0.1, 1: 0.83, 2: 0.95, 3: 0.99}
    at_09 = replay_early_stop(_pool(), kin, 0.9)
    assert (at_09.stopped_after, at_09.merges_used, at_09.merges_saved) == (2, 4, 1)
    assert at_09.best == 0.60 and at_09.best_lost == pytest.approx(0.01)
    at_08 = replay_early_stop(_pool(), kin, 0.8)
    assert (at_08.stopped_after, at_08.merges_saved, at_08.best) == (1, 2, 0.55)
    never = replay_early_stop(_pool(), kin, 0.999)
    assert never.stopped_after is None and never.merges_saved == 0 and never.best_lost == 0
    ed = replay_early_stop(_pool(), {1: 5.0, 2: 1.0, 3: 0.5}, 2.0, metric="ed")  # a distance: lower is closer
    assert ed.stopped_after == 2


# -- budget-matched tables on hand-made stores ---------------------------------------------------

EVAL = "builtin-sample"


def _record(store: RunStore, run_id: str, strategy: str, found: dict[str, float],
            merges: list[list[tuple[tuple[str, str], str, float]]], *, evaluator: str = EVAL, seed: int = 0,
            settings: dict | None = None, kinship: dict[int, float] | None = None) -> None:
    """A run: foundations with scores, then generations of (parents, reason, child score)."""
    fp = RunFingerprint(tuple(found), "base", strategy, {"k": 3, **(settings or {})}, {"method": "slerp"},
                        evaluator, identity=2)
    store.start_run(run_id, strategy=strategy, config=fp.to_dict(), seed=seed)
    for name, score in found.items():
        store.add_model(name, origin="foundation", generation=0, path=f"/zoo/{name}", run_id=run_id)
        store.record_evaluations(name, evaluator, {"t": score}, details={"t": {"n": 100}})
    for g, gen in enumerate(merges, start=1):
        store.save_plan(run_id, Plan(g, merges=tuple(PlannedMerge(p, why) for p, why, _ in gen)))  # type: ignore[arg-type]
        for parents, _, score in gen:
            child = f"{run_id}:{'+'.join(parents)}"
            store.add_model(child, origin="merge", generation=g, parents=parents, run_id=run_id)
            store.record_evaluations(child, evaluator, {"t": score}, details={"t": {"n": 100}})
        store.mark_plan_done(run_id, g)
    ids = [m.id for m in store.pool(run_id, evaluator=evaluator)]
    for a, b in itertools.combinations(ids, 2):  # every pair's kinship: by generation of the later one
        g = max(store.get_model(a).generation, store.get_model(b).generation)  # type: ignore[union-attr]
        store.record_kinship(a, b, "pcc", (kinship or {}).get(g, 0.5))
    store.finish_run(run_id)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two testbeds; greedy, kinship (early stop off) and random with two seeds on each.

    Gains over the best foundation (0.5) after 1, 2, 3 merges:
      testbed 1: greedy .05 .05 .05 (stops) | kinship .05 .05 .10 | random-s0 .02 .08 .08, -s1 .04 .04 .04
      testbed 2: greedy .01 .03 .03 | kinship .01 .03 .03 | random-s0 .00 .00 .00, -s1 .02 .02 .06
    """
    found = {"f1": 0.5, "f2": 0.45, "f3": 0.4}
    specs = {
        1: {"greedy": [0.55, 0.5, 0.5], "kinship": [0.55, 0.5, 0.6], "random-s0": [0.52, 0.58, 0.5],
            "random-s1": [0.54, 0.5, 0.5]},
        2: {"greedy": [0.51, 0.53, 0.5], "kinship": [0.51, 0.53, 0.5], "random-s0": [0.5, 0.5, 0.5],
            "random-s1": [0.52, 0.5, 0.56]},
    }
    dirs = []
    for bed, runs in specs.items():
        run_dir = tmp_path_factory.mktemp(f"bed{bed}") / "run"
        with RunStore(run_dir) as store:
            for run_id, scores in runs.items():
                strategy = run_id.split("-")[0]
                pairs = [("f1", "f2"), ("f1", "f3"), ("f2", "f3")]
                gens = [[(pairs[0], "greedy", scores[0]), (pairs[1], "greedy", scores[1])],
                        [(pairs[2], "exploration" if strategy == "kinship" else strategy if strategy == "random"
                          else "greedy", scores[2])]]
                settings = {"early_stop": False, "threshold": 0.9, "metric": "pcc"} if strategy == "kinship" else {}
                _record(store, run_id, strategy, found, gens, evaluator=f"{EVAL}-{bed}", settings=settings,
                        kinship={0: 0.1, 1: 0.85, 2: 0.97})
        dirs.append(run_dir)
    return dirs


def test_budget_table_pairs_variants_with_greedy_testbed_by_testbed(study: list[Path]) -> None:
    runs = load_runs(study)
    assert default_budgets(runs) == (1, 2, 3)
    table = budget_table(runs, budgets=(1, 3))
    assert table["testbeds"] == 2 and table["budgets"] == ["1", "3"]
    rows = {r["variant"]: r for r in table["variants"]}
    assert set(rows) == {"greedy", "kinship", "random"} and rows["random"]["runs"] == 4
    assert rows["greedy"]["gain"]["3"]["mean"] == pytest.approx((0.05 + 0.03) / 2)
    # random averages its seeds per testbed: bed 1 (0.08 + 0.04) / 2, bed 2 (0.00 + 0.06) / 2 at 3 merges
    assert rows["random"]["gain"]["3"]["mean"] == pytest.approx((0.06 + 0.03) / 2)
    k3 = rows["kinship"]["vs_reference"]["3"]
    assert (k3["n"], k3["wins"], k3["ties"], k3["losses"]) == (2, 1, 1, 0) and k3["mean"] == pytest.approx(0.025)
    r1 = rows["random"]["vs_reference"]["1"]  # bed 1: .03 - .05; bed 2: .01 - .01
    assert (r1["wins"], r1["ties"], r1["losses"]) == (0, 1, 1) and r1["mean"] == pytest.approx(-0.01)
    assert "vs_reference" not in rows["greedy"]
    assert rows["greedy"]["merges_used"]["mean"] == 3


def test_early_stop_table_replays_the_unstopped_kinship_runs(study: list[Path]) -> None:
    table = early_stop_table(load_runs(study), thresholds=(0.8, 0.9, 0.99))
    assert table["runs"] == 2
    by_t = {row["threshold"]: row for row in table["rows"]}
    # top-k kinship after generation 1 is 0.85: at 0.8 both runs stop before generation 2
    assert by_t[0.8]["fired"] == 2 and by_t[0.8]["merges_saved"]["mean"] == 1
    assert by_t[0.8]["share_saved"] == pytest.approx(2 / 6)
    assert by_t[0.8]["runs_that_lost"] == 1 and by_t[0.8]["best_lost"]["high"] == pytest.approx(0.05)
    assert by_t[0.9]["fired"] == 0 and by_t[0.99]["fired"] == 0


def test_early_stop_table_falls_back_to_greedy_runs(study: list[Path]) -> None:
    runs = [r for r in load_runs(study) if r.variant != "kinship"]  # a demo without unstopped kinship runs
    table = early_stop_table(runs, thresholds=(0.8,))
    assert table["variant"] == "greedy" and table["runs"] == 2
    assert table["rows"][0]["fired"] == 2  # generation 2 is skipped on both testbeds


def test_anytime_bands_average_seeds_then_span_testbeds(study: list[Path]) -> None:
    runs = load_runs(study)
    bands = anytime_bands(runs)
    assert list(bands) == ["greedy", "kinship", "random"] and bands["random"]["runs"] == 4
    greedy = bands["greedy"]
    assert greedy["x"] == [0, 1, 2, 3] and greedy["testbeds"] == 2
    # greedy's gains: bed 1 .05 .05 .05, bed 2 .01 .03 .03 after 1, 2, 3 merges (0 before any)
    assert greedy["mean"] == pytest.approx([0.0, 0.03, 0.04, 0.04])
    assert greedy["low"] == pytest.approx([0.0, 0.01, 0.03, 0.03])
    assert greedy["high"] == pytest.approx([0.0, 0.05, 0.05, 0.05])
    # random: its seeds averaged per testbed first (bed 1 .03 .06 .06, bed 2 .01 .01 .03), then the beds
    assert bands["random"]["mean"] == pytest.approx([0.0, 0.02, 0.035, 0.045])
    assert bands["random"]["low"] == pytest.approx([0.0, 0.01, 0.01, 0.03])
    # examples: 100 per model, the three foundations first (300), then one merge per 100
    by_examples = anytime_bands(runs, unit="examples")
    assert by_examples["greedy"]["x"] == [300, 400, 500, 600]
    assert by_examples["greedy"]["mean"] == pytest.approx(greedy["mean"])
    with pytest.raises(ValueError, match="unit"):
        anytime_bands(runs, unit="hours")


# -- merges one by one (the real-model study's R5 data) -------------------------------------------


def test_merge_records_count_a_shared_child_once_with_both_gains(tmp_path: Path) -> None:
    """Two runs of one testbed make the same child (content-addressed): one record, both runs
    named; its held-out gain comes from the store (top-k entrants) or the study's extra scores."""
    from kinmerge.report.merges import handed_over, merge_records, records_csv, records_from_csv

    found = {"f1": 0.5, "f2": 0.4, "f3": 0.3}
    heldout = {"f1": 0.45, "f2": 0.35, "ab": 0.5}  # scored by the loop (top-k entrants)
    with RunStore(tmp_path / "bed") as store:
        for run_id, extra in (("greedy", "ac"), ("kinship", "bc")):
            fp = RunFingerprint(tuple(found), "base", run_id, {"k": 2}, {"method": "slerp"}, EVAL, identity=2,
                                heldout="ho")
            store.start_run(run_id, strategy=run_id, config=fp.to_dict(), seed=0)
            for name, score in found.items():
                store.add_model(name, origin="foundation", generation=0, run_id=run_id)
                store.record_evaluations(name, EVAL, {"t": score}, details={"t": {"n": 40}})
            for g, (child, parents, score) in enumerate((("ab", ("f1", "f2"), 0.55),
                                                         (extra, ("f1", "f3") if extra == "ac" else ("f2", "f3"),
                                                          0.42)), start=1):
                store.save_plan(run_id, Plan(g, merges=(PlannedMerge(parents, "greedy"),)))
                store.add_model(child, origin="merge", generation=g, parents=parents, run_id=run_id)
                store.record_evaluations(child, EVAL, {"t": score}, details={"t": {"n": 40}})
                store.mark_plan_done(run_id, g)
            for mid, v in heldout.items():
                store.record_evaluations(mid, "ho", {"t": v}, details={"t": {"n": 100}})
            store.record_kinship("f1", "f2", "pcc", 0.2)
            store.record_kinship("f1", "f3", "pcc", 0.1)
            store.finish_run(run_id)
    runs = load_runs([tmp_path / "bed"])
    records = merge_records(runs, heldout={"bed": {"ac": 0.3}})  # "bc": never scored held out
    by_child = {r.child: r for r in records}
    assert [r.child for r in records] == ["ab", "ac", "bc"] and by_child["ab"].runs == "greedy kinship"
    ab = by_child["ab"]
    assert ab.pcc == pytest.approx(0.2) and ab.gain_selection == pytest.approx(0.55 - 0.45)
    assert ab.gain_heldout == pytest.approx(0.5 - 0.4)
    assert by_child["ac"].parents_heldout is None  # f3 never entered the top-k: no held-out score
    assert by_child["bc"].child_heldout is None and by_child["bc"].pcc is None
    assert records_from_csv(records_csv(records)) == records
    greedy = next(r for r in runs if r.run.id == "greedy")
    pool, order = list(greedy.models.values()), greedy.merge_order
    h = {**greedy.heldout, "ac": 0.3}
    assert handed_over(pool, order, 0, heldout=h) == pytest.approx(0.45)  # f1, the best foundation
    assert handed_over(pool, order, 1, heldout=h) == pytest.approx(0.5)   # ab beats f1 on selection
    assert handed_over(pool, order, 99, heldout=h) == pytest.approx(0.5)  # ac (0.42) does not


# -- the real-model study's R6 and its registered readings ------------------------------------------


def _real_analysis() -> object:
    import importlib
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        return importlib.import_module("real_analysis")
    finally:
        sys.path.pop(0)


def test_all_pairs_regret_and_rankings_on_a_hand_made_test(tmp_path: Path) -> None:
    """Three models, three pairs; every figure below worked out by hand. Gains: a+b +0.01,
    a+c +0.10, b+c -0.05; the best child is a+c (0.50)."""
    import json

    ra = _real_analysis()
    bed = tmp_path / "runs" / "bed"
    bed.mkdir(parents=True)
    models = {m: {"selection": s, "heldout": s, "generation": 0} for m, s in (("a", 0.5), ("b", 0.4), ("c", 0.3))}
    pairs = {p: {"child": f"child-{p}", "heldout": v} for p, v in (("a+b", 0.46), ("a+c", 0.50), ("b+c", 0.30))}
    (bed / "allpairs.json").write_text(json.dumps({"models": models, "pairs": pairs,
                                                   "pcc": {"a+b": 0.9, "a+c": 0.1, "b+c": 0.5}}))
    (test,) = ra.all_pairs(tmp_path)  # type: ignore[attr-defined]
    r = test["rankings"]
    # -PCC picks a+c (the best child), the parents' mean picks a+b (0.46: regret 0.04), suggest
    # (parents' mean + PRIOR's gain at each PCC) picks a+c; a random pair: 0.50 - mean 0.42.
    assert (r["−PCC alone"]["regret"], r["suggest"]["regret"]) == (pytest.approx(0.0), pytest.approx(0.0))
    assert r["parents' mean score alone"]["regret"] == pytest.approx(0.04)
    assert test["random_regret"] == pytest.approx(0.08) and test["best_child"] == pytest.approx(0.5)
    assert r["suggest"]["spearman"] == pytest.approx(1.0)
    assert test["partial"] is None  # two controls need at least five pairs
    # The committed CSV holds what the refit reads: the same points, from the file alone.
    text = ra.allpairs_csv(tmp_path)  # type: ignore[attr-defined]
    assert text.splitlines()[0].split(",") == list(ra.ALLPAIRS_COLUMNS)  # type: ignore[attr-defined]
    points = ra.allpairs_points(text)  # type: ignore[attr-defined]
    assert points == [(c, pytest.approx(v), pytest.approx(g)) for c, v, g in test["points"]]
    prior = ra.refit_prior([], points)  # type: ignore[attr-defined]
    assert (prior["n"], prior["a"], prior["b"]) == (3, pytest.approx(0.07625), pytest.approx(-0.1125))
    assert r["−PCC alone"]["spearman"] == pytest.approx(0.5) == r["parents' mean score alone"]["spearman"]
    # R6 needs suggest's regret smaller than *both* others': a tie with -PCC is not support.
    table = {"compared": {}, "holm": {}}
    for name in ("kinship − greedy", "kinship − random", "predicted − greedy", "predicted − random"):
        table["compared"][name] = {12: paired([0.6] * 8, [0.5] * 8).to_dict()}
        table["holm"][name] = 0.03
    table["compared"]["kinship − random"] = {12: paired([0.5] * 8, [0.6] * 8).to_dict()}
    es = {"merges": {"kinship": [10, 12], "noes": [16, 16]},
          "heldout_diff": paired([0.5, 0.5], [0.505, 0.51]).to_dict()}
    r5 = {"partial": -0.2, "partial_ci95": [-0.3, -0.1], "n": 50}
    lines = ra.verdicts(table, es, r5, [test])  # type: ignore[attr-defined]
    assert [line.split(":")[0] for line in lines] == [f"- **R{i}" for i in range(1, 7)]
    assert "R1: supported" in lines[0] and "R2: not supported.** Behind" in lines[1]
    assert "R3: supported" in lines[2] and "saved 5.0 merges" in lines[2]
    assert "R4: supported" in lines[3] and "R5: supported" in lines[4]
    assert "R6: not supported" in lines[5]


def test_suggests_prior_is_the_fit_of_the_committed_study_data() -> None:
    """``kinmerge.suggest.PRIOR`` and the figures its help quotes are what the committed CSVs of
    the real-model study give (anyone can recompute them; a rerun of the study that changes them
    fails here until the prior and the help follow)."""
    from kinmerge.cli import cli
    from kinmerge.report.merges import records_from_csv
    from kinmerge.suggest import PRIOR, PRIOR_SOURCE

    ra = _real_analysis()
    docs = Path(__file__).resolve().parents[1] / "docs"
    records = records_from_csv((docs / "results-real-merges.csv").read_text(encoding="utf-8"))
    points = ra.allpairs_points((docs / "results-real-allpairs.csv").read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    fit = ra.refit_prior(records, points)  # type: ignore[attr-defined]
    assert (PRIOR.a, PRIOR.b, PRIOR.sd) == (pytest.approx(fit["a"], abs=5e-5), pytest.approx(fit["b"], abs=5e-5),
                                            pytest.approx(fit["sd"], abs=5e-5)) and PRIOR.n == fit["n"]
    help_text = " ".join(cli.commands["suggest"].help.split())  # type: ignore[union-attr]
    assert f"over {PRIOR.n} merges" in help_text and f"over {PRIOR.n} distinct" in PRIOR_SOURCE
    assert f"gain = {PRIOR.a:.3f} - {-PRIOR.b:.3f} x PCC" in help_text


def test_the_loops_merges_by_kind() -> None:
    """Generation 1, a child merged with its own parent, the rest: counts, mean PCC and held-out gain."""
    from kinmerge.report.merges import MergeRecord

    ra = _real_analysis()

    def rec(child: str, a: str, b: str, gen: int, pcc: float, gain: float) -> MergeRecord:
        return MergeRecord("bed", child, a, b, gen, "greedy", pcc, 0.4, 0.4, 0.5, 0.4 + gain, "greedy")

    records = [rec("ab", "a", "b", 1, 0.1, 0.10), rec("cd", "c", "d", 1, 0.1, 0.20),
               rec("ab-a", "ab", "a", 2, 0.7, -0.02), rec("ab-cd", "ab", "cd", 2, 0.4, 0.04)]
    kinds = ra.merge_kinds(records)  # type: ignore[attr-defined]
    assert kinds == {"a child with its own parent": (1, pytest.approx(0.7), pytest.approx(-0.02)),
                     "generation 1": (2, pytest.approx(0.1), pytest.approx(0.15)),
                     "other": (1, pytest.approx(0.4), pytest.approx(0.04))}
