"""The hot loop of kinship: one fused pass from raw tensor values to float64 accumulators.

For a chunk of a tensor we have the base's raw values and N models' raw values; we need
Σδ_i and Σδ_iδ_j with δ_i = model_i − base, every value widened exactly to float64. With
separate numpy calls this touches memory 4–5 times per element (widen, subtract, multiply,
reduce); the fused numba kernel reads each input once and keeps every accumulator in a register,
which measured ~3x–10x faster on 2 cores (benchmarks/kinship_bench.py). numba is optional
(``kinmerge[fast]``): without it the numpy path gives the same numbers, slower.

How the kernel stays fast, all learned by measuring:
  * one generated loop per model count, with scalar accumulators (``s0``, ``g0_1``, ...), so
    LLVM keeps them in registers and, with reassociation allowed, vectorises the reductions;
  * loops run over sliced views with ``range(view.size)``: an offset index (``lo + k``) makes
    numba add a negative-index check that blocks vectorisation (3–4x slower);
  * BF16 is widened with a bit cast (``bits << 16`` *is* the float32 of the same value) through a
    tiny LLVM intrinsic instead of a buffer + ``view``;
  * more than ``_GROUP`` models are tiled into groups (diagonal tiles + cross tiles), since
    dozens of live accumulators spill out of registers.
Generated kernels are written once to ``$KINMERGE_CACHE/kernels`` and imported from there, so
numba's on-disk cache works and later runs start without compiling.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

_GROUP = 6  # models per diagonal tile; more spill registers (measured: 8 models is 2x slower/pos)
_CROSS = 4  # models per side of an off-diagonal tile
_MIN_PER_THREAD = 1 << 16  # below this, threading costs more than it saves

try:
    if os.environ.get("KINMERGE_NO_NUMBA"):
        raise ImportError("disabled by KINMERGE_NO_NUMBA")
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic, overload

    _FASTMATH = {"reassoc", "contract"}  # keeps NaN/Inf semantics: the scan relies on them

    @intrinsic
    def _bits_to_f32(typingctx, bits):  # type: ignore[no-untyped-def]
        sig = types.float32(types.uint32)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            return builder.bitcast(args[0], ir.FloatType())

        return sig, codegen

    def load(x):  # type: ignore[no-untyped-def]  # pragma: no cover - replaced by the overload
        """float64 of one raw value: uint16 means BF16 bits; floats convert exactly."""

    @overload(load, inline="always", fastmath=_FASTMATH)
    def _load_overload(x):  # type: ignore[no-untyped-def]
        if isinstance(x, types.Integer):
            return lambda x: np.float64(_bits_to_f32(np.uint32(x) << np.uint32(16)))
        return lambda x: np.float64(x)

    HAVE_NUMBA = True
except ImportError:
    HAVE_NUMBA = False


def widen(raw: np.ndarray, dtype: str) -> np.ndarray:
    """A raw chunk as float64, exactly (every F16/BF16/F32 value is representable).

    >>> widen(np.array([0x3F80], dtype=np.uint16), "BF16")
    array([1.])
    """
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf stay NaN/Inf, reported later
        if dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        return raw.astype(np.float64)


def accumulate(
    base: np.ndarray,
    base_dtype: str,
    models: list[np.ndarray],
    model_dtypes: list[str],
    *,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Σδ_i (N,) and Σδ_iδ_j (N, N), in float64, for one chunk.

    Args:
        base: the base's raw values for the chunk, shape (m,).
        base_dtype: its safetensors dtype name (BF16 given as uint16 bits).
        models: N raw arrays of shape (m,), dtypes in ``model_dtypes``.
        backend: "numba", "numpy", or "auto" (numba when installed).
    """
    use_numba = HAVE_NUMBA if backend == "auto" else backend == "numba"
    if use_numba and not HAVE_NUMBA:
        raise RuntimeError("the numba kinship backend needs numba: pip install 'kinmerge[fast]'")
    if not use_numba:
        b = widen(base, base_dtype)
        d = np.stack([widen(m, t) - b for m, t in zip(models, model_dtypes, strict=True)])
        return d.sum(axis=1), d @ d.T
    base = _numba_input(base, base_dtype)
    models = [_numba_input(m, t) for m, t in zip(models, model_dtypes, strict=True)]
    n = len(models)
    sums, gram = np.zeros(n), np.zeros((n, n))
    groups = [list(range(i, min(n, i + _GROUP))) for i in range(0, n, _GROUP)]
    if len(groups) > 1:  # tile: diagonal groups small enough for the cross tiles too
        groups = [list(range(i, min(n, i + _CROSS))) for i in range(0, n, _CROSS)]
    for gi, group in enumerate(groups):
        s, g = _run_split(_diag_kernel(len(group)), base, [models[i] for i in group])
        sums[group] = s
        gram[np.ix_(group, group)] = g
        for other in groups[gi + 1 :]:
            cross = _run_split(_cross_kernel(len(group), len(other)), base, [models[i] for i in group + other])
            gram[np.ix_(group, other)] = cross
            gram[np.ix_(other, group)] = cross.T
    return sums, gram


def _numba_input(raw: np.ndarray, dtype: str) -> np.ndarray:
    # numba has no CPU float16: widen F16 to float32 (exact) first.
    return raw.astype(np.float32) if dtype == "F16" else raw


# -- threading: split a chunk across cores; kernels release the GIL ---------------------------


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_n_threads(), thread_name_prefix="kinmerge-kernel")


def _n_threads() -> int:
    env = os.environ.get("KINMERGE_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _run_split(kernel: Any, base: np.ndarray, models: list[np.ndarray]) -> Any:
    m = base.shape[0]
    parts = max(1, min(_n_threads(), m // _MIN_PER_THREAD))
    if parts == 1:
        return kernel.finish(kernel(base, *models, 0, m))
    bounds = [m * p // parts for p in range(parts + 1)]
    futures = [
        _pool().submit(kernel, base, *models, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    results = [f.result() for f in futures]
    total = np.sum(np.array(results, dtype=np.float64), axis=0)
    return kernel.finish(tuple(total))


# -- generated kernels ------------------------------------------------------------------------


class _Kernel:
    """A compiled kernel plus how to turn its flat tuple of accumulators into arrays."""

    def __init__(self, fn: Any, finish: Any):
        self._fn = fn
        self.finish = finish

    def __call__(self, *args: Any) -> tuple[float, ...]:
        return self._fn(*args)


@cache
def _diag_kernel(n: int) -> _Kernel:
    """Σδ_i and the upper triangle of Σδ_iδ_j for n models."""
    pairs = [(i, j) for i in range(n) for j in range(i, n)]
    body = [f"        d{i} = load(v{i}[k]) - bb" for i in range(n)]
    body += [f"        s{i} += d{i}" for i in range(n)]
    body += [f"        g{i}_{j} += d{i} * d{j}" for i, j in pairs]
    accs = [f"s{i}" for i in range(n)] + [f"g{i}_{j}" for i, j in pairs]
    fn = _compile(f"diag{n}", n, body, accs)

    def finish(flat: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
        sums = np.array(flat[:n], dtype=np.float64)
        gram = np.zeros((n, n))
        for (i, j), v in zip(pairs, flat[n:], strict=True):
            gram[i, j] = gram[j, i] = v
        return sums, gram

    return _Kernel(fn, finish)


@cache
def _cross_kernel(na: int, nb: int) -> _Kernel:
    """Σδ_aδ_b between a group of na models (args first) and a group of nb models."""
    n = na + nb
    pairs = [(i, na + j) for i in range(na) for j in range(nb)]
    body = [f"        d{i} = load(v{i}[k]) - bb" for i in range(n)]
    body += [f"        g{i}_{j} += d{i} * d{j}" for i, j in pairs]
    fn = _compile(f"cross{na}x{nb}", n, body, [f"g{i}_{j}" for i, j in pairs])

    def finish(flat: tuple[float, ...]) -> np.ndarray:
        return np.array(flat, dtype=np.float64).reshape(na, nb)

    return _Kernel(fn, finish)


def _compile(name: str, n: int, body: list[str], accs: list[str]) -> Any:
    args = ", ".join(f"m{i}" for i in range(n))
    lines = [
        "# Generated by kinmerge._kernels; safe to delete (it is rewritten when missing).",
        "import numpy as np",
        "from numba import njit",
        "from kinmerge._kernels import load, _FASTMATH",
        "",
        "@njit(cache=True, nogil=True, fastmath=_FASTMATH)",
        f"def kernel(b, {args}, lo, hi):",
        "    bs = b[lo:hi]",
        *[f"    v{i} = m{i}[lo:hi]" for i in range(n)],
        *[f"    {a} = 0.0" for a in accs],
        "    for k in range(bs.size):",
        "        bb = load(bs[k])",
        *body,
        f"    return ({', '.join(accs)},)",
        "",
    ]
    source = "\n".join(lines)
    digest = hashlib.blake2b(source.encode(), digest_size=6).hexdigest()
    module_name = f"kinmerge_kernel_{name}_{digest}"
    folder = Path(os.environ.get("KINMERGE_CACHE") or Path.home() / ".cache" / "kinmerge") / "kernels"
    path = folder / f"{module_name}.py"
    try:
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(source)
            os.replace(tmp, path)
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module.kernel
    except OSError:  # read-only home: compile in memory, without numba's disk cache
        namespace: dict[str, Any] = {}
        exec(compile(source.replace("cache=True", "cache=False"), module_name, "exec"), namespace)  # noqa: S102
        return namespace["kernel"]
