"""Tiny model families written straight to safetensors (no torch): fast fixtures for kinship.

Values are chosen in float32 and stored in the requested dtype; ``decode`` turns what was
stored back into float64 independently of kinmerge's kernels, so tests compare against the
values actually on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kinmerge.sources import save_safetensors, to_bf16_bits

LLAMA_SHAPES = {
    "model.embed_tokens.weight": (50, 16),
    "model.layers.0.self_attn.q_proj.weight": (16, 16),
    "model.layers.0.mlp.up_proj.weight": (32, 16),
    "model.layers.0.input_layernorm.weight": (16,),
    "model.layers.1.self_attn.q_proj.weight": (16, 16),
    "model.layers.1.mlp.up_proj.weight": (32, 16),
    "model.layers.1.input_layernorm.weight": (16,),
    "model.norm.weight": (16,),
    "lm_head.weight": (50, 16),
}
NP_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """What ``values`` become once written as ``dtype``, as float64."""
    if dtype == "BF16":
        return (to_bf16_bits(values).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return values.astype(NP_DTYPES[dtype]).astype(np.float64)


def write_model(folder: Path, tensors: dict[str, np.ndarray], dtype: str = "BF16", vocab: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if dtype == "BF16":
        save_safetensors(folder / "model.safetensors", {k: v.astype(np.float32) for k, v in tensors.items()}, bf16=True)
    else:
        save_safetensors(folder / "model.safetensors", {k: v.astype(NP_DTYPES[dtype]) for k, v in tensors.items()})
    cfg = {"model_type": "llama", "vocab_size": vocab or 50}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def make_family(root: Path, n: int = 3, *, dtype: str = "BF16", seed: int = 0, shapes=None, scale: float = 0.05,
                shared: float = 0.5) -> tuple[Path, list[Path]]:
    """A base and ``n`` children whose deltas share one direction (so kinship differs from 0)."""
    rng = np.random.default_rng(seed)
    shapes = shapes or LLAMA_SHAPES
    base = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    common = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    base_dir = write_model(root / "base", base, dtype)
    children = []
    for i in range(n):
        w = shared * (i + 1) / n
        child = {k: v + scale * (w * common[k] + rng.standard_normal(v.shape)) for k, v in base.items()}
        children.append(write_model(root / f"child{i}", child, dtype))
    return base_dir, children


def load_stored(folder: Path) -> dict[str, np.ndarray]:
    """Read a model back as float64 through an independent path (raw bytes + header)."""
    import struct

    f = folder / "model.safetensors" if folder.is_dir() else folder
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        lo, hi = meta["data_offsets"]
        raw = data[8 + n + lo : 8 + n + hi]
        if meta["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32).astype(np.float64)
        else:
            arr = np.frombuffer(raw, dtype={"F32": "<f4", "F16": "<f2", "F64": "<f8"}[meta["dtype"]]).astype(np.float64)
        out[name] = arr.reshape(meta["shape"])
    return out


def flat_delta(model: Path, base: Path, names: list[str] | None = None) -> np.ndarray:
    m, b = load_stored(model), load_stored(base)
    names = names or list(b)
    return np.concatenate([(m[k] - b[k]).ravel() for k in names])
