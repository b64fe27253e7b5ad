#!/usr/bin/env python
"""Benchmark ``kinmerge kinship`` / ``kinmerge matrix`` against the read floor and a naive baseline.

What it does, in one run (so ratios are measured under the same machine load):

1. Generates (once; cached in ``--workdir``) a Llama-shaped BF16 family of the chosen size: a base
   and N children whose deltas share structure (children 1-2 share a strong direction, 3-4 a
   weaker one, 5-6 only the family direction), so kinship varies by pair. Generation streams
   tensor by tensor (a fused numba kernel when numba is installed): it never holds a model in RAM.
2. Warms up (one run of each command) and warms the page cache.
3. ``--repeat`` times, interleaved: the *floor* (a subprocess reading the same files once with
   large ``readinto`` calls), ``kinmerge kinship`` on the pair; the floor over all N+1 files,
   ``kinmerge matrix`` on the N children.
4. Diagnostics: the fused kernel alone on in-memory chunks (1 and 2 threads), the scan with a
   no-op kernel (reading + pipeline alone), chunk sizes, the start-up cost (imports + kernel load).
5. The exact float64 reference for the pair (numpy, tensor by tensor, float64) and the *naive*
   baseline (a subprocess that, like the reference tool, loads every model fully in fp32,
   concatenates the deltas and reduces in float32), unless it cannot fit in RAM.
6. Cold-cache numbers (pages evicted with ``posix_fadvise(DONTNEED)``, no root needed).

Each measured thing is its own subprocess; its peak RSS is that process's own ``ru_maxrss``,
read with ``os.wait4`` (not the RUSAGE_CHILDREN maximum over all children).

Usage::

    python benchmarks/kinship_bench.py --params 0.5e9 --repeat 3 --write-doc docs/benchmarks.md
    python benchmarks/kinship_bench.py --params 1e9 --models 2 --repeat 3 --write-doc docs/benchmarks.md
    python benchmarks/kinship_bench.py --render-only --write-doc docs/benchmarks.md   # re-render

Results are kept per size in ``<workdir>/results-<size>.json``; ``--write-doc`` renders every
result found there into one Markdown page.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

VOCAB = 32000
GEN_VERSION = 1
SEED = 20250101
READ_BUF = 1 << 20  # bytes per readinto call in the floor: the fastest size here (see the diagnostics)
CHUNK = 1 << 22  # elements per chunk in the generator and the numpy workers
LOAD_LIMIT = 0.5  # 1-minute load above which a timed block is flagged
NAIVE_BYTES_PER_PARAM = 20  # 3 fp32 models (12) + 2 fp32 delta lists (8), before the models are freed
TORCH_BYTES_PER_PARAM = 24  # 2 fp32 deltas (8) + torch.stack (8) + torch.corrcoef centring (8)
G_OFFSET = 0.25  # mean of the family direction: makes PCC and cosine differ

# Child k (1-based): weights of (family direction G, pair-1-2 direction, pair-3-4 direction, own noise).
_COEF = {1: (0.3, 0.9, 0.0, 0.3), 2: (0.3, 0.9, 0.0, 0.3), 3: (0.3, 0.0, 0.6, 0.7),
         4: (0.3, 0.0, 0.6, 0.7), 5: (0.5, 0.0, 0.0, 0.85), 6: (0.2, 0.0, 0.0, 1.0)}
_COEF_DEFAULT = (0.3, 0.0, 0.0, 0.95)
MAX_CHILDREN = 56
NOTES_MARKER = "<!-- notes: everything from this line on is kept when the page is re-rendered -->"


# == model shapes ============================================================================


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


def tensor_list(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (inter, h)),
            (p + "mlp.up_proj.weight", (inter, h)),
            (p + "mlp.down_proj.weight", (h, inter)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def safetensors_header(tensors: list[tuple[str, tuple[int, ...]]]) -> tuple[bytes, int]:
    """The BF16 safetensors header for ``tensors`` and the size of the data that follows."""
    hdr: dict = {"__metadata__": {"format": "pt", "generator": f"kinship_bench v{GEN_VERSION}"}}
    off = 0
    for name, shape in tensors:
        n = _numel(shape) * 2
        hdr[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
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
    head, data_size = safetensors_header(tensors)
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
            n = _numel(shape)
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


# == workers (each runs in its own subprocess) ===============================================


def w_floor(files: list[str], bufsize: int = READ_BUF, page_offset: int = 0) -> dict:
    """Read every file once, start to end, with large readinto calls: the I/O floor.

    The buffer is page-aligned (an anonymous mmap). A ``bytearray`` would sit at malloc's page +
    16 bytes, and copying from the (page-aligned) page cache to a destination a few bytes ahead
    of the source within a page takes the slow path of ``rep movsb`` on AMD Zen: 2-2.5x slower
    (``page_offset=16`` reproduces it; the first benchmark runs measured that slow floor).
    """
    import mmap

    mem = mmap.mmap(-1, bufsize + 4096)
    view = memoryview(mem)[page_offset : page_offset + bufsize]
    total = 0
    t0 = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    seconds = time.perf_counter() - t0
    view.release()
    mem.close()
    return {"seconds": seconds, "bytes": total}


def _widen32(raw):
    import numpy as np

    w = raw.astype(np.uint32)
    w <<= 16
    return w.view(np.float32)


def w_naive(mode: str, base: str, a: str, b: str) -> dict:
    """Like the reference tool: whole models in fp32, concatenated deltas, float32 reductions.

    mode "numpy": float32 numpy reductions (dot products, norm of the difference, centring + dot).
    mode "torch": the reference tool's own reductions on the same vectors: ``torch.corrcoef`` of the
    stacked deltas, ``torch.dist``, and its cosine ``sqrt(dot(a, b)**2 / (dot(a, a) * dot(b, b)))``.
    """
    import numpy as np

    t0 = time.perf_counter()

    def load(path: str) -> dict:
        out = {}
        with open(path, "rb") as fh:
            for name, dtype, shape, off, nbytes in read_header(Path(path)):
                assert dtype == "BF16", dtype
                fh.seek(off)
                out[name] = _widen32(np.fromfile(fh, dtype="<u2", count=nbytes // 2)).reshape(shape)
        return out

    mb, ma, mc = load(base), load(a), load(b)
    t_load = time.perf_counter()
    d1 = [(ma[n] - mb[n]).ravel() for n in mb]
    d2 = [(mc[n] - mb[n]).ravel() for n in mb]
    del ma, mb, mc  # the reference frees the state dicts before concatenating
    da = np.concatenate(d1)
    del d1
    db = np.concatenate(d2)
    del d2
    t_cat = time.perf_counter()
    if mode == "torch":
        import torch

        ta, tb = torch.from_numpy(da), torch.from_numpy(db)
        pcc = torch.corrcoef(torch.stack((ta, tb), dim=0))[0, 1].item()
        ed = torch.dist(ta, tb).item()
        cs = float(np.sqrt(np.dot(da, db) ** 2 / (np.dot(da, da) * np.dot(db, db))))
    else:
        cs = float(da @ db) / math.sqrt(float(da @ da) * float(db @ db))
        ed = float(np.linalg.norm(da - db))  # float32 dot underneath
        da -= da.mean(dtype=np.float32)  # centre in place, as np.corrcoef does (there in float64)
        db -= db.mean(dtype=np.float32)
        pcc = float(da @ db) / math.sqrt(float(da @ da) * float(db @ db))
    t1 = time.perf_counter()
    return {"seconds": t1 - t0, "load_seconds": t_load - t0, "concat_seconds": t_cat - t_load,
            "reduce_seconds": t1 - t_cat, "elements": int(da.size), "pcc": pcc, "cs": cs, "ed": ed, "mode": mode}


def w_exact(base: str, a: str, b: str) -> dict:
    """Exact float64 reference, independent of kinmerge: numpy, chunk by chunk, float64 throughout."""
    import numpy as np

    t0 = time.perf_counter()
    cols: dict[str, list[float]] = {k: [] for k in ("sa", "sb", "saa", "sbb", "sab", "sdd")}
    bufs = [np.empty(CHUNK, dtype=np.uint16) for _ in range(3)]
    handles = [open(p, "rb", buffering=0) for p in (base, a, b)]  # noqa: SIM115
    heads = [{t[0]: t for t in read_header(Path(p))} for p in (base, a, b)]
    n = 0
    try:
        for name, _, _, _, nbytes in read_header(Path(base)):
            count = nbytes // 2
            for lo in range(0, count, CHUNK):
                m = min(CHUNK, count - lo)
                vals = []
                for fh, head, buf in zip(handles, heads, bufs, strict=True):
                    fh.seek(head[name][3] + 2 * lo)
                    fh.readinto(memoryview(buf[:m]).cast("B"))
                    vals.append(_widen32(buf[:m]).astype(np.float64))
                da, db = vals[1] - vals[0], vals[2] - vals[0]
                dd = da - db
                cols["sa"].append(float(da.sum()))
                cols["sb"].append(float(db.sum()))
                cols["saa"].append(float(da @ da))
                cols["sbb"].append(float(db @ db))
                cols["sab"].append(float(da @ db))
                cols["sdd"].append(float(dd @ dd))
                n += m
    finally:
        for fh in handles:
            fh.close()
    s = {k: math.fsum(v) for k, v in cols.items()}
    va, vb = s["saa"] - s["sa"] ** 2 / n, s["sbb"] - s["sb"] ** 2 / n
    return {"seconds": time.perf_counter() - t0, "elements": n,
            "pcc": (s["sab"] - s["sa"] * s["sb"] / n) / math.sqrt(va * vb),
            "cs": s["sab"] / math.sqrt(s["saa"] * s["sbb"]), "ed": math.sqrt(s["sdd"])}


def w_startup(n_models: str) -> dict:
    """What every CLI call pays before reading: imports and the first kernel call."""
    t0 = time.perf_counter()
    import numpy as np

    t1 = time.perf_counter()
    import kinmerge.cli
    import kinmerge.scan  # noqa: F401

    t2 = time.perf_counter()
    from kinmerge import _kernels

    n = int(n_models)
    raw = np.zeros(1 << 17, dtype=np.uint16)
    _kernels.accumulate(raw, "BF16", [raw] * n, ["BF16"] * n)
    t3 = time.perf_counter()
    heavy = [m for m in ("scipy", "numba", "llvmlite", "matplotlib", "torch", "transformers") if m in sys.modules]
    return {"seconds": t3 - t0, "numpy": t1 - t0, "kinmerge_import": t2 - t1, "first_kernel_call": t3 - t2,
            "backend": _kernels.default_backend(), "isa": _kernels.c_isa(), "heavy_modules": heavy}


def w_ab(rounds: int, elements: int, dirs: list[str]) -> dict:
    """In one process, alternate read / scan / kernel variants for ``rounds`` rounds.

    Alternating variants round by round lets machine noise hit every variant alike, so their
    differences can be trusted even on a busy machine. Returns seconds per variant and round.
    """
    import statistics as st
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from kinmerge import _kernels
    from kinmerge import scan as scanmod
    from kinmerge.sources import open_models

    real = _kernels.accumulate

    def null(base, base_dtype, models, model_dtypes, *, backend="auto"):
        n = len(models)
        return np.zeros(n), np.zeros((n, n))

    files = [str(Path(d) / "model.safetensors") for d in dirs]

    def scan(chunk: int, threads: int | None, kernel) -> float:
        _kernels.accumulate = kernel
        try:
            with open_models(dirs) as opened:
                return scanmod.scan(opened[0], opened[1:], chunk=chunk, threads=threads).seconds
        finally:
            _kernels.accumulate = real

    raws = [np.fromfile(f, dtype="<u2", count=elements, offset=read_header(Path(f))[0][3]) for f in files]
    m = min(r.size for r in raws)
    dt = ["BF16"] * (len(raws) - 1)
    c = scanmod.DEFAULT_CHUNK
    spans = [(lo, min(m, lo + c)) for lo in range(0, m, c)]

    def kernel(threads: int) -> float:  # seconds per position; threads take whole chunks
        def one(span):
            lo, hi = span
            real(raws[0][lo:hi], "BF16", [r[lo:hi] for r in raws[1:]], dt)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, spans))
        return (time.perf_counter() - t0) / m

    w = scanmod.n_threads()
    variants = {
        "floor_1mb": lambda: w_floor(files, 1 << 20)["seconds"],
        "floor_2mb": lambda: w_floor(files, 2 << 20)["seconds"],
        "floor_1mb_page16": lambda: w_floor(files, 1 << 20, 16)["seconds"],
        "scan_default": lambda: scan(c, None, real),
        "scan_chunk_256k": lambda: scan(1 << 18, None, real),
        "scan_chunk_512k": lambda: scan(1 << 19, None, real),
        "scan_chunk_2m": lambda: scan(1 << 21, None, real),
        "scan_chunk_4m": lambda: scan(1 << 22, None, real),
        "scan_1_thread": lambda: scan(c, 1, real),
        "scan_noop_kernel": lambda: scan(c, None, null),
        "kernel_per_pos_t1": lambda: kernel(1),
        "kernel_per_pos_t2": lambda: kernel(2),
    }
    scan(c, None, real)  # load the kernel once, outside the rounds
    out: dict = {k: [] for k in variants}
    loads = []
    for _ in range(rounds):
        loads.append(loadavg()["load1"])
        for k, fn in variants.items():
            out[k].append(fn())
    return {"seconds": 0.0, "rounds": rounds, "chunk_default": c, "workers": w, "loads": loads, "runs": out,
            "backend": _kernels.default_backend(), "isa": _kernels.c_isa(),
            "median": {k: st.median(v) for k, v in out.items()}, "min": {k: min(v) for k, v in out.items()}}


WORKERS = {"ab": w_ab, "floor": w_floor, "naive": w_naive, "exact": w_exact, "startup": w_startup}


def worker_main(argv: list[str]) -> None:
    name, args = argv[0], argv[1:]
    if name == "floor":
        out = w_floor(args)
    elif name == "ab":
        out = w_ab(int(args[0]), int(args[1]), args[2:])
    else:
        out = WORKERS[name](*args)
    print(json.dumps(out))


# == measuring ===============================================================================


def loadavg() -> dict:
    parts = Path("/proc/loadavg").read_text().split()
    running = int(parts[3].split("/")[0]) - 1  # minus the reader itself
    return {"load1": float(parts[0]), "load5": float(parts[1]), "running": max(0, running)}


def wait_quiet(limit_s: float) -> dict:
    """Wait (up to ``limit_s``) for the 1-minute load to drop below LOAD_LIMIT; return the load."""
    t0 = time.time()
    la = loadavg()
    while la["load1"] > LOAD_LIMIT and time.time() - t0 < limit_s:
        time.sleep(5)
        la = loadavg()
    if la["load1"] > LOAD_LIMIT:
        print(f"  [load] 1-min load {la['load1']:.2f} > {LOAD_LIMIT} (other work on the machine): "
              "absolute times are inflated; the ratios from this same run are the figures to trust", flush=True)
    return la


# A tiny launcher starts every measured command. Linux keeps the RSS high-water mark across
# exec: a command spawned straight from this (large) process would report *our* peak as its own.
# Forked from the ~10 MB launcher, it starts from the launcher's high-water mark instead.
_LAUNCHER = """
import json, os, subprocess, sys, time
rep, out, err, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with open(out, "wb") as o, open(err, "wb") as e:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=o, stderr=e)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
with open(rep, "w") as f:
    json.dump({"wall": wall, "rc": os.waitstatus_to_exitcode(status), "maxrss_kb": ru.ru_maxrss,
               "cpu": ru.ru_utime + ru.ru_stime}, f)
"""


def measure(cmd: list[str], env: dict | None = None, label: str = "") -> dict:
    """Run ``cmd``; wall time, its own peak RSS (os.wait4), CPU seconds, parsed JSON stdout."""
    stem = Path(os.environ.get("TMPDIR", "/tmp")) / f"kbench-{os.getpid()}"
    rep, out_path, err_path = (stem.with_suffix(x) for x in (".rep", ".out", ".err"))
    launcher = [sys.executable, "-S", "-c", _LAUNCHER, str(rep), str(out_path), str(err_path)]
    proc = subprocess.run([*launcher, *cmd], env=env, check=False)
    stdout = out_path.read_text() if out_path.exists() else ""
    stderr = err_path.read_text() if err_path.exists() else ""
    try:
        info = json.loads(rep.read_text())
    except (OSError, ValueError):
        info = {"rc": proc.returncode}
    for f in (rep, out_path, err_path):
        f.unlink(missing_ok=True)
    if proc.returncode != 0 or info["rc"] != 0:
        raise RuntimeError(f"{label or cmd[0]} failed (exit {info['rc']}):\n{stderr[-3000:]}")
    try:
        data = json.loads(stdout)
    except ValueError:
        data = {"stdout": stdout[-2000:]}
    res = {"wall": info["wall"], "rss_mb": info["maxrss_kb"] / 1024, "cpu": info["cpu"], "data": data}
    if label:
        print(f"  {label:<40} {res['wall']:7.2f} s wall  {res['rss_mb']:8.0f} MB peak RSS  "
              f"{res['cpu']:6.2f} s CPU", flush=True)
    return res


def worker_cmd(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "_worker", *args]


def kinmerge_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("kinmerge")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from kinmerge.cli import main; sys.argv[0] = 'kinmerge'; main()"]


def evict(files: list[str]) -> None:
    """Drop the files' pages from the page cache (no root needed; clean pages only)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files: list[str]) -> dict:
    return measure(worker_cmd("floor", *files), label=f"(warm page cache: {len(files)} files)")


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def summarize(runs: list[dict]) -> dict:
    return {
        "wall": statistics.median(r["wall"] for r in runs),
        "rss_mb": statistics.median(r["rss_mb"] for r in runs),
        "rss_mb_max": max(r["rss_mb"] for r in runs),
        "cpu": statistics.median(r["cpu"] for r in runs),
        "inproc": statistics.median(r["data"].get("seconds", float("nan")) for r in runs),
        "wall_min": min(r["wall"] for r in runs),
        "inproc_min": min(r["data"].get("seconds", float("nan")) for r in runs),
        "walls": [round(r["wall"], 3) for r in runs],
        "n": len(runs),
    }


# == the benchmark ===========================================================================


def _torch_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def run_benchmark(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[disk] {workdir}: {shutil.disk_usage(workdir).free / 1e9:.0f} GB free", flush=True)
    fam = generate_family(workdir, args.params, args.models)
    base, children = fam["dirs"][0], fam["dirs"][1:]
    files = fam["files"]
    pair_files = files[:3]
    km = kinmerge_cmd()
    kin_cmd = [*km, "kinship", children[0], children[1], "--base", base, "--json", "--no-progress"]
    do_matrix = args.models >= 3
    mat_cmd = [*km, "matrix", *children, "--base", base, "--json", "--no-progress", "--metric", "pcc,cs,ed"]
    res: dict = {"params": fam["config"]["params"], "requested_params": args.params, "family": fam,
                 "models": args.models, "repeat": args.repeat, "loads": [], "read_buf": READ_BUF,
                 "when": _dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
                 "command": " ".join(["python", "benchmarks/kinship_bench.py", *sys.argv[1:]])}

    def block(name: str) -> None:
        la = wait_quiet(args.quiet_wait)
        res["loads"].append({"block": name, **la})

    print("[warm-up] first kinmerge runs", flush=True)
    res["warmup"] = {"kinship": measure(kin_cmd, label="kinmerge kinship (warm-up)")}
    if do_matrix:
        res["warmup"]["matrix"] = measure(mat_cmd, label="kinmerge matrix (warm-up)")

    runs: dict[str, list[dict]] = {"floor_pair": [], "kinship": [], "floor_all": [], "matrix": []}
    for r in range(args.repeat):
        print(f"[timed] repeat {r + 1}/{args.repeat}", flush=True)
        # Read everything right before timing: this machine may page out file pages idle for ~1 min.
        warm(files if do_matrix else pair_files)
        block(f"timed {r + 1}")
        runs["floor_pair"].append(measure(worker_cmd("floor", *pair_files), label="floor: read 3 files"))
        runs["kinship"].append(measure(kin_cmd, label="kinmerge kinship"))
        if do_matrix:
            runs["floor_all"].append(measure(worker_cmd("floor", *files), label=f"floor: read {len(files)} files"))
            runs["matrix"].append(measure(mat_cmd, label=f"kinmerge matrix (N={args.models})"))
    res["summary"] = {k: summarize(v) for k, v in runs.items() if v}
    res["kinship_json"] = runs["kinship"][-1]["data"]
    if do_matrix:
        res["matrix_json"] = {k: v for k, v in runs["matrix"][-1]["data"].items()
                              if k in ("kinship", "seconds", "bytes_read")}

    # -- diagnostics: where the time goes -------------------------------------------------------
    if not args.no_diagnostics:
        print("[diagnostics]", flush=True)
        diag: dict = {}
        warm(pair_files)
        block("diagnostics")
        diag["startup"] = measure(worker_cmd("startup", "2"), label="start-up: imports + first kernel call")
        elems = str(min(fam["config"]["params"], args.kernel_elements))
        diag["ab_pair"] = measure(worker_cmd("ab", str(args.ab_rounds), elems, base, *children[:2]),
                                  label=f"A/B in-process, pair, {args.ab_rounds} rounds")
        if do_matrix:
            warm(files)
            diag["ab_all"] = measure(worker_cmd("ab", str(max(2, args.ab_rounds - 2)), elems, base, *children),
                                     label="A/B in-process, matrix")
        res["diagnostics"] = diag

    # -- exactness: an independent float64 reference ---------------------------------------------
    print("[exact] float64 reference (numpy, tensor by tensor)", flush=True)
    warm(pair_files)
    res["exact"] = measure(worker_cmd("exact", *pair_files), label="numpy float64 streaming (exact)")

    # -- naive baseline -------------------------------------------------------------------------
    p = fam["config"]["params"]
    need = NAIVE_BYTES_PER_PARAM * p + (1 << 30)
    avail = mem_available()
    res["naive_need_gb"], res["mem_available_gb"] = need / 1e9, avail / 1e9
    if args.skip_naive:
        res["naive_skipped"] = "skipped (--skip-naive)"
    elif need > 0.9 * avail:
        res["naive_skipped"] = (f"cannot hold: needs ~{need / 1e9:.1f} GB ({NAIVE_BYTES_PER_PARAM} B/param: 3 fp32 "
                                f"models + 2 fp32 deltas), {avail / 1e9:.1f} GB available")
        print(f"[naive] {res['naive_skipped']}", flush=True)
    else:
        naive_runs: list[dict] = []
        for r in range(args.repeat):
            print(f"[naive] repeat {r + 1}/{args.repeat}", flush=True)
            warm(pair_files)  # the naive run evicts other pages: re-warm its inputs
            block(f"naive {r + 1}")
            naive_runs.append(measure(worker_cmd("naive", "numpy", *pair_files), label="naive fp32 (numpy)"))
            # kinmerge right after, under the same conditions: the paired ratio
            warm(pair_files)
            runs.setdefault("kinship_paired", []).append(measure(kin_cmd, label="kinmerge kinship (paired)"))
        res["summary"]["naive"] = summarize(naive_runs)
        res["summary"]["kinship_paired"] = summarize(runs["kinship_paired"])
        res["naive_json"] = naive_runs[-1]["data"]
        need_t = TORCH_BYTES_PER_PARAM * p + (1 << 30)
        if _torch_available() and need_t <= 0.9 * mem_available():
            print("[naive] once more with the reference tool's own torch reductions", flush=True)
            warm(pair_files)
            block("naive torch")
            res["naive_torch"] = measure(worker_cmd("naive", "torch", *pair_files),
                                         label="naive fp32 (torch reductions)")
        elif not _torch_available():
            res["naive_torch_skipped"] = "torch not installed"
        else:
            res["naive_torch_skipped"] = f"cannot hold: needs ~{need_t / 1e9:.1f} GB"

    # -- cold cache -----------------------------------------------------------------------------
    if not args.no_cold:
        print("[cold] evicting the pair's pages with posix_fadvise(DONTNEED)", flush=True)
        cold: dict = {}
        try:
            evict(pair_files)
            cold["floor_pair"] = measure(worker_cmd("floor", *pair_files), label="floor (cold): read 3 files")
            evict(pair_files)
            cold["kinship"] = measure(kin_cmd, label="kinmerge kinship (cold)")
        except OSError as exc:
            cold["error"] = str(exc)
        res["cold"] = cold
        try:  # only probe: opening writes nothing (dropping caches would hit every user of the machine)
            os.close(os.open("/proc/sys/vm/drop_caches", os.O_WRONLY))
            res["drop_caches"] = "writable (not used: it would drop every user's cache)"
        except OSError as exc:
            res["drop_caches"] = f"not writable here ({exc.strerror})"
    return res


# == report ==================================================================================


def machine_info() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    info = {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu, "mem_gb": mem / 2**30,
            "python": platform.python_version(), "kernel": platform.release()}
    info["numpy"] = __import__("numpy").__version__
    try:
        from kinmerge import _kernels

        info["kinship_kernel"] = _kernels.default_backend() + (f" ({_kernels.c_isa()})" if _kernels.have_c() else "")
    except ImportError:
        info["kinship_kernel"] = "?"
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=Path(__file__).resolve().parent, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent, check=False).stdout.strip()
        if dirty:
            info["commit"] += " (measured on the working tree, with uncommitted changes under src/)"
    except OSError:
        info["commit"] = "?"
    return info


def _rel(x: float, ref: float) -> float:
    return abs(x - ref) / abs(ref) if ref else float("nan")


def exactness(res: dict) -> dict:
    ex = res["exact"]["data"]
    ms = ("pcc", "cs", "ed")
    out: dict = {"reference": {m: ex[m] for m in ms}}
    out["kinmerge"] = {m: res["kinship_json"]["kinship"][m] for m in ms}
    out["kinmerge_rel_err"] = {m: _rel(out["kinmerge"][m], ex[m]) for m in ms}
    if "naive_json" in res:
        out["naive"] = {m: res["naive_json"][m] for m in ms}
        out["naive_rel_err"] = {m: _rel(out["naive"][m], ex[m]) for m in ms}
    if "naive_torch" in res:
        out["torch"] = {m: res["naive_torch"]["data"][m] for m in ms}
        out["torch_rel_err"] = {m: _rel(out["torch"][m], ex[m]) for m in ms}
    if "matrix_json" in res:
        mat = res["matrix_json"]["kinship"]
        out["matrix_vs_pair"] = {m: abs(mat[m][0][1] - out["kinmerge"][m]) for m in ms}
    return out


def targets(res: dict) -> list[tuple[str, str, bool | None]]:
    s = res["summary"]
    out: list[tuple[str, str, bool | None]] = []
    k, f = s["kinship"], s["floor_pair"]
    out.append(("pair kinship within 1.5x of the warm read floor (process wall)",
                f"{k['wall'] / f['wall']:.2f}x ({k['wall']:.2f} s vs {f['wall']:.2f} s){_best(k, f, 'wall')}",
                k["wall"] <= 1.5 * f["wall"]))
    out.append(("  same, in-process (plan + scan vs the read loop, no start-up)",
                f"{k['inproc'] / f['inproc']:.2f}x ({k['inproc']:.2f} s vs {f['inproc']:.2f} s){_best(k, f, 'inproc')}",
                k["inproc"] <= 1.5 * f["inproc"]))
    if "naive" in s:
        n, kp = s["naive"], s["kinship_paired"]
        out.append(("pair kinship >= 6x faster than the naive baseline",
                    f"{n['wall'] / kp['wall']:.1f}x ({n['wall']:.1f} s vs {kp['wall']:.2f} s, paired runs)",
                    n["wall"] >= 6 * kp["wall"]))
    rss = [("kinship", k["rss_mb_max"])]
    if "matrix" in s:
        rss.append(("matrix", s["matrix"]["rss_mb_max"]))
    worst = max(v for _, v in rss)
    out.append(("peak RSS under 1 GB", ", ".join(f"{n} {v:.0f} MB" for n, v in rss), worst < 1024))
    if "matrix" in s:
        m, fa = s["matrix"], s["floor_all"]
        out.append((f"{res['models']}-model matrix within 1.5x of reading the {res['models'] + 1} files once",
                    f"{m['wall'] / fa['wall']:.2f}x ({m['wall']:.2f} s vs {fa['wall']:.2f} s){_best(m, fa, 'wall')}",
                    m["wall"] <= 1.5 * fa["wall"]))
        out.append(("  same, in-process", f"{m['inproc'] / fa['inproc']:.2f}x ({m['inproc']:.2f} s vs "
                    f"{fa['inproc']:.2f} s){_best(m, fa, 'inproc')}", m["inproc"] <= 1.5 * fa["inproc"]))
    return out


def _best(a: dict, b: dict, key: str) -> str:
    """The same ratio from the best (least disturbed) run of each, when there were several."""
    if a.get("n", 1) < 2 or f"{key}_min" not in a:
        return ""
    return f"; best runs {a[key + '_min'] / b[key + '_min']:.2f}x"


def print_table(res: dict) -> None:
    s = res["summary"]
    gb = res["family"]["file_bytes"] / 1e9
    print(f"\n== {res['params'] / 1e9:.3f} B params, {gb:.2f} GB per model, median of {res['repeat']} ==")
    print(f"{'measurement':<40}{'wall s':>8}{'in-proc s':>10}{'peak RSS MB':>13}  ratio")
    for label, key, ref, what in _rows(res):
        r = s[key]
        ratio = f"{r['wall'] / s[ref]['wall']:.2f}x {what}" if ref else ""
        print(f"{label:<40}{r['wall']:8.2f}{r['inproc']:10.2f}{r['rss_mb']:13.0f}  {ratio}")
    if "naive_skipped" in res:
        print(f"{'naive fp32 pair':<40}{res['naive_skipped']}")
    for name, val, ok in targets(res):
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {val}")
    ex = exactness(res)
    print("  rel. error vs float64 reference:",
          ", ".join(f"kinmerge {m} {v:.1e}" for m, v in ex["kinmerge_rel_err"].items()))
    for key, name in (("naive_rel_err", "naive numpy fp32"), ("torch_rel_err", "naive torch (reference code)")):
        if key in ex:
            print(f"  {name}: " + ", ".join(f"{m} {v:.2%}" for m, v in ex[key].items()))


def _rows(res: dict) -> list[tuple[str, str, str | None, str]]:
    s = res["summary"]
    rows = [("floor: read base + 2 children", "floor_pair", None, ""),
            ("kinmerge kinship (pair)", "kinship", "floor_pair", "of floor")]
    if "naive" in s:
        rows.append(("kinmerge kinship, paired with naive runs", "kinship_paired", "floor_pair", "of floor"))
        rows.append(("naive fp32 pair (reference-like)", "naive", "kinship_paired", "of kinmerge"))
    if "matrix" in s:
        rows += [(f"floor: read base + {res['models']} children", "floor_all", None, ""),
                 (f"kinmerge matrix (N={res['models']})", "matrix", "floor_all", "of floor")]
    return rows


def render_doc(results: list[dict], path: Path) -> None:
    mi = machine_info()
    L: list[str] = []
    w = L.append
    w("# Kinship benchmarks")
    w("")
    w("Generated by `benchmarks/kinship_bench.py` from the measurements it stores in its work directory;")
    w("rerun the commands below to refresh this page.")
    w("")
    w("## Machine")
    w("")
    w(f"- CPU: {mi['cpu']}, {mi['nproc']} cores ({mi['affinity']} usable), {mi['mem_gb']:.1f} GiB RAM, "
      f"Linux {mi['kernel']}")
    w(f"- Python {mi['python']}, numpy {mi['numpy']}, kinship kernel: {mi.get('kinship_kernel', '?')}")
    for r in sorted(results, key=lambda r: r["params"]):
        commit = r.get("machine", mi)["commit"]
        w(f"- ~{r['params'] / 1e9:.2f} B run: {r['when']}, kinmerge commit {commit}")
    w("")
    w("## How to rerun")
    w("")
    w("```bash")
    for r in results:
        w(r["command"])
    w("python benchmarks/kinship_bench.py --render-only --write-doc docs/benchmarks.md   # re-render only")
    w("```")
    w("")
    w("## Method")
    w("")
    w("- **Models**: Llama-shaped BF16 safetensors (`model.embed_tokens`, per layer `self_attn.{q,k,v,o}_proj`,")
    w("  `mlp.{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm`; `model.norm`, untied")
    w("  `lm_head`; vocabulary 32000), scaled in hidden size and depth to the parameter count. Children =")
    w("  base + delta; delta = a shared family direction (non-zero mean, so PCC and cosine differ) + a")
    w("  direction shared by children 1-2 (strong) or 3-4 (weaker) + each child's own noise, so kinship")
    w("  varies by pair. Generated tensor by tensor (never a whole model in RAM), cached in the work directory.")
    w("- **Each measurement is its own subprocess.** *wall* is the whole process (interpreter start-up")
    w("  included), *in-proc* the time the process reports for its own work (kinmerge's `seconds`: plan +")
    w("  scan; the floor's read loop; the naive baseline's load + reduce). Peak RSS is that process's own")
    w("  `ru_maxrss` (`os.wait4`), started from a ~10 MB launcher: Linux carries the RSS high-water mark")
    w("  across `exec`, so a command forked straight from the benchmark would inherit its peak.")
    w("- **Warm-up**: one `kinmerge kinship` and one `kinmerge matrix` run first (not in the tables). The")
    w("  kernel is C, compiled at install time: there is nothing to compile or cache at run time.")
    w("- **Warm page cache**: every file is read right before each timed block. (This VM runs DAMON")
    w("  proactive reclaim, which pages out file pages left untouched for about a minute: cached data")
    w("  does not stay warm for long here.)")
    w(f"- **Floor**: a subprocess reading the same files once, start to end, with {READ_BUF >> 20} MB `readinto`")
    w("  calls into a page-aligned buffer (see the diagnostics for why the alignment matters).")
    w("- **Naive baseline**: a subprocess that, like the reference tool (zjunlp/ModelKinship), loads every")
    w("  model fully in fp32 (BF16 bits -> float32), builds the per-tensor deltas, frees the models,")
    w("  concatenates the deltas and reduces in float32 with numpy (dot products for the cosine,")
    w("  `np.linalg.norm` of the difference, centring then dot products for PCC). It is timed back to back")
    w("  with a `kinmerge kinship` run (*paired*); the speed-up uses those pairs. Once more with the reference")
    w("  tool's own reductions (`torch.corrcoef` of the stacked deltas, `torch.dist`) for its exactness.")
    w("- **Exact reference**: an independent numpy pass, chunk by chunk, float64 throughout, chunk sums")
    w("  added with `math.fsum`; ED from the sum of squared differences (no cancellation).")
    w("- Figures are medians of `--repeat` runs. The 1-minute load average is recorded before each block;")
    w(f"  above {LOAD_LIMIT} other work was running (other users' training and tests share these 2 cores),")
    w("  which inflates absolute times and hides kinmerge's parallelism (one scan worker per core):")
    w("  then the ratios, measured back to back in the same run, are the figures to trust.")
    w("")
    for res in sorted(results, key=lambda r: r["params"]):
        _render_size(res, w)
    if path.exists():  # hand-written analysis below the marker survives re-rendering
        old = path.read_text()
        if NOTES_MARKER in old:
            L.append(old[old.index(NOTES_MARKER):].rstrip("\n"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")
    print(f"wrote {path}")


def _render_size(res: dict, w) -> None:
    cfg = res["family"]["config"]
    s = res["summary"]
    gb = res["family"]["file_bytes"] / 1e9
    p = res["params"]
    w(f"## ~{p / 1e9:.2f} B parameters")
    w("")
    w(f"hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, intermediate {cfg['intermediate_size']}, "
      f"{cfg['num_attention_heads']} heads ({cfg['num_key_value_heads']} kv), vocabulary {cfg['vocab_size']}: "
      f"{p:,} parameters, {gb:.2f} GB per BF16 file; base + {res['models']} children. "
      f"Median of {res['repeat']} runs, warm page cache. Run {res['when']}: `{res['command']}`.")
    w("")
    loads = res["loads"]
    hot = [x for x in loads if x["load1"] > LOAD_LIMIT]
    if hot:
        w(f"**Machine load**: the 1-minute load average was above {LOAD_LIMIT} before {len(hot)} of "
          f"{len(loads)} timed blocks (values: {', '.join(format(x['load1'], '.2f') for x in loads)}): other "
          "processes shared the 2 cores, so absolute times are pessimistic; compare the ratios, which come "
          "from runs made back to back under the same load.")
    else:
        w(f"Machine load: 1-minute load average at most {max(x['load1'] for x in loads):.2f} before every block.")
    w("")
    w("| measurement | wall s | in-proc s | peak RSS | CPU s | ratio (wall) |")
    w("|---|---:|---:|---:|---:|---|")
    for label, key, ref, what in _rows(res):
        r = s[key]
        ratio = f"{r['wall'] / s[ref]['wall']:.2f}x {what}" if ref else ""
        if key == "naive":
            ratio += f"; RSS {r['rss_mb'] / s['kinship']['rss_mb']:.0f}x"
        w(f"| {label} | {r['wall']:.2f} | {r['inproc']:.2f} | {_mb(r['rss_mb'])} | {r['cpu']:.2f} | {ratio} |")
    if "naive_skipped" in res:
        w(f"| naive fp32 pair (reference-like) | — | — | — | — | {res['naive_skipped']} |")
    if "naive_torch" in res:
        nt = res["naive_torch"]
        w(f"| naive, reference tool's torch reductions (1 run) | {nt['wall']:.2f} | {nt['data']['seconds']:.2f} | "
          f"{_mb(nt['rss_mb'])} | {nt['cpu']:.2f} | {nt['wall'] / s['kinship_paired']['wall']:.1f}x of kinmerge |")
    w("")
    fl = s["floor_pair"]
    line = f"Warm read floor: {fam_bytes(res, 3) / fl['inproc'] / 1e9:.1f} GB/s in-process for the pair"
    if "floor_all" in s:
        line += (f", {fam_bytes(res, res['models'] + 1) / s['floor_all']['inproc'] / 1e9:.1f} GB/s for all "
                 f"{res['models'] + 1} files")
    w(line + ". Per-run wall times: " + "; ".join(
        f"{key} {', '.join(format(x, '.2f') for x in s[key]['walls'])}" for _, key, _, _ in _rows(res)) + ".")
    if "naive" in s:
        nj = res["naive_json"]
        w(f"The naive run's own split (last run): load {nj['load_seconds']:.1f} s, deltas + concatenation "
          f"{nj['concat_seconds']:.1f} s, float32 reductions {nj['reduce_seconds']:.1f} s.")
    w("")
    w("**Targets**")
    w("")
    w("| target | measured | met |")
    w("|---|---|---|")
    for name, val, ok in targets(res):
        w(f"| {name} | {val} | {'yes' if ok else '**no**'} |")
    w("")
    ex = exactness(res)
    w("**Exactness** (pair child1 ~ child2; relative error against the independent float64 reference)")
    w("")
    head = "| metric | float64 reference | kinmerge | rel. err |"
    sep = "|---|---:|---:|---:|"
    for key, name in (("naive", "naive numpy fp32"), ("torch", "reference tool's torch fp32")):
        if key in ex:
            head += f" {name} | rel. err |"
            sep += "---:|---:|"
    w(head)
    w(sep)
    for m in ("pcc", "cs", "ed"):
        row = f"| {m} | {ex['reference'][m]:.9f} | {ex['kinmerge'][m]:.9f} | {ex['kinmerge_rel_err'][m]:.1e} |"
        for key in ("naive", "torch"):
            if key in ex:
                row += f" {ex[key][m]:.6f} | {ex[key + '_rel_err'][m]:.2%} |"
        w(row)
    w("")
    tail = (f"The independent numpy float64 pass took {res['exact']['wall']:.1f} s "
            f"({res['exact']['wall'] / s['kinship']['wall']:.1f}x kinmerge).")
    if "matrix_vs_pair" in ex:
        tail = ("`kinmerge matrix` gives the same pair values as `kinmerge kinship` (max abs difference "
                f"{max(ex['matrix_vs_pair'].values()):.1e}). " + tail)
    w(tail)
    w("")
    if "matrix_json" in res:
        mat = res["matrix_json"]["kinship"]["pcc"]
        n = len(mat)
        w("PCC matrix of the children (the designed structure: 1-2 close, 3-4 less, the rest far):")
        w("")
        w("| | " + " | ".join(f"c{j + 1}" for j in range(n)) + " |")
        w("|---|" + "---:|" * n)
        for i in range(n):
            w(f"| c{i + 1} | " + " | ".join(f"{mat[i][j]:.3f}" for j in range(n)) + " |")
        w("")
    d = res.get("diagnostics")
    if d:
        _render_diagnostics(res, d, w)
    cold = res.get("cold") or {}
    if cold.get("floor_pair"):
        cf, ck = cold["floor_pair"], cold["kinship"]
        w(f"**Cold cache** (the 3 files' pages evicted with `posix_fadvise(DONTNEED)`; `/proc/sys/vm/drop_caches`: "
          f"{res.get('drop_caches', '?')}; the VM's virtual disk may still be cached by the host, so this is"
          f" guest-cold only): floor {cf['wall']:.2f} s ({fam_bytes(res, 3) / cf['data']['seconds'] / 1e9:.2f} GB/s),"
          f" kinmerge kinship {ck['wall']:.2f} s ({ck['wall'] / cf['wall']:.2f}x of the cold floor), "
          f"peak RSS {_mb(ck['rss_mb'])}. One run each.")
        w("")
    wu = res.get("warmup", {})
    if wu:
        fam = res["family"]
        gen = (f"{fam['generate_seconds']:.0f} s for {', '.join(fam['generated'])}" if fam["generated"]
               else "reused cached files")
        w("Warm-up runs (not in the tables): " + ", ".join(f"{k} {v['wall']:.2f} s" for k, v in wu.items())
          + f". Model generation ({fam['generator']}): {gen}.")
        w("")


_AB_LABELS = {
    "floor_1mb": "read loop, 1 MB `readinto` calls (the floor)",
    "floor_2mb": "read loop, 2 MB `readinto` calls (kinmerge's read size per input)",
    "floor_8mb": "read loop, 8 MB `readinto` calls",
    "floor_1mb_page16": "read loop, 1 MB calls into a buffer at page + 16 bytes (a `bytearray`'s place)",
    "scan_default": "scan, default (chunk 1M elements, one worker per core)",
    "scan_chunk_256k": "scan, chunk 256K elements",
    "scan_chunk_512k": "scan, chunk 512K elements",
    "scan_chunk_1m": "scan, chunk 1M elements",
    "scan_chunk_2m": "scan, chunk 2M elements",
    "scan_chunk_4m": "scan, chunk 4M elements",
    "scan_1_thread": "scan, default chunk, 1 worker",
    "scan_1_kernel_thread": "scan, chunk 4M, 1 kernel thread",
    "scan_noop_kernel": "scan with a no-op kernel (reads + pipeline only)",
    "scan_noop_kernel_chunk_1m": "scan with a no-op kernel, chunk 1M",
    "kernel_per_pos_t1": "fused kernel alone on in-memory chunks, 1 thread",
    "kernel_per_pos_t2": "fused kernel alone on in-memory chunks, 2 threads",
}


def _render_ab(res: dict, ab: dict, n_files: int, w) -> None:
    p = res["params"]
    nbytes = fam_bytes(res, n_files)
    floor = ab["median"]["floor_1mb"]
    w(f"| step ({ab['rounds']} alternating rounds, loads {', '.join(format(x, '.1f') for x in ab['loads'])}) "
      "| median s | best s | vs floor | throughput |")
    w("|---|---:|---:|---:|---|")
    for key in ab["median"]:
        label = _AB_LABELS.get(key, key)
        if key == "scan_default" and "workers" in ab:
            c = ab["chunk_default"]
            size = f"{c >> 20}M" if c >= 1 << 20 else f"{c >> 10}K"
            label = f"scan, default (chunk {size} elements, {ab['workers']} workers)"
        med, best = ab["median"][key], ab["min"][key]
        if key.startswith("kernel_per_pos"):
            med, best = med * p, best * p
            thr = f"{p / med / 1e9:.2f} G positions/s"
        elif key.startswith("floor") or "noop" in key:
            thr = f"{nbytes / med / 1e9:.1f} GB/s"
        else:
            thr = f"{p / med / 1e9:.2f} G positions/s"
        w(f"| {label} | {med:.2f} | {best:.2f} | {med / floor:.2f}x | {thr} |")
    w("")


def _render_diagnostics(res: dict, d: dict, w) -> None:
    s = res["summary"]
    w("**Where the time goes.** Start-up of a process that does what the CLI does before reading "
      "(one subprocess each):")
    w("")
    w("| step | seconds |")
    w("|---|---:|")
    st = d["startup"]
    w(f"| whole process: interpreter + imports + first kernel call | {st['wall']:.2f} |")
    w(f"| &nbsp; import numpy | {st['data']['numpy']:.2f} |")
    if "backend" in st["data"]:
        w(f"| &nbsp; import kinmerge.cli + kinmerge.scan | {st['data']['kinmerge_import']:.2f} |")
        w(f"| &nbsp; first kernel call ({st['data']['backend']} kernel, {st['data']['isa']} code path; "
          "loads the library) "
          f"| {st['data']['first_kernel_call']:.3f} |")
        heavy = ", ".join(st["data"]["heavy_modules"]) or "none"
        w(f"| &nbsp; heavy modules imported (scipy, numba, llvmlite, matplotlib, torch, transformers) | {heavy} |")
    else:  # results from the numba kernel (before the C kernel)
        sn = d["startup_noscipy"]
        w(f"| &nbsp; import kinmerge.cli + kinmerge.scan (imports numba) | {st['data']['kinmerge_import']:.2f} |")
        w(f"| &nbsp; first kernel call: numba loads the cached kernel, refreshing its registries (which imports "
          f"`scipy.linalg` for a BLAS probe) | {st['data']['first_kernel_call']:.2f} |")
        w(f"| &nbsp; first kernel call with `scipy.linalg` made unimportable | {sn['data']['first_kernel_call']:.2f} |")
        w(f"| whole process with `scipy.linalg` made unimportable | {sn['wall']:.2f} |")
    w("")
    if "ab_pair" in d:
        w("In-process, after the kernel is loaded, variants alternated round by round (so machine noise hits")
        w("them alike): the pair (3 files)")
        w("")
        _render_ab(res, d["ab_pair"]["data"], 3, w)
    if "ab_all" in d:
        w(f"The matrix ({res['models'] + 1} files):")
        w("")
        _render_ab(res, d["ab_all"]["data"], res["models"] + 1, w)
    if "ab_pair" in d:
        ab = d["ab_pair"]["data"]["median"]
        w(f"So `kinmerge kinship` ({s['kinship']['wall']:.2f} s wall) = process start-up and first kernel call "
          f"(~{st['wall']:.2f} s) + the scan itself (~{ab['scan_default']:.2f} s), against "
          f"{ab['floor_1mb']:.2f} s for the reads alone.")
        w("")


def fam_bytes(res: dict, n_files: int) -> int:
    return res["family"]["file_bytes"] * n_files


def _mb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


# == main ====================================================================================


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=0.5e9, help="parameters per model (default 0.5e9)")
    ap.add_argument("--models", type=int, default=6, help="children (the matrix runs on all of them; default 6)")
    ap.add_argument("--workdir", default="/tmp/kbench", help="where models and results go (default /tmp/kbench)")
    ap.add_argument("--skip-naive", action="store_true", help="do not run the naive fp32 baseline")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions; medians are reported (default 3)")
    ap.add_argument("--write-doc", default=None, help="render every result in --workdir to this Markdown file")
    ap.add_argument("--render-only", action="store_true", help="do not measure; only render --write-doc")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache runs")
    ap.add_argument("--no-diagnostics", action="store_true", help="skip the where-does-the-time-go runs")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="before each timed block wait up to this many seconds for the load to drop below "
                         f"{LOAD_LIMIT}")
    ap.add_argument("--ab-rounds", type=int, default=5, help="rounds of the in-process A/B diagnostics (default 5)")
    ap.add_argument("--kernel-elements", type=int, default=1 << 26,
                    help="positions per input for the kernel-alone diagnostic (default 64 M)")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    if not args.render_only:
        res = run_benchmark(args)
        out = workdir / f"results-{size_tag(args.params)}-m{args.models}.json"
        out.write_text(json.dumps(res, indent=1, default=str))
        print(f"results: {out}")
        print_table(res)
    if args.write_doc:
        results = [json.loads(p.read_text()) for p in sorted(workdir.glob("results-*.json"))]
        if not results:
            raise SystemExit(f"no results-*.json in {workdir}: run a benchmark first")
        render_doc(results, Path(args.write_doc))


if __name__ == "__main__":
    main()
