"""The report's figures for a list of runs: plain data from each run's history, then PNGs.

Example:
    ``make_figures(load_runs(["runs/kinship"]), Path("report"))["scores"]`` -> ``report/scores.png``
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from kinmerge.kinship import METRIC_NAMES
from kinmerge.pool import DEFAULT_THRESHOLDS
from kinmerge.report.budget import anytime_bands, early_stop_table
from kinmerge.report.budget_plots import plot_anytime, plot_early_stop
from kinmerge.report.groups import bed_labels, variant_styles, variants_of
from kinmerge.report.panels import KinshipCurve, ScoreCurve, plot_scores, plot_topk_kinship
from kinmerge.report.plots import GainPoint, plot_merge_gains
from kinmerge.report.queries import RunHistory, counted_runs
from kinmerge.report.tree import TreeNode, plot_family_tree

__all__ = ["gain_points", "heatmap_data", "kinship_curve", "make_figures", "panel_titles", "score_curve",
           "tree_nodes"]


# ---------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:40] or "run"


def score_curve(r: RunHistory, testbed: str = "") -> ScoreCurve:
    """The data behind one run's line in the score figure (``testbed``: its panel)."""
    return ScoreCurve(
        label=r.label,
        generations=[s.generation for s in r.generations],
        best=[s.pool_best for s in r.generations],
        mean=[s.mean_score for s in r.generations],
        foundation_best=r.foundation_best,
        testbed=testbed,
        variant=r.variant,
    )


def kinship_curve(r: RunHistory, testbed: str = "") -> KinshipCurve:
    """The data behind one run's line in the top-k kinship figure."""
    return KinshipCurve(
        label=r.label,
        generations=[t.generation for t in r.topk],
        values=[t.kinship for t in r.topk],
        stopped_after=None if r.early_stop_generation is None else r.early_stop_generation - 1,
        testbed=testbed,
        variant=r.variant,
    )


def panel_titles(runs: Sequence[RunHistory]) -> dict[str, str]:
    """A title per testbed panel: its name, its foundation models and what a score averages over."""
    labels = bed_labels(runs)
    out: dict[str, str] = {}
    for r in runs:
        name = labels[r.testbed]
        if name in out:
            continue
        found = ", ".join(r.label_of(m.id) for m in r.foundations)
        n = r.examples_per_task
        size = f"{len(r.tasks)} tasks × n = {n}" if n else f"{len(r.tasks)} tasks"
        same = {r.label_of(m.id) for m in r.foundations} == set(name.split("-"))  # the demo names dirs so
        out[name] = f"{name} · {size}" if same or not found else f"{name}\n{found} · {size}"
    return out


def _thresholds(runs: Sequence[RunHistory], metric: str) -> list[tuple[float, str]]:
    found = sorted({r.threshold for r in runs if r.threshold is not None})
    if found:
        return [(t, f"early-stop threshold ({t:g})") for t in found]
    default = DEFAULT_THRESHOLDS.get(metric)
    return [] if default is None else [(default, f"paper's early-stop threshold ({default:g}; not used by these runs)")]


def gain_points(runs: Sequence[RunHistory]) -> list[GainPoint]:
    """One point per distinct merge. Runs sharing a store share merges (content-addressed): a
    merge in several runs is one observation, counted once (under the first run), or the
    correlations would count it twice. ``group``: the testbed, when there are several."""
    labels = bed_labels(runs)
    several = len(labels) > 1
    points: list[GainPoint] = []
    seen: set[tuple[str, str]] = set()
    for r in runs:
        by_metric = {m: {row.child: row for row in rows} for m, rows in r.gains.items()}
        for row in r.gains.get("pcc", []):
            key = (str(Path(r.run_dir).resolve()), row.child)
            if row.merge_gain is None or key in seen:
                continue
            seen.add(key)
            points.append(
                GainPoint(
                    gain=row.merge_gain,
                    kinship={m: (rows[row.child].kinship if row.child in rows else None)
                             for m, rows in by_metric.items()},
                    reason=row.reason,
                    group=labels[r.testbed] if several else "",
                )
            )
    return points


def tree_nodes(r: RunHistory) -> list[TreeNode]:
    """The data behind a run's family tree: one node per pool model, the final top-k ranked."""
    ranks = {mid: i + 1 for i, mid in enumerate(r.final_topk)}
    ordered = sorted(r.models.values(), key=lambda m: (m.generation, r.label_of(m.id)))
    return [
        TreeNode(m.id, r.label_of(m.id), m.generation, m.parents, m.score, m.reason, ranks.get(m.id))
        for m in ordered
    ]


def heatmap_data(r: RunHistory) -> tuple[list[str], list[list[float]]]:
    """The data behind a run's kinship heatmap: labels (★ = final top-k) and the matrix (NaN = unknown)."""
    ids, matrix = r.kinship_matrix()
    top = set(r.final_topk)
    return [("★ " if mid in top else "") + r.label_of(mid) for mid in ids], matrix


def make_figures(runs: Sequence[RunHistory], folder: Path) -> dict[str, Path | None]:
    """Every figure of the report for ``runs``, written into ``folder``; ``None`` for an empty one."""
    import numpy as np

    from kinmerge.report.heatmap import plot_kinship_heatmap

    metric = runs[0].metric
    k = runs[0].k
    styles = variant_styles(variants_of(runs))
    beds = bed_labels(runs)
    titles = panel_titles(runs)
    counted = counted_runs(runs)  # across-run figures: finished runs only, as compare counts them
    early = early_stop_table(counted)
    figures: dict[str, Path | None] = {
        "scores": plot_scores([score_curve(r, beds[r.testbed]) for r in runs], folder / "scores.png",
                              styles=styles, titles=titles),
        "topk": plot_topk_kinship(
            [kinship_curve(r, beds[r.testbed]) for r in runs], folder / "topk_kinship.png", styles=styles,
            metric=metric, k=k, thresholds=_thresholds(runs, metric), titles=titles,
        ),
        "gain": plot_merge_gains(gain_points(runs), folder / "merge_gain.png"),
        "anytime": plot_anytime(anytime_bands(counted), anytime_bands(counted, unit="examples"),
                                folder / "anytime.png",
                                styles=styles) if len(runs) > 1 and counted else None,
        "early_stop": plot_early_stop(early["rows"], folder / "early_stop.png") if early["runs"] else None,
    }
    for i, r in enumerate(runs):
        slug = f"{i + 1}-{_slug(r.run.id)}"
        labels, matrix = heatmap_data(r)
        known = any(math.isfinite(v) for a, row in enumerate(matrix) for b, v in enumerate(row) if a != b)
        figures[f"heatmap-{i}"] = (
            plot_kinship_heatmap(
                np.asarray(matrix, dtype=np.float64), labels, r.metric, folder / f"heatmap-{slug}.png",
                title=f"{r.label}: kinship of the final pool ({METRIC_NAMES[r.metric]}), clustered; ★ = top-{r.k}",
            )
            if len(labels) >= 2 and known
            else None
        )
        figures[f"tree-{i}"] = plot_family_tree(
            tree_nodes(r), folder / f"family-tree-{slug}.png", title=f"{r.label}: family tree", k=r.k
        )
    return figures
