"""The synthetic model family of ``kinship_bench.py``: a Llama-shaped BF16 base and N children on disk.

The children's deltas share structure (children 1-2 a strong direction, 3-4 a weaker one, 5-6
only the family direction), so kinship varies by pair. Generation streams tensor by tensor (a
fused numba kernel when numba is installed, numpy otherwise): it never holds a model in RAM, and
a family is generated once per size and reused from the work directory while its settings match.

Example::

    info = generate_family(Path("/tmp/kbench"), 2e7, 6)   # base + 6 children, ~20 M params each
    info["files"][0]                                      # ".../llama-20M/base/model.safetensors"
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

from llama_layout import numel, safetensors_header, tensor_list

VOCAB = 32000
GEN_VERSION = 1
SEED = 20250101
CHUNK = 1 << 22  # elements per chunk in the generator and the numpy workers
G_OFFSET = 0.25  # mean of the family direction: makes PCC and cosine differ

# Child k (1-based): weights of (family direction G, pair-1-2 direction, pair-3-4 direction, own noise).
_COEF = {1: (0.3, 0.9, 0.0, 0.3), 2: (0.3, 0.9, 0.0, 0.3), 3: (0.3, 0.0, 0.6, 0.7),
         4: (0.3, 0.0, 0.6, 0.7), 5: (0.5, 0.0, 0.0, 0.85), 6: (0.2, 0.0, 0.0, 1.0)}
_COEF_DEFAULT = (0.3, 0.0, 0.0, 0.95)
MAX_CHILDREN = 56


# == model shape =============================================================================


def llama_config(params: float) -> dict:
    """Hidden size / layers / intermediate size of a Llama-like model with about ``params`` weights."""
    best = None
    for h in range(128, 8193, 128):
        head_dim = 64 if h <= 2048 else 128
        heads = max(1, h // head_dim)
        kv_heads = heads // 4 if heads % 4 == 0 else heads  # grouped-query attention, like Llama 3
        kv = kv_heads * head_dim
        inter = max(256, round(h * 8 / 3 / 256) * 256)
        per_layer = 2 * h * h + 2 * kv * h + 3 * h * inter + 2 * h
        fixed = 2 * VOCAB * h + h
        layers = round((params - fixed) / per_layer)
        if layers < 2:
            continue
        total = fixed + layers * per_layer
        score = 20 * abs(math.log(total / params)) + abs(math.log((h / layers) / 64))
        if best is None or score < best[0]:
            best = (score, dict(hidden_size=h, num_hidden_layers=layers, intermediate_size=inter,
                                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                                vocab_size=VOCAB, params=total))
    if best is None:
        raise SystemExit(f"--params {params:g} is too small for a Llama shape with a {VOCAB}-token vocabulary")
    return best[1]


# == generation ==============================================================================


def _tensor_params(name: str) -> tuple[float, float, float]:
    """(base mean, base std, delta std) of a tensor: norms sit around 1, matrices around 0."""
    if name.endswith("norm.weight"):
        return 1.0, 0.02, 0.004
    return 0.0, 0.02, 0.002


def _coef_table(n_children: int):
    import numpy as np

    table = np.zeros((n_children + 1, 4), dtype=np.float32)
    for k in range(1, n_children + 1):
        table[k] = _COEF.get(k, _COEF_DEFAULT)
    return table


_NUMBA_GEN = None


def _numba_generator():
    """Two numba kernels: values of the requested models for one chunk, then float32 -> BF16 bits."""
    global _NUMBA_GEN
    if _NUMBA_GEN is not None:
        return _NUMBA_GEN
    import numpy as np
    from numba import njit, prange

    m1, m2, m3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
    s6, s16, s27, s30, s31, s32, s48 = (np.uint64(s) for s in (6, 16, 27, 30, 31, 32, 48))
    mask, one = np.uint64(0xFFFF), np.uint64(1)
    centre, scale = np.float32(131070.0), np.float32(1.0 / 37837.7)
    goff = np.float32(G_OFFSET)

    @njit(inline="always")
    def normal(key):  # splitmix64 of the key; sum of its four 16-bit parts ~ N(0, 1) (Irwin-Hall, n=4)
        z = (key + one) * m1
        z = (z ^ (z >> s30)) * m2
        z = (z ^ (z >> s27)) * m3
        z = z ^ (z >> s31)
        s = (z & mask) + ((z >> s16) & mask) + ((z >> s32) & mask) + (z >> s48)
        return (np.float32(s) - centre) * scale

    @njit(parallel=True, cache=True)
    def gen(out, which, coef, start, base_mean, base_std, delta_std, seed):
        m = out.shape[1]
        for k in prange(m):
            key = (np.uint64(start + k) << s6) ^ seed
            b = np.float32(base_mean) + np.float32(base_std) * normal(key)
            g = normal(key + np.uint64(1)) + goff
            p12 = normal(key + np.uint64(2))
            p34 = normal(key + np.uint64(3))
            for w in range(which.shape[0]):
                c = which[w]
                if c == 0:
                    out[w, k] = b
                else:
                    d = coef[c, 0] * g + coef[c, 1] * p12 + coef[c, 2] * p34
                    d += coef[c, 3] * normal(key + np.uint64(3) + np.uint64(c))
                    out[w, k] = b + np.float32(delta_std) * d

    @njit(parallel=True, cache=True)
    def to_bf16(bits, out):  # round to nearest even, like torch
        for w in range(bits.shape[0]):
            for k in prange(bits.shape[1]):
                b = np.uint64(bits[w, k])
                out[w, k] = np.uint16((b + np.uint64(0x7FFF) + ((b >> s16) & one)) >> s16)

    _NUMBA_GEN = (gen, to_bf16)
    return _NUMBA_GEN


def _gen_chunk(which, coef, start: int, m: int, name: str, backend: str):
    """BF16 bits (len(which), m) of one chunk of one tensor for the models listed in ``which``."""
    import numpy as np

    mean, std, dstd = _tensor_params(name)
    if backend == "numba":
        gen, to_bf16 = _numba_generator()
        vals = np.empty((len(which), m), dtype=np.float32)
        gen(vals, which, coef, start, mean, std, dstd, np.uint64(SEED))
        bits = np.empty((len(which), m), dtype=np.uint16)
        to_bf16(vals.view(np.uint32), bits)
        return bits
    rng = np.random.default_rng([SEED, start])
    b = (mean + std * rng.standard_normal(m, dtype=np.float32)).astype(np.float32)
    g = rng.standard_normal(m, dtype=np.float32) + np.float32(G_OFFSET)
    p12 = rng.standard_normal(m, dtype=np.float32)
    p34 = rng.standard_normal(m, dtype=np.float32)
    bits = np.empty((len(which), m), dtype=np.uint16)
    for w, c in enumerate(which):
        if c == 0:
            v = b
        else:
            noise = np.random.default_rng([SEED, start, int(c)]).standard_normal(m, dtype=np.float32)
            d = coef[c, 0] * g + coef[c, 1] * p12 + coef[c, 2] * p34 + coef[c, 3] * noise
            v = (b + np.float32(dstd) * d).astype(np.float32)
        u = v.view(np.uint32).astype(np.uint64)
        bits[w] = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return bits


def _gen_backend() -> str:
    try:
        import numba  # noqa: F401

        return "numba"
    except ImportError:
        return "numpy"


def size_tag(params: float) -> str:
    return f"{params / 1e9:.3g}B" if params >= 1e8 else f"{params / 1e6:.3g}M"


def generate_family(workdir: Path, params: float, n_children: int) -> dict:
    """Create (or reuse) base + children under ``workdir``; return paths and the config."""
    import numpy as np

    if not 1 <= n_children <= MAX_CHILDREN:
        raise SystemExit(f"--models must be between 1 and {MAX_CHILDREN}")
    cfg = llama_config(params)
    backend = _gen_backend()
    family = workdir / f"llama-{size_tag(params)}"
    spec = {"config": cfg, "version": GEN_VERSION, "seed": SEED, "generator": backend}
    meta = family / "family.json"
    if meta.exists():
        old = json.loads(meta.read_text())
        if {k: old.get(k) for k in spec} != spec:
            print(f"[gen] {family}: generated with other settings; regenerating", flush=True)
            shutil.rmtree(family)
    family.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(spec, indent=1))
    tensors = tensor_list(cfg)
    head, data_size = safetensors_header(tensors, f"kinship_bench v{GEN_VERSION}")
    expected = len(head) + data_size
    names = ["base"] + [f"child{k}" for k in range(1, n_children + 1)]
    dirs = [family / n for n in names]
    config_json = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
                   "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "hidden_act": "silu",
                   **{k: v for k, v in cfg.items() if k != "params"}}
    missing = []
    for k, d in enumerate(dirs):
        f = d / "model.safetensors"
        if not (f.exists() and f.stat().st_size == expected):
            missing.append(k)
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text(json.dumps(config_json, indent=1))
    info = {"family": str(family), "config": cfg, "dirs": [str(d) for d in dirs],
            "files": [str(d / "model.safetensors") for d in dirs], "file_bytes": expected,
            "generator": backend, "generated": [names[k] for k in missing], "generate_seconds": 0.0}
    if not missing:
        print(f"[gen] reusing {len(dirs)} cached models in {family} ({expected / 1e9:.2f} GB each)", flush=True)
        return info
    need = expected * len(missing)
    free = shutil.disk_usage(family).free
    if need > free * 0.95:
        raise SystemExit(f"[gen] need {need / 1e9:.1f} GB on {family}, only {free / 1e9:.1f} GB free")
    print(f"[gen] writing {len(missing)} model(s) of {cfg['params'] / 1e9:.3f} B params "
          f"({expected / 1e9:.2f} GB each, {backend}) into {family}", flush=True)
    t0 = time.perf_counter()
    which = np.array(missing, dtype=np.int64)
    coef = _coef_table(n_children)
    tmps = [dirs[k] / ".model.safetensors.tmp" for k in missing]
    handles = [open(t, "wb") for t in tmps]  # noqa: SIM115
    try:
        for fh in handles:
            fh.write(head)
        start = 0
        done, total = 0, data_size // 2
        for name, shape in tensors:
            n = numel(shape)
            for lo in range(0, n, CHUNK):
                m = min(CHUNK, n - lo)
                bits = _gen_chunk(which, coef, start + lo, m, name, backend)
                for w, fh in enumerate(handles):
                    fh.write(memoryview(bits[w]))
                done += m
            start += n
            if name.endswith("down_proj.weight") and name.split(".")[2].isdigit() and int(name.split(".")[2]) % 8 == 7:
                print(f"[gen]   {done / total:5.1%}  {time.perf_counter() - t0:6.1f} s", flush=True)
    finally:
        for fh in handles:
            fh.close()
    for k, t in zip(missing, tmps, strict=True):
        os.replace(t, dirs[k] / "model.safetensors")
    info["generate_seconds"] = time.perf_counter() - t0
    print(f"[gen] done in {info['generate_seconds']:.1f} s", flush=True)
    return info
