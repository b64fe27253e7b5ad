"""Merges through mergekit into fresh, content-addressed folders that carry their lineage.

This package is the only code that imports mergekit, and only inside :func:`merge`, so
``import kinmerge.merge`` costs nothing. Its parts:

- ``recipes``: :class:`Recipe` and the named recipes (``Slerp``, ``Linear``, ``TaskArithmetic``,
  ``Ties``, ``DareTies``, ``Raw``), :data:`RECIPES`, :func:`get_recipe`;
- ``parents``: each parent (and the base) resolved, identified by content, checked to match;
- ``_mergekit``: running mergekit (config validation, options, hub off, loader cache);
- ``card``: ``kinmerge.json`` (the lineage) and the model card, :func:`write_card`;
- here: :func:`merge`, :class:`MergeResult`, :func:`merge_id` and the temp-folder rule.

A merge is identified by the hash of (the parents' content ids, in order; the base's content id
when the recipe uses one; the recipe's parameters). Its output lives in ``out_root/<id>``:

    out_root/<id>/
      config.json, model*.safetensors, tokenizer files    the merged model (loads with transformers)
      mergekit_config.yml                                  the exact mergekit config that ran
      README.md                                            model card (hub front matter)
      kinmerge.json                                        lineage: parents, recipe, kinship, versions

The folder is built under a temp name beside it and renamed into place when complete
(``kinmerge._io.atomic_dir``), so a folder named by an id is complete; asking for the same merge
again returns it untouched.

Example:
    >>> # not run here: the same merge as :func:`merge`'s example, which runs
    >>> from kinmerge.merge import merge, Slerp
    >>> res = merge(["zoo:add", "zoo:sort"], Slerp(), Path("merges"))   # doctest: +SKIP
    >>> res.path                                                       # doctest: +SKIP
    PosixPath('merges/3f9c0a1b2d4e5f60')
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kinmerge._io import TMP_SUFFIX, atomic_dir, check_output_folder, json_digest
from kinmerge.errors import DuplicateModelError, MergeError
from kinmerge.kinship import METRICS
from kinmerge.merge._mergekit import MERGE_LOCK, run_mergekit, safe_paths
from kinmerge.merge._yaml import dump_yaml
from kinmerge.merge.adapters import adapter_base, build_adapter, is_adapter, load_adapter, mergekit_name, parent_id
from kinmerge.merge.card import (
    METADATA_FILE,
    METADATA_FORMAT,
    check_kinship,
    model_card,
    read_metadata,
    replace_strings,
    write_card,
)
from kinmerge.merge.parents import Parent, check_compatible, copy_tokenizer, load_parent
from kinmerge.merge.recipes import (
    DTYPES,
    PAPER_MLP_T,
    PAPER_SELF_ATTN_T,
    RECIPES,
    DareTies,
    Linear,
    Lora,
    Raw,
    Recipe,
    Slerp,
    TaskArithmetic,
    Ties,
    get_recipe,
)
from kinmerge.sources import first_nonfinite, open_model

__all__ = [
    "DTYPES", "METADATA_FILE", "PAPER_MLP_T", "PAPER_SELF_ATTN_T", "RECIPES", "DareTies", "Linear", "Lora",
    "MergeResult", "Raw",
    "Recipe", "Slerp", "TaskArithmetic", "Ties", "get_recipe", "is_temp_merge_folder", "merge", "merge_id",
    "model_card", "read_metadata", "remove_stale_temp", "write_card"
]


@dataclass(frozen=True)
class MergeResult:
    """A finished merge.

    Attributes:
        id: the merge id (hash of parents' content ids and recipe); also the folder name.
        path: the output folder (a Hugging Face model folder plus ``kinmerge.json``).
        recipe: the recipe that made it.
        reused: True when the folder already existed and nothing was merged.
        metadata: the contents of ``kinmerge.json``.
    """

    id: str
    path: Path
    recipe: Recipe
    reused: bool
    metadata: dict[str, Any] = field(repr=False)

    @property
    def parents(self) -> list[str]:
        """The parents' local paths, in merge order."""
        return [p["path"] for p in self.metadata["parents"]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the CLI's ``--json`` output)."""
        return {"id": self.id, "path": str(self.path), "reused": self.reused, **{
            k: self.metadata.get(k) for k in ("parents", "base", "recipe", "kinship")
        }}


def merge_id(parent_ids: Sequence[str], recipe: Recipe, base_id: str | None = None, *,
             device: str | None = None) -> str:
    """The id of a merge: 16 hex characters of SHA-256 over (parent content ids, base, recipe).

    The base counts only when the recipe uses it. ``device``: the GPU a merge ran on (e.g.
    ``"cuda:NVIDIA H100 80GB HBM3"``), or None on the CPU. A CPU merge has the same bytes on every
    x86 CPU and thread count, so the CPU is not part of its id; a GPU's arithmetic differs from the
    CPU's (and another GPU's) in the last bits, so a GPU merge gets an id of its own
    (docs/distributed.md, "Same bytes, same pool"). The mergekit version does not count.

    Example:
        >>> merge_id(["a" * 32, "b" * 32], Slerp())
        '54884bdbefcf11f3'
    """
    key: dict[str, Any] = {
        "parents": list(parent_ids),
        "base": base_id if recipe.uses_base else None,
        "recipe": recipe.params(),
    }
    if device is not None:  # only then: CPU merges keep the ids they always had
        key["device"] = device
    return json_digest(key, 16)


def is_temp_merge_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (an entry of an ``out_root``) is a merge being built, or one a killed
    process left: ``.<id>.<pid>-<random>.tmp`` (and ``.tmp-<id>-<random>`` from kinmerge 0.1).

    Example:
        >>> is_temp_merge_folder("runs/r/models/.3f9c0a1b2d4e5f60.4242-0a1b2c3d.tmp"), is_temp_merge_folder("3f9c")
        (True, False)
    """
    name = Path(path).name
    return name.startswith(".tmp-") or (name.startswith(".") and name.endswith(TMP_SUFFIX))


def remove_stale_temp(out_root: str | os.PathLike[str]) -> list[Path]:
    """Delete the temp folders of unfinished merges in ``out_root``; return what was removed.

    Only safe while no merge into ``out_root`` runs (the evolution runner holds its run lock).
    """
    root = Path(out_root)
    if not root.is_dir():
        return []
    stale = sorted(p for p in root.iterdir() if is_temp_merge_folder(p) and p.is_dir() and not p.is_symlink())
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def _merge_files_only(folder: Path) -> bool:
    """A folder under a merge's id holding only files a merge writes (weights, config, tokenizer,
    card): a merge left incomplete by a writer from before the marker, safe to redo."""
    from kinmerge.sources.content_ids import TOKENIZER_FILES

    own = {"config.json", "README.md", "kinmerge.json", "mergekit_config.yml", "model.safetensors.index.json",
           *TOKENIZER_FILES}
    return all(p.is_file() and (p.name in own or (p.name.startswith("model") and p.name.endswith(".safetensors")))
               for p in folder.iterdir())


def merge(
    parents: Sequence[str | os.PathLike[str]],
    recipe: Recipe | None = None,
    out_root: str | os.PathLike[str] = "merges",
    *,
    base: str | os.PathLike[str] | None = None,
    kinship: Mapping[str, Any] | None = None,
    cuda: bool = False,
    out_shard_bytes: int = 5_000_000_000,
    quiet: bool = True,
) -> MergeResult:
    """Merge ``parents`` with ``recipe`` into ``out_root/<id>``, or return that folder if it exists.

    Args:
        parents: local model folders or hub ids (``org/name[@revision]``), in order: parent A
            first (SLERP's ``base_model``; tokenizer and config donor).
        recipe: a :class:`Recipe`; default ``Slerp()`` (the paper's layer gradient, bf16).
        out_root: folder that holds merges; created if missing.
        base: the parents' shared pre-trained base: needed by task_arithmetic, ties, dare_ties
            (and part of their id); for any recipe, the kinship of the parents is measured
            against it when ``kinship`` is not given.
        kinship: the parents' kinship, e.g. ``{"pcc": 0.41, "cs": 0.4, "ed": 1.5}`` (values
            checked: pcc/cs in [-1, 1], ed >= 0, None for undefined); recorded in
            ``kinmerge.json`` and the model card (it does not change the id).
        cuda: do the arithmetic on the GPU (and keep intermediates there).
        out_shard_bytes: maximum bytes per output safetensors shard.
        quiet: hide mergekit's progress bars.

    Returns:
        The :class:`MergeResult`; ``reused`` tells whether an existing folder was returned.

    Raises:
        MergeError: bad recipe or parent count, the same model twice, parents of different
            architectures or tensor shapes, bad ``kinship`` values, no CUDA device with
            ``cuda=True``, or a mergekit failure. No partial folder is left behind.
        SourceError: a parent or base cannot be found.
        OutputFolderError: ``out_root/<id>`` holds files kinmerge did not write (left untouched).

    Example:
        >>> import tempfile
        >>> res = merge(["zoo:add", "zoo:sort"], Slerp(t=0.5, dtype="float32"), tempfile.mkdtemp())
        >>> len(res.id), res.reused, (res.path / "kinmerge.json").is_file()
        (16, False, True)
    """
    recipe = recipe if recipe is not None else Slerp()
    if not isinstance(recipe, Recipe):
        raise MergeError(f"recipe must be a kinmerge.merge.Recipe, got {type(recipe).__name__}")
    if isinstance(parents, (str, os.PathLike)):
        raise MergeError("parents must be a list of models, not a single path")
    with contextlib.ExitStack() as stack:
        models, lora_base = _load_parents(parents, base, recipe, stack)
    base = base if base is not None or lora_base is None else str(lora_base.path)
    recipe.check_parents(len(parents), base)
    kin = check_kinship(kinship) if kinship is not None else None
    kinship_base = base
    if base is not None and not recipe.uses_base:
        base = None  # e.g. SLERP: the shared base plays no part in the merge or its id
    base_model = (lora_base if lora_base is not None and base is not None else load_parent(base)) \
        if base is not None else None
    resized = check_compatible([m for m in models if not m.adapter], base_model or lora_base)

    full_lora_base = None if recipe.makes_adapter else lora_base  # adapters become base+adapter in mergekit
    device = None
    if cuda:
        import torch

        if not torch.cuda.is_available():  # say what the process was given: a Ray GPU request sets the variable
            given = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
            build = "" if torch.version.cuda else ", a CPU-only build"
            raise MergeError(f"cuda=True but torch sees no CUDA device on {platform.node()} (CUDA_VISIBLE_DEVICES="
                             f"{given}, torch {torch.__version__}{build}); drop --cuda or install a CUDA build of "
                             "torch")
        device = f"cuda:{torch.cuda.get_device_name()}"
    mid = merge_id([parent_id(m, full_lora_base) for m in models], recipe,
                   base_model.content_id if base_model else None, device=device)
    final = Path(out_root).expanduser().absolute() / mid
    if (existing := read_metadata(final)) is not None:
        return MergeResult(id=mid, path=final, recipe=recipe, reused=True, metadata=existing)
    if final.exists() or final.is_symlink():
        # A complete merge always has kinmerge.json: one without it that kinmerge marked is stale;
        # anything else under this name is the user's, never ours to delete.
        check_output_folder(final, option="--out", legacy=_merge_files_only)
        shutil.rmtree(final, ignore_errors=True)
    if kin is None and kinship_base is not None:
        kin = _parents_kinship(models, kinship_base)

    started = time.time()
    built = False
    try:
        with atomic_dir(final) as tmp:
            meta = _build(tmp, mid, models, base_model, recipe, resized, kin, started, lora_base=full_lora_base,
                          cuda=cuda, out_shard_bytes=out_shard_bytes, quiet=quiet)
            built = True
    except FileExistsError:
        if not built:
            raise
        # Someone else finished the same merge first: theirs is as good as ours.
        if (existing := read_metadata(final)) is not None:
            return MergeResult(id=mid, path=final, recipe=recipe, reused=True, metadata=existing)
        raise MergeError(f"{final} appeared while merging but is not a complete merge; remove it and retry") from None
    return MergeResult(id=mid, path=final, recipe=recipe, reused=False, metadata=meta)


def _refuse_nonfinite(folder: Path, parents: Sequence[Parent]) -> None:
    """A merged tensor with NaN or Inf is no model: refuse it (as kinship refuses such inputs)."""
    with open_model(folder) as merged:
        found = first_nonfinite(merged)
    if found is not None:
        name, kind = found
        who = " and ".join(p.ref for p in parents)
        raise MergeError(f"the merge of {who} has {kind} in tensor '{name}' (a parent holds NaN/Inf, or the "
                         "recipe overflowed its dtype); nothing was written — check the parents with "
                         "`kinmerge kinship`")


def _build(
    tmp: Path,
    mid: str,
    models: list[Parent],
    base: Parent | None,
    recipe: Recipe,
    resized: list[str],
    kinship: dict[str, float | None] | None,
    started: float,
    lora_base: Parent | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run mergekit (PEFT for the ``lora`` recipe) into the temp folder ``tmp`` and add tokenizer,
    config, card and lineage. ``lora_base``: the base that adapter parents are applied to."""
    if isinstance(recipe, Lora):
        assert base is not None  # the recipe uses the base
        config: dict[str, Any] = {"peft": build_adapter(tmp, models, base, recipe)}
        return _record(tmp, mid, models, base, recipe, config, kinship, started, adapter=True)
    paths = [m.path for m in models] + ([base.path] if base is not None else [])
    labels = [f"parent_{i}" for i in range(len(models))] + (["base"] if base is not None else [])
    if lora_base is not None:
        paths.append(lora_base.path)
        labels.append("adapter_base")
    with MERGE_LOCK, safe_paths(paths, labels) as names, tempfile.TemporaryDirectory(prefix="kinmerge-lora-") as cache:
        given = [mergekit_name(names[-1], n) if m.adapter else n for m, n in zip(models, names, strict=False)]
        config = recipe.mergekit_config(given, names[len(models)] if base is not None else None)
        if resized and "tokenizer_source" not in config and "tokenizer" not in config:
            # A fine-tune that added tokens: align every model's vocabulary rows to parent A's.
            config["tokenizer_source"] = given[0]
        run_mergekit(config, tmp, recipe.seed_value, lora_cache=cache if lora_base else None, **options)
    _refuse_nonfinite(tmp, models)
    donor = models[0].path if not models[0].adapter or lora_base is None else lora_base.path
    copy_tokenizer(models[0].path if (models[0].path / "tokenizer_config.json").exists() else donor, tmp)
    # Record the real paths, not the temporary safe-name links mergekit saw.
    recorded = replace_strings(config, {n: str(p) for n, p in zip(names, paths, strict=True)})
    (tmp / "mergekit_config.yml").write_text(dump_yaml(recorded), encoding="utf-8")
    return _record(tmp, mid, models, base, recipe, recorded, kinship, started)


def _record(tmp: Path, mid: str, models: list[Parent], base: Parent | None, recipe: Recipe, config: dict[str, Any],
            kinship: dict[str, float | None] | None, started: float, adapter: bool = False) -> dict[str, Any]:
    """Write ``kinmerge.json`` and the model card into ``tmp``; return the record."""
    recorded = config
    meta = {
        "format": METADATA_FORMAT,
        "id": mid,
        "parents": [m.info() for m in models],
        "base": base.info() if base else None,
        "recipe": recipe.params(),
        "mergekit_config": recorded,
        "kinship": kinship,
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 3),
        **({"adapter": True} if adapter else {}),
    }
    (tmp / "README.md").write_text(model_card(meta), encoding="utf-8")
    (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _load_parents(parents: Sequence[str | os.PathLike[str]], base: str | os.PathLike[str] | None, recipe: Recipe,
                  stack: contextlib.ExitStack) -> tuple[list[Parent], Parent | None]:
    """Each parent as a :class:`Parent`, and, when some are LoRA adapters, the base they apply to
    (``base``, else the one they name), checked to fit every adapter."""
    kinds = [is_adapter(p) for p in parents]
    if recipe.makes_adapter and not all(kinds):
        full = next(str(p) for p, a in zip(parents, kinds, strict=True) if not a)
        raise MergeError(f"{full} is not a LoRA adapter; the {recipe.method} recipe merges adapters only — use a "
                         "mergekit recipe (slerp, linear, ties, ...) for full models")
    if not any(kinds):
        return [load_parent(p) for p in parents], None
    models, sources = [], []
    for p, adapter in zip(parents, kinds, strict=True):
        if adapter:
            parent, src = load_adapter(p)
            sources.append(stack.enter_context(src))
            models.append(parent)
        else:
            models.append(load_parent(p))
    ids = [m.content_id for m in models]
    if len(set(ids)) < len(ids):
        raise MergeError("the same adapter is given twice; merging a model with itself changes nothing — pick another")
    lora_base = load_parent(base if base is not None else adapter_base(sources))
    with open_model(lora_base.path) as base_src:
        for parent, src in zip([m for m in models if m.adapter], sources, strict=True):
            src.check_base(base_src, parent.ref, lora_base.ref)
    return models, lora_base


def _parents_kinship(models: list[Parent], base: str | os.PathLike[str]) -> dict[str, float | None] | None:
    """The parents' kinship against ``base`` (one scan; n-model mean for more than two), or
    None when a parent is the base itself (its delta is zero: nothing to compare). Adapters are
    read from their factors (``kinmerge.scan.scan_refs``)."""
    from kinmerge.scan import scan_refs

    try:
        stats = scan_refs(base, [m.path for m in models]).stats
    except DuplicateModelError:
        return None
    return {metric: stats.mean_pairwise(metric) for metric in METRICS}


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("kinmerge", "mergekit", "transformers", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
