"""Pickled PyTorch checkpoints (``pytorch_model*.bin``), read only when the user asks.

A pickle can run code when loaded, so ``open_model`` refuses these files unless
``allow_pickle=True`` (CLI: ``--allow-pickle``), and even then loads them with
``torch.load(weights_only=True)``, which accepts only plain tensors. The tensors are held in
memory (an ``ArraySource``); BF16 is widened to float32, which is exact. Training checkpoints
that keep the weights under ``state_dict``, ``model_state_dict``, ``model`` or ``module`` are
read too; anything else (a list, tensors mixed with other values) is refused in one line.

Example:
    >>> # not run here: needs a pickled pytorch_model.bin (tests/test_sources.py writes one)
    >>> src = open_pickle("old", Path("old"), [Path("old/pytorch_model.bin")], allow_pickle=True)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kinmerge.errors import CorruptFileError, PickleNotAllowedError, SourceError, UnsupportedDtypeError, install_hint
from kinmerge.sources.base import ArraySource

__all__ = ["STATE_DICT_KEYS", "open_pickle"]


#: Keys under which training frameworks keep the weights inside a larger checkpoint dict:
#: PyTorch Lightning ``state_dict``, the PyTorch tutorials' ``model_state_dict``, many repos'
#: ``model``, DeepSpeed's ``module``.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module")


def open_pickle(ref: str, path: Path, files: list[Path], allow_pickle: bool) -> ArraySource:
    """The tensors of pickled ``pytorch_model*.bin`` ``files``, loaded with ``weights_only=True``.

    Each file holds a state dict (tensor name -> tensor) at its top level or, in a training
    checkpoint, under one of :data:`STATE_DICT_KEYS` (looked for two levels deep, e.g.
    ``{"module": {"state_dict": ...}}``). Names are kept as saved (a ``model.`` prefix stays).

    Raises:
        PickleNotAllowedError: ``allow_pickle`` is False.
        SourceError: torch is not installed.
        CorruptFileError: a file cannot be loaded, or holds no state dict (a list, tensors mixed
            with other values at the top level) — naming the file and what it holds.
        UnsupportedDtypeError: a tensor numpy cannot hold (FP8, ...), naming it.
    """
    if not allow_pickle:
        raise PickleNotAllowedError(
            f"{path}: only pickled pytorch_model*.bin weights here; pickles can run code — pass "
            "--allow-pickle if you trust them, or convert the model to safetensors"
        )
    try:
        import torch
    except ImportError:
        raise SourceError(f"{path}: reading .bin checkpoints needs torch ({install_hint('merge')})") from None
    arrays: dict[str, np.ndarray] = {}
    for f in files:
        for name, t in _state_dict(f, _load(torch, f), torch).items():
            if t.dtype == torch.bfloat16:
                arrays[name] = t.float().numpy()  # exact: bf16 is a subset of f32
                continue
            try:
                arrays[name] = t.numpy()
            except TypeError:  # FP8 and other dtypes numpy has no type for
                raise UnsupportedDtypeError(
                    f"{f}: tensor {name!r} is {str(t.dtype).removeprefix('torch.')}; kinship reads only "
                    "float64, float32, float16 and bfloat16 — dequantise or convert the model first"
                ) from None
    return ArraySource(ref, path if path.is_dir() else path.parent, files, arrays)


def _load(torch: Any, f: Path) -> Any:
    try:
        return torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # legacy (pre-zip) files cannot be memory-mapped: load them whole
            raise CorruptFileError(f"{f}: cannot load with weights_only=True ({type(exc).__name__})") from None
    except Exception as exc:  # torch raises many types for a bad pickle
        raise CorruptFileError(f"{f}: cannot load with weights_only=True ({type(exc).__name__})") from None
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CorruptFileError(f"{f}: cannot load with weights_only=True ({type(exc).__name__})") from None


def _state_dict(f: Path, obj: Any, torch: Any, depth: int = 0) -> dict[str, Any]:
    """The name -> tensor mapping in a loaded checkpoint, or a one-line refusal saying what it holds."""
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        return obj
    if isinstance(obj, dict) and depth < 2:
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                try:
                    return _state_dict(f, obj[key], torch, depth + 1)
                except CorruptFileError:
                    continue
    raise CorruptFileError(
        f"{f}: holds {_describe(obj, torch)}, not a state dict; kinmerge reads name -> tensor at the top level "
        f"or under {', '.join(repr(k) for k in STATE_DICT_KEYS)} — re-save it with "
        "torch.save(model.state_dict(), ...) or convert it to safetensors"
    )


def _describe(obj: Any, torch: Any) -> str:
    if not isinstance(obj, dict):
        return _a(type(obj).__name__)
    if not obj:
        return "an empty dict"
    odd = next((k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
    what = _a(type(obj[odd]).__name__) if odd in obj else "not a tensor"
    return f"a dict whose entry {str(odd)[:60]!r} is {what}"


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"
