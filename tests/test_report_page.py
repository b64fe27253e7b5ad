"""The report page at scale, on real evolution runs of the micro zoo.

Eight runs (greedy, kinship with early stopping off, random with two seeds) on two testbeds (the
same three specialists scored on the first 6 or 8 examples of each choice task), made by
``evolve`` itself; then the page and its figures are checked for what a reader of many runs
needs: runs as rows, settings said once with their real values, a panel per testbed and a colour
per variant, legends off the axes, tree edges clear of models, scores with their resolution, n
and standard errors, the study's tables, and no horizontal scroll in a real browser.
"""

from __future__ import annotations

import itertools
import math
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from evolve_helpers import run_config, write_config
from kinmerge.pool import Plan, PlannedMerge, RunFingerprint
from kinmerge.report.budget import early_stop_table
from kinmerge.report.figures import panel_titles, score_curve, tree_nodes
from kinmerge.report.groups import STRATEGY_COLORS, bed_labels, by_testbed, variant_styles, variants_of
from kinmerge.report.html import write_report
from kinmerge.report.panels import DODGE, scores_figure
from kinmerge.report.queries import load_runs
from kinmerge.report.stats import score_sem
from kinmerge.report.tree import TreeNode, tree_routes
from kinmerge.store import RunStore

pytest.importorskip("torch")
pytest.importorskip("mergekit")
pytest.importorskip("pydantic")

VARIANTS = (("greedy", {"name": "greedy"}, 0), ("kinship-nostop", {"name": "kinship", "early_stop": False}, 0),
            ("random-s0", {"name": "random"}, 0), ("random-s1", {"name": "random"}, 1))


@pytest.fixture(scope="module")
def study(micro_zoo, choice_tasks, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Real runs: 4 variants x 2 testbeds (evaluator limit 6 or 8), 3 generations each; the report."""
    from kinmerge.evolve import evolve

    root = tmp_path_factory.mktemp("study")
    dirs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("KINMERGE_CACHE", str(root / "cache"))
        for bed, limit in (("bed-a", 6), ("bed-b", 8)):
            for run_id, strategy, seed in VARIANTS:
                cfg = run_config(micro_zoo, choice_tasks, run_id=run_id, seed=seed,
                                 strategy={**strategy, "k": 3, "max_generations": 3})
                cfg["evaluator"]["limit"] = limit
                evolve(write_config(root / f"{bed}-{run_id}.yaml", cfg), root / bed, progress=False)
            dirs.append(root / bed)
        page = write_report(dirs, root / "report")
    return SimpleNamespace(dirs=dirs, page=page, html=page.read_text(encoding="utf-8"), runs=load_runs(dirs))


def _runs_table(html: str) -> str:
    return html[html.index("<h2 id='runs'>"):html.index("<h3>Testbeds</h3>")]


def test_runs_are_rows_told_apart_by_testbed_and_their_detail_is_folded(study: SimpleNamespace) -> None:
    table = _runs_table(study.html)
    rows = re.findall(r"<tr[^>]*><td>(.*?)</td><td><a class='nw' href='#run-(\d+)'><code>([^<]+)</code>", table)
    assert [(run_id, int(i)) for _, i, run_id in rows] == [(v[0], i) for i, v in enumerate(VARIANTS * 2)]
    # the testbed (its run directory) is named on its first row, so rows of two testbeds differ
    assert [bed for bed, _, _ in rows] == ["<code>bed-a</code>", "", "", "", "<code>bed-b</code>", "", "", ""]
    assert table.count("<tr class=\"first\">") == 1  # a rule between the testbeds
    # every run has a folded detail block (closed: eight runs), reachable from its row
    details = re.findall(r"<details class='run' id='run-(\d+)'( open)?>", study.html)
    assert [int(i) for i, _ in details] == list(range(8)) and not any(o for _, o in details)
    # the testbeds table names the foundation models with their paths
    beds = study.html[study.html.index("<h3>Testbeds</h3>"):study.html.index("<h2 id='settings'>")]
    assert beds.count("specialists/caesar") == 2 and "bed-a" in beds and "bed-b" in beds


def test_settings_show_real_values_and_the_runs_own_metric_under_report_metric_ed(
        study: SimpleNamespace, tmp_path: Path) -> None:
    html = write_report(study.dirs, tmp_path / "ed", metric="ed").read_text(encoding="utf-8")
    settings = html[html.index("<h2 id='settings'>"):html.index("<h2 id='scores'>")]
    shared = settings[:settings.index("Different between runs")]
    different = settings[settings.index("Different between runs"):]
    # the run's own metric, not the report's: PCC, though the figures draw ED
    assert "kinship metric of the run</span> <code>PCC (Pearson correlation)</code>" in shared
    assert "Figures and per-run kinship columns use ED" in settings and "decided with PCC" in settings
    assert "<th>top-3 kinship (ED)</th>" in html  # what --metric does change
    for name, value in (("merge.method", "slerp"), ("evaluator", "builtin"), ("strategy.k", "3"),
                        ("strategy.max_generations", "3")):
        assert f"{name}</span> <code>{value}</code>" in shared, name
    found = re.findall(r"<tr><td>([^<]+)</td><td>(.*?)</td><td>(.*?)</td></tr>", different)
    rows = {name: value for name, value, _ in found}
    used_by = {name: who for name, _, who in found}
    assert rows["evaluator.limit"] == "<code>6</code><br><code>8</code>"
    assert used_by["evaluator.limit"] == "bed-a<br>bed-b"  # per testbed, by name
    assert rows["seed"] == "<code>0</code><br><code>1</code>"
    assert "<code>False</code>" in rows["strategy.early_stop"]
    # the hash-only settings are still there, but never alone: the task names come with them
    assert "add, caesar, reverse (contents hashed)" in settings


def test_score_figure_has_a_panel_per_testbed_one_colour_per_variant_and_keeps_equal_curves_visible(
        study: SimpleNamespace) -> None:
    runs = by_testbed(study.runs)
    styles = variant_styles(variants_of(runs))
    beds = bed_labels(runs)
    fig = scores_figure([score_curve(r, beds[r.testbed]) for r in runs], styles=styles, titles=panel_titles(runs))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().splitlines()[0].split(" · ")[0] for ax in axes] == ["bed-a", "bed-b"]
    # the legend lists each variant once (random: its two seeds as one entry)
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["greedy", "kinship-nostop", "random (2 runs: mean, band = min–max)", "best foundation model"]
    # the paper's strategies keep their colours, in the figure and in the page's swatches
    assert styles["greedy"].color == STRATEGY_COLORS["greedy"] and styles["random"].color == STRATEGY_COLORS["random"]
    for v, style in styles.items():  # the budget table's swatches
        assert f'background:{style.color}"></span>{v}</span>' in study.html, v
    # curves that coincide are drawn side by side (DODGE apart) and named in the panel's title
    for ax, bed in zip(axes, ("bed-a", "bed-b"), strict=True):
        mine = {r.variant: [s.pool_best for s in r.generations] for r in runs if beds[r.testbed] == bed
                and not r.variant.startswith("random")}
        lines = {round(float(line.get_xdata()[0]), 6): list(line.get_ydata()) for line in ax.lines
                 if line.get_linestyle() == "-"}
        if mine["greedy"] == mine["kinship-nostop"]:
            assert "identical: greedy = kinship-nostop" in ax.get_title()
        assert len(lines) == 3 and sorted(lines) == pytest.approx([-DODGE, 0.0, DODGE])
    import matplotlib.pyplot as plt

    plt.close(fig)


def _legend_clear_of_axes(fig: Any) -> None:
    """Every legend's box overlaps no visible axes (ticks, labels and title included)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.get_visible():
                assert not box.overlaps(ax.get_tightbbox(renderer)), ax.get_title()


def test_legends_never_cover_an_axis(study: SimpleNamespace) -> None:
    import matplotlib.pyplot as plt

    from kinmerge.report.budget import anytime_bands
    from kinmerge.report.budget_plots import anytime_figure
    from kinmerge.report.figures import gain_points, kinship_curve
    from kinmerge.report.panels import topk_figure
    from kinmerge.report.plots import merge_gain_figure

    runs = by_testbed(study.runs)
    styles = variant_styles(variants_of(runs))
    beds = bed_labels(runs)
    figures = [
        scores_figure([score_curve(r, beds[r.testbed]) for r in runs], styles=styles),
        topk_figure([kinship_curve(r, beds[r.testbed]) for r in runs], styles=styles, thresholds=[(0.9, "t")]),
        merge_gain_figure(gain_points(runs)),
        anytime_figure(anytime_bands(runs), anytime_bands(runs, unit="examples"), styles=styles),
    ]
    for fig in figures:
        _legend_clear_of_axes(fig)
        plt.close(fig)


#: How close an edge may come to a model's centre: its disc, gold top-k ring included, has a radius
#: under 0.17 row units at the tree's scale (1.55 in per unit across, 1.45 in per generation).
CLEARANCE = 0.2


def _closest_pass(pos: dict[str, tuple[float, float]], routes: dict[tuple[str, str], list[tuple[float, float]]],
                  ) -> float:
    """How close any edge segment comes to a model that is not one of its two ends."""
    best = math.inf
    for (parent, child), route in routes.items():
        for (x1, y1), (x2, y2) in itertools.pairwise(route):
            for mid, (px, py) in pos.items():
                if mid in (parent, child):
                    continue
                dx, dy = x2 - x1, y2 - y1
                t = max(0.0, min(1.0, ((px - x1) * dx + (py - y1) * dy) / (dx * dx + dy * dy)))
                best = min(best, math.hypot(px - x1 - t * dx, py - y1 - t * dy))
    return best


def test_family_tree_edges_pass_through_no_model(study: SimpleNamespace) -> None:
    # the check sees an edge through a model: a straight a -> x over m, right between them
    line = {("a", "x"): [(0.0, 0.0), (0.0, -2.0)]}
    assert _closest_pass({"a": (0.0, 0.0), "m": (0.0, -1.0), "x": (0.0, -2.0)}, line) == 0
    # x's parent a is two rows up: the edge bends through a waypoint beside ab
    toy = [TreeNode("a", "a", 0), TreeNode("b", "b", 0), TreeNode("ab", "ab", 1, ("a", "b")),
           TreeNode("x", "x", 2, ("ab", "a"))]
    pos, routes = tree_routes(toy)
    assert len(routes[("a", "x")]) == 3 and _closest_pass(pos, routes) >= CLEARANCE
    spans = 0
    for r in study.runs:
        pos, routes = tree_routes(tree_nodes(r))
        spans += sum(len(route) > 2 for route in routes.values())
        assert _closest_pass(pos, routes) >= CLEARANCE, r.label
    assert spans > 0  # the real runs do merge across generations


def test_scores_print_digits_for_their_resolution_with_n_and_standard_errors(tmp_path: Path) -> None:
    run_dir = tmp_path / "bed"
    tasks = {"add": 100, "copy": 100, "qa": 100}
    with RunStore(run_dir) as store:
        fp = RunFingerprint(("f0", "f1"), "base", "greedy", {"k": 2}, {"method": "slerp"}, "ev")
        store.start_run("greedy", strategy="greedy", config=fp.to_dict(), seed=0)
        scores = {"f0": {"add": 0.51, "copy": 0.6, "qa": 0.7}, "f1": {"add": 0.5, "copy": 0.62, "qa": 0.71},
                  "m": {"add": 0.55, "copy": 0.61, "qa": 0.73}}
        for mid in ("f0", "f1"):
            store.add_model(mid, origin="foundation", generation=0, path=f"/zoo/{mid}", run_id="greedy")
        store.save_plan("greedy", Plan(1, merges=(PlannedMerge(("f0", "f1"), "greedy"),)))
        store.add_model("m", origin="merge", generation=1, parents=("f0", "f1"), run_id="greedy")
        store.mark_plan_done("greedy", 1)
        for mid, s in scores.items():
            store.record_evaluations(mid, "ev", s, details={t: {"n": n} for t, n in tasks.items()})
        store.finish_run("greedy")
    html = write_report([run_dir], tmp_path / "out").read_text(encoding="utf-8")
    se = math.sqrt(sum(p * (1 - p) / 100 for p in scores["m"].values())) / 3
    assert score_sem(scores["m"], tasks) == pytest.approx(se)
    # 300 examples per model: steps of 1/300, so three decimals (not two), with n and the SE beside
    assert "one example moves it by 1/300 ≈ 0.0033, so scores print with 3 decimals" in html
    table = _runs_table(html)
    assert f"<td class=\"num\">{0.63:.3f} ± {se:.3f}</td>" in table and "<td class=\"num\">100</td>" in table
    assert "<th>add (n = 100)</th>" in html and f"0.630 <span class='muted'>± {se:.3f}</span>" in html


def test_the_study_is_in_the_page_anytime_budget_and_early_stop(study: SimpleNamespace) -> None:
    html = study.html
    for name in ("anytime.png", "early_stop.png"):
        assert (study.page.parent / name).is_file(), name
    budget = html[html.index("<h2 id='budget'>"):html.index("<h2 id='early-stop'>")]
    assert budget.count("data:image/png;base64,") == 1
    assert re.findall(r"</span>(greedy|kinship-nostop|random)</span></td><td class=\"num\">(\d+)", budget) == [
        ("greedy", "2"), ("kinship-nostop", "2"), ("random", "4")]
    assert budget.count("vs greedy: ") == 2 * 4  # two variants x (3 budgets + the area)
    early = html[html.index("<h2 id='early-stop'>"):html.index("<h2 id='gain'>")]
    table = early_stop_table(study.runs)
    assert table["runs"] == 2 and early.count("data:image/png;base64,") == 1
    got = re.findall(r"<tr><td class=\"num\">(0\.\d+)</td><td class=\"num\">(\d/\d)</td>", early)
    assert got == [(f"{row['threshold']:g}", f"{row['fired']}/{row['runs']}") for row in table["rows"]]
    assert [t for t, _ in got] == ["0.8", "0.85", "0.9", "0.95"]
    # the caveat sits right before the p-values it qualifies
    gain = html[html.index("<h2 id='gain'>"):html.index("<h2 id='each'>")]
    caveat = gain.index("these merges are not independent points")
    assert caveat < gain.index("<th>Pearson r with gain</th>") and gain.count("<table>") == 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def page_extent(page: Path, width: int, profile: Path) -> tuple[int, int]:
    """The page's scroll width and height as headless Chromium lays it out in a ``width``-px window.

    The report has no script; a copy gets one that writes ``document.documentElement``'s scroll
    size into the DOM once the page (images included) has loaded, and ``--dump-dom`` reads it.
    """
    probe = ("<script>addEventListener('load', () => { const d = document.documentElement; document.body."
             "insertAdjacentHTML('beforeend', '<pre id=\"extent\">' + d.scrollWidth + 'x' + d.scrollHeight + "
             "'</pre>'); });</script></body>")
    copy = profile.parent / f"probe-{page.stem}.html"
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", probe), encoding="utf-8")
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",  # type: ignore[list-item]
         "--disable-background-networking", f"--user-data-dir={profile}", f"--window-size={width},900",
         "--virtual-time-budget=5000", "--dump-dom", copy.as_uri()],
        capture_output=True, text=True, timeout=180, check=False)
    found = re.search(r'<pre id="extent">(\d+)x(\d+)</pre>', out.stdout)
    assert found, out.stderr[-2000:]
    return int(found.group(1)), int(found.group(2))


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium) for a headless render")
def test_eight_runs_fit_1400_px_without_horizontal_scroll(study: SimpleNamespace, tmp_path: Path) -> None:
    # the probe works: a page wider than the window reports its width
    wide = tmp_path / "wide.html"
    wide.write_text("<!DOCTYPE html><html><body><div style='width:3000px'>x</div></body></html>")
    assert page_extent(wide, 1400, tmp_path / "p0")[0] > 3000
    width, height = page_extent(study.page, 1400, tmp_path / "p1")
    assert width <= 1400
    # a few screens: eight runs side by side and unfolded made a page many times this tall
    assert height < 12_000
