"""Sketches of a pool that holds LoRA adapters: each adapter densified one block of rows at a time.

The sketch is a CountSketch with a hashed sign and bucket for every *position*
(``kinmerge.sketch``): it is linear, but it has no product structure over rows and columns, so
``S(s·L·R)`` cannot be had from ``S(L)`` and ``S(R)``; every element of ``L·R`` must reach it.
What it allows is what is done here: the pass (``kinmerge.scan.stream``) hands out a chunk of
positions of a tensor, and each adapter that touches the tensor forms *that chunk* of its delta,
``s·L[rows]·R`` for the rows the chunk spans (float64), and projects it with the same kernel as a
full model's delta. ``B·A`` of a whole module is never formed: memory is a chunk (and two rows)
per adapter and worker plus the factors of the tensors in flight, whatever the module's size (a
tensor an adapter saves whole, ``modules_to_save``, is held whole while its chunks are in flight).

The same blocks give the adapters' exact statistics (``Σδ``, ``Σδ_iδ_j`` with each other and with
the full models of the pass), so a mixed batch is still one read of every file: the full models
go through the usual consumers (``ExactStats``, ``Sketches``) and the adapters through
:class:`AdapterTerms`. A ``modules_to_save`` tensor is taken against the base's values chunk by
chunk, as in ``kinmerge.scan.adapters``. An adapter's sketch equals its merged model's
(``merge_and_unload``) to float rounding (tests/test_lora.py, "the index").

Example:
    >>> from kinmerge.sources import open_models                                # doctest: +SKIP
    >>> with open_models(["base", "ad1", "full2"], adapters=True) as (b, *ms):    # doctest: +SKIP
    ...     res = sketch_pool(b, ms)
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from kinmerge import _sketch_kernels
from kinmerge._kernels import widen
from kinmerge.errors import NonFiniteError, SourceError
from kinmerge.kinship import KinshipStats
from kinmerge.lowrank import Factors
from kinmerge.scan.adapters import is_adapter, read_factors
from kinmerge.scan.align import _check_distinct, display_labels, plan
from kinmerge.scan.exact import ExactStats
from kinmerge.scan.sketches import SketchBuilder, Sketches, SketchResult, sketch_models
from kinmerge.scan.stream import Consumer, Pass, Piece, stream
from kinmerge.sketch import check_size
from kinmerge.sources import ModelSource
from kinmerge.sources.lora import AdapterModule, LoraSource

__all__ = ["AdapterTerms", "sketch_pool"]


def sketch_pool(base: ModelSource, models: Sequence[ModelSource], **options: Any) -> SketchResult:
    """``kinmerge.scan.sketches.sketch_models(base, models, **options)`` for any mix of full models
    and LoRA adapters (the same keyword options, one signature to keep: ``sketch_models``'s).

    Without adapters it is ``sketch_models`` itself. With adapters, the positions are the base's
    tensors (trimmed to the full models' common vocabulary rows, as ``sketch_models`` does); an
    adapter must fit the base (``LoraSource.check_base``).

    Raises:
        TypeError: an option ``sketch_models`` does not take.
        SourceError: the base is itself an adapter.
        MissingTensorError, ShapeMismatchError: an adapter or full model does not fit the base.
        NonFiniteError: a delta or a factor holds NaN/Inf.
        plus what ``sketch_models`` raises.
    """
    if unknown := sorted(set(options) - set(_OPTIONS)):
        raise TypeError(f"sketch_pool() got unexpected options {unknown}")
    if not any(is_adapter(m) for m in models):
        return sketch_models(base, models, **options)
    o = {**_OPTIONS, **options}
    size, seed, chunk, groups = o["size"], o["seed"], o["chunk"], o["groups"]
    if is_adapter(base):
        raise SourceError(f"{base.ref}: the base is a LoRA adapter; give the full model it was trained on as the base")
    if chunk < 1:
        raise ValueError("chunk must be a positive number of elements")
    check_size(size)
    t0 = time.perf_counter()
    labels = display_labels([base, *models])
    full_idx = [i for i, m in enumerate(models) if not is_adapter(m)]
    ad_idx = [i for i, m in enumerate(models) if is_adapter(m)]
    full = [models[i] for i in full_idx]
    allow_missing = o["allow_missing"]
    plans, notes, skipped = plan(base, full, allow_missing=allow_missing)
    _check_distinct([base, *models])
    for i in ad_idx:
        ad = models[i]
        assert isinstance(ad, LoraSource)
        lacking = ad.check_base(base, labels[1 + i], labels[0], allow_missing=allow_missing)
        if lacking:
            notes.append(f"skipped {len(lacking)} tensor(s) {labels[1 + i]} changes but the base lacks: "
                         + ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""))
            skipped = sorted({*skipped, *lacking})
    exact = ExactStats() if full else _Positions()
    sk = Sketches(len(full), size, seed, groups=groups, group_size=o["group_size"], base_weights=o["base_weights"])
    terms = AdapterTerms([models[i] for i in ad_idx], ad_idx, full_idx, sk)  # type: ignore[misc]
    bytes_read = stream(base, full, plans, [exact, sk, terms], chunk=chunk, backend=o["backend"],
                        progress=o["progress"], threads=o["threads"])
    per_tensor = terms.lift(exact, plans, labels[1:])
    total = KinshipStats.empty(len(models))
    for p in plans:
        total += per_tensor[p.name]
    whole = _merged(len(models), full_idx, ad_idx, sk.builders[0], terms.builders[0])
    group_sketches: list[list[Any]] = [[] for _ in models]
    for g in range(len(sk.labels)):
        stats = KinshipStats.empty(len(models))
        for name, gi in sk.group_of.items():
            if gi == g:
                stats += per_tensor[name]
        merged = _merged(len(models), full_idx, ad_idx, sk.gbuilders[0][g], terms.gbuilders[0][g])
        for i, s in enumerate(merged.sketches(stats)):
            group_sketches[i].append(s)
    return SketchResult(
        base=base.display_name, models=[m.display_name for m in models], sketches=whole.sketches(total),
        stats=total, notes=notes, skipped=skipped, bytes_read=bytes_read + terms.bytes_read,
        seconds=time.perf_counter() - t0, groups=sk.labels, group_sketches=group_sketches,
        base_groups=sk.base_groups(), per_tensor=per_tensor, labels=labels,
    )


# sketch_models's keyword options and their defaults: its signature is the one definition
_OPTIONS = {k: p.default for k, p in inspect.signature(sketch_models).parameters.items() if p.kind is p.KEYWORD_ONLY}


def _merged(n: int, full_idx: list[int], ad_idx: list[int], full: SketchBuilder, ads: SketchBuilder) -> SketchBuilder:
    """One builder with every model's row in pool order; positions and ones are the full pass's."""
    out = SketchBuilder(n, full.size, full.seed)
    out.values[full_idx] = full.values
    out.values[ad_idx] = ads.values
    out.ones[:] = full.ones
    out.n = full.n
    return out


class _Positions(ExactStats):
    """``ExactStats`` of a pass with no full model: the positions per tensor (the kernel needs a model)."""

    def consume(self, worker: int, piece: Piece, raws: list[np.ndarray], dtypes: list[str]) -> Any:
        return np.zeros(0), np.zeros((0, 0))


class AdapterTerms(Consumer):
    """The adapters' part of a pass: their sketch rows and their exact statistics, chunk by chunk.

    Runs beside ``ExactStats`` and ``Sketches`` (over the full models; ``sketches`` is that
    consumer, whose groups it shares). Per chunk of a tensor some adapter touches, each such
    adapter's delta is formed for the chunk alone (``s·L[rows]·R``, plus a saved whole tensor
    minus the base), projected into the adapter's rows, and multiplied with the other adapters'
    and the full models' deltas of the chunk.
    """

    fixed_schedule = True  # per-worker sketch rows, as Sketches

    def __init__(self, adapters: Sequence[LoraSource], ad_idx: list[int], full_idx: list[int],
                 sketches: Sketches) -> None:
        self.adapters, self.ad_idx, self.full_idx, self.sk = list(adapters), ad_idx, full_idx, sketches
        self.n = len(ad_idx) + len(full_idx)
        self.builders: list[SketchBuilder] = []
        self.gbuilders: list[list[SketchBuilder]] = []
        self.per_tensor: dict[str, KinshipStats] = {}
        self.bytes_read = 0
        self._factors: dict[tuple[str, int], Factors] = {}
        self._dense: dict[tuple[str, int], np.ndarray] = {}
        self._lock = threading.Lock()
        self._backend = "auto"
        self._touch: dict[str, list[tuple[int, AdapterModule]]] = {}

    def start(self, ps: Pass) -> None:
        sk, k = self.sk, len(self.adapters)
        self._backend = ps.backend
        planned = {p.name for p in ps.plans}
        for j, ad in enumerate(self.adapters):
            for name, mod in ad.modules.items():
                if name in planned:
                    self._touch.setdefault(name, []).append((j, mod))
        self.builders = [SketchBuilder(k, sk.size, sk.seed) for _ in range(ps.workers)]
        self.gbuilders = [[SketchBuilder(k, sk.group_size_used, sk.seed) for _ in sk.labels]
                          for _ in range(ps.workers)]

    def _lowrank(self, name: str, j: int, mod: AdapterModule, rows: int) -> Factors:
        """The module's factors, read once for the whole pass and dropped after its last chunk."""
        with self._lock:  # one read per module, whichever worker comes first
            f = self._factors.get((name, j))
            if f is None:
                ad = self.adapters[j]
                f = self._factors[(name, j)] = read_factors(ad, mod).rows(rows)
                self.bytes_read += ad.tensors[mod.a_key or ""].nbytes + ad.tensors[mod.b_key or ""].nbytes
            return f

    def _saved(self, name: str, j: int, key: str) -> np.ndarray:
        """A whole tensor the adapter saves (``modules_to_save``), float64, flat; kept like factors.

        Read whole, not through the pass: the pass reads every source at every planned tensor, and
        an adapter holds only a few. Memory: that one module, while its chunks are in flight.
        """
        with self._lock:
            v = self._dense.get((name, j))
            if v is None:
                ad = self.adapters[j]
                info = ad.tensors[key]
                v = self._dense[(name, j)] = widen(ad.read(key), info.dtype).reshape(-1)
                self.bytes_read += info.nbytes
            return v

    def consume(self, worker: int, piece: Piece, raws: list[np.ndarray], dtypes: list[str]) -> Any:
        touched = self._touch.get(piece.tensor.name)
        if not touched:
            return None  # a zero delta for every adapter: nothing to project or multiply
        p, lo, hi = piece.tensor, piece.start, piece.stop
        rows = p.shape[0] if p.shape else 1
        cols = p.numel // rows
        base = widen(raws[0], dtypes[0])
        block = np.zeros((len(touched), hi - lo))
        for k, (j, mod) in enumerate(touched):
            if mod.a_key is not None:
                f = self._lowrank(p.name, j, mod, rows)
                r0, r1 = lo // cols, (hi - 1) // cols + 1  # the rows this chunk spans, and no more
                dense = f.scale * (f.left[r0:r1] @ f.right)
                block[k] = dense.reshape(-1)[lo - r0 * cols : hi - r0 * cols]
            if mod.dense_key is not None:  # modules_to_save: the saved tensor against the base
                block[k] += self._saved(p.name, j, mod.dense_key)[lo:hi] - base
        zeros = np.zeros(hi - lo)
        key = self.builders[worker].key(p.name)
        g = self.sk.group_of.get(p.name) if self.sk.labels else None
        for k, (j, _) in enumerate(touched):
            _sketch_kernels.accumulate(self.builders[worker].values[j : j + 1], None, zeros, "F64", [block[k]], ["F64"],
                                       key, lo, backend=self._backend)
            if g is not None:
                _sketch_kernels.accumulate(self.gbuilders[worker][g].values[j : j + 1], None, zeros, "F64",
                                           [block[k]], ["F64"], key, lo, backend=self._backend)
        cross = None
        if self.full_idx:
            fulls = np.empty((len(raws) - 1, hi - lo))
            for m, (raw, dtype) in enumerate(zip(raws[1:], dtypes[1:], strict=True)):
                np.subtract(widen(raw, dtype), base, out=fulls[m])
            cross = block @ fulls.T
        return [j for j, _ in touched], block.sum(axis=1), block @ block.T, cross

    def reduce(self, piece: Piece, result: Any) -> None:
        name = piece.tensor.name
        if result is not None:
            owners, sums, gram, cross = result
            idx = [self.ad_idx[j] for j in owners]
            st = self.per_tensor.get(name)
            if st is None:
                st = self.per_tensor[name] = KinshipStats.empty(self.n)
            st.sums[idx] += sums
            st.gram[np.ix_(idx, idx)] += gram
            if cross is not None:
                st.gram[np.ix_(idx, self.full_idx)] += cross
                st.gram[np.ix_(self.full_idx, idx)] += cross.T
        if piece.last:
            with self._lock:
                for cache in (self._factors, self._dense):
                    for key in [k for k in cache if k[0] == name]:
                        del cache[key]

    def finish(self) -> None:
        for b in self.builders[1:]:
            self.builders[0] += b
        for gb in self.gbuilders[1:]:
            for g, b in enumerate(gb):
                self.gbuilders[0][g] += b

    def lift(self, exact: ExactStats, plans: Sequence[Any], labels: Sequence[str]) -> dict[str, KinshipStats]:
        """Per tensor, the statistics of every model of the pool: the full models' from ``exact``,
        the adapters' (and the cross terms) from this consumer."""
        out: dict[str, KinshipStats] = {}
        fi = self.full_idx
        for p in plans:
            st = self.per_tensor.get(p.name) or KinshipStats.empty(self.n)
            sub = exact.per_tensor[p.name]
            st.n = sub.n
            st.sums[fi] = sub.sums
            st.gram[np.ix_(fi, fi)] = sub.gram
            bad = [labels[i] for i in self.ad_idx if not (np.isfinite(st.sums[i]) and np.isfinite(st.gram[i, i]))]
            if bad:
                raise NonFiniteError(f"{bad[0]}: the delta of tensor '{p.name}' contains NaN or Inf; the adapter is "
                                     "damaged — re-save or re-download it")
            out[p.name] = st
        return out
