#!/usr/bin/env python
"""Stream a Llama-2-7B-shaped model family to disk: a base and N children whose deltas have a
designed correlation, as sharded BF16 safetensors with an index and a config.json.

Shapes are Llama-2-7B's (32 layers, hidden 4096, intermediate 11008, 32 heads, vocabulary 32000,
untied head: 6.74 B parameters) and so are the tensor names (``model.embed_tokens.weight``,
``model.layers.N.self_attn.q_proj.weight``, ..., ``lm_head.weight``); ``--scale`` and the shape
options give smaller families with the same names (tests, the sketch accuracy study).

**Disk and time at full size** (the defaults): 13.5 GB per model in bf16, so base + 2 children
is 40.4 GB (f32 doubles it). Written chunk by chunk (4M values), never a model in memory: peak
RSS ~0.2 GB. Generation runs at 150-190 M values/s on one core (numpy; measured on the shared
2-core dev VM with families of 0.17 B and 0.5 B parameters), so the 20.2 G values of base + 2
children take ~2 minutes of CPU. The 40 GB of writes take ~70 s more at that VM's disk speed
(580 MB/s): expect 3-4 minutes in all, longer under load. ``--threads 2`` writes two models at
once.

**The deltas.** Every value is drawn from one block of 4M float32 normals (PCG64, seeded), read
at a hashed offset per (tensor, chunk, component): cheap, deterministic for a seed, and
uncorrelated between components (kinship needs controlled correlation, not high-quality
randomness). Child k's delta is ``σ_T · (a·(G + μ) + b_k·P_{pair(k)} + c_k·E_k)``: G is the
family direction (mean μ = 0.25, so PCC and cosine differ), children 2i-1 and 2i share P_i
with strength ``STRENGTHS`` (0.95, 0.7, 0.4, then 0: pairs of PCC ~0.99, ~0.58, ~0.25, ~0.09,
cycling), and E_k is the child's own noise, with ``a² + b_k² + c_k² = 1``. The designed PCC
matrix goes to ``family.json``; σ_T is 0.002 for matrices and 0.004 for norms (base ~N(0,
0.02) and ~N(1, 0.02)). ``--extra-vocab K`` gives the last child K more vocabulary rows (a
fine-tune that added tokens).

Usage::

    python benchmarks/family7b.py /data/fam7b --children 2                 # the 7B family, ~40 GB
    python benchmarks/family7b.py /tmp/fam --scale tiny --children 4       # same names, 0.5 M params
    python benchmarks/family7b.py /tmp/fam --layers 4 --hidden 512 --intermediate 1376 --vocab 32000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

import llama_layout
from llama_layout import PROJ_FIRST, numel, safetensors_header

VERSION = 1
GENERATOR = f"kinmerge benchmarks/family7b.py v{VERSION}"
CHUNK = 1 << 22  # values per generated chunk, and the size of the random block
G_OFFSET = 0.25  # mean of the family direction
FAMILY_WEIGHT = 0.3  # a: every child's share of the family direction
STRENGTHS = (0.95, 0.7, 0.4, 0.0)  # b for pair i (children 2i-1, 2i), cycling


def shape(hidden: int, intermediate: int, layers: int, heads: int, vocab: int, kv_heads: int | None = None) -> dict:
    """A Llama config's shape fields (``kv_heads`` defaults to ``heads``: no grouped-query attention)."""
    return {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads or heads, "vocab_size": vocab}


LLAMA2_7B = shape(4096, 11008, 32, 32, 32000)
SCALES = {  # same names, smaller shapes
    "7b": LLAMA2_7B,
    "tiny": shape(64, 176, 2, 4, 1000),
    "small": shape(256, 688, 4, 4, 8000),
    "medium": shape(1024, 2752, 8, 16, 32000),
}
DTYPES = {"bf16": ("BF16", 2), "f16": ("F16", 2), "f32": ("F32", 4)}
_MASK = (1 << 64) - 1


def tensor_list(cfg: dict, vocab: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """Llama-2 tensor names and shapes, in the order this generator stores them."""
    return llama_layout.tensor_list(cfg, vocab, order=PROJ_FIRST)


def coefficients(n_children: int) -> np.ndarray:
    """(N, 3): a, b_k, c_k per child (family, pair direction, own noise); unit variance each."""
    out = np.zeros((n_children, 3))
    for k in range(n_children):
        b = STRENGTHS[(k // 2) % len(STRENGTHS)]
        out[k] = FAMILY_WEIGHT, b, math.sqrt(max(0.0, 1.0 - FAMILY_WEIGHT**2 - b * b))
    return out


def designed_pcc(n_children: int) -> list[list[float]]:
    """The PCC the design aims at (exact in expectation; the realised values differ ~1e-3)."""
    c = coefficients(n_children)
    m = [[1.0] * n_children for _ in range(n_children)]
    for i in range(n_children):
        for j in range(n_children):
            if i != j:
                m[i][j] = c[i, 0] * c[j, 0] + (c[i, 1] * c[j, 1] if i // 2 == j // 2 else 0.0)
    return m


def _mix(*words: int) -> int:
    """SplitMix64 over several words: the offset of one (tensor, chunk, component) in the block."""
    z = 0x9E3779B97F4A7C15
    for w in words:
        z = (z ^ (w & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK
        z ^= z >> 31
    return z


class Generator:
    """Values of a family, chunk by chunk: ``values(model, tensor_index, name, lo, hi)``."""

    def __init__(self, seed: int, n_children: int):
        self.seed = seed
        block = np.random.default_rng(seed).standard_normal(CHUNK, dtype=np.float32)
        self.block = np.concatenate([block, block])  # any offset + CHUNK stays inside
        self.coef = coefficients(n_children).astype(np.float32)

    def _slice(self, t: int, lo: int, component: int, m: int) -> np.ndarray:
        off = _mix(self.seed, t, lo, component) % CHUNK
        return self.block[off : off + m]

    def values(self, model: int, t: int, name: str, lo: int, hi: int, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
        """float32 values [lo, hi) of tensor ``t`` (``name``) for model 0 (base) or child k >= 1."""
        m = hi - lo
        norm = name.endswith("norm.weight")
        mean, std, dstd = (1.0, 0.02, 0.004) if norm else (0.0, 0.02, 0.002)
        v, w = out[:m], tmp[:m]
        np.multiply(self._slice(t, lo, 0, m), np.float32(std), out=v)
        if model == 0:
            v += np.float32(mean)
            return v
        a, b, c = (float(x) * dstd for x in self.coef[model - 1])
        v += np.float32(mean + a * G_OFFSET)  # the family direction's mean, folded into one add
        for coef, component in ((a, 1), (b, 2 + (model - 1) // 2), (c, 1000 + model)):
            if coef:
                np.multiply(self._slice(t, lo, component, m), np.float32(coef), out=w)
                v += w
        return v


def to_raw(values: np.ndarray, dtype: str, out: np.ndarray) -> np.ndarray:
    """float32 -> the stored dtype's raw values (BF16: round to nearest even, like torch)."""
    if dtype == "F32":
        return values
    if dtype == "F16":
        return values.astype(np.float16)
    bits = values.view(np.uint32)
    r = out[: values.size]
    np.right_shift(bits, 16, out=r)
    r &= 1
    r += bits
    r += 0x7FFF  # finite values: no uint32 overflow
    r >>= 16
    return r.astype(np.uint16)


def shard_plan(tensors: list[tuple[str, tuple[int, ...]]], itemsize: int, shard_bytes: int) -> list[list[int]]:
    """Consecutive tensors per shard, each shard at most ``shard_bytes`` (a larger tensor alone)."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, shape) in enumerate(tensors):
        nb = numel(shape) * itemsize
        if shards[-1] and size + nb > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nb
    return shards


def write_model(folder: Path, gen: Generator, model: int, cfg: dict, dtype_name: str, shard_bytes: int,
                vocab: int, progress=None) -> int:
    """Write one model (0 = base) as sharded safetensors + index + config; returns bytes written."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from kinmerge._io import atomic_dir

    dtype, itemsize = DTYPES[dtype_name]
    tensors = tensor_list(cfg, vocab)
    base_names = {n: i for i, (n, _) in enumerate(tensor_list(cfg))}
    shards = shard_plan(tensors, itemsize, shard_bytes)
    buf, scratch = np.empty(CHUNK, np.float32), np.empty(CHUNK, np.float32)
    bits = np.empty(CHUNK, np.uint32)
    total = 0
    with atomic_dir(folder, replace=True) as tmp:
        weight_map = {}
        for s, idx in enumerate(shards):
            fname = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
            with open(tmp / fname, "wb") as fh:
                fh.write(safetensors_header([tensors[i] for i in idx], GENERATOR, dtype, itemsize)[0])
                for i in idx:
                    name, shape = tensors[i]
                    weight_map[name] = fname
                    t = base_names[name]  # the same stream per name: extra rows extend the base's
                    n = numel(shape)
                    for lo in range(0, n, CHUNK):
                        hi = min(n, lo + CHUNK)
                        raw = to_raw(gen.values(model, t, name, lo, hi, buf, scratch), dtype, bits)
                        fh.write(memoryview(np.ascontiguousarray(raw)))
                        total += raw.nbytes
                        if progress:
                            progress(raw.nbytes)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                  "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
                  "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype_name],
                  "bos_token_id": 1, "eos_token_id": 2, **cfg, "vocab_size": vocab}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return total


def generate(out: Path, cfg: dict, n_children: int, *, dtype: str = "bf16", seed: int = 0,
             shard_bytes: int = 5 * 10**9, extra_vocab: int = 0, threads: int = 1, log=print) -> dict:
    """Write base + ``n_children`` under ``out``; returns what ``family.json`` records."""
    params = sum(numel(s) for _, s in tensor_list(cfg))
    itemsize = DTYPES[dtype][1]
    need = params * itemsize * (n_children + 1) + extra_vocab * cfg["hidden_size"] * 2 * itemsize
    out.mkdir(parents=True, exist_ok=True)
    free = os.statvfs(out).f_bavail * os.statvfs(out).f_frsize
    if need > 0.95 * free:
        raise SystemExit(f"need {need / 1e9:.1f} GB in {out}, only {free / 1e9:.1f} GB free")
    gen = Generator(seed, n_children)
    names = ["base"] + [f"child{k}" for k in range(1, n_children + 1)]
    log(f"[family7b] {params / 1e6:,.1f} M params x {len(names)} models, {dtype}, {need / 1e9:.2f} GB -> {out}")
    t0 = time.perf_counter()
    done = [0]
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        vocab = cfg["vocab_size"] + (extra_vocab if k == n_children and k > 0 else 0)
        try:
            write_model(out / names[k], gen, k, cfg, dtype, shard_bytes, vocab)
        except BaseException as exc:  # re-raised by the main thread
            errors.append(exc)
            return
        with lock:
            done[0] += 1
            log(f"[family7b]   {names[k]} done ({done[0]}/{len(names)}, {time.perf_counter() - t0:.1f} s)")

    pending = list(range(len(names)))
    while pending:
        batch, pending = pending[:threads], pending[threads:]
        workers = [threading.Thread(target=one, args=(k,)) for k in batch]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            raise errors[0]
    seconds = time.perf_counter() - t0
    info = {"version": VERSION, "seed": seed, "dtype": dtype, "config": cfg, "params": params,
            "children": n_children, "extra_vocab": extra_vocab, "models": names,
            "coefficients": coefficients(n_children).tolist(), "designed_pcc": designed_pcc(n_children),
            "bytes": need, "seconds": round(seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    (out / "family.json").write_text(json.dumps(info, indent=1))
    log(f"[family7b] done in {seconds:.1f} s ({params * len(names) / seconds / 1e6:.0f} M values/s), "
        f"peak RSS {info['peak_rss_mb']:.0f} MB")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for base/, child1/, ... and family.json")
    ap.add_argument("--children", type=int, default=2, help="children (default 2)")
    ap.add_argument("--scale", choices=sorted(SCALES), default="7b", help="shape preset (default 7b)")
    for opt in ("hidden", "intermediate", "layers", "heads", "kv-heads", "vocab"):
        ap.add_argument(f"--{opt}", type=int, default=None, help=f"override the preset's {opt}")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-mb", type=float, default=5000, help="max shard size in MB (default 5000, like HF)")
    ap.add_argument("--extra-vocab", type=int, default=0, help="extra vocabulary rows for the last child")
    ap.add_argument("--threads", type=int, default=1, help="models written at once (default 1)")
    args = ap.parse_args()
    cfg = dict(SCALES[args.scale])
    keys = {"hidden": "hidden_size", "intermediate": "intermediate_size", "layers": "num_hidden_layers",
            "heads": "num_attention_heads", "kv_heads": "num_key_value_heads", "vocab": "vocab_size"}
    for opt, key in keys.items():
        if getattr(args, opt) is not None:
            cfg[key] = getattr(args, opt)
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise SystemExit("--hidden must be a multiple of --heads")
    generate(args.out, cfg, args.children, dtype=args.dtype, seed=args.seed, shard_bytes=int(args.shard_mb * 1e6),
             extra_vocab=args.extra_vocab, threads=max(1, args.threads))


if __name__ == "__main__":
    main()
