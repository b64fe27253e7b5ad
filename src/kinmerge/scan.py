"""One streaming pass over a base and N models: the kinship statistics of every pair at once.

``scan`` checks that the models line up with the base (same tensors, same shapes, or a
vocabulary that only differs in its number of rows), then reads every tensor once, chunk by
chunk, in the order the base stores them, and feeds the raw chunks to the fused kernel.

The pass runs on W worker threads (W = usable cores, or ``KINMERGE_THREADS``). Each takes whole
chunks from a shared counter, reads its chunk of every input into its own buffers with
positional reads, and reduces it with the kernel; both release the GIL, so workers overlap
reading and reducing without a separate reader thread or a join per chunk. The main thread adds
the chunks' statistics up per tensor *in chunk order*, so results are bit-identical from run to
run whatever the threads' timing. Memory is W chunks per model (plus a bounded window of small
per-chunk results), whatever the model size. The result keeps the statistics per tensor, so
breakdowns per tensor or per layer cost nothing extra, while the headline numbers are always the
global ones (the paper computes kinship over the whole flattened delta, never as an average of
per-layer values).
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kinmerge import _kernels
from kinmerge.errors import (
    ConfigError,
    DuplicateModelError,
    MissingTensorError,
    NonFiniteError,
    ShapeMismatchError,
    UnsupportedDtypeError,
)
from kinmerge.kinship import METRICS, KinshipStats, check_metric
from kinmerge.sources import RAW_DTYPES, ModelSource, ReadBuffer, is_vocab_tensor, naming_mismatch

DEFAULT_CHUNK = 1 << 20  # elements per read: 2 MB of bf16 per model and worker (measured: docs/benchmarks.md)
_WINDOW = 64  # chunks a worker may run ahead of the in-order reduction (bounds pending results)
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")

Progress = Callable[[int], None]  # called with the number of bytes just read
# A reduced chunk handed from a worker to the main thread: (index, sums, gram, bytes, error).
_Done = tuple[int, "np.ndarray | None", "np.ndarray | None", int, "BaseException | None"]


@dataclass(frozen=True)
class TensorPlan:
    """One tensor to compare: how many leading elements (fewer when vocabularies differ)."""

    name: str
    numel: int
    shape: tuple[int, ...]


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


def plan(base: ModelSource, models: Sequence[ModelSource], *,
         allow_missing: bool = False) -> tuple[list[TensorPlan], list[str], list[str]]:
    """Check that ``models`` line up with ``base``; return (tensors to compare, notes, skipped).

    Raises:
        DuplicateModelError: the same model (path) appears twice, or a model is the base itself.
        MissingTensorError: a tensor is absent from some model and ``allow_missing`` is False.
        ShapeMismatchError: shapes differ other than in the vocabulary rows of an embedding/head.
    """
    _check_distinct([base, *models])
    everyone = [base, *models]
    labels = display_labels(everyone)
    names_all = set(base.tensors)
    for m in models:
        names_all |= set(m.tensors)
    missing = {label: sorted(names_all - set(src.tensors)) for src, label in zip(everyone, labels, strict=True)}
    missing = {k: v for k, v in missing.items() if v}
    skipped: list[str] = []
    notes: list[str] = []
    if missing:
        if not allow_missing:
            cause = naming_mismatch(everyone)  # no option named: only commands that have one add it
            raise MissingTensorError(_missing_message(everyone, labels) + (f"; {cause}" if cause else ""),
                                     format_mismatch=cause is not None)
        skipped = sorted(set().union(*missing.values()))
        notes.append(f"skipped {len(skipped)} tensor(s) missing from some model: " + _short_list(skipped))
    common = [n for n in base.tensors if n not in set(skipped)]  # base's file order
    plans: list[TensorPlan] = []
    trimmed: list[str] = []
    rows_seen: dict[str, int] = {}
    for name in common:
        shapes = [src.tensors[name].shape for src in everyone]
        if all(s == shapes[0] for s in shapes):
            plans.append(TensorPlan(name, base.tensors[name].numel, shapes[0]))
            continue
        if is_vocab_tensor(name, shapes, [src.vocab_size for src in everyone]):
            rows = min(s[0] for s in shapes)
            per_row = int(np.prod(shapes[0][1:], dtype=np.int64))
            plans.append(TensorPlan(name, rows * per_row, (rows, *shapes[0][1:])))
            trimmed.append(name)
            for label, s in zip(labels, shapes, strict=True):
                rows_seen[label] = s[0]
            continue
        for label, s in zip(labels[1:], shapes[1:], strict=True):
            if s != shapes[0]:
                raise ShapeMismatchError(
                    f"{label}: tensor '{name}' has shape {list(s)} but the base has "
                    f"{list(shapes[0])}; kinship needs models fine-tuned from this base"
                )
    if trimmed:
        sizes = ", ".join(f"{k} {v}" for k, v in rows_seen.items())
        rows = min(rows_seen.values())
        notes.append(
            f"vocabulary sizes differ ({sizes}): compared the {rows} rows common to all in "
            + ", ".join(trimmed)
        )
    for name in common:
        for src, label in zip(everyone, labels, strict=True):
            if src.tensors[name].dtype not in RAW_DTYPES:
                raise UnsupportedDtypeError(
                    f"{label}: tensor '{name}' has dtype {src.tensors[name].dtype}; kinship "
                    f"reads only {', '.join(RAW_DTYPES)} — dequantise or convert the model first"
                )
    return plans, notes, skipped


def _missing_message(everyone: Sequence[ModelSource], labels: Sequence[str]) -> str:
    """Which model differs from the base (``everyone[0]``), and how: it lacks tensors, or has extra ones."""
    have = set(everyone[0].tensors)
    problems = []
    for m, label in zip(everyone[1:], labels[1:], strict=True):
        if lacks := sorted(have - set(m.tensors)):
            problems.append(f"{label} lacks {len(lacks)} tensor(s) the base has: {_short_list(lacks, 4)}")
        if extra := sorted(set(m.tensors) - have):
            problems.append(f"{label} has {len(extra)} tensor(s) the base ({labels[0]}) lacks: {_short_list(extra, 4)}")
    more = f" (and {len(problems) - 1} more difference(s))" if len(problems) > 1 else ""
    return problems[0] + more


def display_labels(sources: Sequence[ModelSource]) -> list[str]:
    """Each source's ``display_name``, lengthened by parent folders where two would read the same.

    Tables, JSON keys, CSV headers and plot labels need one distinct name per model: the
    shortest path suffix that tells them apart.

    Example:
        >>> from kinmerge.sources import ArraySource
        >>> srcs = [ArraySource(p, Path(p), [], {}) for p in ("/r/a/ckpt-500", "/r/b/ckpt-500", "/r/base")]
        >>> display_labels(srcs)
        ['a/ckpt-500', 'b/ckpt-500', 'base']
    """
    labels = [src.display_name for src in sources]
    depth = [1] * len(labels)
    while True:
        seen: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            seen.setdefault(label, []).append(i)
        grew = False
        for clash in (ix for ix in seen.values() if len(ix) > 1):
            for i in clash:
                longer = _path_suffix(sources[i], depth[i] + 1)
                if longer is not None and longer != labels[i]:
                    depth[i] += 1
                    labels[i] = longer
                    grew = True
        if not grew:  # all distinct, or nothing left to tell them apart
            return labels


def _path_suffix(src: ModelSource, k: int) -> str | None:
    """The last ``k`` components of a local model's path (a weights file without its suffix)."""
    if src.hub_id is not None:
        return None
    p = Path(src.path).absolute()
    if p.suffix in (".safetensors", ".gguf"):
        parts = [*p.parent.parts[1:], p.stem]
    else:
        parts = list(p.parts[1:])
    return "/".join(parts[-k:]) if k <= len(parts) else None


def _check_distinct(sources: list[ModelSource]) -> None:
    seen: dict[tuple[str, ...], str] = {}
    for i, src in enumerate(sources):
        key = tuple(sorted(str(Path(f).resolve()) for f in src.files))
        if key in seen:
            what = "the base" if seen[key] == "base" else seen[key]
            raise DuplicateModelError(
                f"{src.ref} is the same model as {what} (same weight files); give each model once"
            )
        seen[key] = "base" if i == 0 else src.ref


def _short_list(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


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
    apart (``kinmerge.scan_ray``) and added up tensor by tensor give the whole scan's numbers.

    Returns:
        ``(per_tensor, total, bytes_read)``: statistics per tensor name, their sum in ``plans``
        order, and the bytes read.

    Example:
        >>> # not run here: base and models are open sources, as in :func:`scan`'s example
        >>> plans, _, _ = plan(base, models)                                   # doctest: +SKIP
        >>> per_tensor, total, nbytes = scan_tensors(base, models, plans[:3])  # doctest: +SKIP
    """
    n = len(models)
    sources = [base, *models]
    readers = [_reader(src) for src in sources]
    dtypes = {p.name: [src.tensors[p.name].dtype for src in sources] for p in plans}
    work = [(p, lo, min(p.numel, lo + chunk)) for p in plans for lo in range(0, p.numel, chunk)]
    n_workers = max(1, min(threads or n_threads(), len(work)))

    next_chunk = itertools.count()  # next() on it is atomic: each chunk goes to exactly one worker
    done: queue.SimpleQueue[_Done] = queue.SimpleQueue()
    window = threading.Condition()
    reduced = [0]  # chunks reduced so far (guarded by ``window``)
    stop = threading.Event()

    def worker() -> None:
        buffers = [ReadBuffer() for _ in sources]  # this worker's own: chunk * itemsize each
        while not stop.is_set():
            k = next(next_chunk)
            if k >= len(work):
                return
            with window:  # stay within _WINDOW chunks of the reduction: bounded pending results
                while k - reduced[0] >= _WINDOW and not stop.is_set():
                    window.wait()
            if stop.is_set():
                return
            p, lo, hi = work[k]
            dts = dtypes[p.name]
            try:
                raws = [read(p.name, lo, hi, buf) for read, buf in zip(readers, buffers, strict=True)]
                sums, gram = _kernels.accumulate(raws[0], dts[0], raws[1:], dts[1:], backend=backend)
                done.put((k, sums, gram, sum(r.nbytes for r in raws), None))
            except BaseException as exc:  # handed to the main thread, raised in chunk order
                done.put((k, None, None, 0, exc))
                return

    per_tensor: dict[str, KinshipStats] = {}
    total = KinshipStats.empty(n)
    bytes_read = 0
    pending: dict[int, _Done] = {}
    pool = [threading.Thread(target=worker, name=f"kinmerge-scan-{i}", daemon=True) for i in range(n_workers)]
    for t in pool:
        t.start()
    try:
        k_next = 0
        while k_next < len(work):
            item = done.get()
            pending[item[0]] = item
            if progress is not None and item[4] is None:
                progress(item[3])
            while k_next in pending:  # reduce in chunk order: the same sums whatever the timing
                _, sums, gram, nbytes, exc = pending.pop(k_next)
                if exc is not None:
                    raise exc
                p, lo, hi = work[k_next]
                st = per_tensor.get(p.name)
                if st is None:
                    st = per_tensor[p.name] = KinshipStats.empty(n)
                st.n += hi - lo
                st.sums += sums
                st.gram += gram
                bytes_read += nbytes
                if hi == p.numel:
                    _check_finite(p, st, sources, readers, chunk)
                    total += st
                k_next += 1
                with window:
                    reduced[0] = k_next
                    window.notify_all()
    finally:
        stop.set()
        with window:
            window.notify_all()
        for t in pool:
            t.join()
    return per_tensor, total, bytes_read


def n_threads() -> int:
    """Worker threads for a scan: ``KINMERGE_THREADS``, else the cores this process may use."""
    env = os.environ.get("KINMERGE_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


Reader = Callable[..., np.ndarray]  # (name, start, stop, out) -> raw values, like read_range


def _reader(src: ModelSource) -> Reader:
    """``src.read_range``, behind a lock unless the source may be read by several threads at once."""
    if src.concurrent_reads:
        return src.read_range
    lock = threading.Lock()

    def read(name: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        with lock:
            return src.read_range(name, start, stop, out)

    return read


def _check_finite(p: TensorPlan, st: KinshipStats, sources: list[ModelSource], readers: list[Reader],
                  chunk: int) -> None:
    """NaN/Inf anywhere in a delta makes its sums non-finite: find the culprit only then."""
    if np.isfinite(st.sums).all() and np.isfinite(np.diag(st.gram)).all():
        return
    for src, read in zip(sources, readers, strict=True):
        dtype = src.tensors[p.name].dtype
        for lo in range(0, p.numel, chunk):
            vals = _kernels.widen(read(p.name, lo, min(p.numel, lo + chunk), None), dtype)
            bad = ~np.isfinite(vals)
            if bad.any():
                kind = "NaN" if np.isnan(vals[bad]).any() else "Inf"
                who = "the base" if src is sources[0] else src.display_name
                raise NonFiniteError(
                    f"{who}: tensor '{p.name}' contains {kind} ({int(bad.sum())} value(s) in the first "
                    "chunk found); the checkpoint is damaged — re-download or re-export it"
                )
    raise NonFiniteError(  # finite inputs whose squares overflow float64: not a real checkpoint
        f"tensor '{p.name}': deltas too large to square in float64; check the models' dtypes"
    )


def result_dict(result: ScanResult, metrics: Sequence[str], *,
                breakdown: str | None = None) -> dict[str, Any]:
    """A JSON-ready view: matrices per metric (None where undefined, with the reason)."""
    st = result.stats
    n = st.n_models
    out: dict[str, Any] = {
        "base": result.base,
        "models": result.models,
        "elements_compared": st.n,
        "kinship": {},
        "undefined": {},
        "notes": result.notes,
        "skipped_tensors": result.skipped,
        "bytes_read": result.bytes_read,
        "seconds": round(result.seconds, 4),
    }
    for metric in metrics:
        out["kinship"][metric] = [[st.value(metric, i, j) for j in range(n)] for i in range(n)]
        reasons = {
            f"{result.models[i]} ~ {result.models[j]}": why
            for i in range(n)
            for j in range(i + 1, n)
            if (why := st.why_undefined(metric, i, j))
        }
        if reasons:
            out["undefined"][metric] = reasons
    if n > 2:
        out["mean_pairwise"] = {m: st.mean_pairwise(m) for m in metrics}
    if breakdown:
        parts = result.per_layer() if breakdown == "layer" else result.per_tensor
        out[f"per_{breakdown}"] = {
            key: {m: [[s.value(m, i, j) for j in range(n)] for i in range(n)] for m in metrics}
            | {"elements": s.n}
            for key, s in parts.items()
        }
        out["breakdown_note"] = (
            f"per-{breakdown} values are a breakdown, not the headline: the global kinship is computed over "
            "the whole delta"
        )
    return out


def pair_dict(result: ScanResult, metrics: Sequence[str], *, breakdown: str | None = None) -> dict[str, Any]:
    """:func:`result_dict` of a two-model scan, as one number per metric instead of 2x2 matrices."""
    data = result_dict(result, metrics, breakdown=breakdown)
    data["kinship"] = {m: rows[0][1] for m, rows in data["kinship"].items()}
    data["undefined"] = {m: next(iter(r.values())) for m, r in data["undefined"].items()}
    if breakdown:
        for part in data[f"per_{breakdown}"].values():
            for m in metrics:
                part[m] = part[m][0][1]
    return data


def scan_refs(
    base: str | os.PathLike[str] | None,
    models: Sequence[str | os.PathLike[str]],
    *,
    chunk: int | None = None,
    allow_missing: bool = False,
    allow_pickle: bool = False,
    progress: bool = False,
) -> ScanResult:
    """Open ``base`` and ``models`` (folders, files, hub ids or LoRA adapters), scan them once, close them.

    A pool holding PEFT LoRA adapters is read from their factors (``kinmerge.scan_lora``); with
    ``base`` None the adapters' ``base_model_name_or_path`` is the base. ``progress`` draws a bar
    with bytes and throughput on stderr.

    Example:
        >>> r = scan_refs("zoo:base", ["zoo:add", "zoo:sort"])
        >>> round(r.stats.value("pcc", 0, 1), 4)
        -0.0098
    """
    from kinmerge.progress import progress_bar
    from kinmerge.sources import LoraSource, open_model, open_models

    with open_models(list(models), allow_pickle=allow_pickle, adapters=True) as opened:
        adapters = [m for m in opened if isinstance(m, LoraSource)]
        if adapters:  # the one dispatch to the adapter pass (imported here: it builds on this module)
            from kinmerge.scan_lora import adapters_base, planned_bytes, scan_adapters

            with open_model(adapters_base(adapters) if base is None else base, allow_pickle=allow_pickle,
                            adapters=True) as base_src, \
                    progress_bar(planned_bytes(base_src, opened), "reading", unit="bytes", enabled=progress) as advance:
                return scan_adapters(base_src, opened, chunk=DEFAULT_CHUNK if chunk is None else chunk,
                                     allow_missing=allow_missing, progress=advance)
        if base is None:
            raise ConfigError("no base given: pass --base (only LoRA adapters name their own base)")
        with open_model(base, allow_pickle=allow_pickle) as base_src:
            plan(base_src, opened, allow_missing=allow_missing)  # refuse before a progress bar is drawn
            total = sum(info.nbytes for src in [base_src, *opened] for info in src.tensors.values())
            with progress_bar(total, "reading", unit="bytes", enabled=progress) as advance:
                return scan(base_src, opened, chunk=DEFAULT_CHUNK if chunk is None else chunk,
                            allow_missing=allow_missing, progress=advance)
