"""The report's figures, from plain data to PNG files.

Each ``plot_*`` function takes lists of small dataclasses (no store, no SQLite), writes one PNG
atomically (a temp name in the same folder, then ``os.replace``) and returns its path, or
``None`` when there is nothing to draw yet (a run with no merges): the HTML report shows an empty
state instead of an empty chart. matplotlib and scipy load inside the functions (the ``plot``
extra), so importing this module is cheap.

Figures (paper: Hu et al., arXiv 2410.12613):

- :func:`plot_scores`: best and mean score per generation, several runs on one chart (§5 table);
- :func:`plot_topk_kinship`: the top-k's mean pairwise kinship per generation and the early-stop
  threshold (§4);
- :func:`plot_merge_gains`: merge gain and |gain| vs the parents' kinship, one column per metric,
  with Pearson and Spearman correlations (§2);
- the family tree is :func:`kinmerge.report.tree.plot_family_tree`;
- the kinship heatmap is :func:`kinmerge.report.heatmap.plot_kinship_heatmap`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kinmerge._io import atomic_file
from kinmerge.errors import KinmergeError, install_hint
from kinmerge.kinship import HIGHER_IS_CLOSER, METRIC_NAMES

METRIC_SHORT = {"pcc": "PCC", "cs": "CS", "ed": "ED"}
REASON_COLORS = {"greedy": "#1f77b4", "exploration": "#d62728", "random": "#9467bd", None: "#7f7f7f"}
REASON_EDGE_STYLES = {"greedy": "solid", "exploration": (0, (5, 3)), "random": (0, (1, 2)), None: "solid"}
_MARKERS = "os^Dv<>pP*hX"


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KinmergeError(f"plots need matplotlib and scipy: {install_hint('plot')}") from None
    return plt


def _save(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically, then close it."""
    plt = _pyplot()
    try:
        with atomic_file(path) as fh:
            fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")  # keeps a legend beside the axes
    finally:
        plt.close(fig)
    return Path(path)


def _colors(n: int) -> list[Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Scores per generation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreCurve:
    """One run's scores per generation.

    ``best[i]`` is the best of the whole pool after ``generations[i]`` (what the paper's §5 table
    reports); ``mean[i]`` the mean of the models that joined in that generation. ``None`` = not
    scored.
    """

    label: str
    generations: Sequence[int]
    best: Sequence[float | None]
    mean: Sequence[float | None]
    foundation_best: float | None = None


def _points(xs: Sequence[int], ys: Sequence[float | None]) -> tuple[list[int], list[float]]:
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _legend(fig: Any, ax: Any, inside: int = 6) -> None:
    """A legend inside the axes for a few entries; beside them (figure widened) for many."""
    entries = len(ax.get_legend_handles_labels()[1])
    if entries <= inside:
        ax.legend(fontsize=7.5, loc="best")
        return
    columns = 1 if entries <= 24 else 2
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + 3.6 * columns, max(height, 0.19 * entries / columns + 1.0))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=columns, frameon=False)


def _per_generation_axes() -> tuple[Any, Any]:
    """A figure for values per generation (scores, top-k kinship): one shape for both charts."""
    return _pyplot().subplots(figsize=(8.0, 4.6))


def _finish_per_generation(fig: Any, ax: Any, curves: Sequence[Any], title: str,
                           path: str | os.PathLike[str]) -> Path:
    """Generation ticks, grid, legend and title; then save."""
    max_gen = max((g for c in curves for g in c.generations), default=0)
    ax.set_xlabel("generation (0 = foundation models)")
    ax.set_xticks(range(0, max_gen + 1))
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_scores(curves: Sequence[ScoreCurve], path: str | os.PathLike[str], *, title: str | None = None) -> Path | None:
    """Best (solid) and mean (dotted) average score per generation, one colour per run.

    The foundation models' best is a dashed grey line: a merge that does not rise above it has
    gained nothing over simply picking the best fine-tune.

    Example:
        ``plot_scores([ScoreCurve("greedy", [0, 1, 2], [66.3, 66.8, 68.7], [60.1, 64.2, 67.9], 66.3)], "s.png")``
    """
    if not any(y is not None for c in curves for y in (*c.best, *c.mean)):
        return None
    fig, ax = _per_generation_axes()
    for color, curve in zip(_colors(len(curves)), curves, strict=True):
        xs, ys = _points(curve.generations, curve.best)
        ax.plot(xs, ys, "-o", color=color, lw=2, ms=5, label=f"{curve.label}: best in pool")
        xs, ys = _points(curve.generations, curve.mean)
        ax.plot(xs, ys, ":", marker=".", color=color, lw=1.4, alpha=0.8, label=f"{curve.label}: mean of new models")
    foundation = sorted({round(c.foundation_best, 9) for c in curves if c.foundation_best is not None})
    for i, value in enumerate(foundation):
        ax.axhline(value, color="#555555", ls="--", lw=1.2, label="foundation best" if i == 0 else None)
    ax.set_ylabel("average task score")
    return _finish_per_generation(fig, ax, curves, title or "Score per generation", path)


# ---------------------------------------------------------------------------------------------
# Top-k kinship per generation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KinshipCurve:
    """One run's top-k mean pairwise kinship per generation (``None`` = not computed).

    ``stopped_after``: the last generation made before kinship early stopping ended the run.
    """

    label: str
    generations: Sequence[int]
    values: Sequence[float | None]
    stopped_after: int | None = None


def plot_topk_kinship(
    curves: Sequence[KinshipCurve],
    path: str | os.PathLike[str],
    *,
    metric: str = "pcc",
    k: int = 3,
    thresholds: Iterable[tuple[float, str]] = (),
    title: str | None = None,
) -> Path | None:
    """The top-k's mean pairwise kinship per generation, with the early-stop threshold(s).

    Args:
        thresholds: ``(value, label)`` pairs drawn as red dashed lines.

    Example:
        ``plot_topk_kinship([KinshipCurve("kinship", [0, 1, 2], [0.1, 0.6, 0.95])], "k.png",
        thresholds=[(0.9, "early stop")])``
    """
    if not any(v is not None for c in curves for v in c.values):
        return None
    fig, ax = _per_generation_axes()
    for color, curve in zip(_colors(len(curves)), curves, strict=True):
        xs, ys = _points(curve.generations, curve.values)
        ax.plot(xs, ys, "-o", color=color, lw=2, ms=5, label=curve.label)
        if curve.stopped_after is not None and curve.stopped_after in xs:
            y = ys[xs.index(curve.stopped_after)]
            ax.plot([curve.stopped_after], [y], marker="X", ms=13, color=color, mec="black", ls="none",
                    label=f"{curve.label}: early stop")
    for i, (value, label) in enumerate(dict.fromkeys((float(v), lab) for v, lab in thresholds)):
        ax.axhline(value, color="#d62728", ls="--", lw=1.3, label=label or ("early-stop threshold" if i == 0 else None))
    closer = "higher" if HIGHER_IS_CLOSER[metric] else "lower"
    ax.set_ylabel(f"top-{k} mean pairwise {METRIC_SHORT[metric]} ({closer} = closer kin)")
    if metric in ("pcc", "cs"):
        lo = min([v for c in curves for v in c.values if v is not None] + [0.0])
        ax.set_ylim(max(-1.05, lo - 0.05), 1.05)
    return _finish_per_generation(fig, ax, curves, title or f"Kinship of the top-{k} per generation "
                                  f"({METRIC_NAMES[metric]})", path)


# ---------------------------------------------------------------------------------------------
# Merge gain vs parents' kinship
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GainPoint:
    """One merge: its gain (child minus the parents' mean score) and its parents' kinship per metric."""

    gain: float
    kinship: dict[str, float | None]
    reason: str | None = None
    group: str = ""


@dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman correlation of two samples; ``None`` where undefined (n < 3 or constant)."""

    n: int
    pearson_r: float | None = None
    pearson_p: float | None = None
    spearman_r: float | None = None
    spearman_p: float | None = None

    def text(self) -> str:
        """``"Pearson r = -0.50 (p = 0.06), Spearman ρ = -0.41 (p = 0.13), n = 15"``."""
        if self.pearson_r is None:
            return f"n = {self.n}: too few points (or no spread) for a correlation"
        return (
            f"Pearson r = {self.pearson_r:+.2f} (p = {_p(self.pearson_p)}), "
            f"Spearman ρ = {_fmt_opt(self.spearman_r)} (p = {_p(self.spearman_p)}), n = {self.n}"
        )


def _p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _fmt_opt(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:+.2f}"


def correlation(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Pearson and Spearman correlation (with two-sided p-values) of ``x`` and ``y``.

    Undefined (``None``) with fewer than 3 points or when either sample is constant, where scipy
    would warn and return NaN.

    Example:
        >>> round(correlation([0.1, 0.5, 0.9, 0.95], [3.0, 1.0, 0.2, 0.1]).spearman_r, 2)
        -1.0
    """
    import numpy as np
    from scipy import stats

    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = int(xa.size)
    if n < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return Correlation(n)
    pr = stats.pearsonr(xa, ya)
    sr = stats.spearmanr(xa, ya)
    s_r, s_p = float(sr.statistic), float(sr.pvalue)
    return Correlation(
        n,
        float(pr.statistic),
        float(pr.pvalue),
        s_r if math.isfinite(s_r) else None,
        s_p if math.isfinite(s_p) else None,
    )


def gain_correlations(points: Sequence[GainPoint], metric: str) -> tuple[Correlation, Correlation]:
    """Correlation of the parents' kinship (``metric``) with the gain and with ``|gain|``."""
    pts = [(p.kinship[metric], p.gain) for p in points if p.kinship.get(metric) is not None]
    xs = [float(x) for x, _ in pts]  # type: ignore[arg-type]
    return correlation(xs, [g for _, g in pts]), correlation(xs, [abs(g) for _, g in pts])


def plot_merge_gains(
    points: Sequence[GainPoint],
    path: str | os.PathLike[str],
    *,
    metrics: Sequence[str] = ("pcc", "cs", "ed"),
    title: str | None = None,
) -> Path | None:
    """Merge gain (top row) and |gain| (bottom row) vs the parents' kinship, one column per metric.

    Each panel: the merges (colour = why they were planned, marker = run when several), a
    least-squares line, and Pearson r / Spearman ρ with p-values in its title. Returns ``None``
    (no file) when no merge has its parents' kinship in any of ``metrics``.

    Example:
        ``plot_merge_gains([GainPoint(3.78, {"pcc": -0.02}, "exploration"), ...], "gain.png")``
    """
    if not any(p.kinship.get(m) is not None for p in points for m in metrics):
        return None  # no merge has both a gain and its parents' kinship: nothing to place
    import numpy as np

    plt = _pyplot()
    groups = list(dict.fromkeys(p.group for p in points))
    marker = {g: _MARKERS[i % len(_MARKERS)] for i, g in enumerate(groups)}
    fig, axes = plt.subplots(2, len(metrics), figsize=(5.0 * len(metrics), 8.4), squeeze=False)
    seen: dict[str, Any] = {}
    for col, metric in enumerate(metrics):
        pts = [p for p in points if p.kinship.get(metric) is not None]
        c_gain, c_abs = gain_correlations(points, metric)
        for row, (corr, transform, ylabel) in enumerate(
            (
                (c_gain, lambda g: g, "merge gain (child − parents' mean)"),
                (c_abs, abs, "|merge gain|"),
            )
        ):
            ax = axes[row][col]
            xs = np.array([float(p.kinship[metric]) for p in pts])  # type: ignore[arg-type]
            ys = np.array([transform(p.gain) for p in pts], dtype=np.float64)
            # One scatter call per (reason, run): far faster than one per point.
            for reason, group in dict.fromkeys((p.reason, p.group) for p in pts):
                idx = [i for i, p in enumerate(pts) if p.reason == reason and p.group == group]
                handle = ax.scatter(
                    xs[idx], ys[idx], s=42, color=REASON_COLORS.get(reason, REASON_COLORS[None]),
                    marker=marker[group], edgecolors="black", linewidths=0.5, zorder=3,
                )
                key = f"{reason or 'unknown'}" + (f" · {group}" if len(groups) > 1 else "")
                seen.setdefault(key, handle)
            if len(xs) >= 2 and np.ptp(xs) > 0:
                slope, intercept = np.polyfit(xs, ys, 1)
                grid = np.linspace(xs.min(), xs.max(), 50)
                ax.plot(grid, slope * grid + intercept, color="black", lw=1.2, alpha=0.7, zorder=2)
            if row == 0:
                ax.axhline(0.0, color="#999999", lw=0.8, zorder=1)
            closer = "higher" if HIGHER_IS_CLOSER[metric] else "lower"
            ax.set_xlabel(f"parents' kinship, {METRIC_SHORT[metric]} ({closer} = closer kin)", fontsize=9)
            ax.set_ylabel(ylabel, fontsize=9)
            ax.grid(alpha=0.3)
            if not pts:
                ax.text(0.5, 0.5, f"no {METRIC_SHORT[metric]} kinship recorded", ha="center", va="center",
                        transform=ax.transAxes, color="#777777")
            head = f"{METRIC_SHORT[metric]}: {'gain' if row == 0 else '|gain|'}"
            body = corr.text().replace(", Spearman", "\nSpearman")
            ax.set_title(f"{head}\n{body}", fontsize=8.5)
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=min(4, len(seen)),
                   fontsize=8, frameon=False)
    fig.suptitle(title or "Merge gain vs the parents' kinship", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return _save(fig, path)
