"""The report's figures, from plain data to PNG files.

Each ``plot_*`` function takes lists of small dataclasses (no store, no SQLite), writes one PNG
atomically (a temp name in the same folder, then ``os.replace``) and returns its path, or
``None`` when there is nothing to draw yet (a run with no merges): the HTML report shows an empty
state instead of an empty chart. matplotlib and scipy load inside the functions (the ``plot``
extra), so importing this module is cheap.

Figures (paper: Hu et al., arXiv 2410.12613):

- scores and the top-k's kinship per generation (§5 table, §4 early stop) are in
  :mod:`kinmerge.report.panels` (a panel per testbed); anytime curves and the early-stop
  trade-off in :mod:`kinmerge.report.budget_plots`;
- :func:`plot_merge_gains`: merge gain and |gain| vs the parents' kinship, one column per metric,
  with Pearson and Spearman correlations (§2);
- the family tree is :func:`kinmerge.report.tree.plot_family_tree`;
- the kinship heatmap is :func:`kinmerge.report.heatmap.plot_kinship_heatmap`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kinmerge._io import atomic_file
from kinmerge.errors import KinmergeError, install_hint
from kinmerge.kinship import HIGHER_IS_CLOSER
from kinmerge.report.fmt import pval

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
            f"Pearson r = {self.pearson_r:+.2f} (p = {pval(self.pearson_p)}), "
            f"Spearman ρ = {'n/a' if self.spearman_r is None else f'{self.spearman_r:+.2f}'} "
            f"(p = {pval(self.spearman_p)}), n = {self.n}"
        )


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


def plot_merge_gains(points: Sequence[GainPoint], path: str | os.PathLike[str], *,
                     metrics: Sequence[str] = ("pcc", "cs", "ed"), title: str | None = None) -> Path | None:
    """:func:`merge_gain_figure` written to ``path`` (``None``, no file, when there is nothing to place)."""
    fig = merge_gain_figure(points, metrics=metrics, title=title)
    return None if fig is None else _save(fig, path)


def merge_gain_figure(points: Sequence[GainPoint], *, metrics: Sequence[str] = ("pcc", "cs", "ed"),
                      title: str | None = None) -> Any | None:
    """Merge gain (top row) and |gain| (bottom row) vs the parents' kinship, one column per metric.

    Each panel: the merges (colour = why they were planned, marker = testbed when there are
    several), a least-squares line, and Pearson r / Spearman ρ with p-values in its title. The
    legend sits under the panels and lists reasons and testbeds once each. Returns ``None`` (no
    file) when no merge has its parents' kinship in any of ``metrics``.

    Example:
        ``merge_gain_figure([GainPoint(3.78, {"pcc": -0.02}, "exploration"), ...])`` -> a matplotlib figure
    """
    if not any(p.kinship.get(m) is not None for p in points for m in metrics):
        return None  # no merge has both a gain and its parents' kinship: nothing to place
    import numpy as np

    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    groups = list(dict.fromkeys(p.group for p in points))
    marker = {g: _MARKERS[i % len(_MARKERS)] for i, g in enumerate(groups)}
    fig, axes = plt.subplots(2, len(metrics), figsize=(5.0 * len(metrics), 8.4), squeeze=False)
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
                ax.scatter(
                    xs[idx], ys[idx], s=42, color=REASON_COLORS.get(reason, REASON_COLORS[None]),
                    marker=marker[group], edgecolors="black", linewidths=0.5, zorder=3,
                )
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
    reasons = list(dict.fromkeys(p.reason for p in points))
    handles: list[Any] = [Patch(fc=REASON_COLORS.get(r, REASON_COLORS[None]), ec="black", lw=0.5,
                                label=f"{r or 'unknown'} merge") for r in reasons]
    if len(groups) > 1:
        handles += [Line2D([], [], marker=marker[g], ls="none", mfc="white", mec="black", ms=7, label=g)
                    for g in groups]
    fig.suptitle(title or "Merge gain vs the parents' kinship", fontsize=11)
    fig.tight_layout()
    if handles:  # under the panels, outside every axis (the PNG is cropped to fit it)
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(5, len(handles)),
                   fontsize=8, frameon=False)
    return fig
