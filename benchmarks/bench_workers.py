"""The measured workers of ``kinship_bench.py``: each runs in its own subprocess, started by
``bench_harness.measure(bench_harness.worker_cmd(name, *args))``, and prints one JSON object.

``kinship_bench.py _worker NAME ARGS...`` dispatches to ``worker_main`` (the workers run through
the benchmark's own entry point, so every measured process starts and imports exactly as before
the split). Each worker is timed inside (its ``seconds``) and from outside (the process wall time
and its own peak RSS), so start-up and work can be told apart.

Example::

    python benchmarks/kinship_bench.py _worker floor base/model.safetensors child1/model.safetensors
    # {"seconds": 0.41, "bytes": 2002980864}
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from bench_family import CHUNK
from bench_harness import loadavg
from llama_layout import read_header

READ_BUF = 1 << 20  # bytes per readinto call in the floor: the fastest size here (see the diagnostics)


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
