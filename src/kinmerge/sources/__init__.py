"""Model sources: resolve a model reference to tensors that are read lazily, one chunk at a time.

A reference is one of
  * a local Hugging Face model folder (``model.safetensors``, or shards listed in
    ``model.safetensors.index.json``; pickled ``pytorch_model*.bin`` only with ``allow_pickle``),
  * a single ``.safetensors`` file,
  * a GGUF file (``.gguf``, e.g. a llama.cpp export), dequantised tensor by tensor,
  * a hub id ``org/name[@revision]``, fetched with huggingface_hub (config and safetensors only),
    honouring ``HF_HUB_OFFLINE`` and the HF cache;
  * with ``adapters=True`` (kinship reads them), a PEFT LoRA adapter folder, local or a hub id
    (``adapter_config.json`` + ``adapter_model.safetensors``): a ``LoraSource`` (``sources.lora``).

One module per concept, each importing only those above it in this list:
``hub`` (hub ids, fetching), ``content_ids`` (weight hashes and their cache) and ``config``
(``config.json``, read strictly) at the bottom;
``refs`` (:func:`resolve_ref`, the one rule for "local path or hub id"); ``base``
(``ModelSource``, ``TensorInfo``, the raw dtypes, the vocabulary-tensor rule); one module per
format: ``safetensors``, ``gguf``, ``pickle``; and this package, which picks the format.

Example:
    >>> with open_models(["zoo:base", "zoo:add"]) as (base, add):
    ...     print(base.display_name, len(base.tensors))
    zoo:base 39
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from kinmerge.errors import SourceError
from kinmerge.sources.base import (
    NUMPY_TO_DTYPE,
    RAW_DTYPES,
    VOCAB_NAME,
    ArraySource,
    ModelSource,
    ReadBuffer,
    ReadStats,
    TensorInfo,
    first_nonfinite,
    is_vocab_tensor,
    naming_mismatch,
)
from kinmerge.sources.config import read_config
from kinmerge.sources.content_ids import cache_dir, content_id_of_files
from kinmerge.sources.gguf import GgufSource, gguf_to_hf
from kinmerge.sources.hub import HUB_ID, WEIGHT_PATTERNS, fetch_from_hub, hub_id_of_cache_path, is_hub_id
from kinmerge.sources.lora import ADAPTER_WEIGHTS, LoraSource, is_adapter_folder, open_adapter
from kinmerge.sources.pickle import open_pickle
from kinmerge.sources.refs import ZOO_PREFIX, Resolved, resolve_ref, zoo_path
from kinmerge.sources.safetensors import SafetensorsSource, save_safetensors, to_bf16_bits

__all__ = [
    "HUB_ID",
    "NUMPY_TO_DTYPE",
    "RAW_DTYPES",
    "VOCAB_NAME",
    "WEIGHT_PATTERNS",
    "ZOO_PREFIX",
    "ArraySource",
    "GgufSource",
    "LoraSource",
    "ModelSource",
    "ReadBuffer",
    "ReadStats",
    "Resolved",
    "SafetensorsSource",
    "TensorInfo",
    "cache_dir",
    "content_id",
    "content_id_of_files",
    "fetch_from_hub",
    "first_nonfinite",
    "gguf_to_hf",
    "hub_id_of_cache_path",
    "is_hub_id",
    "is_vocab_tensor",
    "naming_mismatch",
    "open_model",
    "open_models",
    "read_config",
    "resolve_ref",
    "save_safetensors",
    "to_bf16_bits",
    "zoo_path",
]


def open_model(ref: str | os.PathLike[str], *, allow_pickle: bool = False, adapters: bool = False) -> ModelSource:
    """Resolve ``ref`` (with :func:`resolve_ref`) and open it as a ``ModelSource``.

    Args:
        ref: a local folder, a ``.safetensors`` or ``.gguf`` file, or a hub id ``org/name[@rev]``.
        allow_pickle: accept pickled ``pytorch_model*.bin`` checkpoints (loaded with
            ``torch.load(weights_only=True)``). Off by default: pickles can run code.
        adapters: open a PEFT LoRA adapter folder as a ``LoraSource`` (factors, not dense
            tensors: only kinship reads them). Off by default, so a command that needs dense
            tensors refuses an adapter in one line instead of misreading it.

    Raises:
        SourceError: nothing usable at ``ref`` (with what was looked for).
        CorruptFileError: a truncated file, a bad header, or a missing index shard.
        PickleNotAllowedError: only ``.bin`` weights were found and ``allow_pickle`` is False.

    Example:
        >>> with open_model("zoo:base") as src:
        ...     sorted(src.tensors)[:1]
        ['lm_head.weight']
    """
    resolved = resolve_ref(ref)
    assert resolved.path is not None  # fetched: resolve_ref fetches hub ids by default
    folder = resolved.path.parent if resolved.path.name == ADAPTER_WEIGHTS else resolved.path
    if is_adapter_folder(folder):  # the folder, or its adapter_model.safetensors named directly
        if not adapters:
            raise SourceError(
                f"{resolved.given}: a PEFT LoRA adapter; kinship, matrix, suggest, index, merge, eval and evolve "
                "read adapters, this command not yet — "
                "merge it into its base (peft's merge_and_unload) and pass the merged folder"
            )
        src: ModelSource = open_adapter(resolved.given, folder)
    else:
        src = _open_local(resolved.given, resolved.path, allow_pickle)
    src.hub_id = resolved.hub_id
    return src


@contextlib.contextmanager
def open_models(refs: Sequence[str | os.PathLike[str]], *, allow_pickle: bool = False,
                adapters: bool = False) -> Iterator[list[ModelSource]]:
    """Open several models at once and close them all on exit, even when one fails to open.

    Example:
        >>> with open_models(["zoo:base", "zoo:add"]) as (base, add):
        ...     print(len(base.tensors) == len(add.tensors))
        True
    """
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(open_model(ref, allow_pickle=allow_pickle, adapters=adapters)) for ref in refs]


def content_id(ref: str | os.PathLike[str], *, allow_pickle: bool = False) -> str:
    """A stable id for everything that makes a model behave as it does: BLAKE2b over its weight
    files, config, generation config and tokenizer, 32 hex characters.

    Hashing a 7B checkpoint takes seconds, so results are cached (keyed by path, size, mtime,
    ctime and inode; every hit re-checks a sample of the bytes) in
    ``$KINMERGE_CACHE/content_ids.json``; see ``kinmerge.sources.content_ids``.
    """
    with open_model(ref, allow_pickle=allow_pickle, adapters=True) as src:  # an adapter: config + weights
        return src.content_id()


def _open_local(ref: str, path: Path, allow_pickle: bool) -> ModelSource:
    if path.is_file():
        if path.suffix == ".safetensors":
            return SafetensorsSource(ref, path, [path])
        if path.suffix == ".gguf":
            return GgufSource(ref, path)
        if path.suffix == ".bin":
            return open_pickle(ref, path, [path], allow_pickle)
        raise SourceError(f"{path}: not a .safetensors, .gguf or model folder")
    config = read_config(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        src: ModelSource = SafetensorsSource.from_index(ref, path, index)
    elif (path / "model.safetensors").exists():
        src = SafetensorsSource(ref, path, [path / "model.safetensors"])
    else:
        singles = sorted(path.glob("*.safetensors"))
        bins = sorted(path.glob("pytorch_model*.bin"))
        ggufs = sorted(path.glob("*.gguf"))
        if len(singles) == 1:
            src = SafetensorsSource(ref, path, singles)
        elif len(singles) > 1:
            names = [f.name for f in singles]
            found = (f"{', '.join(names[:-1])} and {names[-1]}" if len(names) <= 4
                     else f"{', '.join(names[:3])} and {len(names) - 3} more")
            raise SourceError(
                f"{path}: found {found} but no model.safetensors.index.json, so which file holds which "
                "tensor is unknown — add the index (or re-download the model), or point at one .safetensors file"
            )
        elif bins:
            src = open_pickle(ref, path, bins, allow_pickle)
        elif len(ggufs) == 1:
            return _open_local(ref, ggufs[0], allow_pickle)
        else:
            raise SourceError(
                f"{path}: no model.safetensors, model.safetensors.index.json, .gguf or "
                "pytorch_model*.bin here — point at a Hugging Face model folder or a weights file"
            )
    src.config = config
    return src
