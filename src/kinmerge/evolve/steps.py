"""The expensive steps of an evolution run, as plain-data functions any executor can run.

Each step is a module-level function from a small frozen task (paths, ids, settings: picklable,
JSON-able) to a small dict result. Steps never touch the run store: the driver records each
result as it arrives, so the store has one writer whatever runs the steps — this process, a pool
of local processes, or the machines of a cluster.

The executor contract
---------------------
An executor (``kinmerge.evolve.executors``) provides

- ``imap(step, tasks)``: yields ``(index, result)`` as each task finishes (completion order),
  pulling tasks lazily from the iterable, so a task's "started" side effect happens when it
  really starts; a step that raises re-raises in the caller and the rest are cancelled;
- ``chain(first, then, tasks, link)``: pipelines two steps per task, with no barrier between
  them. It yields ``(index, 0, first_result)`` as each first step finishes; when the caller asks
  for the next item, the executor calls ``link(index, first_result)`` *in the caller's process*
  and, unless it returns ``None``, runs ``then`` on the task it returned and later yields
  ``(index, 1, then_result)``. So the caller records each first result before its follow-up
  starts (the driver stays the only writer), a follow-up starts as soon as its first step is
  done while other first steps still run, and each step keeps its own resource request. At most
  ``workers`` steps of either kind are in flight; a finished first step's follow-up is started
  before the next task is pulled. Errors and laziness as for ``imap``;
- ``flow(first, then, pull, link, limit)``: ``chain`` over tasks that ``pull()`` hands out as
  ``(key, task)`` whenever a slot is free, ``None`` meaning "nothing now" (asked again after the
  next result): the steady-state schedule (``kinmerge.evolve.steady``) plans from each result;
- ``map(step, tasks)``: the results in task order;
- ``check_storage(read, write)``: before a run, every machine that runs steps must see the
  ``read`` paths as the caller does and be able to write into the folder ``write`` (``None``:
  only read); a local executor has nothing to check. Raises a one-line ``KinmergeError`` naming
  the path;
- ``close()``; ``workers`` (steps in flight at once).

:func:`step_kind` tells an executor which kind of step it was handed (``"hash"``, ``"merge"``,
``"evaluate"``, ``"kinship"``), e.g. to request a GPU for merges and evaluations only, and
:func:`describe` names a task in an error message. Steps are idempotent — a merge or a hash of
the same inputs gives the same answer — so an executor may retry one that died with its worker.

Example:
    >>> step_kind(run_merge), step_kind(run_evaluation)
    ('merge', 'evaluate')
    >>> describe(EvaluateTask("runs/r/models/3f9c", "builtin"))
    'evaluation of runs/r/models/3f9c'
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kinmerge.kinship import METRICS

__all__ = [
    "STEP_KINDS",
    "EvaluateTask",
    "KinshipTask",
    "MergeTask",
    "describe",
    "hash_model",
    "run_evaluation",
    "run_kinship",
    "run_merge",
    "step_kind",
    "where_ran",
]


@dataclass(frozen=True)
class MergeTask:
    """One merge: parents (paths, parent A first), the recipe, where merges live."""

    parents: tuple[str, ...]
    method: str
    params: Mapping[str, Any]
    out_root: str
    base: str | None = None
    kinship: Mapping[str, float] | None = None
    cuda: bool = False


@dataclass(frozen=True)
class EvaluateTask:
    """One evaluation of a model folder by a registered evaluator with its settings."""

    model: str
    evaluator: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    part: tuple[int, int] | None = None  # only examples [start, stop) of each task (racing)


@dataclass(frozen=True)
class KinshipTask:
    """One streaming scan of several models against the base: every pair, every metric."""

    base: str
    models: tuple[str, ...]


def hash_model(ref: str) -> str:
    """The content id of a model folder or hub id (``kinmerge.sources.content_id``)."""
    from kinmerge.sources import content_id

    return content_id(ref)


def run_merge(task: MergeTask) -> dict[str, Any]:
    """Make one merge (or find it made).

    Returns:
        ``{"id", "path", "reused", "recipe" (the recipe's params), "seconds"}``.
    """
    from kinmerge.merge import get_recipe, merge

    start = time.perf_counter()
    recipe = get_recipe(task.method, **dict(task.params))
    res = merge(list(task.parents), recipe, task.out_root, base=task.base if recipe.uses_base else None,
                kinship=task.kinship, cuda=task.cuda, quiet=True)
    return {"id": res.id, "path": str(res.path), "reused": res.reused, "recipe": res.recipe.params(),
            "seconds": time.perf_counter() - start}


def run_evaluation(task: EvaluateTask) -> dict[str, Any]:
    """Evaluate one model folder.

    Returns:
        ``{"scores": {task: score}, "details": {task: {...}}, "average", "seconds"}``.
    """
    from pathlib import Path

    from kinmerge.evaluate import get_evaluator

    start = time.perf_counter()
    evaluator = get_evaluator(task.evaluator, **dict(task.settings))
    result = evaluator.evaluate(Path(task.model)) if task.part is None else \
        evaluator.evaluate(Path(task.model), part=task.part)  # type: ignore[call-arg]
    return {**result.to_dict(), "seconds": time.perf_counter() - start}


def run_kinship(task: KinshipTask) -> dict[str, Any]:
    """Scan the models against the base once; kinship of every pair under every metric.

    Returns:
        ``{"values": {metric: [[i, j, value], ...]}, "undefined": {metric: [[i, j, why], ...]},
        "seconds", "bytes_read", "notes"}`` with ``i < j`` indexing ``task.models``.
    """
    from kinmerge.scan import scan_refs

    start = time.perf_counter()
    result = scan_refs(task.base, list(task.models))  # LoRA adapters: read from their factors
    values: dict[str, list[list[Any]]] = {m: [] for m in METRICS}
    undefined: dict[str, list[list[Any]]] = {m: [] for m in METRICS}
    for metric in METRICS:
        for i, j in itertools.combinations(range(len(task.models)), 2):
            v = result.stats.value(metric, i, j)
            if v is None or not math.isfinite(v):
                undefined[metric].append([i, j, result.stats.why_undefined(metric, i, j) or "undefined"])
            else:
                values[metric].append([i, j, float(v)])
    return {"values": values, "undefined": undefined, "seconds": time.perf_counter() - start,
            "bytes_read": result.bytes_read, "notes": list(result.notes)}


#: step function -> its kind (what an executor may need to know to place it).
STEP_KINDS: dict[Callable[..., Any], str] = {
    hash_model: "hash",
    run_merge: "merge",
    run_evaluation: "evaluate",
    run_kinship: "kinship",
}


def step_kind(step: Callable[..., Any]) -> str:
    """``"hash"``, ``"merge"``, ``"evaluate"`` or ``"kinship"``; ``"other"`` for anything else."""
    return STEP_KINDS.get(step, "other")


def describe(task: object) -> str:
    """What a task is, for an error message: ``merge of A + B``, ``evaluation of M``, a model path.

    Example:
        >>> describe(MergeTask(("zoo/add", "zoo/sort"), "slerp", {}, "runs/r/models"))
        'merge of zoo/add + zoo/sort'
    """
    if isinstance(task, MergeTask):
        return "merge of " + " + ".join(task.parents)
    if isinstance(task, EvaluateTask):
        return f"evaluation of {task.model}"
    if isinstance(task, KinshipTask):
        return f"kinship scan of {len(task.models)} models against {task.base}"
    if isinstance(task, str):  # hash_model's task: a model reference
        return task
    return repr(task)[:200]


def where_ran(record: dict[str, Any]) -> dict[str, Any]:
    """``{"node": ...}`` when an executor marked a step's record with where it ran (the Ray
    executor: node IP, node id, ``CUDA_VISIBLE_DEVICES``), for the run's events; else ``{}``.

    Example:
        >>> where_ran({"id": "x", "node": {"ip": "10.0.0.7", "id": "ab12"}}), where_ran({"id": "x"})
        ({'node': {'ip': '10.0.0.7', 'id': 'ab12'}}, {})
    """
    return {"node": record["node"]} if "node" in record else {}
