"""The models a merge reads: each parent (and the shared base) resolved, identified and checked.

A :class:`Parent` is what ``merge`` needs to know of a model before mergekit runs: its local
folder (hub ids are fetched with the one resolver, ``kinmerge.sources.resolve_ref``), its content
id (which goes into the merge id), its config and tensor shapes (to refuse parents that cannot
be merged with a one-line error instead of a mergekit traceback), and where it came from (the
hub, or the models a parent that is itself a merge descends from), which the model card shows
(``kinmerge.merge.card``).

Example:
    >>> parents = [load_parent("zoo:add"), load_parent("zoo:sort")]
    >>> check_compatible(parents, None)
    []
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kinmerge.errors import MergeError
from kinmerge.merge.card import base_model_names, read_metadata
from kinmerge.sources import is_vocab_tensor, open_model, resolve_ref
from kinmerge.sources.content_ids import TOKENIZER_FILES

__all__ = ["HUB_PATTERNS", "Parent", "check_compatible", "copy_tokenizer", "load_parent"]

# What merging fetches of a hub model: weights, configs and the tokenizer (never pickles).
HUB_PATTERNS = ("*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja")


@dataclass(frozen=True)
class Parent:
    """A model taking part in a merge: a parent, or the parents' shared base.

    Attributes:
        ref: the reference as the caller gave it.
        path: the local model folder (absolute).
        content_id: the hash of its weight files (``kinmerge.sources.content_id``).
        config: its ``config.json``.
        shapes: tensor name -> shape.
        vocab_size: the configured vocabulary size (None when the config has none).
        hub_id: ``org/name[@revision]`` when it came from the Hugging Face hub, else None.
        descends_from: for a kinmerge merge, what a model card's ``base_model`` lists for it
            (the hub ids or folder names of the models it descends from); else None.
    """

    ref: str
    path: Path
    content_id: str
    config: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    vocab_size: int | None
    hub_id: str | None
    descends_from: tuple[str, ...] | None
    adapter: bool = False

    def info(self) -> dict[str, Any]:
        """What ``kinmerge.json`` records of this model."""
        return {"ref": self.ref, "path": str(self.path), "content_id": self.content_id, "hub_id": self.hub_id,
                "descends_from": list(self.descends_from) if self.descends_from is not None else None,
                **({"adapter": True} if self.adapter else {})}


def load_parent(ref: str | os.PathLike[str]) -> Parent:
    """Resolve ``ref`` to a local model folder (fetching hub ids) and read what merging needs.

    Raises:
        SourceError: no such folder, and not a hub id that can be fetched.
        MergeError: a single file, or a folder without ``config.json``.
    """
    resolved = resolve_ref(ref, want="folder", patterns=HUB_PATTERNS)
    path = resolved.path
    assert path is not None  # fetched: resolve_ref fetches hub ids by default
    if not (path / "config.json").exists():
        raise MergeError(f"{resolved.given}: no config.json; mergekit needs a Hugging Face model folder")
    with open_model(path) as src:
        shapes = {name: info.shape for name, info in src.tensors.items()}
        cid = src.content_id()
        config, vocab = src.config, src.vocab_size
    meta = read_metadata(path) if resolved.hub_id is None else None
    return Parent(ref=resolved.given, path=path, content_id=cid, config=config, shapes=shapes, vocab_size=vocab,
                  hub_id=resolved.hub_id, descends_from=tuple(base_model_names(meta)) if meta is not None else None)


def check_compatible(parents: Sequence[Parent], base: Parent | None) -> list[str]:
    """Refuse parents that cannot be merged; return the vocabulary tensors whose rows differ.

    Parents must be distinct (by content; one equal to the base is allowed: its delta is zero)
    and share the first parent's architecture and tensor shapes, except vocabulary tensors
    (``kinmerge.sources.is_vocab_tensor``): a fine-tune that added tokens is merged by aligning
    every model's rows to the first parent's tokenizer, so each model then needs a tokenizer.

    Raises:
        MergeError: naming the models and the tensor at fault.
    """
    everyone = [*parents, *([base] if base is not None else [])]
    seen: dict[str, Parent] = {}
    for m in parents:
        if (other := seen.get(m.content_id)) is not None:
            same = "is given twice" if other.path == m.path else f"has the same weights as {other.ref}"
            raise MergeError(f"{m.ref} {same}; merging a model with itself changes nothing — pick another model")
        seen[m.content_id] = m
    first = everyone[0]
    arch0 = (first.config.get("architectures"), first.config.get("model_type"))
    resized: list[str] = []
    for m in everyone[1:]:
        arch = (m.config.get("architectures"), m.config.get("model_type"))
        if arch != arch0:
            raise MergeError(
                f"{m.ref} is {_arch_name(arch)} but {first.ref} is {_arch_name(arch0)}; "
                "merge only models fine-tuned from the same base"
            )
        for name, shape in first.shapes.items():
            got = m.shapes.get(name)
            if got is None:
                raise MergeError(
                    f"{m.ref} has no tensor {name} (present in {first.ref}); the models differ in structure"
                )
            if got == shape:
                continue
            if not is_vocab_tensor(name, [shape, got], [first.vocab_size, m.vocab_size]):
                raise MergeError(
                    f"tensor {name} is {list(shape)} in {first.ref} but {list(got)} in {m.ref}; "
                    "merge only models of the same size and base"
                )
            if name not in resized:
                resized.append(name)
    if resized:
        for m in everyone:
            if not _has_tokenizer(m.path):
                raise MergeError(
                    f"vocabularies differ ({', '.join(resized)}) and {m.ref} has no tokenizer to align "
                    "its rows by; add its tokenizer files or merge models with equal vocabularies"
                )
    return resized


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy ``src``'s tokenizer files into ``dst`` (kinmerge promises parent A's tokenizer;
    mergekit copies its ``base_model``'s, or an arbitrary input's)."""
    if not (src / "tokenizer_config.json").exists():
        return
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt"))


def _arch_name(arch: tuple[Any, Any]) -> str:
    names, model_type = arch
    return f"{'/'.join(names) if isinstance(names, list) else names} ({model_type})"
