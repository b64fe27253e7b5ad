"""The run report: one self-contained HTML page that stays readable with many runs.

``write_report(run_dirs, out_dir)`` reads every run of the given stores and writes
``out_dir/index.html`` plus the figures as PNG files next to it. The page embeds the same PNGs
as base64 ``data:`` URIs and its CSS inline: it needs no network, no JavaScript and no other
file, so it can be mailed or attached to a model card as is. The whole folder is built under a temp
name and renamed into place (``_io.atomic_dir``), so a failed report (a full disk) leaves the older
report as it was and nothing half-written; a folder holding files kinmerge did not write is refused.

Built to scale with the number of runs: runs are rows of one table (not columns), the settings
are said once where the runs agree, figures have a panel per testbed and a colour per variant,
and each run's detail (generations, pool, merges, heatmap, family tree) is folded.

Example:
    >>> # write_report(["runs/greedy", "runs/kinship"], "runs/report")  ->  runs/report/index.html
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from kinmerge._io import atomic_dir, check_output_folder
from kinmerge._version import __version__
from kinmerge.report.budget import budget_table, early_stop_table
from kinmerge.report.cells import empty, esc, figure, swatch
from kinmerge.report.compare import resolution
from kinmerge.report.figures import gain_points, make_figures
from kinmerge.report.groups import Style, bed_labels, by_testbed, variant_styles, variants_of
from kinmerge.report.plots import METRIC_SHORT
from kinmerge.report.queries import RunHistory, counted_runs, left_out_line, load_runs
from kinmerge.report.run_detail import run_detail
from kinmerge.report.sections import (
    budget_section,
    correlation_table,
    early_stop_section,
    runs_table,
    settings_table,
    testbeds_table,
)

__all__ = ["render_html", "write_report"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; color: #222;
       max-width: 1180px; margin: 0 auto; padding: 16px 28px 60px; line-height: 1.45; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
h3 { font-size: 1.08em; margin-top: 1.6em; }
h4 { font-size: 1em; margin: 1.2em 0 0.3em; }
.muted { color: #666; font-size: 0.9em; }
.scroll { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.86em; }
th, td { border: 1px solid #d4d4d4; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f4f6; }
td { overflow-wrap: break-word; }
tr.first td { border-top: 2px solid #9a9a9a; }
.vs { font-size: 0.92em; }
.nw { white-space: nowrap; }
.settings { columns: 3 300px; column-gap: 2em; font-size: 0.86em; margin: 0.4em 0 1em; }
.settings div { break-inside: avoid; overflow-wrap: anywhere; padding: 1px 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.top td { background: #fff6d6; }
tr.stop td { background: #fdecea; font-style: italic; }
code { font-size: 0.92em; background: #f5f5f5; padding: 0 3px; border-radius: 3px; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 0.82em; max-width: 100%; }
figure { margin: 0.8em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e5e5e5; }
.howto, .note { background: #f4f8fc; border-left: 4px solid #5b9bd5; padding: 6px 12px; margin: 0.4em 0 1em;
         font-size: 0.9em; }
.note.caveat { background: #fff8e6; border-left-color: #e0a100; }
.empty { background: #fafafa; border: 1px dashed #bbb; padding: 14px; color: #555; margin: 0.5em 0 1.2em; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 0.8em; color: #fff; }
.badge.greedy { background: #1f77b4; } .badge.exploration { background: #d62728; }
.badge.random { background: #9467bd; } .badge.foundation { background: #666; }
.sw { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.35em; border-radius: 2px;
      vertical-align: baseline; }
details.run { border: 1px solid #e2e2e2; border-radius: 4px; padding: 4px 10px; margin: 0.3em 0; }
details.run[open] { padding-bottom: 12px; }
details.run > summary { cursor: pointer; }
nav ul { columns: 2; font-size: 0.9em; }
"""

_HOWTO = {
    "scores": (
        "One panel per testbed (foundation set and task set: scores of different testbeds are not "
        "comparable). Each colour is one strategy variant, the same colour everywhere on this page. A "
        "line is the best average score in the pool after each generation (the paper's §5 table); a "
        "variant run with several seeds is drawn as their mean with a band from the lowest to the "
        "highest seed (a run that stopped keeps its final best). Lines of different variants are shifted "
        "sideways by a few hundredths of a generation, so identical curves stay visible, and a panel "
        "names the variants whose curves are identical. The dashed grey line is the best foundation "
        "model: a line that never rises above it gained nothing over picking the best fine-tune; a line "
        "that goes flat is a plateau (the paper's <em>saturation stage</em>)."
    ),
    "topk": (
        "The mean pairwise kinship of the current top-k models after each generation, a panel per "
        "testbed, a colour per variant as above. It tends to rise as the top-k become descendants of "
        "each other; near the top they are close relatives and merging them gives little (the paper's "
        "<em>inbreeding</em>). Kinship-guided runs stop when it crosses the red dashed threshold (0.9 PCC "
        "in the paper); a large ✕ marks the last generation made before such an early stop. For ED (a "
        "distance) lower means closer. Runs that do not watch kinship show it where the store has it."
    ),
    "anytime": (
        "The best score found so far, as the gain over the testbed's best foundation model, against the "
        "budget spent: merges made (left; counted in the order the run made them) and examples "
        "evaluated (right; every model a run scored, all tasks). Per variant: seeds are averaged within "
        "a testbed, the line is the mean over testbeds and the band the range (min–max) over testbeds — "
        "not a confidence interval. A run that stopped keeps its final best, so a flat end is either a "
        "plateau or a stop. A variant whose curve lies above another's at every budget finds more for "
        "the same cost."
    ),
    "early_stop": (
        "Kinship early stopping replayed on runs recorded <em>without</em> it (the top-k kinship of every "
        "generation is in the record, so no rerun is needed): at each threshold, the share of the "
        "merges it would have saved (x) against the final best score it would have lost (y, mean over "
        "the replayed runs; bars: min–max). A point near the x axis far to the right saves much for "
        "nothing; fired k/n counts the runs in which the threshold was crossed at all."
    ),
    "gain": (
        "One point per merge: x is the kinship of its two parents, y its merge gain (child's score minus "
        "the mean of its parents'; top row) or the size of the gain (bottom row). Colour: why the merge "
        "was made (red = exploration, the partner of lowest kinship to the best model); marker: the "
        "testbed. The line is a least-squares fit; titles give Pearson r and Spearman ρ with p-values. "
        "The paper found kinship bounds the <em>size</em> of the gain better than its sign: on community "
        "Mistral-7B merges r(PCC, gain) = −0.50 (p ≈ 0.06) but r(PCC, |gain|) = −0.59 (p &lt; 0.025); ED "
        "has the opposite sign, since a larger distance means less kinship. A merge shared by several "
        "runs of one store is one point (shown under the first run)."
    ),
    "heatmap": (
        "Pairwise kinship of every model in the run's final pool, ordered by average-linkage "
        "clustering so that families form blocks; the dendrogram on top shows how the pool splits. "
        "★ marks the final top-k. Bright blocks (PCC near 1) are close relatives; n/a = never "
        "computed (the runner only computes the kinship a decision needs)."
    ),
    "tree": (
        "Foundation models on top, one row per generation below; an arrow goes from each parent to "
        "its child. An edge that skips generations bends through a waypoint in each row it crosses, "
        "placed in a free slot of that row, so no edge passes through a model. Node colour is the average "
        "score (colour bar). Solid grey arrows lead to greedy merges (pairs of the top-k), red dashed "
        "ones to exploration merges, purple dotted ones to random-control merges; the thick arrows trace "
        "the lineage of the best model. Gold rings and #rank mark the final top-k."
    ),
}

_CAVEAT = (
    "<strong>Caveat: these merges are not independent points.</strong> Merges of one run share parents "
    "and descend from each other (a child of generation 3 is built from generation 2's models), and "
    "runs on one testbed share many merges, so the points are related. The p-values assume independent "
    "points and overstate the evidence: read them as a description of these merges, not as a test."
)


def _resolution_note(runs: Sequence[RunHistory], digits: int) -> str:
    res = resolution(runs)
    tasks = max((len(r.tasks) for r in runs), default=0)
    ns = {r.examples_per_task for r in runs}
    if not res["examples_per_model"]:
        return ("<p class='note'>The stores do not record how many examples each score averages over, so "
                f"scores print with {digits} decimals and without standard errors.</p>")
    n = ns.pop() if len(ns) == 1 and None not in ns else None
    size = f"{tasks} tasks × n = {n} examples" if n else f"{res['examples_per_model']} examples (all tasks)"
    return (f"<p class='note'>A score is the average accuracy over {size}: one example moves it by "
            f"1/{res['examples_per_model']} ≈ {res['step']:.4f}, so scores print with {digits} decimals. "
            "n / task is given beside scores. ± is one standard error: for a model's score, the sampling "
            "error of its evaluation (binomial, from n); for a variant's mean, across testbeds. Two models "
            "whose scores differ by less than about two standard errors are not told apart by this "
            "evaluation.</p>")


def _metric_note(runs: Sequence[RunHistory]) -> str:
    own = sorted({r.run_metric for r in runs})
    drawn = runs[0].metric
    if own == [drawn]:
        return ""
    return (f"<p class='muted'>Figures and per-run kinship columns use {esc(METRIC_SHORT[drawn])} "
            f"(<code>report --metric</code>); the runs themselves decided with "
            f"{esc(', '.join(METRIC_SHORT[m] for m in own))}, as the settings say.</p>")


def render_html(runs: Sequence[RunHistory], figures: dict[str, Path | None]) -> str:
    """The report page for ``runs`` with the given figures (PNG paths or ``None``) embedded."""
    styles = variant_styles(variants_of(runs))
    beds = bed_labels(runs)
    digits = resolution(runs)["digits"]
    several = len(runs) > 1
    title = "kinmerge report: " + (runs[0].label if not several else f"{len(runs)} runs on {len(beds)} testbed(s)")
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    variants = " ".join(swatch(v, styles[v]) for v, _ in variants_of(runs))
    sections = [("runs", "Runs"), ("settings", "Run settings"), ("scores", "Score per generation"),
                ("topk", "Kinship of the top-k")]
    if several:
        sections += [("budget", "Strategies at equal budgets"), ("early-stop", "Early stopping, replayed")]
    sections += [("gain", "Merge gain vs kinship"), ("each", "Each run in detail")]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        "<h1>kinmerge evolution report</h1>",
        f"<p class='muted'>{len(runs)} run(s) on {len(beds)} testbed(s) · variants: {variants} · generated "
        f"{esc(now)} by kinmerge {esc(__version__)} · Top-k greedy merging with model kinship (Hu et al., "
        "arXiv 2410.12613)</p>",
        _resolution_note(runs, digits),
        "<nav><ul>" + "".join(f"<li><a href='#{a}'>{t}</a></li>" for a, t in sections) + "</ul></nav>",
        "<h2 id='runs'>Runs</h2>",
        "<p class='muted'>One row per run; the run id opens its detail below. gain: final best minus the "
        "best foundation model of its testbed.</p>",
        runs_table(runs, styles, beds, digits=digits),
        f"<p class='note caveat'>{esc(note)}</p>" if (note := left_out_line(runs)) else "",
        "<h3>Testbeds</h3>",
        testbeds_table(runs, beds),
        "<h2 id='settings'>Run settings</h2>",
        "<p class='muted'>Read from each run's stored fingerprint. A setting all runs share is shown once; "
        "one that differs lists each value with the variants (or testbeds, or runs) that used it.</p>",
        _metric_note(runs),
        settings_table(runs, beds),
        "<h2 id='scores'>Score per generation</h2>",
        figure(figures.get("scores"), "best score per generation", _HOWTO["scores"],
               "No scores yet: this figure appears once models are evaluated."),
        "<h2 id='topk'>Kinship of the top-k</h2>",
        figure(figures.get("topk"), "top-k kinship per generation", _HOWTO["topk"],
               "No top-k kinship yet: it needs scored models and the kinship of the top-k pairs."),
    ]
    if several:
        parts += _study_sections(counted_runs(runs), figures, styles, digits)
    parts += [
        "<h2 id='gain'>Merge gain vs the parents' kinship</h2>",
        figure(figures.get("gain"), "merge gain vs kinship", _HOWTO["gain"],
               "No merge has both a score and its parents' kinship yet: this figure appears once "
               "a generation's merges are evaluated and their parents' kinship is computed."),
    ]
    if figures.get("gain") is not None:
        parts += [f"<p class='note caveat'>{_CAVEAT}</p>", correlation_table(gain_points(runs))]
    parts.append("<h2 id='each'>Each run in detail</h2>")
    if several:
        parts.append("<p class='muted'>Folded: click a run to open its generations, final pool, merges, "
                     "stored config, kinship heatmap and family tree.</p>")
    parts += [run_detail(r, i, figures, _HOWTO, label=beds[r.testbed], digits=digits, open_=len(runs) <= 2)
              for i, r in enumerate(runs)]
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _study_sections(runs: Sequence[RunHistory], figures: dict[str, Path | None], styles: dict[str, Style],
                    digits: int) -> list[str]:
    """Anytime curves, the budget-matched table and the early-stop replay (several runs only)."""
    budget = budget_table(runs)
    early = early_stop_table(runs)
    out = [
        "<h2 id='budget'>Strategies at equal budgets</h2>",
        figure(figures.get("anytime"), "anytime curves", _HOWTO["anytime"], "No scored merges yet."),
    ]
    if budget["variants"]:
        out += [
            f"<p class='muted'>Gain over each testbed's best foundation model after the same number of merges, "
            f"each variant's seeds averaged within a testbed, then mean ± standard error over testbeds. "
            f"<em>vs {esc(budget['reference'])}</em> (second line): the paired difference testbed by testbed over "
            f"{budget['testbeds']} testbed(s) — mean [bootstrap 95% interval], then wins/ties/losses and a "
            "two-sided sign test. With a handful of testbeds the interval is optimistic (the bootstrap cannot "
            f"see beyond the sample). Area 0–{budget['auc_budget']}: the mean best-so-far over those budgets "
            "(a variant that finds its gain early scores high).</p>",
            budget_section(budget, styles, digits=digits),
        ]
    out.append("<h2 id='early-stop'>Early stopping, replayed</h2>")
    if early["runs"]:
        out += [figure(figures.get("early_stop"), "early-stop trade-off", _HOWTO["early_stop"],
                       "No replayed run has a score yet."),
                f"<p class='muted'>Replayed on {early['runs']} run(s): {esc(early['variant'])}.</p>",
                early_stop_section(early, digits=digits)]
    else:
        out.append(empty("No kinship run here was recorded with early stopping off, so there is nothing to "
                         "replay without bias (a run that stopped has no record past its stop). Add a kinship "
                         "variant with <code>early_stop: false</code> to see what each threshold would save "
                         "and lose."))
    return out


def write_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    evaluator: str | None = None,
    metric: str | None = None,
) -> Path:
    """Write ``out_dir/index.html`` (self-contained) and its figures as PNGs; return the page's path.

    Args:
        run_dirs: run directories (each with a ``kinmerge.db``); every run in each is reported.
        out_dir: where the page and PNGs go: new, empty, or an older report (replaced whole, once
            the new one is complete); a folder holding other files, or a run directory, is refused.
        evaluator: which evaluator's scores to use when a store holds several.
        metric: kinship metric the figures and kinship columns draw (default: the strategy's); the
            settings still say which metric each run decided with.

    Raises:
        StoreError: a directory holds no store or no run, or its evaluator is ambiguous.
        OutputFolderError: ``out_dir`` holds files kinmerge did not write, or a run directory.

    Example:
        ``write_report(["runs/greedy", "runs/kinship"], "runs/report")`` → ``runs/report/index.html``
    """
    if not run_dirs:
        raise ValueError("give at least one run directory")
    check_output_folder(out_dir, inputs=run_dirs, legacy=_report_before_markers)  # before reading the runs
    runs = by_testbed(load_runs(run_dirs, evaluator=evaluator, metric=metric))
    with atomic_dir(out_dir, replace=True, inputs=run_dirs, legacy=_report_before_markers) as tmp:
        figures = make_figures(runs, tmp)
        (tmp / "index.html").write_text(render_html(runs, figures), encoding="utf-8")
    return Path(os.path.abspath(out_dir)) / "index.html"


def _report_before_markers(folder: Path) -> bool:
    """A report folder from before folders carried kinmerge's marker: its page and PNGs only."""
    names = [p.name for p in folder.iterdir()]
    return "index.html" in names and all(n == "index.html" or n.endswith(".png") for n in names)
