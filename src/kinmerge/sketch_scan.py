"""Sketch models in one streaming pass: every model's delta sketch, each file read once.

``sketch_models`` checks the models against the base with ``scan.plan`` (same tensors, same
shapes, the common rows of vocabulary tensors), then reads every tensor chunk by chunk like the
exact scan, and hands each chunk to a ``SketchBuilder``: the sketch kernel projects it, and the
kinship kernel gives its exact Σδ, Σδ² (and the Gram of the models in this pass, for free).

**Layer groups** (``groups=layer_group``): besides the whole-delta sketch, each model gets one
smaller sketch per group of tensors (``layer 3/attn``, ``layer 3/mlp``, ``layer 3/other``, and
every tensor outside the numbered layers on its own) with the group's exact moments. Why these
groups: a merge recipe with a layer gradient (the paper's SLERP) uses one weight per group, so
a merge is a linear combination of its parents *per group* (``kinmerge.index.family_tree``),
and per-layer kinship can be estimated without a scan. Their total size is about the
whole-delta sketch's (``group_size_for``).

``SketchBuilder.add_chunk`` is the per-chunk entry point for the exact scan's worker loop:
raw chunk values + dtypes + the base's raw values, like ``_kernels.accumulate``. A scan that
already has the exact statistics calls ``add_chunk`` for the projection only and
``sketches(stats)`` at the end.

Workers take chunks round-robin (worker w takes chunks w, w + W, ...) and the builders are added
in worker order, so a result is the same bits for a given thread count. The exact statistics are
added chunk by chunk in file order, exactly like ``scan.scan``: they are bit-identical to it.
Memory: per worker, one chunk per model plus N + 1 sketch rows (1 MB each at the default size).

Example:
    >>> from kinmerge.sketch import estimate
    >>> from kinmerge.sources import open_models
    >>> with open_models(["zoo:base", "zoo:add", "zoo:sort"]) as (base, *models):
    ...     result = sketch_models(base, models)
    >>> e = estimate(*result.sketches, "pcc")   # the exact PCC is -0.0098
    >>> round(e.value, 4), round(e.bound, 4), e.confidence
    (-0.0097, 0.0109, 0.99)
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinmerge import _kernels, _sketch_kernels
from kinmerge.kinship import KinshipStats
from kinmerge.scan import (
    DEFAULT_CHUNK,
    Progress,
    TensorPlan,
    _check_finite,
    _reader,
    layer_of,
    n_threads,
    plan,
)
from kinmerge.sketch import DEFAULT_SEED, DEFAULT_SIZE, MIN_LOG2, Sketch, check_size, tensor_key
from kinmerge.sources import ModelSource, ReadBuffer


class SketchBuilder:
    """The projections of N models' deltas over part of a pass (one worker's chunks).

    Attributes:
        values: (N, size) float64 sketch rows.
        ones: (size,) int32 sketch of ones over the positions added so far.
        n: positions added.
    """

    def __init__(self, n_models: int, size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED):
        check_size(size)
        self.size, self.seed = size, seed
        self.values = np.zeros((n_models, size))
        self.ones = np.zeros(size, dtype=np.int32)
        self.n = 0
        self._keys: dict[str, int] = {}

    def key(self, tensor: str) -> int:
        k = self._keys.get(tensor)
        if k is None:
            k = self._keys[tensor] = tensor_key(self.seed, tensor)
        return k

    def add_chunk(self, tensor: str, start: int, base: np.ndarray, base_dtype: str, models: list[np.ndarray],
                  model_dtypes: list[str], *, backend: str = "auto") -> None:
        """Project positions ``[start, start + len(base))`` of ``tensor``: raw values as read."""
        _sketch_kernels.accumulate(self.values, self.ones, base, base_dtype, models, model_dtypes, self.key(tensor),
                                   start, backend=backend)
        self.n += base.shape[0]

    def __iadd__(self, other: SketchBuilder) -> SketchBuilder:
        if (self.size, self.seed, self.values.shape) != (other.size, other.seed, other.values.shape):
            raise ValueError("builders of different sizes, seeds or model counts cannot be added")
        self.values += other.values
        self.ones += other.ones
        self.n += other.n
        return self

    def sketches(self, stats: KinshipStats) -> list[Sketch]:
        """One ``Sketch`` per model, with the exact moments of ``stats`` (same positions)."""
        if stats.n != self.n:
            raise ValueError(f"statistics cover {stats.n} positions but the sketches {self.n}")
        ones = self.ones.astype(np.float64)
        return [Sketch(self.seed, self.size, stats.n, float(stats.sums[i]), float(stats.gram[i, i]),
                       self.values[i].copy(), ones.copy()) for i in range(self.values.shape[0])]


@dataclass
class SketchResult:
    """Sketches of a pool of models against one base, and the exact statistics of the same pass."""

    base: str
    models: list[str]
    sketches: list[Sketch]
    stats: KinshipStats
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0
    groups: list[str] = field(default_factory=list)
    group_sketches: list[list[Sketch]] = field(default_factory=list)  # per model, one per group
    base_groups: np.ndarray | None = None  # (groups, group_size): the base's own weights, sketched


def layer_group(tensor: str) -> str:
    """The layer group of a tensor: where a layer-gradient merge recipe uses one weight.

    >>> layer_group("model.layers.3.self_attn.q_proj.weight"), layer_group("model.layers.3.mlp.up_proj.weight")
    ('layer 3/attn', 'layer 3/mlp')
    >>> layer_group("model.layers.3.input_layernorm.weight"), layer_group("lm_head.weight")
    ('layer 3/other', 'lm_head')
    """
    label = layer_of(tensor)
    if not label.startswith("layer "):
        return label
    low = tensor.lower()
    kind = "attn" if "attn" in low or "attention" in low else \
        "mlp" if "mlp" in low or "feed_forward" in low else "other"
    return f"{label}/{kind}"


def group_size_for(n_groups: int, size: int = DEFAULT_SIZE) -> int:
    """Buckets per group sketch: the groups together about as large as one whole-delta sketch.

    >>> group_size_for(15), group_size_for(99)
    (8192, 1024)
    """
    per = size >> max(0, (n_groups - 1).bit_length())
    return max(per, 1 << MIN_LOG2)


def sketch_models(
    base: ModelSource,
    models: Sequence[ModelSource],
    *,
    size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED,
    chunk: int = DEFAULT_CHUNK,
    allow_missing: bool = False,
    backend: str = "auto",
    threads: int | None = None,
    progress: Progress | None = None,
    groups: Callable[[str], str] | None = None,
    group_size: int | None = None,
    base_weights: bool = False,
) -> SketchResult:
    """Sketch ``models`` against ``base`` in one pass over every file.

    Positions follow ``scan.plan``: with vocabularies of different sizes, the rows common to
    all the models given are sketched (so sketch models one at a time against the base, or all
    at once, to get comparable sketches — ``Sketch.coverage_id`` tells).

    Args:
        size, seed: the projection (every model of a family: the same).
        chunk, allow_missing, threads, progress: as for ``scan.scan``.
        backend: kernel backend for both kernels ("auto", "c", "numpy").
        groups: tensor name -> group label (e.g. ``layer_group``): also sketch every group
            apart, ``group_size`` buckets each (default ``group_size_for``).
        base_weights: also sketch the base's own weights per group (``base_groups``; the
            SLERP curvature term of ``kinmerge.index.family_tree``).

    Raises:
        NonFiniteError: a tensor holds NaN/Inf (names the model and tensor).
        plus everything ``scan.plan`` raises, and read errors.
    """
    if chunk < 1:
        raise ValueError("chunk must be a positive number of elements")
    check_size(size)
    t0 = time.perf_counter()
    plans, notes, skipped = plan(base, models, allow_missing=allow_missing)
    n = len(models)
    sources = [base, *models]
    readers = [_reader(src) for src in sources]
    dtypes = {p.name: [src.tensors[p.name].dtype for src in sources] for p in plans}
    work = [(p, lo, min(p.numel, lo + chunk)) for p in plans for lo in range(0, p.numel, chunk)]
    n_workers = max(1, min(threads or n_threads(), len(work) or 1))
    builders = [SketchBuilder(n, size, seed) for _ in range(n_workers)]
    labels = list(dict.fromkeys(groups(p.name) for p in plans)) if groups is not None else []
    group_of = {p.name: labels.index(groups(p.name)) for p in plans} if groups is not None else {}
    gsize = group_size or group_size_for(len(labels), size) if labels else 0
    gbuilders = [[SketchBuilder(n, gsize, seed) for _ in labels] for _ in range(n_workers)]
    bbuilders = [[SketchBuilder(1, gsize, seed) for _ in labels] for _ in range(n_workers if base_weights else 0)]
    chunk_stats: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(work)
    done: queue.SimpleQueue[tuple[int | None, BaseException | None]] = queue.SimpleQueue()
    stop = threading.Event()

    def worker(w: int) -> None:
        buffers = [ReadBuffer() for _ in sources]
        try:
            for k in range(w, len(work), n_workers):
                if stop.is_set():
                    return
                p, lo, hi = work[k]
                dts = dtypes[p.name]
                raws = [read(p.name, lo, hi, buf) for read, buf in zip(readers, buffers, strict=True)]
                chunk_stats[k] = _kernels.accumulate(raws[0], dts[0], raws[1:], dts[1:], backend=backend)
                builders[w].add_chunk(p.name, lo, raws[0], dts[0], raws[1:], dts[1:], backend=backend)
                if labels:
                    g = group_of[p.name]
                    gbuilders[w][g].add_chunk(p.name, lo, raws[0], dts[0], raws[1:], dts[1:], backend=backend)
                    if base_weights:  # the base against zeros: θ_base itself
                        bbuilders[w][g].add_chunk(p.name, lo, np.zeros(hi - lo, np.float32), "F32", [raws[0]],
                                                  [dts[0]], backend=backend)
                done.put((sum(r.nbytes for r in raws), None))
        except BaseException as exc:  # handed to the main thread
            done.put((0, exc))
        done.put((None, None))

    pool = [threading.Thread(target=worker, args=(w,), name=f"kinmerge-sketch-{w}", daemon=True)
            for w in range(n_workers)]
    for t in pool:
        t.start()
    bytes_read, running = 0, n_workers
    try:
        while running:
            nbytes, exc = done.get()
            if exc is not None:
                raise exc
            if nbytes is None:
                running -= 1
                continue
            bytes_read += nbytes
            if progress is not None:
                progress(nbytes)
    finally:
        stop.set()
        for t in pool:
            t.join()
    total, per_tensor = _reduce_in_order(work, chunk_stats, n, sources, readers, chunk)
    for b in builders[1:]:
        builders[0] += b
    group_sketches: list[list[Sketch]] = [[] for _ in models]
    for g in range(len(labels)):
        for gb in gbuilders[1:]:
            gbuilders[0][g] += gb[g]
        stats = KinshipStats.empty(n)
        for p in plans:
            if group_of[p.name] == g:
                stats += per_tensor[p.name]
        for i, sk in enumerate(gbuilders[0][g].sketches(stats)):
            group_sketches[i].append(sk)
        for bb in bbuilders[1:]:
            bbuilders[0][g] += bb[g]
    base_groups = np.stack([b.values[0] for b in bbuilders[0]]) if bbuilders and labels else None
    return SketchResult(
        base=base.display_name,
        models=[m.display_name for m in models],
        sketches=builders[0].sketches(total),
        stats=total,
        notes=notes,
        skipped=skipped,
        bytes_read=bytes_read,
        seconds=time.perf_counter() - t0,
        groups=labels,
        group_sketches=group_sketches,
        base_groups=base_groups,
    )


def _reduce_in_order(work: list[tuple[TensorPlan, int, int]], chunk_stats: list[tuple[np.ndarray, np.ndarray] | None],
                     n: int, sources: list[ModelSource], readers: list[Any], chunk: int
                     ) -> tuple[KinshipStats, dict[str, KinshipStats]]:
    """Per-chunk statistics added per tensor, then tensors in file order: ``scan.scan``'s sums."""
    total = KinshipStats.empty(n)
    per_tensor: dict[str, KinshipStats] = {}
    st = KinshipStats.empty(n)
    for (p, lo, hi), got in zip(work, chunk_stats, strict=True):
        assert got is not None  # every chunk was read before the reduction
        sums, gram = got
        st.n += hi - lo
        st.sums += sums
        st.gram += gram
        if hi == p.numel:
            _check_finite(p, st, sources, readers, chunk)
            total += st
            per_tensor[p.name] = st
            st = KinshipStats.empty(n)
    return total, per_tensor
