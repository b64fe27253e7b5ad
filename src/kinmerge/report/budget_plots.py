"""Figures of strategies at equal budgets: anytime curves and the early-stop trade-off.

- :func:`plot_anytime`: each variant's gain over the testbed's best foundation model as a
  function of the budget spent, against merges made (left) and examples evaluated (right): the
  mean over testbeds as a line, the range over testbeds (min–max) as a band;
- :func:`plot_early_stop`: kinship early stopping replayed on runs recorded without it: the share
  of merges a threshold saves against the final best it loses, one point per threshold.

The data come from :mod:`kinmerge.report.budget` (``anytime_bands``, ``early_stop_table``).

Example:
    ``plot_anytime(anytime_bands(runs), anytime_bands(runs, unit="examples"), "anytime.png", styles=styles)``
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kinmerge.report.groups import Style
from kinmerge.report.panels import DODGE, _legend_below
from kinmerge.report.plots import _pyplot, _save

__all__ = ["anytime_figure", "plot_anytime", "plot_early_stop"]


def _draw_bands(ax: Any, bands: Mapping[str, Mapping[str, Any]], styles: Mapping[str, Style], *, dodge: float) -> None:
    order = list(bands)
    for i, (v, band) in enumerate(bands.items()):
        pts = [(x, m, lo, hi) for x, m, lo, hi in zip(band["x"], band["mean"], band["low"], band["high"], strict=True)
               if m is not None]
        if not pts:
            continue
        shift = (i - (len(order) - 1) / 2) * dodge
        xs = [x + shift for x, *_ in pts]
        style = styles[v]
        if band["testbeds"] > 1:  # the range: a faint fill with dotted edges, readable where bands overlap
            ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], step="post", color=style.color,
                            alpha=0.07, lw=0)
            for edge in (2, 3):
                ax.plot(xs, [p[edge] for p in pts], drawstyle="steps-post", color=style.color, lw=0.8, ls=":",
                        alpha=0.9)
        ax.plot(xs, [p[1] for p in pts], drawstyle="steps-post", color=style.color, lw=1.8, zorder=3)
        ax.plot(xs[-1:], [pts[-1][1]], marker=style.marker, color=style.color, ls="none", ms=6, zorder=4)
    ax.axhline(0.0, color="#555555", ls="--", lw=1.0, zorder=1)
    ax.grid(alpha=0.3)


def plot_anytime(by_merges: Mapping[str, Mapping[str, Any]], by_examples: Mapping[str, Mapping[str, Any]],
                 path: str | os.PathLike[str], *, styles: Mapping[str, Style], title: str | None = None) -> Path | None:
    """:func:`anytime_figure` written to ``path`` (``None``, no file, when no run has a scored merge)."""
    fig = anytime_figure(by_merges, by_examples, styles=styles, title=title)
    return None if fig is None else _save(fig, path)


def anytime_figure(by_merges: Mapping[str, Mapping[str, Any]], by_examples: Mapping[str, Mapping[str, Any]], *,
                   styles: Mapping[str, Style], title: str | None = None) -> Any | None:
    """Anytime curves: gain over the best foundation model against merges made and examples evaluated.

    Args:
        by_merges, by_examples: ``budget.anytime_bands`` for the two units (the right panel is
            left out when no variant has example counts).

    Example:
        ``anytime_figure(anytime_bands(runs), anytime_bands(runs, unit="examples"),
        styles=variant_styles(variants_of(runs)))`` -> a matplotlib figure
    """
    if not any(m is not None for band in by_merges.values() for m in band["mean"]):
        return None
    from matplotlib.lines import Line2D

    plt = _pyplot()
    two = any(m is not None for band in by_examples.values() for m in band["mean"])
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(11.0 if two else 7.0, 3.8), squeeze=False)
    left = axes[0][0]
    _draw_bands(left, by_merges, styles, dodge=DODGE)
    left.set_xlabel("merges made (in the order the run made them)", fontsize=8.5)
    left.set_ylabel("best of the pool − best foundation", fontsize=8.5)
    left.set_title("against merges made", fontsize=9.5)
    from matplotlib.ticker import MaxNLocator

    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    if two:
        right = axes[0][1]
        most = max((x for band in by_examples.values() for x in band["x"]), default=1)
        _draw_bands(right, by_examples, styles, dodge=most * DODGE / 40)
        right.set_xlabel("examples evaluated (every model scored, all tasks)", fontsize=8.5)
        right.set_title("against examples evaluated", fontsize=9.5)
    beds = max((band["testbeds"] for band in by_merges.values()), default=1)
    band_note = f"mean over {beds} testbeds; band (dotted) = min–max over testbeds" if beds > 1 else "one testbed"
    handles = [Line2D([], [], color=styles[v].color, marker=styles[v].marker, lw=1.8,
                      label=f"{v} ({band['runs']} runs)") for v, band in by_merges.items()]
    handles.append(Line2D([], [], color="#555555", ls="--", lw=1.0, label="no gain over the best foundation"))
    _legend_below(fig, handles)
    fig.suptitle(title or f"Anytime curves: the best found so far ({band_note})", fontsize=11)
    fig.tight_layout()
    return fig


def plot_early_stop(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
                    title: str | None = None) -> Path | None:
    """The early-stop trade-off: share of merges saved (x) against final best lost (y), a point per
    threshold, labelled with it (mean over the replayed runs; bars: the range over runs; how many runs
    each threshold fired in is in the table beside it).

    Args:
        rows: ``budget.early_stop_table(...)["rows"]``.

    Example:
        ``plot_early_stop(early_stop_table(runs)["rows"], "early_stop.png")``
    """
    pts = [r for r in rows if r["runs"] and r["share_saved"] is not None and r["best_lost"]["mean"] is not None]
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    xs = [100.0 * r["share_saved"] for r in pts]
    ys = [r["best_lost"]["mean"] for r in pts]
    lo = [r["best_lost"]["mean"] - r["best_lost"]["low"] for r in pts]
    hi = [r["best_lost"]["high"] - r["best_lost"]["mean"] for r in pts]
    ax.errorbar(xs, ys, yerr=[lo, hi], fmt="-o", color="#2ca02c", ecolor="#999999", capsize=3, lw=1.6, ms=6)
    for i, (x, y, r) in enumerate(zip(xs, ys, pts, strict=True)):  # short labels, alternately above and
        ax.annotate(f"{r['threshold']:g}", (x, y), textcoords="offset points",  # below: neighbours stay legible
                    xytext=(-8, 8 if i % 2 == 0 else -16), fontsize=8.5, fontweight="bold")
    ax.axhline(0.0, color="#555555", ls="--", lw=1.0, zorder=1)
    ax.set_xlabel("merges saved (% of the merges the runs made)", fontsize=8.5)
    ax.set_ylabel("final best lost (mean; bars: min–max)", fontsize=8.5)
    ax.set_xlim(-5, max([*xs, 10.0]) * 1.25 + 5)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Kinship early stop, replayed: merges saved vs best lost (label: threshold)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
