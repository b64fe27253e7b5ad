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

BACKENDS = ["numpy"] + (["numba"] if _kernels.HAVE_NUMBA else [])


def _stats(base: np.ndarray, models: list[np.ndarray], chunk: int, backend: str, dtype: str = "F64") -> KinshipStats:
    st_ = KinshipStats.empty(len(models))
    for lo in range(0, base.size, chunk):
        hi = min(base.size, lo + chunk)
        sums, gram = _kernels.accumulate(base[lo:hi], dtype, [m[lo:hi] for m in models], [dtype] * len(models), backend=backend)
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
        s, g = _kernels.accumulate(raw[0][lo:hi], dtype, [r[lo:hi] for r in raw[1:]], [dtype] * n_models, backend=backend)
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
    base = np.zeros(1000)
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
        sums, gram = _kernels.accumulate(base[lo : lo + chunk], "F32", [a[lo : lo + chunk], b[lo : lo + chunk]], ["F32", "F32"])
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


@pytest.mark.parametrize(
    ("text", "want"),
    [("pcc", ["pcc"]), ("cs,pcc,ed", ["cs", "pcc", "ed"]), ("cs pcc ed", ["cs", "pcc", "ed"]), ("pcc, ED", ["pcc", "ed"]),
     (["pcc", "cs,ed"], ["pcc", "cs", "ed"])],
)
def test_parse_metrics(text, want):
    assert parse_metrics(text) == want


def test_parse_metrics_rejects_unknown():
    with pytest.raises(ValueError, match="unknown kinship metric 'foo'"):
        parse_metrics("pcc,foo")
