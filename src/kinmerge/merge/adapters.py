"""PEFT LoRA adapters as parents of a merge: into a new adapter (PEFT), or into a full model (mergekit).

An adapter is a parent that needs its base to mean anything, so every adapter merge has one: the
``base`` given, else the adapters' ``base_model_name_or_path``. Two ways out:

- the ``lora`` recipe (:class:`kinmerge.merge.recipes.Lora`): PEFT's ``add_weighted_adapter``
  combines the parents' factors into a new adapter folder (``adapter_config.json`` +
  ``adapter_model.safetensors``, base_model_name_or_path = the base), so children of adapters stay
  adapters, megabytes instead of a model's size (:func:`build_adapter`);
- any mergekit recipe: each adapter reaches mergekit as ``BASE+ADAPTER`` (mergekit's own syntax:
  it merges the adapter into the base with peft first), and the merge is a full model
  (:func:`mergekit_name`).

An adapter parent's content id covers its ``adapter_config.json`` and weights
(``LoraSource.content_id``); in a full merge it stands for base + adapter, so the base's id joins it
in the merge id (:func:`parent_id`).

Example:
    >>> mergekit_name("/zoo/base", "/adapters/add")
    '/zoo/base+/adapters/add'
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kinmerge.errors import ConfigError, MergeError, SourceError
from kinmerge.merge._mergekit import one_line
from kinmerge.merge.card import base_model_names, read_metadata
from kinmerge.merge.parents import HUB_PATTERNS, Parent
from kinmerge.merge.recipes import Lora
from kinmerge.progress import quiet_transformers
from kinmerge.sources import ADAPTER_WEIGHTS, LoraSource, is_adapter_folder, open_model, resolve_ref

__all__ = ["adapter_base", "build_adapter", "is_adapter", "load_adapter", "mergekit_name", "parent_id"]

_ADAPTER_FILES = ("adapter_config.json", ADAPTER_WEIGHTS)


def is_adapter(ref: str | os.PathLike[str]) -> bool:
    """Whether ``ref`` (a folder, its ``adapter_model.safetensors``, or a hub id) is a PEFT adapter."""
    try:
        path = resolve_ref(ref, patterns=HUB_PATTERNS).path
    except SourceError:
        return False  # not there: the loader that follows says so in its own words
    assert path is not None  # fetched: resolve_ref fetches hub ids by default
    return is_adapter_folder(path.parent if path.name == ADAPTER_WEIGHTS else path)


def load_adapter(ref: str | os.PathLike[str]) -> tuple[Parent, LoraSource]:
    """The adapter ``ref`` as a merge parent, and its opened source (closed by the caller).

    Raises:
        SourceError, CorruptFileError: not an adapter kinmerge reads exactly (named by kind).
    """
    resolved = resolve_ref(ref, patterns=HUB_PATTERNS)
    path = resolved.path
    assert path is not None
    path = path.parent if path.name == ADAPTER_WEIGHTS else path
    src = open_model(path, adapters=True)
    assert isinstance(src, LoraSource)
    meta = read_metadata(path) if resolved.hub_id is None else None
    parent = Parent(ref=resolved.given, path=path, content_id=src.content_id(), config=dict(src.adapter_config),
                    shapes={}, vocab_size=None, hub_id=resolved.hub_id,
                    descends_from=tuple(base_model_names(meta)) if meta is not None else None, adapter=True)
    return parent, src


def adapter_base(sources: Sequence[LoraSource]) -> str:
    """The base the adapters name (their ``base_model_name_or_path``), when no base is given.

    Raises:
        MergeError: none names one, or they name different bases.
    """
    from kinmerge.scan_lora import adapters_base

    try:
        return adapters_base(sources)
    except ConfigError as exc:
        raise MergeError(str(exc)) from None


def parent_id(parent: Parent, base: Parent | None) -> str:
    """A parent's part of the merge id: its content id; for an adapter merged into a full model,
    ``ADAPTER+BASE`` (what mergekit reads is the adapter applied to that base)."""
    return f"{parent.content_id}+{base.content_id}" if parent.adapter and base is not None else parent.content_id


def mergekit_name(base: str, adapter: str) -> str:
    """How mergekit names an adapter applied to its base: ``BASE+ADAPTER``."""
    return f"{base}+{adapter}"


def build_adapter(tmp: Path, parents: Sequence[Parent], base: Parent, recipe: Lora) -> dict[str, Any]:
    """Merge the adapters ``parents`` with PEFT's ``add_weighted_adapter`` into the folder ``tmp``.

    The base is loaded once (float32), each parent loaded onto it as a named adapter, the
    combination added as ``merged`` and saved alone. PEFT builds the new adapter's factors with
    each parent's scaling folded in, at ``lora_alpha = r``, so its scale must be 1: an rsLoRA
    parent's ``use_rslora`` (which PEFT copies) is turned off in the saved config.

    Returns:
        The PEFT call, as plain data for ``kinmerge.json``.

    Raises:
        MergeError: peft is missing, or refuses the combination (e.g. ``linear`` on unequal ranks,
            two parents saving the same ``modules_to_save``), naming what to change.
    """
    try:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        from kinmerge.errors import install_hint

        raise MergeError(f"merging adapters needs peft ({exc.name} missing): {install_hint('merge')}") from None
    names = [f"parent_{chr(ord('a') + i)}" for i in range(len(parents))]
    args = recipe.peft_arguments(len(parents))
    with warnings.catch_warnings(), quiet_transformers():
        warnings.simplefilter("ignore")  # peft and transformers warn about things a user cannot change here
        try:
            model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
            peft_model = PeftModel.from_pretrained(model, str(parents[0].path), adapter_name=names[0])
            for name, p in zip(names[1:], parents[1:], strict=True):
                peft_model.load_adapter(str(p.path), adapter_name=name)
        except Exception as exc:  # transformers/peft raise many types; the user needs one line
            raise MergeError(f"cannot load the adapters onto the base {base.ref} ({one_line(exc)})") from None
        if recipe.seed_value is not None:
            torch.manual_seed(recipe.seed_value)
        try:
            peft_model.add_weighted_adapter(names, adapter_name="merged", **args)
        except (ValueError, TypeError, RuntimeError) as exc:
            hint = " — use combination cat or svd" if "rank" in str(exc) else ""
            raise MergeError(f"peft refused the {recipe.combination} merge of "
                             f"{' and '.join(p.ref for p in parents)}: {one_line(exc)}{hint}") from None
        scratch = tmp / ".peft"
        peft_model.save_pretrained(str(scratch), selected_adapters=["merged"])
    saved = scratch / "merged" if (scratch / "merged").is_dir() else scratch
    for name in _ADAPTER_FILES:
        shutil.move(str(saved / name), str(tmp / name))
    shutil.rmtree(scratch)
    config_file = tmp / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.update(base_model_name_or_path=str(base.path), use_rslora=False)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {"function": "peft.PeftModel.add_weighted_adapter", "adapters": names, **args}
