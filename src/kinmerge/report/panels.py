"""Per-generation figures of many runs: one panel per testbed, one colour per variant.

Scores of different foundation sets (or task sets) do not share an axis, so each testbed gets
its own panel; within a panel each variant is one colour and marker (``groups.variant_styles``),
and the seeds of a variant are drawn as a band (min–max) around their mean. Curves that coincide
stay visible: each variant's line is shifted sideways by a small fixed amount (``DODGE``), and a
panel names the variants whose curves are identical. The legend lists each variant once, below
the panels, where it cannot cover an axis.

Example:
    ``plot_scores([ScoreCurve("bed · greedy", [0, 1], [0.5, 0.6], [0.5, 0.55], 0.5, "bed", "greedy")],
    "scores.png", styles={"greedy": Style("#1f77b4", "o")})``
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kinmerge.kinship import HIGHER_IS_CLOSER, METRIC_NAMES
from kinmerge.report.groups import Style
from kinmerge.report.plots import METRIC_SHORT, _pyplot, _save

__all__ = ["DODGE", "KinshipCurve", "ScoreCurve", "identical", "plot_scores", "plot_topk_kinship", "scores_figure",
           "topk_figure"]

#: How far apart (in generations) the lines of neighbouring variants sit, so equal ones stay visible.
DODGE = 0.07


@dataclass(frozen=True)
class ScoreCurve:
    """One run's scores per generation.

    ``best[i]`` is the best of the whole pool after ``generations[i]`` (what the paper's §5 table
    reports); ``mean[i]`` the mean of the models that joined in that generation. ``None`` = not
    scored. ``testbed`` picks the panel, ``variant`` the colour.
    """

    label: str
    generations: Sequence[int]
    best: Sequence[float | None]
    mean: Sequence[float | None]
    foundation_best: float | None = None
    testbed: str = ""
    variant: str = ""


@dataclass(frozen=True)
class KinshipCurve:
    """One run's top-k mean pairwise kinship per generation (``None`` = not computed).

    ``stopped_after``: the last generation made before kinship early stopping ended the run.
    """

    label: str
    generations: Sequence[int]
    values: Sequence[float | None]
    stopped_after: int | None = None
    testbed: str = ""
    variant: str = ""


def _known(xs: Sequence[int], ys: Sequence[float | None]) -> dict[int, float]:
    return {x: float(y) for x, y in zip(xs, ys, strict=True) if y is not None}


def _band(series: Sequence[dict[int, float]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Mean, min and max of several runs per generation; a run that ended earlier keeps its last
    value (its pool no longer changes), as ``compare`` carries it forward."""
    gens = sorted({g for s in series for g in s})
    carried: list[dict[int, float]] = []
    for s in series:
        last, filled = None, {}
        for g in gens:
            last = s.get(g, last)
            if last is not None:
                filled[g] = last
        carried.append(filled)
    xs = [g for g in gens if all(g in c for c in carried)]
    vals = [[c[g] for c in carried] for g in xs]
    return xs, [math.fsum(v) / len(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]


def _grid(panels: int, *, panel_height: float = 3.0) -> tuple[Any, list[Any]]:
    """A figure of ``panels`` axes, two per row (one when there is one panel)."""
    plt = _pyplot()
    cols = 1 if panels == 1 else 2
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(8.0 if cols == 1 else 11.0, panel_height * rows + 0.4),
                             squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def _legend_below(fig: Any, handles: Sequence[Any]) -> None:
    """One legend for the whole figure, under the panels (saved with ``bbox_inches="tight"``, so
    it is never drawn over an axis)."""
    if handles:
        fig.legend(handles=list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(3, len(handles)), fontsize=8.5, frameon=False)


def identical(lines: Mapping[str, tuple[Sequence[int], Sequence[float]]]) -> str:
    """Name the variants of a panel whose curves coincide (drawn dodged, so all stay visible):
    ``"identical: greedy = kinship"``, or ``""``.

    >>> identical({"greedy": ([0, 1], [0.5, 0.6]), "kinship": ([0, 1], [0.5, 0.6]), "random": ([0, 1], [0.5, 0.7])})
    'identical: greedy = kinship'
    """
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, (xs, ys) in lines.items():
        groups.setdefault((tuple(xs), tuple(round(y, 9) for y in ys)), []).append(name)
    same = [names for names in groups.values() if len(names) > 1]
    return "identical: " + "; ".join(" = ".join(names) for names in same) if same else ""


def _title(ax: Any, text: str, lines: Mapping[str, tuple[Sequence[int], Sequence[float]]]) -> None:
    note = identical(lines)
    ax.set_title(text + (f"\n({note})" if note else ""), fontsize=9.5)


def _draw_panel(ax: Any, runs: Sequence[tuple[str, dict[int, float]]], styles: Mapping[str, Style],
                order: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
    """Each variant's runs in one panel (a line, or mean line and min–max band); returns the lines."""
    lines: dict[str, tuple[list[int], list[float]]] = {}
    for v in order:
        series = [s for name, s in runs if name == v and s]
        if not series:
            continue
        style = styles[v]
        shift = _shift(v, order)
        xs, mean, low, high = _band(series)
        dx = [x + shift for x in xs]
        if len(series) > 1:
            ax.fill_between(dx, low, high, color=style.color, alpha=0.18, lw=0)
        ax.plot(dx, mean, "-", marker=style.marker, color=style.color, lw=1.8, ms=4.5, zorder=3)
        lines[v] = (xs, mean)
    return lines


def _shift(variant: str, order: Sequence[str]) -> float:
    """The sideways offset of a variant's line: the same in every panel."""
    return (order.index(variant) - (len(order) - 1) / 2) * DODGE


def _variant_handles(styles: Mapping[str, Style], counts: Mapping[str, int]) -> list[Any]:
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=styles[v].color, marker=styles[v].marker, lw=1.8,
                   label=v if counts[v] <= 1 else f"{v} ({counts[v]} runs: mean, band = min–max)")
            for v in counts]


def _panels(curves: Sequence[Any]) -> list[str]:
    return list(dict.fromkeys(c.testbed for c in curves))


def _counts(curves: Sequence[Any]) -> dict[str, int]:
    """Runs per variant on one testbed (the most on any), for the legend."""
    per: dict[tuple[str, str], int] = {}
    for c in curves:
        per[(c.testbed, c.variant)] = per.get((c.testbed, c.variant), 0) + 1
    out: dict[str, int] = {}
    for (_, v), n in per.items():
        out[v] = max(out.get(v, 0), n)
    return out


def _generation_axis(ax: Any, curves: Sequence[Any]) -> None:
    max_gen = max((g for c in curves for g in c.generations), default=0)
    ax.set_xticks(range(0, max_gen + 1))
    ax.set_xlim(-0.4, max_gen + 0.4)
    ax.grid(alpha=0.3)


def plot_scores(curves: Sequence[ScoreCurve], path: str | os.PathLike[str], *, styles: Mapping[str, Style],
                titles: Mapping[str, str] | None = None, title: str | None = None) -> Path | None:
    """:func:`scores_figure` written to ``path`` (``None``, no file, when nothing is scored yet)."""
    fig = scores_figure(curves, styles=styles, titles=titles, title=title)
    return None if fig is None else _save(fig, path)


def scores_figure(curves: Sequence[ScoreCurve], *, styles: Mapping[str, Style],
                  titles: Mapping[str, str] | None = None, title: str | None = None) -> Any | None:
    """Best score of the pool per generation: a panel per testbed, a colour per variant.

    The best foundation model is a dashed grey line in each panel: a run that never rises above
    it gained nothing over picking the best fine-tune. With one run, the mean score of the
    models made in each generation is drawn too (dotted).

    Example:
        ``scores_figure([ScoreCurve("greedy", [0, 1, 2], [0.663, 0.668, 0.687], [0.601, 0.642, 0.679], 0.663,
        "bed", "greedy")], styles={"greedy": Style("#1f77b4", "o")})`` -> a matplotlib figure
    """
    if not any(y is not None for c in curves for y in (*c.best, *c.mean)):
        return None
    from matplotlib.lines import Line2D

    panels = _panels(curves)
    fig, axes = _grid(len(panels))
    order = list(dict.fromkeys(c.variant for c in curves))
    for ax, bed in zip(axes, panels, strict=True):
        mine = [c for c in curves if c.testbed == bed]
        lines = _draw_panel(ax, [(c.variant, _known(c.generations, c.best)) for c in mine], styles, order)
        if len(curves) == 1:
            xs, ys = zip(*sorted(_known(mine[0].generations, mine[0].mean).items()), strict=True)
            ax.plot(xs, ys, ":", marker=".", color=styles[mine[0].variant].color, lw=1.3, alpha=0.8)
        for value in sorted({round(c.foundation_best, 9) for c in mine if c.foundation_best is not None}):
            ax.axhline(value, color="#555555", ls="--", lw=1.1, zorder=1)
        _generation_axis(ax, mine)
        _title(ax, (titles or {}).get(bed, bed), lines)
        ax.set_ylabel("best average score in pool", fontsize=8.5)
        ax.set_xlabel("generation (0 = foundation models)", fontsize=8.5)
    handles = _variant_handles(styles, _counts(curves))
    handles.append(Line2D([], [], color="#555555", ls="--", lw=1.1, label="best foundation model"))
    if len(curves) == 1:
        handles.append(Line2D([], [], color="#777777", ls=":", marker=".", label="mean of the new models"))
    _legend_below(fig, handles)
    fig.suptitle(title or "Best score of the pool per generation", fontsize=11)
    fig.tight_layout()
    return fig


def plot_topk_kinship(curves: Sequence[KinshipCurve], path: str | os.PathLike[str], **kwargs: Any) -> Path | None:
    """:func:`topk_figure` written to ``path`` (``None``, no file, when no top-k kinship is known)."""
    fig = topk_figure(curves, **kwargs)
    return None if fig is None else _save(fig, path)


def topk_figure(
    curves: Sequence[KinshipCurve],
    *,
    styles: Mapping[str, Style],
    metric: str = "pcc",
    k: int = 3,
    thresholds: Iterable[tuple[float, str]] = (),
    titles: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Any | None:
    """The top-k's mean pairwise kinship per generation, a panel per testbed, with the early-stop
    threshold(s) as red dashed lines and a large ✕ where a run early-stopped.

    Example:
        ``topk_figure([KinshipCurve("kinship", [0, 1, 2], [0.1, 0.6, 0.95], None, "bed", "kinship")],
        styles={"kinship": Style("#2ca02c", "s")}, thresholds=[(0.9, "early stop")])``
    """
    if not any(v is not None for c in curves for v in c.values):
        return None
    from matplotlib.lines import Line2D

    panels = _panels(curves)
    fig, axes = _grid(len(panels))
    order = list(dict.fromkeys(c.variant for c in curves))
    marks = list(dict.fromkeys((float(v), lab) for v, lab in thresholds))
    values = [v for c in curves for v in c.values if v is not None]
    for ax, bed in zip(axes, panels, strict=True):
        mine = [c for c in curves if c.testbed == bed]
        lines = _draw_panel(ax, [(c.variant, _known(c.generations, c.values)) for c in mine], styles, order)
        for c in mine:
            known = _known(c.generations, c.values)
            if c.stopped_after is not None and c.stopped_after in known:
                ax.plot([c.stopped_after + _shift(c.variant, order)], [known[c.stopped_after]], marker="X", ms=12,
                        ls="none", color=styles[c.variant].color, mec="black", zorder=4)
        for value, _ in marks:
            ax.axhline(value, color="#d62728", ls="--", lw=1.2, zorder=1)
        if metric in ("pcc", "cs"):
            ax.set_ylim(max(-1.05, min([*values, 0.0]) - 0.05), 1.05)
        _generation_axis(ax, mine)
        _title(ax, (titles or {}).get(bed, bed), lines)
        closer = "higher" if HIGHER_IS_CLOSER[metric] else "lower"
        ax.set_ylabel(f"top-{k} mean {METRIC_SHORT[metric]} ({closer} = closer)", fontsize=8.5)
        ax.set_xlabel("generation (0 = foundation models)", fontsize=8.5)
    handles = _variant_handles(styles, _counts(curves))
    handles += [Line2D([], [], color="#d62728", ls="--", lw=1.2, label=label) for _, label in marks]
    if any(c.stopped_after is not None for c in curves):
        handles.append(Line2D([], [], marker="X", ms=10, ls="none", color="#777777", mec="black",
                              label="last generation before a kinship early stop"))
    _legend_below(fig, handles)
    fig.suptitle(title or f"Kinship of the top-{k} per generation ({METRIC_NAMES[metric]})", fontsize=11)
    fig.tight_layout()
    return fig
