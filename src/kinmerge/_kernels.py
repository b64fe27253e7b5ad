"""The hot loop of kinship: one fused pass from raw tensor values to float64 accumulators.

For a chunk of a tensor we have the base's raw values and N models' raw values; we need
Σδ_i and Σδ_iδ_j with δ_i = model_i − base, every value widened exactly to float64.

Two backends give the same numbers (to the last few bits; tests compare them):

* ``c``: ``_kinship.c``, built by ``setup.py`` as an optional extension and called through
  ctypes, which releases the GIL for the call (the scan runs one call per worker thread). It
  reads each input once and keeps every accumulator in registers; see the C file for its layout
  and docs/decisions.md for why C (it replaced a numba kernel: same speed, no ~1 s start-up, no
  numba/llvmlite/scipy in the install).
* ``numpy``: widen, subtract, ``d @ d.T``. Several passes over memory, 3-10x slower; used when
  the extension was not built (no compiler at install time).

``backend="auto"`` takes C when it is built. ``KINMERGE_KERNEL=numpy`` forces the fallback and
``KINMERGE_KERNEL_ISA=generic|avx2|avx512`` a C code path (tests and benchmarks).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import numpy as np

DTYPE_CODES = {"F64": 0, "F32": 1, "F16": 2, "BF16": 3}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
ISAS = {"generic": 1, "avx2": 2, "avx512": 3}  # the C kernel's code paths (KM_ISA_* in _kinship.c)
BACKENDS = ("auto", "c", "numpy")


def widen(raw: np.ndarray, dtype: str) -> np.ndarray:
    """A raw chunk as float64, exactly (every F16/BF16/F32 value is representable).

    >>> widen(np.array([0x3F80], dtype=np.uint16), "BF16")
    array([1.])
    """
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf stay NaN/Inf, reported later
        if dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        return raw.astype(np.float64)


def load_library(module: str) -> Any:
    """An optional C extension (``kinmerge._kinship_c``, ...) as a ctypes library, or None."""
    import ctypes
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return None
    try:
        return ctypes.CDLL(spec.origin)
    except OSError:
        return None


@cache
def _clib() -> Any:
    """The C kernel (a ctypes library), or None when the extension was not built."""
    import ctypes

    lib = load_library("kinmerge._kinship_c")
    if lib is None:
        return None
    p, i, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.km_accumulate_isa.argtypes = [p, i, p, p, i, i64, p, p, i]
    lib.km_accumulate_isa.restype = i
    lib.km_isa_mask.restype = i
    lib.km_isa_best.restype = i
    return lib


def have_c() -> bool:
    """True when the C kernel is built and loadable."""
    return _clib() is not None


def c_isas() -> list[str]:
    """The C code paths this CPU can run (``generic`` always; ``avx2``, ``avx512`` on x86-64)."""
    lib = _clib()
    return [] if lib is None else isa_names(lib.km_isa_mask())


def isa_names(mask: int) -> list[str]:
    """The code paths in a C kernel's ISA bit mask (``1 << code`` per path it can run)."""
    return [name for name, code in ISAS.items() if mask & (1 << code)]


def c_isa() -> str | None:
    """The C code path ``accumulate`` uses here (honours ``KINMERGE_KERNEL_ISA``), or None."""
    lib = _clib()
    if lib is None:
        return None
    forced = os.environ.get("KINMERGE_KERNEL_ISA")
    if forced:
        return forced
    best = lib.km_isa_best()
    return next(name for name, code in ISAS.items() if code == best)


def default_backend() -> str:
    """What ``backend="auto"`` resolves to: ``c`` when built, else ``numpy``."""
    forced = os.environ.get("KINMERGE_KERNEL")
    if forced:
        return forced
    return "c" if have_c() else "numpy"


def accumulate(
    base: np.ndarray,
    base_dtype: str,
    models: list[np.ndarray],
    model_dtypes: list[str],
    *,
    backend: str = "auto",
    isa: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Σδ_i (N,) and Σδ_iδ_j (N, N), in float64, for one chunk.

    Args:
        base: the base's raw values for the chunk, shape (m,).
        base_dtype: its safetensors dtype name (BF16 given as uint16 bits).
        models: N raw arrays of shape (m,), dtypes in ``model_dtypes``.
        backend: "c", "numpy", or "auto" (C when built).
        isa: a C code path from ``c_isas()`` (default: the best this CPU has).

    Raises:
        RuntimeError: ``backend="c"`` but the extension is not built.
        ValueError: an unknown backend, or arrays of different lengths.
    """
    if backend == "auto":
        backend = default_backend()
    if backend == "numpy":
        b = widen(base, base_dtype)
        d = np.stack([widen(m, t) - b for m, t in zip(models, model_dtypes, strict=True)])
        return d.sum(axis=1), d @ d.T
    if backend != "c":
        raise ValueError(f"unknown kinship backend {backend!r}: choose from {', '.join(BACKENDS)}")
    lib = _clib()
    if lib is None:
        raise RuntimeError(
            "the C kinship kernel is not built (no C compiler when kinmerge was installed?); "
            "reinstall with a compiler (pip install -e .) or use backend='numpy'"
        )
    return _c_accumulate(lib, base, base_dtype, models, model_dtypes, isa or os.environ.get("KINMERGE_KERNEL_ISA"))


def _c_accumulate(lib: Any, base: np.ndarray, base_dtype: str, models: list[np.ndarray], model_dtypes: list[str],
                  isa: str | None) -> tuple[np.ndarray, np.ndarray]:
    import ctypes

    n = len(models)
    if n != len(model_dtypes):
        raise ValueError("models and model_dtypes differ in length")
    m = base.shape[0]
    arrays = [_c_input(base, base_dtype, m)] + [_c_input(a, t, m) for a, t in zip(models, model_dtypes, strict=True)]
    ptrs = (ctypes.c_void_p * n)(*[a.__array_interface__["data"][0] for a in arrays[1:]])
    codes = (ctypes.c_int * n)(*[DTYPE_CODES[t] for t in model_dtypes])
    sums = np.empty(n)
    gram = np.empty((n, n))
    code = 0 if isa is None else ISAS.get(isa, -1)
    rc = lib.km_accumulate_isa(arrays[0].__array_interface__["data"][0], DTYPE_CODES[base_dtype], ptrs, codes, n, m,
                               sums.__array_interface__["data"][0], gram.__array_interface__["data"][0], code)
    if rc != 0:
        raise ValueError(f"the C kinship kernel refused its arguments (code path {isa or 'best'!r} on this CPU: "
                         f"{', '.join(c_isas())})")
    return sums, gram


def _c_input(raw: np.ndarray, dtype: str, m: int) -> np.ndarray:
    if dtype not in DTYPE_CODES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_CODES)}")
    if raw.ndim != 1 or raw.shape[0] != m:
        raise ValueError(f"every input must be 1-D with {m} elements, got shape {raw.shape}")
    if raw.dtype.itemsize != _ITEMSIZE[dtype] or raw.dtype.kind not in "fu":
        raise ValueError(f"a {dtype} input must hold {_ITEMSIZE[dtype]}-byte raw values, got {raw.dtype}")
    if not raw.dtype.isnative or not raw.flags.c_contiguous:
        raw = np.ascontiguousarray(raw, dtype=raw.dtype.newbyteorder("="))
    return raw
