"""Llama tensor names and shapes, and the BF16/F16/F32 safetensors header: one copy for the
benchmarks' family generators (``bench_family.py`` behind ``kinship_bench.py``, ``family7b.py``).

The two generators store a layer's tensors in different orders (``LAYER_ORDER`` and
``PROJ_FIRST``); the order decides where each tensor's bytes sit in the file and so which values
the generators draw for it, so each keeps its own to keep regenerated files byte-identical.

Example::

    >>> cfg = {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 1,
    ...        "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1000}
    >>> [n for n, _ in tensor_list(cfg)][:3]
    ['model.embed_tokens.weight', 'model.layers.0.input_layernorm.weight', 'model.layers.0.self_attn.q_proj.weight']
    >>> safetensors_header(tensor_list(cfg), "doctest")[1] == 2 * sum(numel(s) for _, s in tensor_list(cfg))
    True
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

# The order of the HF modeling code (kinship_bench's generated families).
LAYER_ORDER = ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# Projections first, norms last (family7b's families).
PROJ_FIRST = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
              "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def tensor_list(cfg: dict, vocab: int | None = None,
                order: tuple[str, ...] = LAYER_ORDER) -> list[tuple[str, tuple[int, ...]]]:
    """Llama tensor names and shapes in file order; ``vocab`` overrides the config's row count."""
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], vocab or cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * (cfg.get("head_dim") or h // cfg["num_attention_heads"])
    layer = {"input_layernorm": (h,), "self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h),
             "self_attn.v_proj": (kv, h), "self_attn.o_proj": (h, h), "post_attention_layernorm": (h,),
             "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h), "mlp.down_proj": (h, inter)}
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for i in range(cfg["num_hidden_layers"]):
        out += [(f"model.layers.{i}.{m}.weight", layer[m]) for m in order]
    return [*out, ("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def safetensors_header(tensors: list[tuple[str, tuple[int, ...]]], generator: str, dtype: str = "BF16",
                       itemsize: int = 2) -> tuple[bytes, int]:
    """The safetensors header for ``tensors`` (stored in that order) and the size of the data that follows."""
    hdr: dict = {"__metadata__": {"format": "pt", "generator": generator}}
    off = 0
    for name, shape in tensors:
        n = numel(shape) * itemsize
        hdr[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    blob = json.dumps(hdr, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob, off


def read_header(path: Path) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    """(name, dtype, shape, absolute offset, nbytes) per tensor, in file order."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        hdr = json.loads(fh.read(n))
    out = []
    for name, meta in hdr.items():
        if name == "__metadata__":
            continue
        lo, hi = meta["data_offsets"]
        out.append((name, meta["dtype"], tuple(meta["shape"]), 8 + n + lo, hi - lo))
    out.sort(key=lambda t: t[3])
    return out
