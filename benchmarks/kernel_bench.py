#!/usr/bin/env python
"""Throughput of the kinship kernel alone: G positions/s per thread, per backend and C code path.

Inputs are in-memory BF16 arrays (a base and N children, deltas ~1% of the base), reduced chunk
by chunk as the scan does; variants alternate round by round so machine noise hits them alike.

    python benchmarks/kernel_bench.py --models 2,6 --elements 1048576 --chunk 262144
    python benchmarks/kernel_bench.py --old-src /tmp/old/src   # also time the numba kernel of an
                                                               # older checkout (git archive b943191 src)

``--elements`` 1M keeps the inputs in L3 (like a scan's freshly read chunks); 16M streams from DRAM.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import numpy as np


def _old_kernels(src: str):
    """``kinmerge._kernels`` of an older checkout (the numba kernel), loaded under another name."""
    os.environ.setdefault("KINMERGE_THREADS", "1")  # its kernel split chunks across threads
    spec = importlib.util.spec_from_file_location("kinmerge._kernels", os.path.join(src, "kinmerge", "_kernels.py"))
    mod = importlib.util.module_from_spec(spec)
    # Its generated kernels import helpers from "kinmerge._kernels": let that name be the old module
    # (callers keep their reference to the current one).
    sys.modules["kinmerge._kernels"] = mod
    spec.loader.exec_module(mod)
    if not getattr(mod, "HAVE_NUMBA", False):
        raise SystemExit(f"{src}: its _kernels has no numba kernel (or numba is not installed)")
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="2,6", help="model counts, comma-separated (default 2,6)")
    ap.add_argument("--elements", type=int, default=1 << 20, help="positions per input (default 1M)")
    ap.add_argument("--chunk", type=int, default=1 << 18, help="positions per kernel call (default 256K)")
    ap.add_argument("--rounds", type=int, default=0, help="alternating rounds (default: ~32M positions each)")
    ap.add_argument("--old-src", default=None, help="an older src/ with the numba kernel, to compare")
    args = ap.parse_args()

    from kinmerge import _kernels
    from kinmerge.sources import to_bf16_bits

    old = _old_kernels(args.old_src) if args.old_src else None
    m, c = args.elements, args.chunk
    rounds = args.rounds or max(5, (1 << 25) // m)
    rng = np.random.default_rng(0)
    base32 = rng.standard_normal(m, dtype=np.float32)
    print(f"{m:,} positions per input, {c:,} per call, {rounds} rounds; C code paths here: {_kernels.c_isas()}")
    for n in (int(x) for x in args.models.split(",")):
        raws = [to_bf16_bits(base32)] + [to_bf16_bits(base32 + 0.01 * rng.standard_normal(m, dtype=np.float32))
                                         for _ in range(n)]
        dts = ["BF16"] * n
        variants = {f"c:{isa}": (lambda isa: lambda b, ms: _kernels.accumulate(b, "BF16", ms, dts, backend="c",
                                                                               isa=isa))(isa)
                    for isa in _kernels.c_isas()}
        variants["numpy"] = lambda b, ms: _kernels.accumulate(b, "BF16", ms, dts, backend="numpy")
        if old is not None:
            variants["numba (old)"] = lambda b, ms: old.accumulate(b, "BF16", ms, dts, backend="numba")

        def run(fn) -> float:
            t0 = time.perf_counter()
            for lo in range(0, m, c):
                fn(raws[0][lo:lo + c], [r[lo:lo + c] for r in raws[1:]])
            return time.perf_counter() - t0

        for fn in variants.values():
            run(fn)  # warm-up (numba loads its cached kernel)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for k, fn in variants.items():
                times[k].append(run(fn))
        print(f"N={n}: " + "  ".join(f"{k} {m / min(v) / 1e9:.2f} (median {m / statistics.median(v) / 1e9:.2f})"
                                      for k, v in times.items()) + "  G positions/s, 1 thread")


if __name__ == "__main__":
    main()
