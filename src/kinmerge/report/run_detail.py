"""One run in detail, folded: its generations, final pool, merges, stored config, heatmap and tree.

With many runs the page shows these as closed ``<details>`` blocks (a click, or a link from the
runs table, opens one), so sixteen runs cost sixteen lines until a reader asks for more; a
report of one or two runs shows them open.

Example:
    ``run_detail(run, 0, figures, digits=3, open_=True)``
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from kinmerge.kinship import HIGHER_IS_CLOSER
from kinmerge.pool import short_id
from kinmerge.report.cells import badge, empty, esc, figure, table, when
from kinmerge.report.fmt import num, signed
from kinmerge.report.plots import METRIC_SHORT
from kinmerge.report.queries import RunHistory

__all__ = ["generation_table", "kinship_note", "merges_table", "pool_table", "run_detail"]


def generation_table(r: RunHistory, digits: int = 2) -> str:
    """Per generation: models added, merges by reason, best/mean of the new models, best of the pool,
    the top-k's kinship; a red row for the generation a stop decision skipped."""
    if not r.generations:
        return empty("The pool is empty: no model has joined this run yet.")
    rows: list[list[str]] = []
    classes: list[str] = []
    for s in r.generations:
        kinds: dict[str, int] = {}
        for m in r.models.values():
            if m.generation == s.generation and m.parents:
                kinds[m.reason or "unknown"] = kinds.get(m.reason or "unknown", 0) + 1
        detail = ", ".join(f"{n} {why}" for why, n in sorted(kinds.items()))
        rows.append([
            esc(s.generation if s.generation else "0 (foundation)"), esc(s.models),
            esc(s.merges) + (f" <span class='muted'>({esc(detail)})</span>" if detail else ""),
            num(s.best_score, digits), num(s.mean_score, digits), num(s.pool_best, digits),
            num(r.topk_kinship_at(s.generation), 3) + _bound(r.topk_kinship_bound_at(s.generation)),
            esc("in progress" if r.pending_generation == s.generation else ""),
        ])
        classes.append("")
    if r.stop_generation is not None:
        rows.append([esc(r.stop_generation), "—", "0", "—", "—", "—", "—",
                     esc(f"not made: {r.stop_reason}" + (" (early stop)" if r.early_stop_generation else ""))])
        classes.append("stop")
    head = ["generation", "models added", "merges made", "best (new)", "mean (new)", "best in pool",
            f"top-{r.k} kinship ({METRIC_SHORT[r.metric]})", "stop / note"]
    return table(head, rows, classes=classes, numeric=(1, 3, 4, 5, 6))


def pool_table(r: RunHistory, digits: int = 2) -> str:
    """Every model of the final pool by score: the top-k marked, parents, reason, average ± SE, tasks."""
    if not r.models:
        return empty("No models in the pool yet.")
    ranks = {mid: i + 1 for i, mid in enumerate(r.final_topk)}
    n = r.examples_per_task
    ordered = sorted(r.models.values(), key=lambda m: (m.score is None, -(m.score or 0.0), m.id))
    rows, classes = [], []
    for i, m in enumerate(ordered):
        se = r.score_sem(m.id)
        counts = r.task_examples.get(m.id, {})
        tasks = [num(m.task_scores.get(t), digits) + ("" if n or t not in counts else
                                                       f" <span class='muted'>n={counts[t]}</span>") for t in r.tasks]
        rows.append([
            esc(i + 1 if m.score is not None else "—"), esc(f"★ top-{r.k} #{ranks[m.id]}" if m.id in ranks else ""),
            f"<code>{esc(r.label_of(m.id))}</code>",
            f"<code class='muted' title='{esc(m.id)}'>{esc(short_id(m.id))}</code>",
            esc(m.generation), badge(m.reason if m.parents else None),
            " × ".join(esc(r.label_of(p)) for p in m.parents) or "—",
            num(m.score, digits) + ("" if se is None else f" <span class='muted'>± {num(se, digits)}</span>"), *tasks,
        ])
        classes.append("top" if m.id in ranks else "")
    per_task = f" (n = {n})" if n else ""
    head = ["rank", f"top-{r.k}", "model", "id", "gen", "made by", "parents", "average ± SE",
            *[esc(t + per_task) for t in r.tasks]]
    return table(head, rows, classes=classes, numeric=(0, 4, 7, *range(8, 8 + len(r.tasks))))


def merges_table(r: RunHistory, digits: int = 2) -> str:
    """Every merge: its gain over its parents' mean and its parents' kinship in all three metrics."""
    rows_pcc = r.gains.get("pcc", [])
    if not rows_pcc:
        return empty("No merges yet.")
    by_metric = {m: {row.child: row.kinship for row in rows} for m, rows in r.gains.items()}
    bounds = {m: r.kinship_bounds.get(m, {}) for m in by_metric}
    rows = [[esc(row.generation), f"<code>{esc(r.label_of(row.child))}</code>",
             " × ".join(esc(r.label_of(p)) for p in row.parents), badge(row.reason), num(row.child_score, digits),
             num(row.parents_mean, digits), signed(row.merge_gain, digits),
             *[num(by_metric[k].get(row.child), 3)
               + (_bound(bounds[k].get(frozenset(row.parents))) if by_metric[k].get(row.child) is not None else "")
               for k in ("pcc", "cs", "ed")]] for row in rows_pcc]
    head = ["gen", "child", "parents", "why", "child score", "parents' mean", "merge gain", "PCC", "CS", "ED"]
    return table(head, rows, numeric=(0, 4, 5, 6, 7, 8, 9))


def _bound(bound: float | None) -> str:
    """`` ± 0.012`` (muted) after a kinship value that is an estimate from sketches; nothing after
    an exact one. An estimate recorded without its bound (before migration 0004) shows ``± ?``."""
    if bound is None:
        return ""
    shown = num(bound, 3) if math.isfinite(bound) else "?"
    return f" <span class='muted' title='estimate from sketches, 99% bound'>± {esc(shown)}</span>"


def kinship_note(r: RunHistory) -> str:
    """One line saying that a run's kinship values are estimates and how many decisions were re-checked."""
    if r.kinship_source != "sketch":
        return ""
    return (f"<p class='muted'>Kinship in this run is estimated from sketches (<code>kinship_source: sketch</code>): "
            f"a value shows ± its 99% bound; {esc(r.kinship_rechecks)} decision(s) an estimate could flip (early "
            f"stop, exploration partner) were re-checked with an exact scan, and those pairs show exact values.</p>")


def run_detail(r: RunHistory, i: int, figures: Mapping[str, Path | None], howto: Mapping[str, str], *,
               label: str, digits: int = 2, open_: bool = False) -> str:
    """The folded block of run ``i``: a one-line summary, then its tables, config and figures."""
    direction = "higher" if HIGHER_IS_CLOSER[r.metric] else "lower"
    config = json.dumps(r.run.config, indent=2, sort_keys=True, default=str)
    summary = (f"<code>{esc(label)}</code> · <strong>{esc(r.run.id)}</strong> ({esc(r.run.strategy)}) — "
               f"{esc(r.merges_used)} merges, final best {num(r.final_best, digits)}, {esc(r.run.status)}")
    return "\n".join([
        f"<details class='run' id='run-{i}'{' open' if open_ else ''}><summary>{summary}</summary>",
        f"<p class='muted'>run directory <code>{esc(r.run_dir)}</code> · started {esc(when(r.run.started))} · "
        f"finished {esc(when(r.run.finished))}</p>",
        f"<h4>Per generation</h4><p class='muted'>best/mean (new): over the models made in that generation; "
        f"best in pool: after it; top-{r.k} kinship: mean pairwise {METRIC_SHORT[r.metric]} of the top-{r.k} "
        f"after it ({direction} = closer kin).</p>",
        kinship_note(r),
        generation_table(r, digits),
        "<h4>Final pool</h4>",
        pool_table(r, digits),
        f"<details><summary>every merge: gain and the parents' kinship</summary>{merges_table(r, digits)}</details>",
        f"<details><summary>the run config as stored</summary><pre>{esc(config)}</pre></details>",
        "<h4>Kinship heatmap of the final pool</h4>",
        figure(figures.get(f"heatmap-{i}"), f"kinship heatmap of {r.label}", howto["heatmap"],
               "No kinship recorded among the pool's models yet."),
        "<h4>Family tree</h4>",
        figure(figures.get(f"tree-{i}"), f"family tree of {r.label}", howto["tree"], "No models in the pool yet."),
        "</details>",
    ])
