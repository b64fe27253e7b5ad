"""The family tree of a run's pool: a layered DAG, one row per generation (paper §5's lineage).

Example:
    ``plot_family_tree([TreeNode("a", "a", 0), TreeNode("b", "b", 0),
    TreeNode("ab", "ab", 1, ("a", "b"))], "tree.png")``
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from kinmerge.report.plots import REASON_COLORS, REASON_EDGE_STYLES, _pyplot, _save

__all__ = ["TreeNode", "plot_family_tree", "tree_layout", "tree_routes"]


@dataclass(frozen=True)
class TreeNode:
    """One model of the family tree.

    ``reason`` is why this model's merge was planned (it styles the edges *into* it);
    ``rank`` is its place in the final top-k (1 = best), ``None`` if outside it.
    """

    id: str
    label: str
    generation: int
    parents: tuple[str, ...] = ()
    score: float | None = None
    reason: str | None = None
    rank: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _gap(a_is_model: bool, b_is_model: bool) -> float:
    """Room between neighbours in a row: a unit between models, less beside a waypoint (an edge
    passing by needs to clear the model's disc and label, not a label of its own)."""
    return 1.0 if a_is_model and b_is_model else 0.55 if a_is_model or b_is_model else 0.3


def tree_layout(nodes: Sequence[TreeNode], *, sweeps: int = 4) -> dict[str, tuple[float, float]]:
    """Positions ``{id: (x, y)}`` of a layered drawing: ``y = -generation``, x ordered to cut crossings.

    See :func:`tree_routes` (this is its first half).

    Example:
        >>> pos = tree_layout([TreeNode("a", "a", 0), TreeNode("b", "b", 0), TreeNode("c", "c", 1, ("a", "b"))])
        >>> pos["c"], pos["a"][1]
        ((0.0, -1.0), 0.0)
    """
    return tree_routes(nodes, sweeps=sweeps)[0]


def tree_routes(nodes: Sequence[TreeNode], *, sweeps: int = 4
                ) -> tuple[dict[str, tuple[float, float]], dict[tuple[str, str], list[tuple[float, float]]]]:
    """A layered drawing of the tree: node positions and, per edge ``(parent, child)``, its route.

    A merge's parent may sit several generations above it (``m4 = m1 x math``); a straight arrow
    would cross the rows between and could pass through a model there. So such an edge gets a
    *waypoint* in every row it crosses (the Sugiyama layering), and waypoints take a slot in their
    row like models do: an edge is a chain of segments between adjacent rows, and no segment
    passes through a model.

    Row 0 (foundations) starts in the given order; each later row is sorted by the mean position
    of its parents (the barycentre heuristic), then a few up/down sweeps reorder every row by the
    mean position of its neighbours in the rows around it. Within a row, models sit one unit apart
    and waypoints closer (``_gap``: a line needs less room than a labelled model), centred on
    x = 0. Parents missing from ``nodes`` are ignored.

    Example:
        >>> pos, routes = tree_routes([TreeNode("a", "a", 0), TreeNode("b", "b", 0),
        ...                            TreeNode("ab", "ab", 1, ("a", "b")), TreeNode("x", "x", 2, ("ab", "a"))])
        >>> len(routes[("a", "x")]), routes[("a", "x")][1][1]   # a waypoint in generation 1's row
        (3, -1.0)
    """
    by_id = {n.id: n for n in nodes}
    gens = sorted({n.generation for n in nodes})
    row = {g: i for i, g in enumerate(gens)}
    layers: dict[int, list[str]] = {g: [] for g in gens}
    for n in nodes:
        layers[n.generation].append(n.id)
    up: dict[str, list[str]] = {n.id: [] for n in nodes}  # neighbours in the row above
    chains: dict[tuple[str, str], list[str]] = {}
    for n in nodes:
        for p in dict.fromkeys(p for p in n.parents if p in by_id):
            chain, prev = [p], p
            for g in gens[row[by_id[p].generation] + 1: row[n.generation]]:
                way = f"\0{p}\0{n.id}\0{g}"  # a waypoint: never a model id
                layers[g].append(way)
                up[way] = [prev]
                chain.append(way)
                prev = way
            up[n.id].append(prev)
            chains[(p, n.id)] = [*chain, n.id]
    down: dict[str, list[str]] = {mid: [] for mid in up}
    for mid, above in up.items():
        for a in above:
            down[a].append(mid)
    x: dict[str, float] = {}

    def place(g: int) -> None:
        ids = layers[g]
        at = [0.0]
        for a, b in pairwise(ids):
            at.append(at[-1] + _gap(a in by_id, b in by_id))
        for mid, pos_x in zip(ids, at, strict=True):
            x[mid] = pos_x - at[-1] / 2.0

    def reorder(g: int, neighbours: dict[str, list[str]]) -> None:
        current = {mid: i for i, mid in enumerate(layers[g])}

        def key(mid: str) -> tuple[float, int]:
            near = [x[o] for o in neighbours[mid] if o in x]
            # A node with no placed neighbour keeps its place relative to the others.
            return (sum(near) / len(near) if near else x.get(mid, current[mid] - (len(current) - 1) / 2.0),
                    current[mid])

        layers[g] = sorted(layers[g], key=key)
        place(g)

    for g in gens:
        if g == gens[0]:
            place(g)
        else:
            reorder(g, up)
    for _ in range(sweeps):
        for g in reversed(gens[:-1]):
            reorder(g, down)
        for g in gens[1:]:
            reorder(g, up)
    level = {mid: float(-g) for g in gens for mid in layers[g]}
    pos = {mid: (x[mid], level[mid]) for mid in by_id}
    return pos, {edge: [(x[mid], level[mid]) for mid in chain] for edge, chain in chains.items()}


def plot_family_tree(
    nodes: Sequence[TreeNode],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    k: int | None = None,
) -> Path | None:
    """The pool as a family tree: foundations on top, one row per generation, edges parent → child.

    Nodes are coloured by average score (colour bar; grey = not scored). Edges into a greedy
    merge are solid, into an exploration merge dashed red, into a random-control merge dotted
    purple; edges on the best model's lineage are drawn thicker. The final top-k have a thick
    gold ring and their rank.

    Example:
        ``plot_family_tree([TreeNode("a", "math", 0, score=60.1), ...], "tree.png")``
    """
    if not nodes:
        return None
    import numpy as np

    plt = _pyplot()
    from matplotlib.lines import Line2D

    pos, routes = tree_routes(nodes)
    by_id = {n.id: n for n in nodes}
    gens = sorted({n.generation for n in nodes})
    slots = [*pos.values(), *(q for r in routes.values() for q in r[1:-1])]  # models and waypoints
    xs = [q[0] for q in slots]
    fig_w = max(7.0, 1.55 * (max(xs) - min(xs) + 1.0) + 2.5)
    fig_h = max(3.6, 1.45 * len(gens) + 1.6)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))

    best = next((n for n in nodes if n.rank == 1), None)
    lineage: set[str] = set()
    if best is not None:
        stack = [best.id]
        while stack:
            mid = stack.pop()
            if mid in lineage:
                continue
            lineage.add(mid)
            stack.extend(p for p in by_id[mid].parents if p in by_id)

    for (p, child), route in routes.items():
        n = by_id[child]
        on_line = n.id in lineage and p in lineage
        color = REASON_COLORS.get(n.reason, REASON_COLORS[None]) if n.reason != "greedy" else "#555555"
        style = REASON_EDGE_STYLES.get(n.reason, "solid")
        width_pt, alpha = (2.6, 0.95) if on_line else (1.1, 0.7)
        if len(route) > 2:  # through the waypoints of the rows it crosses; the arrow on the last leg
            lx, ly = zip(*route[:-1], strict=True)
            ax.plot(lx, ly, color=color, linestyle=style, lw=width_pt, alpha=alpha, zorder=1,
                    solid_capstyle="round")
        ax.annotate(
            "", xy=route[-1], xytext=route[-2],
            arrowprops=dict(arrowstyle="-|>", mutation_scale=11, shrinkA=16 if len(route) == 2 else 0, shrinkB=17,
                            color=color, linestyle=style, lw=width_pt, alpha=alpha),
            zorder=1,
        )

    scored = [n for n in nodes if n.score is not None]
    unscored = [n for n in nodes if n.score is None]
    cmap = plt.get_cmap("viridis")
    if scored:
        values = np.array([n.score for n in scored], dtype=np.float64)
        vmin, vmax = float(values.min()), float(values.max())
        if vmin == vmax:
            vmin, vmax = vmin - 0.5, vmax + 0.5
        sc = ax.scatter([pos[n.id][0] for n in scored], [pos[n.id][1] for n in scored], c=values, cmap=cmap,
                        vmin=vmin, vmax=vmax, s=720, edgecolors="black", linewidths=0.8, zorder=3)
        fig.colorbar(sc, ax=ax, label="average task score", fraction=0.035, pad=0.02)
    if unscored:
        ax.scatter([pos[n.id][0] for n in unscored], [pos[n.id][1] for n in unscored], c="#dddddd",
                   s=720, edgecolors="black", linewidths=0.8, zorder=3)
    top = [n for n in nodes if n.rank is not None]
    if top:
        ax.scatter([pos[n.id][0] for n in top], [pos[n.id][1] for n in top], facecolors="none",
                   edgecolors="#f2a900", s=1250, linewidths=3.2, zorder=4)
    for n in nodes:
        x, y = pos[n.id]
        score = "" if n.score is None else f"\n{n.score:.2f}"
        ax.text(x, y - 0.27, f"{n.label}{score}", ha="center", va="top", fontsize=7.5, zorder=5,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
        if n.rank is not None:
            ax.text(x, y, f"#{n.rank}", ha="center", va="center", fontsize=8, fontweight="bold",
                    color="white", zorder=6,
                    bbox=dict(boxstyle="circle,pad=0.12", fc="#333333", ec="none", alpha=0.55))

    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-max(gens) - 0.75, -min(gens) + 0.45)
    ax.set_yticks([-g for g in gens], [("foundation" if g == 0 else f"generation {g}") for g in gens], fontsize=8.5)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    reasons = {n.reason for n in nodes if n.parents}
    handles = [
        Line2D([], [], color="#555555" if r == "greedy" else REASON_COLORS.get(r, REASON_COLORS[None]),
               ls=REASON_EDGE_STYLES.get(r, "solid"), lw=1.6, label=f"{r or 'unknown'} merge")
        for r in ("greedy", "exploration", "random", None) if r in reasons
    ]
    if lineage and len(lineage) > 1:
        handles.append(Line2D([], [], color="#555555", lw=2.8, label="lineage of the best model"))
    if top:
        handles.append(Line2D([], [], marker="o", ls="none", mfc="none", mec="#f2a900", mew=2.5, ms=13,
                              label=f"final top-{k or len(top)}"))
    if unscored:
        handles.append(Line2D([], [], marker="o", ls="none", mfc="#dddddd", mec="black", ms=10, label="not scored"))
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=min(5, len(handles)),
                  fontsize=7.5, frameon=False)
    ax.set_title(title or "Family tree", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
