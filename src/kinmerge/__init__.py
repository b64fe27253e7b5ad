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
    >>> zoo = "src/kinmerge/data/zoo"
    >>> k = kinmerge.kinship(f"{zoo}/specialists/add", f"{zoo}/specialists/sort", base=f"{zoo}/base")
    >>> -1.0 <= k.pcc <= 1.0 and k.ed > 0
    True

``import kinmerge`` stays light: numpy only; safetensors with the first kinship call; torch,
transformers, mergekit and lm-eval only inside merge and evaluate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# The math module ``kinmerge.kinship`` is loaded first, so that the function below, not the module,
# is ``kinmerge.kinship`` (Python binds a submodule to its package's namespace on its first import
# only); ``from kinmerge.kinship import KinshipStats`` still reaches the module.
from kinmerge import kinship as _kinship_math  # noqa: F401
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
        ray: scan on a Ray cluster, the tensors split into shards (``kinmerge.scan_ray``; same
            numbers): the cluster's address, or ``True`` for ``RAY_ADDRESS``, this machine's ``ray start``
            cluster or a new local one.

    Returns:
        :class:`~kinmerge.scan.ScanResult`; ``result.matrix("pcc")`` is the N×N matrix (NaN where
        undefined), ``result.models`` the labels, ``result.stats.mean_pairwise("pcc")`` the
        n-model kinship, ``result.per_layer()`` a breakdown.

    Example:
        >>> m = matrix(["zoo/add", "zoo/sort", "zoo/count"], base="zoo/base")   # doctest: +SKIP
        >>> m.matrix("pcc").shape                                               # doctest: +SKIP
        (3, 3)
    """
    if ray:
        from kinmerge.errors import ConfigError
        from kinmerge.scan_ray import scan_ray

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
        >>> res = merge(["zoo/add", "zoo/sort"], "slerp", out="merges", t=0.5)   # doctest: +SKIP
        >>> res.id, res.reused                                                  # doctest: +SKIP
        ('3f9c0a1b2d4e5f60', False)
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
        >>> evaluate("zoo/add", tasks_dir="zoo/tasks", limit=50).average        # doctest: +SKIP
        0.46
    """
    from kinmerge.evaluate import get_evaluator
    from kinmerge.evaluate.cache import evaluate_cached

    result, _ = evaluate_cached(get_evaluator(evaluator, **settings), model, refresh=not cache)
    return result


def evolve(config: Any, run_dir: PathLike | None = None, *, progress: bool = True,
           dry_run: bool = False) -> RunSummary:
    """Run or resume an evolution from a YAML config file (or a ``RunConfig``); see docs/evolve.md.

    Example:
        >>> summary = evolve("examples/evolve.yaml")                            # doctest: +SKIP
        >>> summary.best.score                                                  # doctest: +SKIP
        0.61
    """
    from kinmerge.evolve.runner import evolve as _evolve

    return _evolve(config, run_dir, progress=progress, dry_run=dry_run)


def __getattr__(name: str) -> Any:
    """``kinmerge.Index``, imported on first use (``import kinmerge`` stays light)."""
    if name == "Index":
        from kinmerge.index import Index

        return Index
    raise AttributeError(f"module 'kinmerge' has no attribute {name!r}")
