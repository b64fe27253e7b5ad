"""The run report: one self-contained HTML page, and the cross-run comparison table.

``write_report(run_dirs, out_dir)`` reads every run of the given stores and writes
``out_dir/index.html`` plus the figures as PNG files next to it. The page embeds the same PNGs
as base64 ``data:`` URIs and its CSS inline: it needs no network, no JavaScript and no other
file, so it can be mailed or attached to a model card as is. Every file is written to a temp name and
renamed into place (the page last), so a failed report never leaves a half-written page.

``compare_table(run_dirs)`` is the data behind ``kinmerge compare``: one row per run and the
mean and spread of the scores across runs of the same strategy (several seeds).

Example:
    >>> # write_report(["runs/greedy", "runs/kinship"], "runs/report")  ->  runs/report/index.html
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kinmerge._io import atomic_write
from kinmerge._version import __version__
from kinmerge.kinship import HIGHER_IS_CLOSER, METRIC_NAMES
from kinmerge.pool import short_id
from kinmerge.report.compare import compare_runs
from kinmerge.report.figures import gain_points, make_figures
from kinmerge.report.plots import METRIC_SHORT, GainPoint, gain_correlations
from kinmerge.report.queries import RunHistory, load_runs

__all__ = ["render_html", "write_report"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; color: #222;
       max-width: 1180px; margin: 0 auto; padding: 16px 28px 60px; line-height: 1.45; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
h3 { font-size: 1.08em; margin-top: 1.6em; }
.muted { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.86em; }
th, td { border: 1px solid #d4d4d4; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.top td { background: #fff6d6; }
tr.stop td { background: #fdecea; font-style: italic; }
code { font-size: 0.92em; background: #f5f5f5; padding: 0 3px; border-radius: 3px; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 0.82em; }
figure { margin: 0.8em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e5e5e5; }
.howto { background: #f4f8fc; border-left: 4px solid #5b9bd5; padding: 6px 12px; margin: 0.4em 0 1em;
         font-size: 0.9em; }
.empty { background: #fafafa; border: 1px dashed #bbb; padding: 14px; color: #555; margin: 0.5em 0 1.2em; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 0.8em; color: #fff; }
.badge.greedy { background: #1f77b4; } .badge.exploration { background: #d62728; }
.badge.random { background: #9467bd; } .badge.foundation { background: #666; }
nav ul { columns: 2; font-size: 0.9em; }
"""

_HOWTO = {
    "scores": (
        "Each colour is one run. The solid line is the best average score in the pool after each "
        "generation (the paper's §5 table); the dotted line is the mean score of the models made "
        "in that generation; the dashed grey line is the best foundation model. A solid line that "
        "goes flat means the run has reached a plateau (the paper's <em>saturation stage</em>); a "
        "line that never rises above the dashed one means merging gained nothing over picking the "
        "best fine-tune."
    ),
    "topk": (
        "The mean pairwise kinship of the current top-k models after each generation. It tends to "
        "rise as the top-k become descendants of each other; near the top they are close relatives "
        "and merging them gives little (the paper's <em>inbreeding</em>). Kinship-guided runs stop "
        "when it crosses the red dashed threshold (0.9 PCC in the paper); a large ✕ marks the last "
        "generation made before such an early stop. For ED (a distance) lower means closer."
    ),
    "gain": (
        "One point per merge: x is the kinship of its two parents, y its merge gain (child's score "
        "minus the mean of its parents'; top row) or the size of the gain (bottom row). Colour: why "
        "the merge was made (red = exploration, the partner of lowest kinship to the best model). "
        "The line is a least-squares fit; titles give Pearson r and Spearman ρ with p-values. The "
        "paper found kinship bounds the <em>size</em> of the gain better than its sign: on community "
        "Mistral-7B merges r(PCC, gain) = −0.50 (p ≈ 0.06) but r(PCC, |gain|) = −0.59 (p &lt; 0.025); "
        "ED has the opposite sign, since a larger distance means less kinship. With a handful of "
        "merges, p-values are large: read the slope, not the stars. A merge shared by several runs of one "
        "store is one point (shown under the first run)."
    ),
    "heatmap": (
        "Pairwise kinship of every model in the run's final pool, ordered by average-linkage "
        "clustering so that families form blocks; the dendrogram on top shows how the pool splits. "
        "★ marks the final top-k. Bright blocks (PCC near 1) are close relatives; n/a = never "
        "computed (the runner only computes the kinship a decision needs)."
    ),
    "tree": (
        "Foundation models on top, one row per generation below; an arrow goes from each parent to "
        "its child. Node colour is the average score (colour bar). Solid grey arrows lead to greedy "
        "merges (pairs of the top-k), red dashed ones to exploration merges, purple dotted ones to "
        "random-control merges; the thick arrows trace the lineage of the best model. Gold rings "
        "and #rank mark the final top-k. A model joins the row of the generation it was made in."
    ),
}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, classes: Sequence[str] = (),
           numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are already-escaped HTML; ``numeric`` columns align right."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        cells = "".join(
            f'<td class="num">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(path: Path | None, alt: str, howto: str, empty: str) -> str:
    if path is None:
        return f'<div class="empty">{empty}</div>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
        f'<div class="howto"><strong>How to read this.</strong> {howto}</div></figure>'
    )


def _badge(reason: str | None) -> str:
    name = reason or "foundation"
    return f'<span class="badge {_e(name)}">{_e(name)}</span>'


def _when(ts: str | None) -> str:
    """An ISO timestamp as ``2025-01-31 14:05:09 UTC`` (the store writes UTC)."""
    if not ts:
        return "—"
    try:
        return datetime.fromisoformat(ts).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return ts


def _config_items(r: RunHistory) -> list[tuple[str, str]]:
    """(field, cell HTML) pairs summarising a run's config and state."""
    found = ", ".join(
        f"<code>{_e(r.label_of(m.id))}</code>" + (f" <span class='muted'>({_e(m.path)})</span>" if m.path else "")
        for m in r.foundations
    ) or "—"
    in_progress = "" if r.pending_generation is None else f" (generation {r.pending_generation} in progress)"
    status = r.run.status + in_progress
    threshold = "—" if r.threshold is None else f"{r.threshold:g}"
    config = json.dumps(r.run.config, indent=2, sort_keys=True, default=str)
    return [
        ("run directory", f"<code>{_e(r.run_dir)}</code>"),
        ("run id", f"<code>{_e(r.run.id)}</code>"),
        ("strategy", _e(r.run.strategy)),
        ("seed", _e("—" if r.run.seed is None else r.run.seed)),
        ("status", _e(status)),
        ("started / finished", _e(f"{_when(r.run.started)} / {_when(r.run.finished)}")),
        ("stop reason", _e(r.stop_reason or "—")
         + ("" if r.stop_generation is None else _e(f" (before generation {r.stop_generation})"))),
        ("evaluator", f"<code>{_e(r.evaluator or '—')}</code>"),
        ("tasks", ", ".join(f"<code>{_e(t)}</code>" for t in r.tasks) or "—"),
        ("top-k / kinship metric / early-stop threshold", _e(f"k = {r.k} / {METRIC_SHORT[r.metric]} / {threshold}")),
        ("foundation models", found),
        ("merges used", _e(r.merges_used)),
        ("run config", f"<details><summary>show</summary><pre>{_e(config)}</pre></details>"),
    ]


def _config_section(runs: Sequence[RunHistory]) -> str:
    """One table: a row per field, a column per run (side by side, so runs compare at a glance)."""
    columns = [_config_items(r) for r in runs]
    head = "<th></th>" + "".join(f"<th>{_e(r.label)}</th>" for r in runs) if len(runs) > 1 else ""
    rows = "".join(
        f"<tr><th>{name}</th>" + "".join(f"<td>{col[i][1]}</td>" for col in columns) + "</tr>"
        for i, (name, _) in enumerate(columns[0])
    )
    return f"<table>{f'<thead><tr>{head}</tr></thead>' if head else ''}<tbody>{rows}</tbody></table>"


def _generation_table(r: RunHistory) -> str:
    if not r.generations:
        return '<div class="empty">The pool is empty: no model has joined this run yet.</div>'
    rows: list[list[str]] = []
    classes: list[str] = []
    for s in r.generations:
        new = [m for m in r.models.values() if m.generation == s.generation and m.parents]
        kinds = {}
        for m in new:
            kinds[m.reason or "unknown"] = kinds.get(m.reason or "unknown", 0) + 1
        detail = ", ".join(f"{n} {why}" for why, n in sorted(kinds.items()))
        note = ""
        if r.pending_generation == s.generation:
            note = "in progress"
        rows.append([
            _e(s.generation if s.generation else "0 (foundation)"),
            _e(s.models),
            _e(s.merges) + (f" <span class='muted'>({_e(detail)})</span>" if detail else ""),
            _num(s.best_score), _num(s.mean_score), _num(s.pool_best),
            _num(r.topk_kinship_at(s.generation), 3),
            _e(note),
        ])
        classes.append("")
    if r.stop_generation is not None:
        rows.append([_e(r.stop_generation), "—", "0", "—", "—", "—", "—",
                     _e(f"not made: {r.stop_reason}" + (" (early stop)" if r.early_stop_generation else ""))])
        classes.append("stop")
    head = ["generation", "models added", "merges made", "best (new)", "mean (new)", "best in pool",
            f"top-{r.k} kinship ({METRIC_SHORT[r.metric]})", "stop / note"]
    return _table(head, rows, classes=classes, numeric=(1, 3, 4, 5, 6))


def _pool_table(r: RunHistory) -> str:
    if not r.models:
        return '<div class="empty">No models in the pool yet.</div>'
    ranks = {mid: i + 1 for i, mid in enumerate(r.final_topk)}
    ordered = sorted(r.models.values(), key=lambda m: (m.score is None, -(m.score or 0.0), m.id))
    rows, classes = [], []
    for i, m in enumerate(ordered):
        parents = " × ".join(_e(r.label_of(p)) for p in m.parents) or "—"
        mark = f"★ top-{r.k} #{ranks[m.id]}" if m.id in ranks else ""
        rows.append([
            _e(i + 1 if m.score is not None else "—"), _e(mark), f"<code>{_e(r.label_of(m.id))}</code>",
            f"<code class='muted' title='{_e(m.id)}'>{_e(short_id(m.id))}</code>", _e(m.generation),
            _badge(m.reason if m.parents else None),
            parents, _num(m.score), *[_num(m.task_scores.get(t)) for t in r.tasks],
        ])
        classes.append("top" if m.id in ranks else "")
    head = ["rank", f"top-{r.k}", "model", "id", "gen", "made by", "parents", "average",
            *[_e(t) for t in r.tasks]]
    return _table(head, rows, classes=classes, numeric=(0, 4, 7, *range(8, 8 + len(r.tasks))))


def _merges_table(r: RunHistory) -> str:
    rows_pcc = r.gains.get("pcc", [])
    if not rows_pcc:
        return '<div class="empty">No merges yet.</div>'
    by_metric = {m: {row.child: row.kinship for row in rows} for m, rows in r.gains.items()}
    rows = []
    for row in rows_pcc:
        rows.append([
            _e(row.generation), f"<code>{_e(r.label_of(row.child))}</code>",
            " × ".join(_e(r.label_of(p)) for p in row.parents),
            _badge(row.reason), _num(row.child_score), _num(row.parents_mean), _signed(row.merge_gain),
            *[_num(by_metric[k].get(row.child), 3) for k in ("pcc", "cs", "ed")],
        ])
    head = ["gen", "child", "parents", "why", "child score", "parents' mean", "merge gain",
            "PCC", "CS", "ED"]
    return _table(head, rows, numeric=(0, 4, 5, 6, 7, 8, 9))


def _correlation_table(points: Sequence[GainPoint]) -> str:
    rows = []
    for metric in ("pcc", "cs", "ed"):
        g, a = gain_correlations(points, metric)
        rows.append([
            _e(f"{METRIC_SHORT[metric]} ({METRIC_NAMES[metric]})"), _e(g.n),
            _e(f"{_signed(g.pearson_r)} (p = {_pval(g.pearson_p)})"),
            _e(f"{_signed(g.spearman_r)} (p = {_pval(g.spearman_p)})"),
            _e(f"{_signed(a.pearson_r)} (p = {_pval(a.pearson_p)})"),
            _e(f"{_signed(a.spearman_r)} (p = {_pval(a.spearman_p)})"),
        ])
    head = ["parents' kinship", "merges", "Pearson r with gain", "Spearman ρ with gain",
            "Pearson r with |gain|", "Spearman ρ with |gain|"]
    return _table(head, rows, numeric=(1,))


def _pval(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _compare_section(runs: Sequence[RunHistory]) -> str:
    data = compare_runs(runs)
    gens = max(len(row["best_per_generation"]) for row in data["runs"])
    rows = []
    for row in data["runs"]:
        best = row["best_per_generation"] + [None] * (gens - len(row["best_per_generation"]))
        rows.append([
            _e(row["run_id"]), _e(row["strategy"]), _e("—" if row["seed"] is None else row["seed"]),
            *[_num(b) for b in best], _e(row["merges_used"]),
            _e("—" if row["early_stop_generation"] is None else row["early_stop_generation"]),
            _num(row["final_best"]),
        ])
    head = ["run", "strategy", "seed", *[f"gen {g}" for g in range(gens)], "merges", "early stop at", "final best"]
    out = _table(head, rows, numeric=tuple(range(3, 3 + gens + 3)))
    srows = []
    for s in data["strategies"]:
        fb, mu = s["final_best"], s["merges_used"]
        srows.append([
            _e(s["strategy"]), _e(", ".join(s["foundations"])), _e(s["runs"]),
            _num(fb["mean"]), _num(fb["std"]), _e(f"{_num(fb['min'])} – {_num(fb['max'])}"),
            _num(mu["mean"], 1), _e(f"{_num(mu['min'], 0)} – {_num(mu['max'], 0)}"), _e(s["early_stops"]),
        ])
    shead = ["strategy", "foundations", "runs", "final best: mean", "std", "min – max", "merges: mean",
             "min – max", "early stops"]
    out += ("<p class='muted'>Across runs of each strategy on the same foundation models (std: sample "
            "standard deviation; — for a single run).</p>")
    return out + _table(shead, srows, numeric=(2, 3, 4, 6))


def render_html(runs: Sequence[RunHistory], figures: dict[str, Path | None]) -> str:
    """The report page for ``runs`` with the given figures (PNG paths or ``None``) embedded."""
    title = "kinmerge report: " + ", ".join(r.label for r in runs)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        "<h1>kinmerge evolution report</h1>",
        f"<p class='muted'>{len(runs)} run(s) · generated {_e(now)} by kinmerge {_e(__version__)} · "
        "Top-k greedy merging with model kinship (Hu et al., arXiv 2410.12613)</p>",
        "<nav><ul><li><a href='#runs'>Runs</a></li><li><a href='#scores'>Score per generation</a></li>"
        "<li><a href='#topk'>Top-k kinship</a></li><li><a href='#gain'>Merge gain vs kinship</a></li>"
        + "".join(f"<li><a href='#run-{i}'>{_e(r.label)}: generations, pool, family tree</a></li>"
                  for i, r in enumerate(runs))
        + "</ul></nav>",
        "<h2 id='runs'>Runs</h2>",
    ]
    parts.append(_config_section(runs))
    if len(runs) > 1:
        parts.append("<h3>Comparison</h3>" + _compare_section(runs))
    no_scores = "No scores yet: this figure appears once models are evaluated."
    parts += [
        "<h2 id='scores'>Score per generation</h2>",
        _figure(figures.get("scores"), "best and mean score per generation", _HOWTO["scores"], no_scores),
        "<h2 id='topk'>Kinship of the top-k</h2>",
        _figure(figures.get("topk"), "top-k kinship per generation", _HOWTO["topk"],
                "No top-k kinship yet: it needs scored models and the kinship of the top-k pairs."),
        "<h2 id='gain'>Merge gain vs the parents' kinship</h2>",
        _figure(figures.get("gain"), "merge gain vs kinship", _HOWTO["gain"],
                "No merge has both a score and its parents' kinship yet: this figure appears once "
                "a generation's merges are evaluated and their parents' kinship is computed."),
    ]
    points = gain_points(runs)
    if figures.get("gain") is not None:
        parts.append(_correlation_table(points))
    for i, r in enumerate(runs):
        direction = "higher" if HIGHER_IS_CLOSER[r.metric] else "lower"
        parts += [
            f"<h2 id='run-{i}'>{_e(r.label)}</h2>",
            f"<h3>Per generation</h3><p class='muted'>best/mean (new): over the models made in that "
            f"generation; best in pool: after it; top-{r.k} kinship: mean pairwise "
            f"{METRIC_SHORT[r.metric]} of the top-{r.k} after it ({direction} = closer kin).</p>",
            _generation_table(r),
            "<h3>Final pool</h3>",
            _pool_table(r),
            f"<details><summary>every merge: gain and the parents' kinship</summary>{_merges_table(r)}</details>",
            "<h3>Kinship heatmap of the final pool</h3>",
            _figure(figures.get(f"heatmap-{i}"), f"kinship heatmap of {r.label}", _HOWTO["heatmap"],
                    "No kinship recorded among the pool's models yet."),
            "<h3>Family tree</h3>",
            _figure(figures.get(f"tree-{i}"), f"family tree of {r.label}", _HOWTO["tree"],
                    "No models in the pool yet."),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


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
        out_dir: where the page and PNGs go (created; files from an older report are replaced).
        evaluator: which evaluator's scores to use when a store holds several.
        metric: kinship metric of the top-k curve and the heatmaps (default: the strategy's).

    Raises:
        StoreError: a directory holds no store or no run, or its evaluator is ambiguous.

    Example:
        ``write_report(["runs/greedy", "runs/kinship"], "runs/report")`` → ``runs/report/index.html``
    """
    if not run_dirs:
        raise ValueError("give at least one run directory")
    runs = load_runs(run_dirs, evaluator=evaluator, metric=metric)
    out = Path(out_dir)
    figures = make_figures(runs, out)  # each PNG written atomically
    return atomic_write(out / "index.html", render_html(runs, figures))  # the page last
