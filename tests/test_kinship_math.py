"""Kinship math: streaming statistics equal the paper's in-memory definition, and its identities hold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinmerge import _kernels
from kinmerge.kinship import KinshipStats, parse_metrics, reference_kinship
from kinmerge.sources import to_bf16_bits

# Every backend and every C code path ("c:avx512", ...). The C ones *fail* where the kernel is not
# built (it must be, here), and skip only a code path this CPU cannot run: nothing passes empty.
BACKENDS = ["numpy", "c", *[f"c:{isa}" for isa in _kernels.ISAS]]


def _require_c(isa: str | None = None) -> None:
    if not _kernels.have_c():
        pytest.fail("kinmerge._kinship_c is not built: run pip install -e . (needs a C compiler)")
    if isa is not None and isa not in _kernels.c_isas():
        pytest.skip(f"this CPU cannot run the {isa} code path (it has {', '.join(_kernels.c_isas())})")


def _acc(base, base_dtype, models, model_dtypes, backend):
    name, _, isa = backend.partition(":")
    if name == "c":
        _require_c(isa or None)
    return _kernels.accumulate(base, base_dtype, models, model_dtypes, backend=name, isa=isa or None)


def _stats(base: np.ndarray, models: list[np.ndarray], chunk: int, backend: str, dtype: str = "F64") -> KinshipStats:
    st_ = KinshipStats.empty(len(models))
    for lo in range(0, base.size, chunk):
        hi = min(base.size, lo + chunk)
        sums, gram = _acc(base[lo:hi], dtype, [m[lo:hi] for m in models], [dtype] * len(models), backend)
        st_.n += hi - lo
        st_.sums += sums
        st_.gram += gram
    return st_


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 3000),
    n_models=st.integers(2, 9),
    chunk=st.integers(1, 4096),
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from(["F64", "F32", "F16", "BF16"]),
)
def test_streaming_equals_reference(backend, n, n_models, chunk, seed, dtype):
    rng = np.random.default_rng(seed)
    base64 = rng.standard_normal(n)
    vals = [base64 + rng.standard_normal(n) * rng.uniform(0.01, 1) + rng.uniform(-1, 1) for _ in range(n_models)]
    if dtype == "BF16":
        raw = [to_bf16_bits(v.astype(np.float32)) for v in [base64, *vals]]
        dec = [_kernels.widen(r, "BF16") for r in raw]
    else:
        np_t = {"F64": np.float64, "F32": np.float32, "F16": np.float16}[dtype]
        raw = [v.astype(np_t) for v in [base64, *vals]]
        dec = [r.astype(np.float64) for r in raw]
    st_ = KinshipStats.empty(n_models)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        s, g = _acc(raw[0][lo:hi], dtype, [r[lo:hi] for r in raw[1:]], [dtype] * n_models, backend)
        st_.n += hi - lo
        st_.sums += s
        st_.gram += g
    for i in range(n_models):
        for j in range(n_models):
            if i == j:
                continue
            for metric in ("pcc", "cs", "ed"):
                want = reference_kinship(dec[1 + i], dec[1 + j], dec[0], metric)
                got = st_.value(metric, i, j)
                if not math.isfinite(want):
                    continue  # e.g. a constant delta: covered by the undefined tests
                assert got == pytest.approx(want, rel=1e-6, abs=1e-9), (metric, i, j)


@pytest.mark.parametrize("backend", BACKENDS)
def test_identities(backend):
    rng = np.random.default_rng(1)
    base = rng.standard_normal(5000)
    d = rng.standard_normal(5000) * 0.1
    models = [base + d, base - d, base + 3.5 * d, base + d]
    s = _stats(base, models, 777, backend)
    assert s.value("cs", 0, 1) == pytest.approx(-1.0, abs=1e-12)  # cos(d, -d) = -1, signed
    assert s.value("pcc", 0, 1) == pytest.approx(-1.0, abs=1e-12)
    assert s.value("pcc", 0, 2) == pytest.approx(1.0, abs=1e-12)  # PCC invariant to scaling
    assert s.value("ed", 0, 3) == 0.0  # ED(d, d) = 0 exactly
    assert s.value("ed", 0, 0) == 0.0
    for metric in ("pcc", "cs", "ed"):
        assert s.matrix(metric) == pytest.approx(s.matrix(metric).T)  # symmetry


def test_pcc_invariant_to_shift_cosine_is_not():
    rng = np.random.default_rng(2)
    d = rng.standard_normal(1000)
    s = KinshipStats.empty(2)
    s.add_deltas(np.stack([d, d + 5.0]))
    assert s.value("pcc", 0, 1) == pytest.approx(1.0)
    assert s.value("cs", 0, 1) < 0.5


def test_zero_delta_is_undefined_with_reason_not_nan():
    s = KinshipStats.empty(2)
    s.add_deltas(np.stack([np.zeros(10), np.arange(10.0)]))
    assert s.value("pcc", 0, 1) is None and s.value("cs", 0, 1) is None
    assert "identical to the base" in s.why_undefined("pcc", 0, 1)
    assert s.value("ed", 0, 1) == pytest.approx(np.linalg.norm(np.arange(10.0)))
    assert s.why_undefined("ed", 0, 1) is None
    assert s.mean_pairwise("pcc") is None


def test_constant_delta_pcc_undefined_cosine_defined():
    s = KinshipStats.empty(2)
    s.add_deltas(np.stack([np.full(10, 2.0), np.arange(10.0)]))
    assert s.value("pcc", 0, 1) is None and "constant" in s.why_undefined("pcc", 0, 1)
    assert s.value("cs", 0, 1) is not None


def test_stats_add_up_across_parts():
    rng = np.random.default_rng(3)
    d = rng.standard_normal((3, 1000))
    whole = KinshipStats.empty(3)
    whole.add_deltas(d)
    a, b = KinshipStats.empty(3), KinshipStats.empty(3)
    a.add_deltas(d[:, :400])
    b.add_deltas(d[:, 400:])
    total = a + b
    assert total.n == 1000
    np.testing.assert_allclose(total.gram, whole.gram, rtol=1e-12)


def test_n_model_kinship_is_mean_pairwise():
    rng = np.random.default_rng(4)
    d = rng.standard_normal((4, 500))
    s = KinshipStats.empty(4)
    s.add_deltas(d)
    pairs = [s.value("pcc", i, j) for i in range(4) for j in range(i + 1, 4)]
    assert s.mean_pairwise("pcc") == pytest.approx(np.mean(pairs))
    assert s.mean_pairwise("pcc", [0, 2]) == pytest.approx(s.value("pcc", 0, 2))


def test_exact_at_scale_where_float32_drifts():
    """16M elements with a mean offset: float32 reductions drift, the float64 streaming does not."""
    rng = np.random.default_rng(5)
    n = 1 << 24
    base = rng.standard_normal(n).astype(np.float32)
    common = rng.standard_normal(n).astype(np.float32)
    a = base + 0.02 * (common + rng.standard_normal(n).astype(np.float32)) + 0.01
    b = base + 0.02 * (common + rng.standard_normal(n).astype(np.float32)) + 0.01
    raw = [base, a, b]
    s = KinshipStats.empty(2)
    chunk = 1 << 22
    for lo in range(0, n, chunk):
        sums, gram = _kernels.accumulate(base[lo : lo + chunk], "F32", [a[lo : lo + chunk], b[lo : lo + chunk]],
                                         ["F32", "F32"])
        s.n += min(chunk, n - lo)
        s.sums += sums
        s.gram += gram
    da = a.astype(np.float64) - base
    db = b.astype(np.float64) - base
    want_pcc = float(np.corrcoef(da, db)[0, 1])
    want_ed = float(np.linalg.norm(da - db))
    assert s.value("pcc", 0, 1) == pytest.approx(want_pcc, rel=1e-9)
    assert s.value("ed", 0, 1) == pytest.approx(want_ed, rel=1e-9)
    del raw


def test_c_kernel_is_built_here():
    """The extension is optional for users without a compiler, but never silently missing here."""
    assert _kernels.have_c(), "kinmerge._kinship_c is not built: run pip install -e . (needs a C compiler)"
    assert _kernels.default_backend() == "c"
    assert "generic" in _kernels.c_isas()
    assert _kernels.c_isa() in _kernels.c_isas()


def _raw(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return to_bf16_bits(values.astype(np.float32))
    return values.astype({"F64": np.float64, "F32": np.float32, "F16": np.float16}[dtype])


@pytest.mark.parametrize("n_models", [1, 2, 3, 4, 5, 6, 7, 8, 11, 14])
@pytest.mark.parametrize("m", [1, 5, 8, 37, 512, 513, 1000, 4133])
def test_c_paths_agree_with_numpy_every_shape(n_models, m):
    """Fused (<= 6 models), tiled (more), every tail length, every code path of this CPU."""
    _require_c()
    rng = np.random.default_rng(n_models * 10007 + m)
    base = rng.standard_normal(m)
    vals = [base + rng.standard_normal(m) * 0.1 + 0.01 * i for i in range(n_models)]
    for dtype in ("F64", "F32", "F16", "BF16"):
        raw = [_raw(v, dtype) for v in [base, *vals]]
        want = _kernels.accumulate(raw[0], dtype, raw[1:], [dtype] * n_models, backend="numpy")
        for isa in _kernels.c_isas():
            got = _kernels.accumulate(raw[0], dtype, raw[1:], [dtype] * n_models, backend="c", isa=isa)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-12 * m, err_msg=f"{dtype} {isa}")
            np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-12 * m, err_msg=f"{dtype} {isa}")
            assert np.array_equal(got[1], got[1].T)


@pytest.mark.parametrize("n_models", [1, 2, 5, 9])
def test_c_mixed_dtypes(n_models):
    _require_c()
    rng = np.random.default_rng(n_models)
    m = 777
    base = rng.standard_normal(m)
    kinds = ["BF16", "F16", "F32", "F64"]
    dts = [kinds[i % 4] for i in range(n_models)]
    raw_models = [_raw(base + rng.standard_normal(m) * 0.1, t) for t in dts]
    for base_dtype in kinds:
        raw_base = _raw(base, base_dtype)
        want = _kernels.accumulate(raw_base, base_dtype, raw_models, dts, backend="numpy")
        for isa in _kernels.c_isas():
            got = _kernels.accumulate(raw_base, base_dtype, raw_models, dts, backend="c", isa=isa)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("isa", list(_kernels.ISAS))
@pytest.mark.parametrize("mixed", [False, True])
def test_c_f16_every_bit_pattern_is_exact(isa, mixed):
    """All 65536 halves: normals, subnormals, ±0 exactly; Inf and NaN stay non-finite.

    Six models a call (the fused path; a float32 base takes the widening path), model i holding
    one value at position i and zeros elsewhere, so sums[i] is that value and gram[i, i] its square.
    """
    _require_c(isa)
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    want = halves.astype(np.float64)
    k = 6
    base = np.zeros(8, dtype=np.float32 if mixed else np.float16)
    base_dtype = "F32" if mixed else "F16"
    for start in range(0, 1 << 16, k):
        idx = np.arange(start, min(start + k, 1 << 16))
        models = [np.zeros(8, dtype=np.float16) for _ in idx]
        for i, j in enumerate(idx):
            models[i][i] = halves[j]
        s, g = _kernels.accumulate(base, base_dtype, models, ["F16"] * len(idx), backend="c", isa=isa)
        v = want[idx]
        fin = np.isfinite(v)
        assert np.array_equal(s[fin], v[fin]) and np.array_equal(np.diag(g)[fin], v[fin] ** 2), hex(start)
        assert not np.isfinite(s[~fin]).any() and np.array_equal(np.isnan(s[~fin]), np.isnan(v[~fin])), hex(start)


@pytest.mark.parametrize("isa", list(_kernels.ISAS))
@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_c_nan_and_inf_propagate(isa, dtype, bad):
    """The scan finds damaged tensors by non-finite sums: the kernel must never swallow them."""
    _require_c(isa)
    for n_models, where in ((2, 1), (6, 5), (8, 7)):
        base = np.linspace(-1, 1, 1001)
        models = [base + 0.01 * (i + 1) for i in range(n_models)]
        models[where] = models[where].copy()
        models[where][517] = bad
        raw = [_raw(v, dtype) for v in [base, *models]]
        s, g = _kernels.accumulate(raw[0], dtype, raw[1:], [dtype] * n_models, backend="c", isa=isa)
        assert not np.isfinite(s[where]) and not np.isfinite(g[where, where])
        assert np.isfinite(s[0]) and np.isfinite(g[0, 0])
        if np.isnan(bad):
            assert np.isnan(s[where])


def test_c_results_are_deterministic_and_thread_safe():
    """Same inputs, same bits, also when called from many threads at once (the GIL is released)."""
    _require_c()
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    m = 200_003
    base = to_bf16_bits(rng.standard_normal(m).astype(np.float32))
    models = [to_bf16_bits(rng.standard_normal(m).astype(np.float32)) for _ in range(5)]
    first = _kernels.accumulate(base, "BF16", models, ["BF16"] * 5, backend="c")
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: _kernels.accumulate(base, "BF16", models, ["BF16"] * 5, backend="c"), range(16)))
    for s, g in runs:
        assert np.array_equal(s, first[0]) and np.array_equal(g, first[1])


def test_accumulate_rejects_bad_arguments():
    a = np.zeros(4, dtype=np.float32)
    with pytest.raises(ValueError, match="unknown kinship backend 'numba'"):
        _kernels.accumulate(a, "F32", [a], ["F32"], backend="numba")
    if _kernels.have_c():
        with pytest.raises(ValueError, match="1-D with 4 elements"):
            _kernels.accumulate(a, "F32", [np.zeros(5, dtype=np.float32)], ["F32"], backend="c")
        with pytest.raises(ValueError, match="4-byte raw values"):
            _kernels.accumulate(a, "F32", [np.zeros(4)], ["F32"], backend="c")
        with pytest.raises(ValueError, match="refused"):
            _kernels.accumulate(a, "F32", [a], ["F32"], backend="c", isa="no-such-isa")


@pytest.mark.parametrize(
    ("text", "want"),
    [("pcc", ["pcc"]), ("cs,pcc,ed", ["cs", "pcc", "ed"]), ("cs pcc ed", ["cs", "pcc", "ed"]),
     ("pcc, ED", ["pcc", "ed"]),
     (["pcc", "cs,ed"], ["pcc", "cs", "ed"])],
)
def test_parse_metrics(text, want):
    assert parse_metrics(text) == want


def test_parse_metrics_rejects_unknown():
    with pytest.raises(ValueError, match="unknown kinship metric 'foo'"):
        parse_metrics("pcc,foo")
