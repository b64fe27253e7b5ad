"""The hot loop of sketching: raw chunks of a base and N models, added into the models' sketches.

``accumulate`` is the per-chunk entry point of the one streaming pass (the ``Sketches``
consumer of ``kinmerge.scan.sketches``): the same raw arrays and dtypes as ``_kernels.accumulate``, plus the
tensor's hash key and the chunk's first position. Two backends give the same numbers (to the
last bits; tests compare them):

* ``c``: ``_sketch.c`` (optional extension, ctypes, GIL released), streaming vector adds;
* ``numpy``: ``sketch.buckets``/``sketch.signs`` and ``np.bincount``, the definition itself;
  30-100x slower, used when the extension was not built.

``KINMERGE_KERNEL=numpy`` forces numpy and ``KINMERGE_KERNEL_ISA=generic|avx2|avx512`` a C code
path, as for the kinship kernel.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import numpy as np

from kinmerge._kernels import BACKENDS, DTYPE_CODES, ISAS, _c_input, isa_names, load_library, widen
from kinmerge.sketch import buckets, check_size, signs


@cache
def _clib() -> Any:
    import ctypes

    lib = load_library("kinmerge._sketch_c")
    if lib is None:
        return None
    p, i, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.ks_sketch_isa.argtypes = [p, i, p, p, i, i64, i64, ctypes.c_uint64, i, p, p, i]
    lib.ks_sketch_isa.restype = i
    lib.ks_isa_mask.restype = i
    lib.ks_isa_best.restype = i
    return lib


def have_c() -> bool:
    """True when the C sketch kernel is built and loadable."""
    return _clib() is not None


def c_isas() -> list[str]:
    """The C code paths this CPU can run."""
    lib = _clib()
    return [] if lib is None else isa_names(lib.ks_isa_mask())


def default_backend() -> str:
    """``c`` when built, else ``numpy`` (``KINMERGE_KERNEL`` overrides)."""
    return os.environ.get("KINMERGE_KERNEL") or ("c" if have_c() else "numpy")


def accumulate(
    out: np.ndarray,
    ones: np.ndarray | None,
    base: np.ndarray,
    base_dtype: str,
    models: list[np.ndarray],
    model_dtypes: list[str],
    key: int,
    start: int,
    *,
    backend: str = "auto",
    isa: str | None = None,
) -> None:
    """Add one chunk's deltas (model − base) into N models' sketch rows, and ones into ``ones``.

    Σδ and Σδ² are not computed here: take them from ``_kernels.accumulate`` on the same chunk
    (exact, and the same numbers an exact scan reports).

    Args:
        out: (N, size) float64, C-contiguous: the models' sketch values, added into.
        ones: (size,) int32 sketch of ones (exact integers), added into; None to skip (it is the
            same for every model of a pass, so a pass needs it once).
        base, base_dtype, models, model_dtypes: raw values of positions ``[start, start + m)``
            of one tensor, as ``_kernels.accumulate`` takes them (BF16 as uint16 bits).
        key: ``sketch.tensor_key(seed, tensor_name)``.
        start: the chunk's first position in the flattened tensor.
        backend, isa: as for ``_kernels.accumulate``.

    Raises:
        ValueError: shapes or dtypes that do not fit, or an unknown backend.
        RuntimeError: ``backend="c"`` but the extension is not built.

    Example:
        >>> from kinmerge.sketch import project, tensor_key
        >>> out = np.zeros((1, 256)); base = np.zeros(100); model = np.arange(100.0)
        >>> accumulate(out, None, base, "F64", [model], ["F64"], tensor_key(0, "w"), 0)
        >>> bool(np.allclose(out[0], project(model, tensor_key(0, "w"), 0, 256)))
        True
    """
    n = len(models)
    if n != len(model_dtypes):
        raise ValueError("models and model_dtypes differ in length")
    size = out.shape[-1]
    log = check_size(size)
    if out.shape != (n, size) or out.dtype != np.float64 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writable C-contiguous float64 array of shape ({n}, {size})")
    if ones is not None and (ones.shape != (size,) or ones.dtype != np.int32 or not ones.flags.c_contiguous):
        raise ValueError(f"ones must be a C-contiguous int32 array of shape ({size},)")
    if backend == "auto":
        backend = default_backend()
    if backend == "numpy":
        _numpy(out, ones, base, base_dtype, models, model_dtypes, key, start, size)
        return
    if backend != "c":
        raise ValueError(f"unknown sketch backend {backend!r}: choose from {', '.join(BACKENDS)}")
    lib = _clib()
    if lib is None:
        raise RuntimeError("the C sketch kernel is not built (no C compiler when kinmerge was installed?); "
                           "reinstall with a compiler (pip install -e .) or use backend='numpy'")
    import ctypes

    m = base.shape[0]
    arrays = [_c_input(base, base_dtype, m)] + [_c_input(a, t, m) for a, t in zip(models, model_dtypes, strict=True)]
    ptrs = (ctypes.c_void_p * max(n, 1))(*[a.__array_interface__["data"][0] for a in arrays[1:]])
    codes = (ctypes.c_int * max(n, 1))(*[DTYPE_CODES[t] for t in model_dtypes])
    isa = isa or os.environ.get("KINMERGE_KERNEL_ISA")
    rc = lib.ks_sketch_isa(
        arrays[0].__array_interface__["data"][0], DTYPE_CODES[base_dtype], ptrs, codes, n, m, int(start),
        int(key), log, out.__array_interface__["data"][0],
        None if ones is None else ones.__array_interface__["data"][0], 0 if isa is None else ISAS.get(isa, -1),
    )
    if rc != 0:
        raise ValueError(f"the C sketch kernel refused its arguments (code path {isa or 'best'!r}; this CPU has "
                         f"{', '.join(c_isas())})")


def _numpy(out: np.ndarray, ones: np.ndarray | None, base: np.ndarray, base_dtype: str, models: list[np.ndarray],
           model_dtypes: list[str], key: int, start: int, size: int) -> None:
    m = base.shape[0]
    b = widen(base, base_dtype)
    where = buckets(key, start, start + m, size)
    sg = signs(key, start, start + m)
    for i, (raw, dtype) in enumerate(zip(models, model_dtypes, strict=True)):
        if raw.shape != (m,):
            raise ValueError(f"every input must be 1-D with {m} elements, got shape {raw.shape}")
        out[i] += np.bincount(where, weights=sg * (widen(raw, dtype) - b), minlength=size)
    if ones is not None:
        ones += np.bincount(where, weights=sg, minlength=size).astype(np.int32)
