"""Evaluation results cached by (model content id, evaluator, settings).

Evaluating a 7B model on a benchmark costs GPU-hours; the same model folder (or a byte-identical
copy) scored with the same evaluator and settings (which include the task set's content hash)
gives the same scores, so ``kinmerge eval`` answers from the cache. The evolution runner keeps
its own cache in the run store; this one serves standalone evaluations.

Example:
    >>> from kinmerge.evaluate import get_evaluator
    >>> from kinmerge.sources import zoo_path
    >>> ev = get_evaluator("builtin", tasks_dir=zoo_path("zoo:tasks"), tasks=["add"], limit=20)
    >>> [evaluate_cached(ev, zoo_path("zoo:add"))[1] for _ in range(2)]   # scored, then from the cache
    [False, True]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from kinmerge._io import atomic_write
from kinmerge.evaluate import EvalResult, Evaluator
from kinmerge.sources import cache_dir as kinmerge_cache_dir
from kinmerge.sources import content_id


def cache_key(evaluator: Evaluator, model_id: str) -> str:
    """SHA-256 over (model content id, evaluator name, its settings), 32 hex characters."""
    blob = json.dumps({"model": model_id, "evaluator": evaluator.name, "settings": evaluator.settings()},
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_dir() -> Path:
    """``$KINMERGE_CACHE/evaluations`` (default ``~/.cache/kinmerge/evaluations``), read when called."""
    return kinmerge_cache_dir() / "evaluations"


def evaluate_cached(evaluator: Evaluator, model_dir: str | os.PathLike[str], *,
                    refresh: bool = False) -> tuple[EvalResult, bool]:
    """Evaluate ``model_dir`` unless a cached result exists; return (result, came from cache)."""
    key = cache_key(evaluator, content_id(model_dir))
    path = cache_dir() / f"{key}.json"
    if not refresh and path.exists():
        try:
            data = json.loads(path.read_text())
            return EvalResult(scores=data["scores"], details=data["details"]), True
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is recomputed and rewritten
    result = evaluator.evaluate(Path(model_dir))
    with contextlib.suppress(OSError):  # a cache we cannot write only costs time
        atomic_write(path, json.dumps({"scores": result.scores, "details": result.details, "model": str(model_dir),
                                       "evaluator": evaluator.name, "settings": evaluator.settings()}, default=str))
    return result, False
