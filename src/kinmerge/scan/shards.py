"""The exact kinship matrix on a Ray cluster: tensors split into byte-balanced shards.

The statistics of a scan add up over disjoint parts of the models (:mod:`kinmerge.kinship`), so
the tensor list of :func:`kinmerge.scan.plan` is cut into contiguous runs of about equal bytes;
each Ray task opens the base and the N models itself, runs the one pass of a local scan over its
run of tensors (:func:`kinmerge.scan.scan_tensors`: the ``ExactStats`` consumer of
``kinmerge.scan.stream``; bounded memory, a few chunks per model) and returns the statistics of
each of its tensors. The driver adds them up tensor by
tensor in the base's order — shard by shard — which is exactly the order of a local scan, so the
matrix equals the local one and is the same from run to run.

Every node must see the model files at the paths the driver opened them from (shared storage;
docs/distributed.md). ``kinmerge matrix ... --ray [ADDRESS]`` is the command line.

Example:
    >>> # not run here: starts a Ray cluster (tests/test_ray.py does)
    >>> r = scan_ray("zoo/base", ["zoo/add", "zoo/sort", "zoo/count"], address=None)  # doctest: +SKIP
    >>> r.matrix("pcc").shape                                                       # doctest: +SKIP
    (3, 3)
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kinmerge.kinship import KinshipStats
from kinmerge.scan.align import TensorPlan, plan
from kinmerge.scan.exact import ScanResult, scan_tensors
from kinmerge.scan.stream import DEFAULT_CHUNK
from kinmerge.sources import ModelSource

__all__ = ["ShardTask", "scan_ray", "scan_shard", "shard_plans", "tensor_bytes"]


@dataclass(frozen=True)
class ShardTask:
    """One shard: the models (local paths, base first) and the tensors it streams."""

    paths: tuple[str, ...]
    tensors: tuple[TensorPlan, ...]
    chunk: int = DEFAULT_CHUNK
    threads: int = 1
    allow_pickle: bool = False


def tensor_bytes(sources: Sequence[ModelSource], p: TensorPlan) -> int:
    """Bytes a scan reads for tensor ``p`` from all ``sources`` (its compared rows only)."""
    total = 0
    for src in sources:
        info = src.tensors[p.name]
        total += info.nbytes * p.numel // max(info.numel, 1)
    return total


def shard_plans(plans: Sequence[TensorPlan], sizes: Sequence[int], shards: int) -> list[list[TensorPlan]]:
    """Cut ``plans`` (in order) into at most ``shards`` contiguous runs of about equal bytes.

    A tensor goes to the shard its byte midpoint falls in, so each shard is within one tensor of
    the even share; a tensor is never split (its statistics come from one task). Empty shards
    are dropped.

    Example:
        >>> ps = [TensorPlan(n, 1, (1,)) for n in "abcd"]
        >>> [[p.name for p in s] for s in shard_plans(ps, [1, 1, 1, 1], 2)]
        [['a', 'b'], ['c', 'd']]
    """
    if shards < 1:
        raise ValueError("shards must be >= 1")
    total = sum(sizes)
    out: list[list[TensorPlan]] = [[] for _ in range(shards)]
    before = 0
    for p, size in zip(plans, sizes, strict=True):
        k = min(shards - 1, int((before + size / 2) * shards // total)) if total else 0
        out[k].append(p)
        before += size
    return [s for s in out if s]


def scan_shard(task: ShardTask) -> dict[str, Any]:
    """On a worker: open the models, stream the shard's tensors, return their statistics.

    Returns:
        ``{"per_tensor": {name: KinshipStats}, "bytes_read", "seconds"}``.
    """
    from kinmerge.sources import open_models

    start = time.perf_counter()
    with open_models(list(task.paths), allow_pickle=task.allow_pickle) as sources:
        per_tensor, _, nbytes = scan_tensors(sources[0], sources[1:], task.tensors, chunk=task.chunk,
                                             threads=task.threads)
    return {"per_tensor": per_tensor, "bytes_read": nbytes, "seconds": time.perf_counter() - start}


def scan_ray(
    base: str | os.PathLike[str],
    models: Sequence[str | os.PathLike[str]],
    *,
    address: str | None = None,
    shards: int | None = None,
    cpus_per_shard: int = 1,
    max_retries: int = 3,
    chunk: int | None = None,
    allow_missing: bool = False,
    allow_pickle: bool = False,
    progress: bool = False,
) -> ScanResult:
    """Kinship statistics of ``models`` against ``base``, the tensors scanned in shards on Ray.

    Args:
        address: the Ray cluster (``auto``, ``HOST:PORT``, ``ray://...``, ``local``); None: the
            one this process is connected to, else ``RAY_ADDRESS``, else the cluster ``ray start``
            started on this machine, else a local cluster started for this call.
        shards: how many tasks (default: the cluster's CPUs / ``cpus_per_shard``).
        cpus_per_shard: CPUs each task asks for, and its scan threads.
        max_retries: how often a shard whose worker died is run again.
        chunk, allow_missing, allow_pickle, progress: as :func:`kinmerge.scan.scan_refs`.

    Returns:
        A :class:`~kinmerge.scan.ScanResult` equal to the local scan's (statistics added tensor by
        tensor in the same order), with ``per_tensor`` for breakdowns.

    Raises:
        everything :func:`kinmerge.scan.scan` raises, as itself; ``ClusterError`` for a cluster
        that cannot be reached or a shard whose worker was lost past its retries.
    """
    from kinmerge._ray import RayCluster
    from kinmerge.progress import progress_bar
    from kinmerge.sources import open_models

    t0 = time.perf_counter()
    with open_models([base, *models], allow_pickle=allow_pickle) as opened:  # headers only
        plans, notes, skipped = plan(opened[0], opened[1:], allow_missing=allow_missing)
        sizes = [tensor_bytes(opened, p) for p in plans]
        paths = tuple(str(src.path) for src in opened)
        names = [src.display_name for src in opened]
    n = len(names) - 1
    with RayCluster(address) as cluster:
        count = shards or max(1, int(cluster.total("CPU") // cpus_per_shard))
        parts = shard_plans(plans, sizes, count)
        tasks = [ShardTask(paths, tuple(part), chunk or DEFAULT_CHUNK, cpus_per_shard, allow_pickle) for part in parts]
        refs = [cluster.submit(scan_shard, t, name="kinmerge_scan_shard", num_cpus=cpus_per_shard,
                               max_retries=max_retries) for t in tasks]
        where = {ref: k for k, ref in enumerate(refs)}
        results: dict[int, dict[str, Any]] = {}
        with progress_bar(sum(sizes), "reading (ray)", unit="bytes", enabled=progress) as advance:
            pending = list(refs)
            while pending:
                for ref in cluster.wait(pending):
                    k = where[ref]
                    pending.remove(ref)
                    results[k] = cluster.result(ref, f"kinship shard {k + 1}/{len(refs)} of {base}",
                                                retries=max_retries)
                    advance(results[k]["bytes_read"])
    per_tensor: dict[str, KinshipStats] = {}
    total = KinshipStats.empty(n)
    for k in range(len(tasks)):  # shard order = the base's tensor order = a local scan's order
        for p in tasks[k].tensors:
            st = results[k]["per_tensor"].get(p.name)
            if st is not None:
                per_tensor[p.name] = st
                total += st
    return ScanResult(base=names[0], models=names[1:], stats=total, per_tensor=per_tensor, notes=notes,
                      skipped=skipped, bytes_read=sum(r["bytes_read"] for r in results.values()),
                      seconds=time.perf_counter() - t0)
