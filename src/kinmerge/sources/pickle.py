"""Pickled PyTorch checkpoints (``pytorch_model*.bin``), read only when the user asks.

A pickle can run code when loaded, so ``open_model`` refuses these files unless
``allow_pickle=True`` (CLI: ``--allow-pickle``), and even then loads them with
``torch.load(weights_only=True)``, which accepts only plain tensors. The tensors are held in
memory (an ``ArraySource``); BF16 is widened to float32, which is exact.

Example:
    >>> src = open_pickle("old", Path("old"), [Path("old/pytorch_model.bin")], allow_pickle=True)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kinmerge.errors import CorruptFileError, PickleNotAllowedError, SourceError
from kinmerge.sources.base import ArraySource

__all__ = ["open_pickle"]


def open_pickle(ref: str, path: Path, files: list[Path], allow_pickle: bool) -> ArraySource:
    """The tensors of pickled ``pytorch_model*.bin`` ``files``, loaded with ``weights_only=True``.

    Raises:
        PickleNotAllowedError: ``allow_pickle`` is False.
        SourceError: torch is not installed.
        CorruptFileError: a file is not a plain state dict of tensors.
    """
    if not allow_pickle:
        raise PickleNotAllowedError(
            f"{path}: only pickled pytorch_model*.bin weights here; pickles can run code — pass "
            "--allow-pickle if you trust them, or convert the model to safetensors"
        )
    try:
        import torch
    except ImportError:
        raise SourceError(f"{path}: reading .bin checkpoints needs torch (pip install 'kinmerge[merge]')") from None
    arrays: dict[str, np.ndarray] = {}
    for f in files:
        try:
            state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for a bad pickle
            raise CorruptFileError(f"{f}: cannot load with weights_only=True ({type(exc).__name__})") from None
        for name, t in state.items():
            if t.dtype == torch.bfloat16:
                arrays[name] = t.float().numpy()  # exact: bf16 is a subset of f32
            else:
                arrays[name] = t.numpy()
    return ArraySource(ref, path if path.is_dir() else path.parent, files, arrays)
