"""Exact kinship statistics as a consumer of the one pass: every pair's Σδ, Σδ² and Gram at once.

``ExactStats`` runs the fused kinship kernel (``kinmerge._kernels``) on each chunk's raw values
and adds the chunks up per tensor in chunk order, then the tensors in the base's order: the same
bits whatever the threads, whatever other consumer shares the read, and whatever subset of the
tensors a pass covers (Ray shards add up to the whole scan). The result keeps the statistics per
tensor, so breakdowns per tensor or per layer cost nothing extra, while the headline numbers are
always the global ones (the paper computes kinship over the whole flattened delta, never as an
average of per-layer values).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinmerge import _kernels
from kinmerge.errors import NonFiniteError
from kinmerge.kinship import METRICS, KinshipStats, check_metric
from kinmerge.scan.align import TensorPlan, display_labels, plan
from kinmerge.scan.stream import DEFAULT_CHUNK, Consumer, Pass, Piece, Progress, stream
from kinmerge.sources import ModelSource

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


@dataclass(frozen=True)
class PairKinship:
    """The kinship of two models under every metric (``None`` where undefined, see ``undefined``).

    ``pcc`` and ``cs`` grow with kinship (-1..1); ``ed`` is a distance (0 = identical deltas).
    """

    a: str
    b: str
    pcc: float | None
    cs: float | None
    ed: float | None
    elements: int
    undefined: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __getitem__(self, metric: str) -> float | None:
        return {"pcc": self.pcc, "cs": self.cs, "ed": self.ed}[check_metric(metric)]


@dataclass
class ScanResult:
    """Kinship statistics of a pool of models against one base, globally and per tensor."""

    base: str
    models: list[str]
    stats: KinshipStats
    per_tensor: dict[str, KinshipStats]
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0

    def matrix(self, metric: str) -> np.ndarray:
        """The N×N kinship matrix of ``metric`` over ``models`` (NaN where undefined)."""
        return self.stats.matrix(check_metric(metric))

    def pair(self, i: int = 0, j: int = 1) -> PairKinship:
        """Models ``i`` and ``j`` under every metric."""
        why = {m: w for m in METRICS if (w := self.stats.why_undefined(m, i, j))}
        pcc, cs, ed = (self.stats.value(m, i, j) for m in METRICS)
        return PairKinship(self.models[i], self.models[j], pcc, cs, ed, self.stats.n, why, tuple(self.notes))

    def per_layer(self) -> dict[str, KinshipStats]:
        """Statistics summed per transformer layer (``model.layers.12.`` -> ``layer 12``).

        Tensors outside the numbered layers keep their own name (embeddings, final norm, head).
        """
        out: dict[str, KinshipStats] = {}
        for name, st in self.per_tensor.items():
            key = layer_of(name)
            if key in out:
                out[key] += st
            else:
                out[key] = st.copy()
        return dict(sorted(out.items(), key=lambda kv: _layer_sort_key(kv[0])))


def layer_of(tensor: str) -> str:
    """``model.layers.12.mlp.up_proj.weight`` -> ``layer 12``; others -> the name sans ``.weight``."""
    m = _LAYER.search(tensor)
    if m:
        return f"layer {int(m.group(1))}"
    return tensor.removesuffix(".weight")


def _layer_sort_key(label: str) -> tuple[int, int, str]:
    if label.startswith("layer "):
        return (1, int(label.split()[1]), "")
    return (0 if "embed" in label or "wte" in label else 2, 0, label)


class ExactStats(Consumer):
    """The kinship statistics of the pass, per tensor (``per_tensor``) and in total (``total``).

    A tensor's NaN/Inf shows as non-finite sums when its last chunk is reduced; only then are its
    values read again, to name the model and the tensor (``NonFiniteError``).
    """

    def __init__(self) -> None:
        self.per_tensor: dict[str, KinshipStats] = {}
        self.total = KinshipStats.empty(0)
        self._pass: Pass | None = None

    def start(self, ps: Pass) -> None:
        self._pass = ps
        self.total = KinshipStats.empty(len(ps.sources) - 1)

    def consume(self, worker: int, piece: Piece, raws: list[np.ndarray], dtypes: list[str]) -> Any:
        assert self._pass is not None
        return _kernels.accumulate(raws[0], dtypes[0], raws[1:], dtypes[1:], backend=self._pass.backend)

    def reduce(self, piece: Piece, result: Any) -> None:
        sums, gram = result
        name = piece.tensor.name
        st = self.per_tensor.get(name)
        if st is None:
            st = self.per_tensor[name] = KinshipStats.empty(self.total.n_models)
        st.n += piece.stop - piece.start
        st.sums += sums
        st.gram += gram
        if piece.last:
            self._check_finite(piece.tensor, st)
            self.total += st

    def _check_finite(self, p: TensorPlan, st: KinshipStats) -> None:
        """NaN/Inf anywhere in a delta makes its sums non-finite: find the culprit only then."""
        if np.isfinite(st.sums).all() and np.isfinite(np.diag(st.gram)).all():
            return
        assert self._pass is not None
        sources = self._pass.sources
        for s, raw in self._pass.reread(p):
            vals = _kernels.widen(raw, sources[s].tensors[p.name].dtype)
            bad = ~np.isfinite(vals)
            if bad.any():
                kind = "NaN" if np.isnan(vals[bad]).any() else "Inf"
                who = "the base" if s == 0 else sources[s].display_name
                raise NonFiniteError(
                    f"{who}: tensor '{p.name}' contains {kind} ({int(bad.sum())} value(s) in the first "
                    "chunk found); the checkpoint is damaged — re-download or re-export it"
                )
        raise NonFiniteError(  # finite inputs whose squares overflow float64: not a real checkpoint
            f"tensor '{p.name}': deltas too large to square in float64; check the models' dtypes"
        )


def scan(
    base: ModelSource,
    models: Sequence[ModelSource],
    *,
    chunk: int = DEFAULT_CHUNK,
    allow_missing: bool = False,
    backend: str = "auto",
    progress: Progress | None = None,
    threads: int | None = None,
) -> ScanResult:
    """Kinship statistics of ``models`` against ``base`` in one pass over every file.

    Args:
        chunk: elements per read; memory is about ``threads * chunk * (N + 1) * itemsize``.
        allow_missing: skip tensors absent from some model instead of failing.
        backend: kernel backend ("auto", "c", "numpy"); all give the same numbers.
        progress: called with bytes read after each chunk (for a progress bar).
        threads: worker threads (default: ``KINMERGE_THREADS``, else the usable cores).

    Raises:
        NonFiniteError: a tensor holds NaN/Inf (names the model and tensor).
        plus everything ``plan`` raises, and read errors (``CorruptFileError``, ``OSError``).

    Example:
        >>> from kinmerge.sources import open_models
        >>> with open_models(["zoo:base", "zoo:add", "zoo:sort"]) as (base, *models):
        ...     r = scan(base, models)
        >>> round(r.stats.value("pcc", 0, 1), 4)
        -0.0098
    """
    if chunk < 1:
        raise ValueError("chunk must be a positive number of elements")
    t0 = time.perf_counter()
    plans, notes, skipped = plan(base, models, allow_missing=allow_missing)
    per_tensor, total, bytes_read = scan_tensors(base, models, plans, chunk=chunk, backend=backend,
                                                 progress=progress, threads=threads)
    labels = display_labels([base, *models])
    return ScanResult(
        base=labels[0],
        models=labels[1:],
        stats=total,
        per_tensor=per_tensor,
        notes=notes,
        skipped=skipped,
        bytes_read=bytes_read,
        seconds=time.perf_counter() - t0,
    )


def scan_tensors(
    base: ModelSource,
    models: Sequence[ModelSource],
    plans: Sequence[TensorPlan],
    *,
    chunk: int = DEFAULT_CHUNK,
    backend: str = "auto",
    progress: Progress | None = None,
    threads: int | None = None,
) -> tuple[dict[str, KinshipStats], KinshipStats, int]:
    """The streaming pass of :func:`scan` over the given tensors only (a shard of a :func:`plan`).

    Statistics per tensor are the same whatever subset a tensor is scanned in, so shards scanned
    apart (``kinmerge.scan.shards``) and added up tensor by tensor give the whole scan's numbers.

    Returns:
        ``(per_tensor, total, bytes_read)``: statistics per tensor name, their sum in ``plans``
        order, and the bytes read.

    Example:
        >>> # not run here: base and models are open sources, as in :func:`scan`'s example
        >>> plans, _, _ = plan(base, models)                                   # doctest: +SKIP
        >>> per_tensor, total, nbytes = scan_tensors(base, models, plans[:3])  # doctest: +SKIP
    """
    exact = ExactStats()
    bytes_read = stream(base, models, plans, [exact], chunk=chunk, backend=backend, progress=progress,
                        threads=threads)
    return exact.per_tensor, exact.total, bytes_read
