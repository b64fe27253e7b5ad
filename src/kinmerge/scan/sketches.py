"""Sketches as a consumer of the one pass: every model's delta sketch, each file read once.

``sketch_models`` checks the models against the base with ``plan`` (same tensors, same
shapes, the common rows of vocabulary tensors), then runs the one pass (``kinmerge.scan.stream``)
with two consumers: ``Sketches`` hands each chunk to a ``SketchBuilder`` (the sketch kernel
projects it) and ``ExactStats`` gives its exact Σδ, Σδ² and the Gram of the models in this pass,
for free: ``SketchResult.exact()`` is the exact scan's result, from the same read.

**Layer groups** (``groups=layer_group``): besides the whole-delta sketch, each model gets one
smaller sketch per group of tensors (``layer 3/attn``, ``layer 3/mlp``, ``layer 3/other``, and
every tensor outside the numbered layers on its own) with the group's exact moments. Why these
groups: a merge recipe with a layer gradient (the paper's SLERP) uses one weight per group, so
a merge is a linear combination of its parents *per group* (``kinmerge.index.family_tree``),
and per-layer kinship can be estimated without a scan. Their total size is about the
whole-delta sketch's (``group_size_for``).

``SketchBuilder.add_chunk`` is the per-chunk entry point: raw chunk values + dtypes + the base's
raw values, like ``_kernels.accumulate``; ``sketches(stats)`` adds the exact moments at the end.

Each worker projects into its own builders, so workers take chunks round-robin (worker w takes
chunks w, w + W, ...: ``fixed_schedule``) and the builders are added in worker order: a result is
the same bits for a given thread count. The exact statistics are those of ``scan.scan``, bit for bit.
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

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinmerge import _sketch_kernels
from kinmerge.kinship import KinshipStats
from kinmerge.scan.align import display_labels, plan
from kinmerge.scan.exact import ExactStats, ScanResult, layer_of
from kinmerge.scan.stream import DEFAULT_CHUNK, Consumer, Pass, Piece, Progress, stream
from kinmerge.sketch import DEFAULT_SEED, DEFAULT_SIZE, MIN_LOG2, Sketch, check_size, tensor_key
from kinmerge.sources import ModelSource


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
    per_tensor: dict[str, KinshipStats] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # display_labels of base and models (distinct)

    def exact(self) -> ScanResult:
        """The exact kinship of the same pass: ``scan.scan``'s result, bit for bit, with no second read."""
        labels = self.labels or [self.base, *self.models]
        return ScanResult(base=labels[0], models=labels[1:], stats=self.stats, per_tensor=self.per_tensor,
                          notes=list(self.notes), skipped=list(self.skipped), bytes_read=self.bytes_read,
                          seconds=self.seconds)


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
    exact = ExactStats()
    sk = Sketches(len(models), size, seed, groups=groups, group_size=group_size, base_weights=base_weights)
    bytes_read = stream(base, models, plans, [exact, sk], chunk=chunk, backend=backend, progress=progress,
                        threads=threads)
    whole, group_sketches = sk.result(exact)
    return SketchResult(
        base=base.display_name,
        models=[m.display_name for m in models],
        sketches=whole,
        stats=exact.total,
        notes=notes,
        skipped=skipped,
        bytes_read=bytes_read,
        seconds=time.perf_counter() - t0,
        groups=sk.labels,
        group_sketches=group_sketches,
        base_groups=sk.base_groups(),
        per_tensor=exact.per_tensor,
        labels=display_labels([base, *models]),
    )


class Sketches(Consumer):
    """The sketch rows of the pass: the whole delta's, and each layer group's (``groups``).

    Every worker projects into builders of its own (``fixed_schedule``); ``finish`` adds them in
    worker order. ``result(exact)`` joins the rows with the exact moments of an ``ExactStats``
    that shared the pass.
    """

    fixed_schedule = True

    def __init__(self, n_models: int, size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED, *,
                 groups: Callable[[str], str] | None = None, group_size: int | None = None,
                 base_weights: bool = False) -> None:
        check_size(size)
        self.n, self.size, self.seed = n_models, size, seed
        self.groups, self.group_size, self.base_weights = groups, group_size, base_weights
        self.labels: list[str] = []
        self._group_of: dict[str, int] = {}
        self._gsize = 0
        self._backend = "auto"
        self.builders: list[SketchBuilder] = []
        self.gbuilders: list[list[SketchBuilder]] = []
        self.bbuilders: list[list[SketchBuilder]] = []

    @property
    def group_of(self) -> dict[str, int]:
        """Planned tensor -> index of its group in ``labels`` (known after ``start``)."""
        return self._group_of

    @property
    def group_size_used(self) -> int:
        """Buckets per group sketch in this pass (known after ``start``; 0 without groups)."""
        return self._gsize

    def start(self, ps: Pass) -> None:
        groups, w = self.groups, ps.workers
        self._backend = ps.backend
        self.labels = list(dict.fromkeys(groups(p.name) for p in ps.plans)) if groups is not None else []
        self._group_of = {p.name: self.labels.index(groups(p.name)) for p in ps.plans} if groups is not None else {}
        self._gsize = self.group_size or group_size_for(len(self.labels), self.size) if self.labels else 0
        self.builders = [SketchBuilder(self.n, self.size, self.seed) for _ in range(w)]
        self.gbuilders = [[SketchBuilder(self.n, self._gsize, self.seed) for _ in self.labels] for _ in range(w)]
        self.bbuilders = [[SketchBuilder(1, self._gsize, self.seed) for _ in self.labels]
                          for _ in range(w if self.base_weights else 0)]

    def consume(self, worker: int, piece: Piece, raws: list[np.ndarray], dtypes: list[str]) -> Any:
        name, lo, backend = piece.tensor.name, piece.start, self._backend
        self.builders[worker].add_chunk(name, lo, raws[0], dtypes[0], raws[1:], dtypes[1:], backend=backend)
        if self.labels:
            g = self._group_of[name]
            self.gbuilders[worker][g].add_chunk(name, lo, raws[0], dtypes[0], raws[1:], dtypes[1:], backend=backend)
            if self.base_weights:  # the base against zeros: θ_base itself
                self.bbuilders[worker][g].add_chunk(name, lo, np.zeros(piece.stop - lo, np.float32), "F32",
                                                    [raws[0]], [dtypes[0]], backend=backend)
        return None

    def finish(self) -> None:
        for b in self.builders[1:]:
            self.builders[0] += b
        for g in range(len(self.labels)):
            for gb in self.gbuilders[1:]:
                self.gbuilders[0][g] += gb[g]
            for bb in self.bbuilders[1:]:
                self.bbuilders[0][g] += bb[g]

    def result(self, exact: ExactStats) -> tuple[list[Sketch], list[list[Sketch]]]:
        """(one whole-delta sketch per model, per model one sketch per group), with exact moments."""
        group_sketches: list[list[Sketch]] = [[] for _ in range(self.n)]
        for g in range(len(self.labels)):
            stats = KinshipStats.empty(self.n)
            for p, gi in self._group_of.items():
                if gi == g:
                    stats += exact.per_tensor[p]
            for i, sk in enumerate(self.gbuilders[0][g].sketches(stats)):
                group_sketches[i].append(sk)
        return self.builders[0].sketches(exact.total), group_sketches

    def base_groups(self) -> np.ndarray | None:
        """(groups, group_size): the base's own weights sketched per group (``base_weights``)."""
        if not (self.bbuilders and self.labels):
            return None
        return np.stack([b.values[0] for b in self.bbuilders[0]])
