"""kinmerge: kinship-guided model merging.

Model kinship is the similarity of two fine-tuned models measured on their weight deltas from a
shared base (Hu et al., 2025, arXiv 2410.12613). The public API, for a notebook or a script:

- :func:`kinship` — PCC, signed cosine and Euclidean distance of two models' deltas;
- :func:`matrix` — every pair of several models, each file read once;
- :func:`merge` — a merge through mergekit into a content-addressed folder with its lineage;
- :func:`evaluate` — task scores of a model folder (cached by content);
- :func:`evolve` — the paper's top-k greedy loop, with or without kinship, resumable;
- :class:`Index` — sketches of thousands of models in one file: estimated kinship, nearest
  models, the family tree (docs/index.md).

Example:
    >>> import kinmerge
    >>> k = kinmerge.kinship("zoo:add", "zoo:sort", base="zoo:base")   # zoo:NAME: a shipped model
    >>> -1.0 <= k.pcc <= 1.0 and k.ed > 0
    True

``import kinmerge`` stays light: numpy only; safetensors with the first kinship call; torch,
transformers, mergekit and lm-eval only inside merge and evaluate.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kinmerge._version import __version__

if TYPE_CHECKING:
    from kinmerge.evaluate import EvalResult
    from kinmerge.evolve.summary import RunSummary
    from kinmerge.index import Index
    from kinmerge.merge import MergeResult, Recipe
    from kinmerge.scan import PairKinship, ScanResult

__all__ = ["Index", "__version__", "evaluate", "evolve", "kinship", "matrix", "merge"]

PathLike = str | os.PathLike[str]


def kinship(a: PathLike, b: PathLike, *, base: PathLike | None = None, allow_missing: bool = False,
            allow_pickle: bool = False, progress: bool = False) -> PairKinship:
    """Kinship of models ``a`` and ``b`` (folders, weight files, hub ids or LoRA adapters) against ``base``.

    ``base`` may be left out when ``a`` or ``b`` is a PEFT LoRA adapter that names its base
    (``base_model_name_or_path``); adapters are read from their factors (docs/adapters.md).

    Exact and streaming: one pass over the three files, float64 accumulators, memory bounded by a
    few chunks whatever the model size.

    Returns:
        :class:`~kinmerge.scan.PairKinship`: ``pcc``, ``cs``, ``ed`` (``None`` where undefined,
        with the reason in ``undefined``), ``elements`` compared and ``notes`` (e.g. vocabularies
        that differ: the common rows are compared).

    Raises:
        SourceError, ShapeMismatchError, MissingTensorError, NonFiniteError: one line each,
        naming the model and tensor.
    """
    from kinmerge.scan import scan_refs

    return scan_refs(base, [a, b], allow_missing=allow_missing, allow_pickle=allow_pickle, progress=progress).pair()


def matrix(models: Sequence[PathLike], *, base: PathLike | None = None, allow_missing: bool = False,
           allow_pickle: bool = False, progress: bool = False, ray: bool | str = False) -> ScanResult:
    """Kinship of every pair of ``models`` against ``base``, reading each file once.

    ``models`` may mix full models and LoRA adapters; ``base`` defaults to the adapters' own.

    Args:
        ray: scan on a Ray cluster, the tensors split into shards (``kinmerge.scan.shards``; same
            numbers): the cluster's address, or ``True`` for ``RAY_ADDRESS``, this machine's ``ray start``
            cluster or a new local one.

    Returns:
        :class:`~kinmerge.scan.ScanResult`; ``result.matrix("pcc")`` is the N×N matrix (NaN where
        undefined), ``result.models`` the labels, ``result.stats.mean_pairwise("pcc")`` the
        n-model kinship, ``result.per_layer()`` a breakdown.

    Example:
        >>> m = matrix(["zoo:add", "zoo:sort", "zoo:count"], base="zoo:base")
        >>> m.matrix("pcc").shape
        (3, 3)
    """
    if ray:
        from kinmerge.errors import ConfigError
        from kinmerge.scan.shards import scan_ray

        if base is None:
            raise ConfigError("matrix(ray=...) needs base= (adapters are read on this machine only)")
        return scan_ray(base, list(models), address=None if ray is True else str(ray), allow_missing=allow_missing,
                        allow_pickle=allow_pickle, progress=progress)
    from kinmerge.scan import scan_refs

    return scan_refs(base, list(models), allow_missing=allow_missing, allow_pickle=allow_pickle, progress=progress)


def merge(parents: Sequence[PathLike], recipe: str | Recipe = "slerp", *, out: PathLike = "merges",
          base: PathLike | None = None, cuda: bool = False, **params: Any) -> MergeResult:
    """Merge ``parents`` with mergekit into ``out/<id>`` (or return that folder if it exists).

    Args:
        recipe: a recipe name (``slerp`` — the paper's layer gradient —, ``linear``,
            ``task_arithmetic``, ``ties``, ``dare_ties``) with its ``params``, or a ``Recipe``.
        base: the parents' shared base (needed by the task-vector recipes).

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> merge(["zoo:add", "zoo:sort"], "slerp", out=out, t=0.5).reused
        False
        >>> merge(["zoo:add", "zoo:sort"], "slerp", out=out, t=0.5).reused   # the same merge: its folder
        True
    """
    from kinmerge.merge import get_recipe
    from kinmerge.merge import merge as _merge

    chosen = get_recipe(recipe, **params) if isinstance(recipe, str) else recipe
    return _merge(list(parents), chosen, out, base=base, cuda=cuda)


def evaluate(model: PathLike, evaluator: str = "builtin", *, cache: bool = True, **settings: Any) -> EvalResult:
    """Score a model folder: one score per task and their average (the paper's P̄).

    Args:
        evaluator: ``builtin`` (JSONL tasks: ``tasks_dir=...``) or ``lm_eval`` (``tasks=[...]``).
        cache: answer from the evaluation cache when this model (by content) was scored with the
            same settings before.

    Example:
        >>> evaluate("zoo:add", tasks_dir="zoo:tasks", limit=50).average
        0.49
    """
    from kinmerge.evaluate import get_evaluator, resolve_paths
    from kinmerge.evaluate.cache import evaluate_cached
    from kinmerge.sources import resolve_ref

    folder = resolve_ref(model, want="folder").path
    assert folder is not None  # fetch=True: a hub id comes back as its cached folder
    result, _ = evaluate_cached(get_evaluator(evaluator, **resolve_paths(settings)), folder, refresh=not cache)
    return result


def evolve(config: Any, run_dir: PathLike | None = None, *, progress: bool = True,
           dry_run: bool = False) -> RunSummary:
    """Run or resume an evolution; see docs/evolve.md.

    Args:
        config: a YAML config file (as ``kinmerge evolve CONFIG``; its relative paths are relative
            to its folder), the same fields as a mapping (relative paths relative to the working
            directory: a notebook needs no file), or a ``RunConfig``.
        run_dir: the store and merges (default: the config's ``out.run_dir``, else
            ``runs/<config stem>``, ``runs/evolve`` for a mapping).

    Example:
        >>> # not run here (minutes of merging); docs/api.md runs a one-generation evolution
        >>> summary = evolve("examples/evolve.yaml")   # doctest: +SKIP
        >>> summary.status, summary.stop               # doctest: +SKIP
        ('finished', 'kinship above threshold')
    """
    from kinmerge.evolve.runner import evolve as _evolve

    if isinstance(config, Mapping):
        from kinmerge.evolve.config import RunConfig

        config = RunConfig.from_dict(config)
    return _evolve(config, run_dir, progress=progress, dry_run=dry_run)


#: Public functions that share their name with a submodule (``kinmerge/kinship.py``,
#: ``kinmerge/merge/``, ``kinmerge/evaluate/``, ``kinmerge/evolve/``).
_SHADOWED = frozenset({"kinship", "merge", "evaluate", "evolve"})


class _PublicAPI(types.ModuleType):
    """The ``kinmerge`` package, whose public functions stay bound whatever is imported later.

    Python's import system binds a submodule into its package's namespace on the submodule's first
    import (``setattr(kinmerge, "merge", <module kinmerge.merge>)``), which would replace the
    function ``kinmerge.merge`` by the subpackage as soon as anything imports it, in any order.
    That one binding is refused here; the submodules stay reachable as ``from kinmerge.merge
    import ...`` and in ``sys.modules`` (which is where imports look them up).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _PublicAPI


def __getattr__(name: str) -> Any:
    """``kinmerge.Index``, imported on first use (``import kinmerge`` stays light)."""
    if name == "Index":
        from kinmerge.index import Index

        return Index
    raise AttributeError(f"module 'kinmerge' has no attribute {name!r}")
