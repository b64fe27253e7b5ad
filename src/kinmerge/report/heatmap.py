"""The kinship heatmap: models ordered by hierarchical clustering, with the dendrogram on top.

Ordering matters: a heatmap in input order hides families; clustered, related models sit in
blocks and the dendrogram shows how the pool splits. matplotlib and scipy load inside the
functions (the ``plot`` extra), so the kinship path stays light.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kinmerge._io import atomic_file
from kinmerge.errors import KinmergeError, install_hint
from kinmerge.kinship import HIGHER_IS_CLOSER, METRIC_NAMES


def kinship_distance(matrix: np.ndarray, metric: str) -> np.ndarray:
    """Turn a kinship matrix into a distance matrix for clustering (undefined = farthest)."""
    m = np.asarray(matrix, dtype=np.float64)
    dist = 1.0 - m if HIGHER_IS_CLOSER[metric] else m.copy()
    finite = dist[np.isfinite(dist)]
    worst = float(finite.max()) if finite.size else 1.0
    dist = np.where(np.isfinite(dist), dist, worst)
    dist = np.clip((dist + dist.T) / 2.0, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    return dist


def cluster_order(matrix: np.ndarray, metric: str) -> tuple[list[int], np.ndarray | None]:
    """Leaf order of an average-linkage clustering, and the linkage (None for < 3 models)."""
    n = matrix.shape[0]
    if n < 3:
        return list(range(n)), None
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    condensed = squareform(kinship_distance(matrix, metric), checks=False)
    link = optimal_leaf_ordering(linkage(condensed, method="average"), condensed)
    return [int(i) for i in leaves_list(link)], link


def plot_kinship_heatmap(
    matrix: np.ndarray, labels: Sequence[str], metric: str, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Write a clustered heatmap (+ dendrogram) PNG to ``path`` atomically; return the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from scipy.cluster.hierarchy import dendrogram
    except ImportError:
        raise KinmergeError(f"plots need matplotlib and scipy: {install_hint('plot')}") from None
    order, link = cluster_order(matrix, metric)
    m = np.asarray(matrix, dtype=np.float64)[np.ix_(order, order)]
    names = [labels[i] for i in order]
    n = len(names)
    size = max(4.0, 0.6 * n + 2.5)
    fig = plt.figure(figsize=(size + 1.6, size + (1.4 if link is not None else 0.4)))
    if link is not None:
        top = fig.add_axes((0.22, 0.80, 0.58, 0.13))
        dendrogram(link, ax=top, no_labels=True, color_threshold=0, above_threshold_color="#555555")
        top.set_xlim(0, 10 * n)  # leaves sit at 5, 15, ...: align them with the heatmap columns
        top.set_axis_off()
        heat = fig.add_axes((0.22, 0.14, 0.58, 0.64))
    else:
        heat = fig.add_axes((0.22, 0.14, 0.58, 0.76))
    cmap = "viridis" if HIGHER_IS_CLOSER[metric] else "viridis_r"
    vmin, vmax = ((-1.0, 1.0) if metric in ("pcc", "cs") else (None, None))
    # aspect="auto": the heatmap fills its axes, so its columns line up with the dendrogram leaves
    image = heat.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    heat.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    heat.set_yticks(range(n), names, fontsize=8)
    if n <= 16:
        for i in range(n):
            for j in range(n):
                text = "n/a" if not np.isfinite(m[i, j]) else f"{m[i, j]:.2f}"
                if np.isfinite(m[i, j]):
                    r, g, b, _ = image.cmap(image.norm(m[i, j]))
                    color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                else:
                    color = "red"
                heat.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    cax = fig.add_axes((0.83, 0.14, 0.025, 0.64))
    fig.colorbar(image, cax=cax, label=METRIC_NAMES[metric])
    fig.suptitle(title or f"Model kinship ({METRIC_NAMES[metric]}), clustered", fontsize=10)
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
