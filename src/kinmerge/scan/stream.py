"""The one ordered streaming pass over a base and N models; what it computes is up to its consumers.

``stream`` reads every planned tensor (``kinmerge.scan.align``) once, chunk by chunk, in the
base's order, and hands each chunk's raw values to every :class:`Consumer`: the exact kinship
statistics (``kinmerge.scan.exact``), the sketches (``kinmerge.scan.sketches``) — both in one
read when a caller wants both — and, through ``scan_tensors``, every Ray shard task.

The pass runs on W worker threads (W = usable cores, or ``KINMERGE_THREADS``). Each reads its
chunk of every input into its own buffers with positional reads and runs the consumers' kernels
on it; reading and the kernels release the GIL, so workers overlap them without a separate reader
thread or a join per chunk. The main thread hands each chunk's small result back to its consumer
*in chunk order*, so sums come out bit-identical from run to run whatever the threads' timing.
Memory is W chunks per model plus a bounded window of small per-chunk results, whatever the size.

Which worker takes which chunk: the next one free (a shared counter), unless a consumer keeps
per-worker state whose float additions depend on it (``fixed_schedule``; a sketch's rows are 1 MB
each, too large to reduce per chunk); then worker w takes chunks w, w + W, ... so its result is
the same bits for a given thread count.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinmerge.scan.align import TensorPlan
from kinmerge.sources import ModelSource, ReadBuffer

DEFAULT_CHUNK = 1 << 20  # elements per read: 2 MB of bf16 per model and worker (measured: docs/benchmarks.md)
_WINDOW = 64  # chunks a worker may run ahead of the in-order reduction, at least (bounds pending results)
_PENDING_BYTES = 32 << 20  # ... and more while results of Gram size fit in this: a round-robin schedule
# needs the slack (measured: a 6-model sketch pass 5-10% slower with a 64-chunk window, equal without)

Progress = Callable[[int], None]  # called with the number of bytes just read
Reader = Callable[..., np.ndarray]  # (name, start, stop, out) -> raw values, like read_range
# A chunk handed from a worker to the main thread: (index, each consumer's result, bytes, error).
_Done = tuple[int, "list[Any] | None", int, "BaseException | None"]


@dataclass(frozen=True)
class Piece:
    """Positions ``[start, stop)`` of one planned tensor: the unit a worker reads and consumers see."""

    tensor: TensorPlan
    start: int
    stop: int

    @property
    def last(self) -> bool:
        """The tensor's final chunk: a consumer's per-tensor result is complete after it."""
        return self.stop == self.tensor.numel


@dataclass
class Pass:
    """What every consumer may need beyond the chunk: the sources, their readers, the settings."""

    sources: list[ModelSource]  # base first
    readers: list[Reader]
    plans: Sequence[TensorPlan]
    chunk: int
    backend: str
    workers: int = 1
    keys: dict[str, list[str]] | None = None  # planned name -> its name in each source (default: the same)

    def key(self, s: int, tensor: str) -> str:
        """The name source ``s`` stores planned tensor ``tensor`` under."""
        return self.keys[tensor][s] if self.keys is not None else tensor

    def reread(self, tensor: TensorPlan) -> Iterator[tuple[int, np.ndarray]]:
        """Every source's values of ``tensor`` again, chunk by chunk, as ``(source index, raw)``.

        For the rare second look (which model holds the NaN); the pass itself never calls it.
        """
        for s, read in enumerate(self.readers):
            for lo in range(0, tensor.numel, self.chunk):
                yield s, read(self.key(s, tensor.name), lo, min(tensor.numel, lo + self.chunk), None)


class Consumer:
    """One computation fed by the pass; the base class does nothing (a pass that only reads).

    ``consume`` runs on a worker thread, on raw values as read (base first; buffers reused after
    it returns, so keep no reference); its result goes to ``reduce`` on the main thread in chunk
    order. ``start`` runs before the first chunk, ``finish`` after the last one.
    """

    fixed_schedule = False  # True: per-worker state whose bits depend on which chunks a worker gets

    def start(self, ps: Pass) -> None:
        """Before the first chunk (``ps.workers`` is known): make per-worker state here."""

    def consume(self, worker: int, piece: Piece, raws: list[np.ndarray], dtypes: list[str]) -> Any:
        """On worker ``worker``: compute what this chunk contributes (return small results only)."""
        return None

    def reduce(self, piece: Piece, result: Any) -> None:
        """On the main thread, in chunk order: add this chunk's result up."""

    def finish(self) -> None:
        """After the last chunk, on the main thread: join per-worker state (in worker order)."""


def n_threads() -> int:
    """Worker threads for a scan: ``KINMERGE_THREADS``, else the cores this process may use."""
    env = os.environ.get("KINMERGE_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _reader(src: ModelSource) -> Reader:
    """``src.read_range``, behind a lock unless the source may be read by several threads at once."""
    if src.concurrent_reads:
        return src.read_range
    lock = threading.Lock()

    def read(name: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        with lock:
            return src.read_range(name, start, stop, out)

    return read


def stream(
    base: ModelSource,
    models: Sequence[ModelSource],
    plans: Sequence[TensorPlan],
    consumers: Sequence[Consumer],
    *,
    chunk: int = DEFAULT_CHUNK,
    backend: str = "auto",
    progress: Progress | None = None,
    threads: int | None = None,
    keys: Sequence[Mapping[str, str]] | None = None,
) -> int:
    """Read ``plans`` of ``base`` and ``models`` once, feeding every chunk to every consumer.

    ``keys``: per source (base first), the names under which it stores planned tensors where
    they differ (an adapter's whole-tensor copy); consumers still see the planned name.

    Returns:
        The bytes read.

    Raises:
        whatever a read or a consumer raises, on the main thread, for the first failing chunk in
        chunk order (every earlier chunk has been reduced by then).

    Example:
        >>> from kinmerge.scan import plan
        >>> from kinmerge.sources import open_models
        >>> with open_models(["zoo:base", "zoo:add"]) as (base, *models):
        ...     nbytes = stream(base, models, plan(base, models)[0], [Consumer()])
        >>> nbytes == 2 * sum(t.nbytes for t in base.tensors.values())
        True
    """
    if chunk < 1:
        raise ValueError("chunk must be a positive number of elements")
    sources = [base, *models]
    readers = [_reader(src) for src in sources]
    names = {p.name: [k.get(p.name, p.name) for k in keys] for p in plans} if keys is not None else None
    ps = Pass(sources, readers, plans, chunk, backend, keys=names)
    dtypes = {p.name: [src.tensors[ps.key(s, p.name)].dtype for s, src in enumerate(sources)] for p in plans}
    work = [Piece(p, lo, min(p.numel, lo + chunk)) for p in plans for lo in range(0, p.numel, chunk)]
    n_workers = ps.workers = max(1, min(threads or n_threads(), len(work)))
    for c in consumers:
        c.start(ps)
    fixed = any(c.fixed_schedule for c in consumers)
    ahead = max(_WINDOW, _PENDING_BYTES // (8 * (len(sources) + 1) ** 2))

    next_chunk = itertools.count()  # next() on it is atomic: each chunk goes to exactly one worker
    done: queue.SimpleQueue[_Done] = queue.SimpleQueue()
    window = threading.Condition()
    reduced = [0]  # chunks reduced so far (guarded by ``window``)
    stop = threading.Event()

    def worker(w: int) -> None:
        buffers = [ReadBuffer() for _ in sources]  # this worker's own: chunk * itemsize each
        mine = itertools.count(w, n_workers) if fixed else next_chunk
        while not stop.is_set():
            k = next(mine)
            if k >= len(work):
                return
            with window:  # stay within ``ahead`` chunks of the reduction: bounded pending results
                while k - reduced[0] >= ahead and not stop.is_set():
                    window.wait()
            if stop.is_set():
                return
            piece = work[k]
            name = piece.tensor.name
            dts = dtypes[name]
            try:
                raws = [read(ps.key(s, name), piece.start, piece.stop, buf)
                        for s, (read, buf) in enumerate(zip(readers, buffers, strict=True))]
                results = [c.consume(w, piece, raws, dts) for c in consumers]
                done.put((k, results, sum(r.nbytes for r in raws), None))
            except BaseException as exc:  # handed to the main thread, raised in chunk order
                done.put((k, None, 0, exc))
                return

    bytes_read = 0
    pending: dict[int, _Done] = {}
    pool = [threading.Thread(target=worker, args=(w,), name=f"kinmerge-scan-{w}", daemon=True)
            for w in range(n_workers)]
    for t in pool:
        t.start()
    try:
        k_next = 0
        while k_next < len(work):
            item = done.get()
            pending[item[0]] = item
            if progress is not None and item[3] is None:
                progress(item[2])
            while k_next in pending:  # reduce in chunk order: the same sums whatever the timing
                _, results, nbytes, exc = pending.pop(k_next)
                if exc is not None:
                    raise exc
                assert results is not None
                for c, r in zip(consumers, results, strict=True):
                    c.reduce(work[k_next], r)
                bytes_read += nbytes
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
    for c in consumers:
        c.finish()
    return bytes_read
