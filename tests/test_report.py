"""Reports and ``kinmerge compare`` on real SQLite stores filled through ``RunStore``'s API.

The made-up evolution (``_kinship_run``): 3 foundation models, 3 generations of greedy merges
plus one exploration merge per generation from generation 2, kinship of every pair for all three
metrics (computed from made-up delta vectors, so PCC/CS/ED agree with each other), 3 task scores
per model, and a kinship early stop before generation 4.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kinmerge._io import OWNER_MARKER
from kinmerge.cli import cli
from kinmerge.pool import STOP_KINSHIP, STOP_TOPK_UNCHANGED, Plan, PlannedMerge, RunFingerprint
from kinmerge.report.compare import compare_table
from kinmerge.report.html import write_report
from kinmerge.report.plots import GainPoint, correlation, gain_correlations, plot_merge_gains
from kinmerge.report.queries import load_runs
from kinmerge.report.tree import TreeNode, plot_family_tree, tree_layout, tree_routes
from kinmerge.store import RunStore

EVAL = "builtin:v1"
TASKS = ("arith", "copy", "qa")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------------------------------------
# made-up runs
# ---------------------------------------------------------------------------------------------


def _scores(avg: float) -> dict[str, float]:
    """Three task scores whose mean is ``avg``."""
    return {"arith": avg + 1.0, "copy": avg - 1.0, "qa": avg}


def _record_all_kinship(store: RunStore, deltas: dict[str, np.ndarray]) -> None:
    ids = sorted(deltas)
    for metric in ("pcc", "cs", "ed"):
        values = {}
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                x, y = deltas[a], deltas[b]
                if metric == "pcc":
                    v = float(np.corrcoef(x, y)[0, 1])
                elif metric == "cs":
                    v = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
                else:
                    v = float(np.linalg.norm(x - y))
                values[(a, b)] = v
        store.record_kinships(values, metric)


# (child, parents, reason, average score) per generation
KINSHIP_GENERATIONS: list[list[tuple[str, tuple[str, str], str, float]]] = [
    [
        ("m1", ("math", "code"), "greedy", 61.0),
        ("m2", ("math", "chat"), "greedy", 57.0),
        ("m3", ("code", "chat"), "greedy", 59.0),
    ],
    [
        ("m4", ("m1", "math"), "greedy", 61.5),
        ("m5", ("m1", "m3"), "greedy", 62.0),
        ("m6", ("math", "m3"), "greedy", 59.5),
        ("m7", ("m1", "chat"), "exploration", 63.0),
    ],
    [
        ("m8", ("m7", "m5"), "greedy", 63.5),
        ("m9", ("m7", "m4"), "greedy", 62.8),
        ("m10", ("m5", "m4"), "greedy", 62.1),
        ("m11", ("m7", "code"), "exploration", 62.5),
    ],
]
FOUNDATIONS = {"math": 60.0, "code": 58.0, "chat": 55.0}


def _kinship_run(run_dir: Path, run_id: str = "kin", seed: int = 0, *, store: RunStore | None = None) -> None:
    """The made-up evolution described in the module docstring."""
    own = store is None
    store = store or RunStore(run_dir)
    try:
        fingerprint = RunFingerprint(foundation=tuple(FOUNDATIONS), base="base", strategy="kinship",
                                     settings={"k": 3, "metric": "pcc", "threshold": 0.85},
                                     recipe={"method": "slerp"}, evaluator=EVAL, metric="pcc")
        store.start_run(run_id, strategy="kinship", config=fingerprint.to_dict(), seed=seed)
        rng = np.random.default_rng(1234)
        deltas: dict[str, np.ndarray] = {}
        for name, avg in FOUNDATIONS.items():
            store.add_model(name, origin="foundation", generation=0, path=f"/zoo/{name}", run_id=run_id)
            store.record_evaluations(name, EVAL, _scores(avg))
            deltas[name] = rng.normal(size=400)
        for g, children in enumerate(KINSHIP_GENERATIONS, start=1):
            plan = Plan(g, merges=tuple(PlannedMerge(p, why) for _, p, why, _ in children))  # type: ignore[arg-type]
            store.save_plan(run_id, plan)
            for child, parents, _, avg in children:
                store.add_model(child, origin="merge", generation=g, parents=parents,
                                path=f"/merges/{child}", recipe={"method": "slerp"}, run_id=run_id)
                store.record_evaluations(child, EVAL, _scores(avg))
                deltas[child] = (deltas[parents[0]] + deltas[parents[1]]) / 2 + rng.normal(scale=0.05, size=400)
            store.mark_plan_done(run_id, g)
        _record_all_kinship(store, deltas)
        store.save_plan(run_id, Plan(4, stop=STOP_KINSHIP))
        store.finish_run(run_id)
    finally:
        if own:
            store.close()


def _simple_run(run_dir: Path, run_id: str, strategy: str, seed: int, foundation: list[float],
                generations: list[list[float]], stop: str | None = None,
                settings: dict[str, object] | None = None) -> None:
    """A hand-checkable run with one task ``t``: foundations f0, f1, ... scored ``foundation``;
    generation ``g`` makes one child per score in ``generations[g - 1]`` from the next unused
    pairs of the models made so far."""
    import itertools

    config: dict[str, object] = {"k": 3}
    if settings is not None:  # a run recorded with its fingerprint, as `evolve` records it
        config = RunFingerprint(tuple(f"f{i}" for i in range(len(foundation))), "b", strategy, settings,
                                {"method": "slerp"}, EVAL).to_dict()
    with RunStore(run_dir) as store:
        store.start_run(run_id, strategy=strategy, config=config, seed=seed)
        made = []
        for i, s in enumerate(foundation):
            store.add_model(f"f{i}", origin="foundation", generation=0, path=f"/zoo/f{i}", run_id=run_id)
            store.record_evaluations(f"f{i}", EVAL, {"t": s})
            made.append(f"f{i}")
        used: set[frozenset[str]] = set()
        for g, children in enumerate(generations, start=1):
            pairs = [p for p in itertools.combinations(made, 2) if frozenset(p) not in used][: len(children)]
            used |= {frozenset(p) for p in pairs}
            store.save_plan(run_id, Plan(g, merges=tuple(PlannedMerge(p, "greedy") for p in pairs)))
            for i, (parents, s) in enumerate(zip(pairs, children, strict=True)):
                child = f"c{g}.{i}"
                store.add_model(child, origin="merge", generation=g, parents=parents, run_id=run_id)
                store.record_evaluations(child, EVAL, {"t": s})
                made.append(child)
            store.mark_plan_done(run_id, g)
        if stop:
            store.save_plan(run_id, Plan(len(generations) + 1, stop=stop))
        store.finish_run(run_id)


@pytest.fixture(scope="module")
def kin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("kin") / "run"
    _kinship_run(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def report(kin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report([kin_dir], tmp_path_factory.mktemp("report") / "out")


def _is_png(path: Path) -> bool:
    """A PNG whose every chunk's CRC checks out and that ends with IEND."""
    data = path.read_bytes()
    if not data.startswith(PNG_MAGIC):
        return False
    pos, seen = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        crc = int.from_bytes(data[pos + 8 + length:pos + 12 + length], "big")
        if zlib.crc32(kind + body) != crc:
            return False
        seen.append(kind)
        pos += 12 + length
    return seen[0] == b"IHDR" and seen[-1] == b"IEND"


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------


def test_every_figure_is_a_valid_png(report: Path) -> None:
    out = report.parent
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["family-tree-1-kin.png", "heatmap-1-kin.png", "merge_gain.png", "scores.png",
                     "topk_kinship.png"]
    for name in names:
        assert _is_png(out / name), name
        assert (out / name).stat().st_size > 10_000, name
    # no temp files or folders left behind
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "index.html", OWNER_MARKER])


def test_html_is_self_contained_with_tables_and_images(report: Path, tmp_path: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert 'src="http' not in page and "src='http" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5
    import base64

    for i, data in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(base64.b64decode(data))
        assert _is_png(tmp_path / f"{i}.png")
    # the run config summary, the per-generation table, the final pool table, how-to-read texts
    for text in ("run · kin (kinship)", "Per generation", "best in pool", "Final pool",
                 "kinship early stop", "not made", "How to read this", "arith", "copy", "qa",
                 "Pearson r with |gain|", "/zoo/math"):
        assert text in page, text
    assert page.count("How to read this") == 5
    # every generation row, the stop row, and the best model marked as top-k #1
    assert page.count("<tr class=\"stop\">") == 1
    assert re.search(r'<tr class="top"><td class="num">1</td><td>★ top-3 #1</td><td><code>g3:m8</code>', page)
    # scores of the best model per task: 64.5 / 62.5 / 63.5
    row = re.search(r"<tr class=\"top\"><td class=\"num\">1</td>.*?</tr>", page).group(0)  # type: ignore[union-attr]
    assert all(f">{v}</td>" in row for v in ("63.50", "64.50", "62.50"))


def test_generation_table_numbers(kin_dir: Path) -> None:
    (run,) = load_runs([kin_dir])
    assert [s.generation for s in run.generations] == [0, 1, 2, 3]
    assert [s.merges for s in run.generations] == [0, 3, 4, 4]
    assert [s.pool_best for s in run.generations] == [60.0, 61.0, 63.0, 63.5]
    assert run.generations[2].mean_score == pytest.approx((61.5 + 62.0 + 59.5 + 63.0) / 4)
    assert run.final_topk == ("m8", "m7", "m9")
    assert run.early_stop_generation == 4 and run.stop_reason == STOP_KINSHIP
    assert run.merges_used == 11 and run.threshold == 0.85 and run.metric == "pcc"
    assert run.models["m7"].reason == "exploration" and run.models["m4"].reason == "greedy"
    assert [run.label_of(m.id) for m in run.foundations] == ["chat", "code", "math"]
    assert all(t.kinship is not None for t in run.topk)


def test_family_tree_layout_is_layered_and_untangled() -> None:
    nodes = [
        TreeNode("a", "a", 0), TreeNode("b", "b", 0), TreeNode("c", "c", 0),
        TreeNode("bc", "bc", 1, ("b", "c")), TreeNode("ab", "ab", 1, ("a", "b")),
        TreeNode("x", "x", 2, ("ab", "a")),
    ]
    pos, routes = tree_routes(nodes)
    assert pos == tree_layout(nodes)
    assert {n: pos[n][1] for n in pos} == {"a": 0.0, "b": 0.0, "c": 0.0, "bc": -1.0, "ab": -1.0, "x": -2.0}
    # children sit under their parents: ab left of bc (input order was the reverse)
    assert pos["ab"][0] < pos["bc"][0]
    # models of a row sit one unit apart, the row centred (with its waypoints)
    assert sorted(pos[n][0] for n in ("a", "b", "c")) == [-1.0, 0.0, 1.0]
    assert pos["bc"][0] - pos["ab"][0] == 1.0
    # a -> x skips generation 1: it bends through a waypoint in that row, beside (not on) ab and bc
    route = routes[("a", "x")]
    assert len(route) == 3 and route[1][1] == -1.0
    assert min(abs(route[1][0] - pos[n][0]) for n in ("ab", "bc")) == 0.55
    assert all(len(routes[(p, c)]) == 2 for p, c in [("a", "ab"), ("b", "ab"), ("b", "bc"), ("c", "bc"), ("ab", "x")])


def test_family_tree_and_gain_plots_handle_odd_inputs(tmp_path: Path) -> None:
    # one unscored node, equal scores, a parent outside the pool
    nodes = [TreeNode("a", "a", 0, score=1.0), TreeNode("b", "b", 0, score=1.0),
             TreeNode("c", "c", 3, ("a", "zz"), None, "exploration", rank=1)]
    assert _is_png(plot_family_tree(nodes, tmp_path / "t.png"))  # type: ignore[arg-type]
    assert plot_family_tree([], tmp_path / "none.png") is None
    assert plot_merge_gains([], tmp_path / "none.png") is None
    # two points: no correlation, still a plot
    pts = [GainPoint(1.0, {"pcc": 0.2, "cs": None, "ed": 3.0}, "greedy"),
           GainPoint(-0.5, {"pcc": 0.8, "cs": None, "ed": 1.0}, None)]
    assert _is_png(plot_merge_gains(pts, tmp_path / "g.png"))  # type: ignore[arg-type]
    assert not (tmp_path / "none.png").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_correlations_match_scipy_and_the_sign_of_abs_gain() -> None:
    from scipy import stats

    kin = [0.1, 0.3, 0.5, 0.7, 0.9]
    gain = [3.0, -2.0, 1.0, -0.5, 0.1]
    pts = [GainPoint(g, {"pcc": k, "cs": k, "ed": 10 * (1 - k)}) for k, g in zip(kin, gain, strict=True)]
    c_gain, c_abs = gain_correlations(pts, "pcc")
    assert c_gain.pearson_r == pytest.approx(stats.pearsonr(kin, gain).statistic)
    assert c_abs.spearman_r == pytest.approx(-1.0)  # |gain| = 3, 2, 1, .5, .1: falls with kinship
    assert c_abs.spearman_p == pytest.approx(stats.spearmanr(kin, [abs(g) for g in gain]).pvalue)
    _, c_abs_ed = gain_correlations(pts, "ed")
    assert c_abs_ed.spearman_r == pytest.approx(1.0)  # ED is a distance: opposite sign
    assert c_gain.spearman_r == pytest.approx(stats.spearmanr(kin, gain).statistic)
    assert correlation([1, 2], [3, 4]).pearson_r is None
    assert correlation([1, 1, 1], [3, 4, 5]).pearson_r is None
    assert "too few" in correlation([1, 2], [3, 4]).text()


def test_report_of_a_run_with_no_merges_yet(tmp_path: Path) -> None:
    run_dir = tmp_path / "fresh"
    with RunStore(run_dir) as store:
        store.start_run("r0", strategy="kinship", config={"k": 3, "metric": "pcc"}, seed=0)
        for name, avg in FOUNDATIONS.items():
            store.add_model(name, origin="foundation", generation=0, path=f"/zoo/{name}", run_id="r0")
            store.record_evaluations(name, EVAL, _scores(avg))
    page = write_report([run_dir], tmp_path / "out").read_text()
    assert "No merge has both a score and its parents' kinship yet" in page and "No top-k kinship yet" in page
    assert "No kinship recorded" in page and "No merges yet." in page
    # scores and family tree still drawn: three foundations
    assert page.count("data:image/png;base64,") == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["family-tree-1-r0.png", "scores.png"]


def test_report_of_an_empty_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "empty"
    with RunStore(run_dir) as store:
        store.start_run("r0", strategy="greedy", config={}, seed=None)
    page = write_report([run_dir], tmp_path / "out").read_text()
    assert "data:image/png" not in page
    assert "No scores yet" in page and "no model has joined this run yet" in page
    data = compare_table([run_dir])
    assert data["runs"][0]["best_per_generation"] == [] or data["runs"][0]["best_per_generation"] == [None]
    assert data["runs"][0]["final_best"] is None


#: Rewrites a report in a process that may not write a file of ``limit`` bytes or more
#: (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the write raises "File too large").
_REWRITE_WITH_A_SIZE_LIMIT = """
import resource, sys
from pathlib import Path
from kinmerge.report.html import write_report
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
write_report([Path(sys.argv[1])], Path(sys.argv[2]))
"""


def test_report_rewrites_atomically_and_reports_errors(kin_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = write_report([kin_dir], out)
    complete = first.read_bytes()
    before = first.stat().st_mtime_ns
    second = write_report([kin_dir], out)
    assert second == first and second.stat().st_mtime_ns >= before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [OWNER_MARKER]
    # A rewrite that fails at the page's last byte (the disk full, say): the figures fit under the
    # limit, the page does not. The old page must stay whole; a plain write would have left its
    # first len - 1 bytes at the final path.
    limit = len(complete) - 1
    assert max(p.stat().st_size for p in out.glob("*.png")) < limit
    failed = subprocess.run([sys.executable, "-c", _REWRITE_WITH_A_SIZE_LIMIT, str(kin_dir), str(out), str(limit)],
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0 and "File too large" in failed.stderr, failed.stderr[-2000:]
    assert first.read_bytes() == complete
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [OWNER_MARKER]
    from kinmerge.errors import StoreError

    with pytest.raises(StoreError, match="no kinmerge store"):
        write_report([tmp_path], tmp_path / "x")


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compare_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("cmp")
    _simple_run(root / "g0", "g0", "greedy", 0, [1.0, 2.0, 3.0], [[2.5, 3.5, 1.5], [4.0]])
    _simple_run(root / "g1", "g1", "greedy", 1, [1.0, 2.0, 3.0], [[3.2, 2.0, 1.0]], stop=STOP_TOPK_UNCHANGED)
    _simple_run(root / "k0", "k0", "kinship", 0, [1.0, 2.0, 3.0], [[2.0, 2.5, 3.1], [5.0, 4.0]], stop=STOP_KINSHIP)
    return [root / "g0", root / "g1", root / "k0"]


def test_compare_numbers_by_hand(compare_dirs: list[Path]) -> None:
    data = compare_table(compare_dirs)
    runs = {r["run_id"]: r for r in data["runs"]}
    assert runs["g0"]["best_per_generation"] == [3.0, 3.5, 4.0]
    assert runs["g1"]["best_per_generation"] == [3.0, 3.2]
    assert runs["k0"]["best_per_generation"] == [3.0, 3.1, 5.0]
    assert [runs[r]["merges_used"] for r in ("g0", "g1", "k0")] == [4, 3, 5]
    assert [runs[r]["early_stop_generation"] for r in ("g0", "g1", "k0")] == [None, None, 3]
    assert runs["g1"]["stop_reason"] == STOP_TOPK_UNCHANGED
    assert [runs[r]["final_best"] for r in ("g0", "g1", "k0")] == [4.0, 3.2, 5.0]
    assert runs["g0"]["foundations"] == ["f0", "f1", "f2"] and runs["g0"]["seed"] == 0

    greedy, kinship = data["strategies"]
    assert greedy["strategy"] == "greedy" and greedy["runs"] == 2 and greedy["seeds"] == [0, 1]
    # generation 2: g1 stopped after generation 1, so its final pool best (3.2) carries forward
    g2 = greedy["best_per_generation"][2]
    assert g2["mean"] == pytest.approx(3.6) and g2["min"] == 3.2 and g2["max"] == 4.0
    assert g2["std"] == pytest.approx(statistics.stdev([4.0, 3.2])) == pytest.approx(0.565685, abs=1e-6)
    g1 = greedy["best_per_generation"][1]
    assert g1["mean"] == pytest.approx(3.35) and g1["std"] == pytest.approx(math.sqrt(0.045))
    assert greedy["best_per_generation"][0] == {"n": 2, "mean": 3.0, "std": 0.0, "min": 3.0, "max": 3.0}
    assert greedy["merges_used"]["mean"] == 3.5 and greedy["final_best"]["mean"] == pytest.approx(3.6)
    assert greedy["early_stops"] == 0
    # a single run: no std
    assert kinship["runs"] == 1 and kinship["final_best"] == {"n": 1, "mean": 5.0, "std": None, "min": 5.0, "max": 5.0}
    assert kinship["early_stops"] == 1
    assert greedy["foundations"] == kinship["foundations"] == ["f0", "f1", "f2"]


def test_compare_groups_by_strategy_and_foundation_set(compare_dirs: list[Path], kin_dir: Path) -> None:
    data = compare_table([*compare_dirs, kin_dir])
    groups = [(s["strategy"], s["foundations"], s["runs"]) for s in data["strategies"]]
    assert groups == [("greedy", ["f0", "f1", "f2"], 2), ("kinship", ["f0", "f1", "f2"], 1),
                      ("kinship", ["chat", "code", "math"], 1)]
    assert data["strategies"][2]["final_best"]["mean"] == 63.5


def test_compare_groups_variants_apart_and_seeds_together(tmp_path: Path) -> None:
    scores = [[2.5, 3.5, 1.5]]
    runs: dict[str, tuple[str, dict[str, object]]] = {"kinship-s0": ("kinship", {"k": 3, "threshold": 0.9, "seed": 0}),
            "kinship-s1": ("kinship", {"k": 3, "threshold": 0.9, "seed": 1}),
            "kinship-noes": ("kinship", {"k": 3, "threshold": None, "seed": 0})}
    for run_id, (strategy, settings) in runs.items():
        seed = settings["seed"]
        assert isinstance(seed, int)
        _simple_run(tmp_path / run_id, run_id, strategy, seed, [1.0, 2.0, 3.0], scores, settings=settings)
    data = compare_table([tmp_path / r for r in runs])
    assert [(s["strategy"], s["variant"], s["runs"]) for s in data["strategies"]] == [
        ("kinship", "kinship", 2), ("kinship", "kinship-noes", 1)]
    table = CliRunner().invoke(cli, ["compare", *(str(tmp_path / r) for r in runs)])
    assert table.exit_code == 0 and "kinship-noes" in table.output.split("across seeds")[1]


def test_compare_cli_json_and_table(compare_dirs: list[Path]) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["compare", *map(str, compare_dirs), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data == json.loads(json.dumps(compare_table(compare_dirs)))
    result = runner.invoke(cli, ["compare", *map(str, compare_dirs)])
    assert result.exit_code == 0, result.output
    for text in ("g0", "g1", "k0", "greedy", "kinship", "3.60", "0.57", "3.20 – 4.00"):
        assert text in result.output, text


def test_two_runs_in_one_store_and_one_report(tmp_path: Path) -> None:
    run_dir = tmp_path / "shared"
    with RunStore(run_dir) as store:
        _kinship_run(run_dir, "kin-a", 0, store=store)
        _kinship_run(run_dir, "kin-b", 1, store=store)
    rows = compare_table([run_dir])["runs"]
    assert [r["run_id"] for r in rows] == ["kin-a", "kin-b"]
    page = write_report([run_dir], tmp_path / "out").read_text()
    assert f"{run_dir.name} · kin-a (kinship)" in page and f"{run_dir.name} · kin-b (kinship)" in page
    assert "<h2 id='budget'>Strategies at equal budgets</h2>" in page
    assert page.count("data:image/png;base64,") == 4 + 2 * 2  # scores, top-k, gain, anytime; 2 x (heatmap, tree)
    # both runs hold the same 11 merges (one store, content ids): each is one point, not two
    from kinmerge.report.figures import gain_points as _gain_points

    assert len(_gain_points(load_runs([run_dir]))) == 11
    assert re.search(r"<td>PCC \(Pearson correlation\)</td><td class=\"num\">11</td>", page)


def test_report_cli(kin_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "r"
    result = runner.invoke(cli, ["report", str(kin_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out / "index.html") and (out / "index.html").is_file()
    # default: RUN_DIR/report
    copy = tmp_path / "copy"
    shutil.copytree(kin_dir, copy)
    result = runner.invoke(cli, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    assert Path(result.output.strip()) == copy / "report" / "index.html"
    # errors are one line, exit code 2
    result = runner.invoke(cli, ["report", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no kinmerge store" in result.output
    for cmd in ("report", "compare"):
        help_text = runner.invoke(cli, [cmd, "--help"]).output
        assert "Example:" in help_text


# ---------------------------------------------------------------------------------------------
# the page in a real browser
# ---------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with console messages logged to stderr, offline and quiet."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",  # type: ignore[list-item]
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=180, check=False,
    )


# Chromium logs every page console message, errors included, as ``...:CONSOLE...] "text"``
# (the level prefix varies across versions: INFO:CONSOLE:1], ERROR:CONSOLE(1)]), and uncaught
# exceptions as "Uncaught ...". The page has no script, so any console line at all is a failure.
_CONSOLE = re.compile(r":CONSOLE\b|Uncaught")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium) for a headless render")
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    # the detector works on this Chromium: a page with a console error and an exception trips it
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><p>x</p><script>console.error("boom"); undefinedFn();</script>')
    probe = _chromium(["--dump-dom", bad.as_uri()], tmp_path / "p0")
    assert probe.returncode == 0 and _CONSOLE.search(probe.stderr), probe.stderr[-3000:]

    shot = tmp_path / "shot.png"
    proc = _chromium([f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()], tmp_path / "p1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _is_png(shot) and shot.stat().st_size > 60_000
    assert not _CONSOLE.search(proc.stderr), proc.stderr[-3000:]
    # the DOM Chromium built holds every image as a data URI, and nothing was logged either
    dom = _chromium(["--dump-dom", report.as_uri()], tmp_path / "p2")
    assert dom.returncode == 0, dom.stderr[-3000:]
    assert dom.stdout.count("data:image/png;base64,") == 5 and "Final pool" in dom.stdout
    assert not _CONSOLE.search(dom.stderr), dom.stderr[-3000:]


def test_several_evaluators_need_a_choice(tmp_path: Path) -> None:
    run_dir = tmp_path / "two-evals"
    with RunStore(run_dir) as store:
        store.start_run("r0", strategy="greedy", config={"k": 3}, seed=0)
        for name, avg in FOUNDATIONS.items():
            store.add_model(name, origin="foundation", generation=0, run_id="r0")
            store.record_evaluations(name, EVAL, _scores(avg))
            store.record_evaluations(name, "lm-eval:paper", {"gsm8k": avg / 100})
    runner = CliRunner()
    result = runner.invoke(cli, ["compare", str(run_dir)])
    assert result.exit_code == 2 and "--evaluator" in result.output
    result = runner.invoke(cli, ["compare", str(run_dir), "--json", "--evaluator", "lm-eval:paper"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["runs"][0]["final_best"] == 0.6
    result = runner.invoke(cli, ["compare", str(run_dir), "--evaluator", "nope"])
    assert result.exit_code == 2 and "no scores from evaluator 'nope'" in result.output


def test_the_data_behind_every_figure(kin_dir: Path) -> None:
    """What each PNG draws, checked number by number on the hand-made run."""
    from kinmerge.report.figures import gain_points, heatmap_data, kinship_curve, score_curve, tree_nodes

    (run,) = load_runs([kin_dir])
    scores = score_curve(run)
    assert list(scores.generations) == [0, 1, 2, 3] and list(scores.best) == [60.0, 61.0, 63.0, 63.5]
    assert scores.mean[1] == pytest.approx((61.0 + 57.0 + 59.0) / 3) and scores.foundation_best == 60.0
    kin = kinship_curve(run)
    assert list(kin.generations) == [0, 1, 2, 3] and all(v is not None for v in kin.values)
    assert kin.stopped_after == 3  # the early stop skipped generation 4
    assert list(kin.values) == [t.kinship for t in run.topk]
    points = gain_points([run])
    assert len(points) == 11
    by_gain = {round(p.gain, 6): p for p in points}
    m7 = by_gain[round(63.0 - (61.0 + 55.0) / 2, 6)]  # m7 = m1 x chat, the exploration merge
    assert m7.reason == "exploration" and set(m7.kinship) == {"pcc", "cs", "ed"}
    assert sum(p.reason == "exploration" for p in points) == 2
    nodes = {n.id: n for n in tree_nodes(run)}
    assert len(nodes) == 14 and {k: n.rank for k, n in nodes.items() if n.rank} == {"m8": 1, "m7": 2, "m9": 3}
    assert nodes["m11"].parents == ("m7", "code") and nodes["m11"].score == 62.5
    labels, matrix = heatmap_data(run)
    assert len(labels) == 14 and sum(lab.startswith("★ ") for lab in labels) == 3
    n = len(labels)
    assert all(matrix[i][i] == 1.0 and matrix[i][j] == matrix[j][i] for i in range(n) for j in range(n))
    i, j = labels.index("math"), labels.index("code")
    with RunStore(kin_dir, lock=False) as store:
        assert matrix[i][j] == store.get_kinship("pcc")[frozenset(("math", "code"))]

