"""Kinship of a pool that holds LoRA adapters, from their factors: the adapters are never densified.

Each model's delta of one base tensor is a sum of *terms*: a dense term (a full fine-tune's
tensor, or a tensor an adapter saves whole, minus the base's) and/or a low-rank term
``s·L·R`` (:class:`kinmerge.lowrank.Factors`); a tensor an adapter does not touch has no term, a
zero delta. The statistics ``n``, ``Σδ_i``, ``Σδ_iδ_j`` of :class:`~kinmerge.kinship.KinshipStats`
are bilinear in the terms, so per tensor

* low-rank × low-rank pairs come from r × r products (no read of the base at all);
* a tensor no adapter touches goes to the one pass (``kinmerge.scan.scan_tensors``) with the full
  models alone (threads, the fused kernel); the adapters' deltas there are zero;
* elsewhere dense terms go through the same pass (``kinmerge.scan.stream``) in blocks of whole rows:
  base and models read once, deltas in float64, dense × dense from the block's Gram matrix, dense ×
  low-rank as ``s·Σ (D Rᵀ) ∘ L`` per block.

The statistics are those of the densified pool, to float64 rounding (tests check 1e-9), and add up
per tensor like ``kinmerge.scan``'s, so ``--per-layer`` and the JSON views are unchanged. Every
adapter tensor and every dense tensor is read once, whatever N. A pool of adapters alone reads
only the adapters' files (and the headers of the base).

Example:
    >>> from kinmerge.sources import open_models                              # doctest: +SKIP
    >>> with open_models(["base", "ad1", "ad2"], adapters=True) as (b, *ms):  # doctest: +SKIP
    ...     print(scan_adapters(b, ms).pair().pcc)
    0.0123
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinmerge import _kernels
from kinmerge._kernels import widen
from kinmerge.errors import ConfigError, NonFiniteError, SourceError
from kinmerge.kinship import KinshipStats
from kinmerge.lowrank import Factors, delta_sum, dense_inner, gram
from kinmerge.scan.align import TensorPlan, _check_distinct, display_labels, plan
from kinmerge.scan.exact import ScanResult, scan_tensors
from kinmerge.scan.stream import DEFAULT_CHUNK, Consumer, Piece, Progress, stream
from kinmerge.sources import ModelSource
from kinmerge.sources.lora import AdapterModule, LoraSource

__all__ = ["adapters_base", "is_adapter", "planned_bytes", "read_factors", "scan_adapters"]


def is_adapter(src: ModelSource) -> bool:
    """Whether ``src`` is a LoRA adapter (read by :func:`scan_adapters`, not ``kinmerge.scan``)."""
    return isinstance(src, LoraSource)


@dataclass(frozen=True)
class _Dense:
    """A dense term: tensor ``key`` of ``src`` minus the base's tensor, owned by model ``owner``."""

    owner: int
    src: ModelSource
    key: str


def read_factors(src: LoraSource, mod: AdapterModule) -> Factors:
    """The module's factors in the base tensor's layout, float64 (``L·R`` has the base's shape).

    Raises:
        NonFiniteError: a factor holds NaN or Inf (the adapter file is damaged).
    """
    assert mod.a_key is not None and mod.b_key is not None
    a_info, b_info = src.tensors[mod.a_key], src.tensors[mod.b_key]
    a = widen(src.read(mod.a_key), a_info.dtype).reshape(a_info.shape)  # r x in
    b = widen(src.read(mod.b_key), b_info.dtype).reshape(b_info.shape)  # out x r
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise NonFiniteError(f"{src.display_name}: the factors of '{mod.tensor}' contain NaN or Inf; the adapter "
                             "is damaged — re-save or re-download it")
    if mod.transposed:  # the base stores (B·A)ᵀ = Aᵀ·Bᵀ
        return Factors(np.ascontiguousarray(a.T), np.ascontiguousarray(b.T), mod.scale)
    return Factors(b, a, mod.scale)


def planned_bytes(base: ModelSource, models: Sequence[ModelSource]) -> int:
    """About what :func:`scan_adapters` reads (for a progress bar): adapter files whole, dense models
    whole, and the base where a dense term needs it."""
    total = sum(info.nbytes for m in models for info in m.tensors.values())
    if any(not is_adapter(m) or any(mod.dense_key for mod in m.modules.values())  # type: ignore[attr-defined]
           for m in models):
        total += sum(info.nbytes for info in base.tensors.values())
    return total


def scan_adapters(
    base: ModelSource,
    models: Sequence[ModelSource],
    *,
    chunk: int = DEFAULT_CHUNK,
    allow_missing: bool = False,
    progress: Progress | None = None,
) -> ScanResult:
    """Kinship statistics of ``models`` (adapters and full models, in any mix) against ``base``.

    Args:
        chunk: elements per dense read (rounded to whole rows); memory is about
            ``chunk × (dense terms + 1) × 8`` bytes plus the factors of one tensor.
        allow_missing: skip tensors absent from some full model (as ``kinmerge.scan``) and adapter
            modules the base lacks (reported in ``notes`` and ``skipped``).
        progress: called with the bytes just read.

    Raises:
        SourceError: the base is itself an adapter.
        MissingTensorError, ShapeMismatchError: an adapter (or full model) does not fit the base.
        NonFiniteError: a delta or a factor holds NaN/Inf.
        plus what ``kinmerge.scan.plan`` raises for the full models.
    """
    if is_adapter(base):
        raise SourceError(f"{base.ref}: the base is a LoRA adapter; give the full model it was trained on as the base")
    t0 = time.perf_counter()
    labels = display_labels([base, *models])
    full = [m for m in models if not is_adapter(m)]
    plans, notes, skipped = plan(base, full, allow_missing=allow_missing)
    _check_distinct([base, *models])
    adapters = [(i, m) for i, m in enumerate(models) if isinstance(m, LoraSource)]
    for i, ad in adapters:
        lacking = ad.check_base(base, labels[1 + i], labels[0], allow_missing=allow_missing)
        if lacking:
            notes.append(f"skipped {len(lacking)} tensor(s) {labels[1 + i]} changes but the base lacks: "
                         + ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""))
            skipped = sorted({*skipped, *lacking})
    n = len(models)
    total = KinshipStats.empty(n)
    per_tensor: dict[str, KinshipStats] = {}
    bytes_read = 0
    # Tensors no adapter touches are the full models' alone: the threaded pass with the fused kernel.
    plain = [p for p in plans if full and not any(p.name in ad.modules for _, ad in adapters)]
    if plain:
        idx = [i for i, m in enumerate(models) if not is_adapter(m)]
        part, _, nbytes = scan_tensors(base, full, plain, chunk=chunk, progress=progress)
        bytes_read += nbytes
        for name, sub in part.items():
            per_tensor[name] = lifted = KinshipStats.empty(n)
            lifted.n = sub.n
            lifted.sums[idx] = sub.sums
            lifted.gram[np.ix_(idx, idx)] = sub.gram
    for p in plans:
        if p.name in per_tensor:
            total += per_tensor[p.name]
            continue
        dense = [_Dense(i, m, p.name) for i, m in enumerate(models) if not is_adapter(m)]
        lowrank: list[tuple[int, Factors]] = []
        for i, ad in adapters:
            mod = ad.modules.get(p.name)
            if mod is None:
                continue  # untouched: a zero delta
            if mod.dense_key is not None:
                dense.append(_Dense(i, ad, mod.dense_key))
            if mod.a_key is not None:
                lowrank.append((i, read_factors(ad, mod).rows(p.shape[0])))  # trimmed vocabulary: common rows
                nbytes = ad.tensors[mod.a_key].nbytes + ad.tensors[mod.b_key or ""].nbytes
                bytes_read += nbytes
                if progress is not None:
                    progress(nbytes)
        st = KinshipStats.empty(n)
        st.n = p.numel
        for i, f in lowrank:
            st.sums[i] += delta_sum(f)
        if lowrank:  # a model has at most one low-rank term per tensor: the owners are distinct
            owners = [i for i, _ in lowrank]
            st.gram[np.ix_(owners, owners)] += gram([f for _, f in lowrank])
        if dense:
            bytes_read += _stream_dense(base, p, dense, lowrank, st, chunk, progress)
        _check_finite(st, p, labels[1:])
        per_tensor[p.name] = st
        total += st
    return ScanResult(base=labels[0], models=labels[1:], stats=total, per_tensor=per_tensor, notes=notes,
                      skipped=skipped, bytes_read=bytes_read, seconds=time.perf_counter() - t0)


def _add_sym(st: KinshipStats, i: int, j: int, v: float) -> None:
    # Σδ_iδ_j gains v once per ordered pair; i == j (two terms of one model) gains the cross term 2v.
    st.gram[i, j] += v
    st.gram[j, i] += v


def _stream_dense(base: ModelSource, p: TensorPlan, dense: list[_Dense], lowrank: list[tuple[int, Factors]],
                  st: KinshipStats, chunk: int, progress: Progress | None) -> int:
    """Add the dense terms of tensor ``p`` (and their products with the low-rank terms) to ``st``.

    One pass of ``kinmerge.scan.stream`` over the base and the dense terms' sources, in blocks of
    whole rows (``dense_inner`` works on rows), each term read under its own name.
    """
    rows = p.shape[0] if p.shape else 1
    cols = p.numel // rows if rows else 0
    if cols == 0:
        return 0
    step = max(1, chunk // cols)
    keys = [{}, *[{p.name: d.key} for d in dense]]
    return stream(base, [d.src for d in dense], [p], [_DenseTerms(st, [d.owner for d in dense], lowrank, cols)],
                  chunk=step * cols, progress=progress, keys=keys)


class _DenseTerms(Consumer):
    """The dense terms' sums, Gram and products with the low-rank terms, block by block, into ``st``."""

    def __init__(self, st: KinshipStats, owners: list[int], lowrank: list[tuple[int, Factors]], cols: int) -> None:
        self.st, self.owners, self.lowrank, self.cols = st, owners, lowrank, cols  # owners: distinct

    def consume(self, worker: int, piece: Piece, raws: list[np.ndarray], dtypes: list[str]) -> Any:
        if not self.lowrank:  # dense terms alone: the fused kernel of the exact scan, on the raw values
            sums, gram_ = _kernels.accumulate(raws[0], dtypes[0], raws[1:], dtypes[1:])
            return sums, gram_, []
        # The deltas in float64, and every product from them: one rounding for Σδ_d² and
        # Σδ_d·ΔW, so an adapter and its own merge come out at ED 0, not at √(rounding).
        base_vals = _exact_float(raws[0], dtypes[0])
        block = np.empty((len(raws) - 1, piece.stop - piece.start))
        for k, (raw, dtype) in enumerate(zip(raws[1:], dtypes[1:], strict=True)):
            # cast inside the ufunc: exact, and no float64 copies of either operand
            np.subtract(_exact_float(raw, dtype), base_vals, out=block[k], dtype=np.float64)
        lo, n_rows = piece.start // self.cols, (piece.stop - piece.start) // self.cols
        inner = [dense_inner(block[k].reshape(n_rows, self.cols), f, lo)
                 for k in range(len(self.owners)) for _, f in self.lowrank]
        return block.sum(axis=1), block @ block.T, inner

    def reduce(self, piece: Piece, result: Any) -> None:
        sums, gram_, inner = result
        st, owners = self.st, self.owners
        st.sums[owners] += sums
        st.gram[np.ix_(owners, owners)] += gram_
        pairs = [(i, j) for i in owners for j, _ in self.lowrank]
        for (i, j), v in zip(pairs, inner, strict=True):
            _add_sym(st, i, j, v)


def _exact_float(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Raw values as a float array holding them exactly: BF16 bits become float32, others stay."""
    if dtype != "BF16":
        return raw
    wide = raw.astype(np.uint32)
    wide <<= 16
    return wide.view(np.float32)


def _check_finite(st: KinshipStats, p: TensorPlan, labels: Sequence[str]) -> None:
    bad = [labels[i] for i in range(st.n_models) if not (np.isfinite(st.sums[i]) and np.isfinite(st.gram[i, i]))]
    if bad:
        raise NonFiniteError(f"{bad[0]}: the delta of tensor '{p.name}' contains NaN or Inf; the checkpoint is "
                             "damaged — re-download or re-export it")



def adapters_base(adapters: Sequence[LoraSource]) -> str:
    """The base the adapters name (``base_model_name_or_path``), when no base is given.

    Raises:
        ConfigError: none names a base, or they name different ones (the message lists them).
    """
    named = {ad.display_name: ad.base_ref for ad in adapters}
    bases = sorted({b for b in named.values() if b is not None})
    if not bases:
        raise ConfigError("no base given and no adapter names one (base_model_name_or_path is empty): pass --base")
    if len(bases) > 1:
        which = ", ".join(f"{k}: {v}" for k, v in named.items() if v is not None)
        raise ConfigError(f"the adapters name different bases ({which}): pass the shared one with --base")
    return bases[0]
