"""Sketches of model deltas: kinship of thousands of models from a few hundred KB each.

A *sketch* is a fixed-size, seeded, **linear** random projection of a model's whole flattened
delta (``δ = θ − θ_base``) plus the exact count ``n``, ``Σδ`` and ``Σδ²``. Two sketches give
*estimates* of PCC, signed cosine and ED between the two models, each with an error bound at a
stated confidence, without reading either model again.

The projection is a CountSketch whose buckets come in blocks (a "block-shifted" CountSketch):

* every position ``p`` of tensor ``T`` gets a random sign ``s(p) = ±1`` (bit ``p mod 64`` of a
  64-bit hash of ``(seed, T, p // 64)``), independently of every other position;
* positions come in blocks of ``size`` consecutive positions (``k = p // size``); block ``k``
  gets a random shift ``r_k`` (a hash of ``(seed, T, k)``) and position ``p`` lands in bucket
  ``(r_k + p mod size) mod size``;
* the sketch is ``S[h] = Σ_{p in bucket h} s(p) · δ(p)``.

Everything depends only on ``(seed, tensor name, position)``, never on files, chunks or workers,
so the same position hashes the same way in every model of a family, sketches of disjoint parts
add up, and a model restricted to the first ``rows`` rows of a vocabulary tensor (row-major:
``p = row * cols + col``) keeps every shared position where it was. The sketch of
``Σ_k w_k δ_k`` is ``Σ_k w_k S_k`` exactly (up to float rounding): a linear or task-arithmetic
merge can be scored before it is made (``combine``).

Why this projection: two positions in different blocks share a bucket with probability exactly
``1/size`` (independent uniform shifts) and two positions in the same block never do — the
pairwise behaviour of a CountSketch, which is all the variance depends on — while each block is
one contiguous run of buckets, so a kernel adds a chunk into the sketch as a streaming vector
add (``_sketch.c``) instead of a random scatter. See docs/index.md for the measurements.

**Estimates.** Cosine is estimated by the cosine of the two sketches, PCC by the cosine of the
*centred* sketches ``S(δ) − mean(δ)·S(1)`` (``S(1)``, the sketch of the all-ones vector on the
same positions, is kept in every sketch: ``ones``), ED from the exact norms and the cosine. The
bound at a stated confidence is the larger of two standard errors: the variance bound — with
4-wise independent signs and pairwise collision probability ``<= 1/size`` the linearised error
of the ratio estimator has variance at most ``(1 − c²)² / size`` (the Gaussian projection's;
docs/index.md derives it) — and a jackknife over ``GROUPS`` bucket groups, which catches deltas
whose mass sits in a few coordinates (then a collision of two of them is a rare, large error
that no normal approximation of the variance bound covers). Property tests check that the exact
value lies within the bound at the stated rate (tests/test_sketch.py).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = rng.standard_normal(50_000); b = 0.6 * a + 0.8 * rng.standard_normal(50_000)
    >>> sa, sb = Sketch.empty(4096), Sketch.empty(4096)
    >>> sa.add(a, "w"); sb.add(b, "w")
    >>> est = estimate(sa, sb, "cs")
    >>> abs(est.value - float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))) <= est.bound
    True
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from kinmerge.errors import KinmergeError

DEFAULT_SIZE = 1 << 17  # buckets; chosen from the size/accuracy table in docs/index.md
DEFAULT_SEED = 0x4B494E4D  # "KINM": every sketch of a family must use the same seed
DEFAULT_CONFIDENCE = 0.99
MIN_LOG2, MAX_LOG2 = 8, 26
GROUPS = 32  # bucket groups (bucket mod GROUPS) for the jackknife standard error
METRICS = ("pcc", "cs", "ed")

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_MAGIC = b"KMSKETCH"
_FORMAT = 1


class SketchMismatchError(KinmergeError, ValueError):
    """Two sketches cannot be compared: other seed, size, or positions (e.g. vocabulary rows)."""


# == the projection (numpy reference; _sketch.c computes the same) ===========================


def check_size(size: int) -> int:
    """``log2(size)``; raises ``ValueError`` unless ``size`` is a power of two in range."""
    log = int(size).bit_length() - 1
    if size < 1 or (1 << log) != size or not MIN_LOG2 <= log <= MAX_LOG2:
        raise ValueError(f"sketch size must be a power of two from 2^{MIN_LOG2} to 2^{MAX_LOG2}, got {size}")
    return log


def tensor_key(seed: int, tensor: str) -> int:
    """The 64-bit hash key of a tensor name under ``seed`` (BLAKE2b, keyed by the seed).

    >>> tensor_key(0, "lm_head.weight") == tensor_key(0, "lm_head.weight") != tensor_key(1, "lm_head.weight")
    True
    """
    h = hashlib.blake2b(tensor.encode("utf-8"), digest_size=8, key=(int(seed) & _MASK64).to_bytes(8, "little"))
    return int.from_bytes(h.digest(), "little")


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return np.asarray(z ^ (z >> np.uint64(31)))


def _hashes(key: int, counters: np.ndarray) -> np.ndarray:
    """``mix64(key + counter * golden)`` for an int64 array of counters."""
    with np.errstate(over="ignore"):
        return _mix64(np.uint64(key) + counters.astype(np.uint64) * np.uint64(_GOLDEN))


def signs(key: int, start: int, stop: int) -> np.ndarray:
    """``s(p)`` as float64 ±1 for positions ``[start, stop)``: bit ``p % 64`` of hash word ``p // 64``.

    >>> signs(tensor_key(0, "w"), 0, 6)
    array([-1., -1., -1.,  1.,  1.,  1.])
    """
    if stop <= start:
        return np.empty(0)
    w0, w1 = start >> 6, ((stop - 1) >> 6) + 1
    words = _hashes(key, 2 * np.arange(w0, w1, dtype=np.int64) + 1).astype("<u8")
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")[start - 64 * w0 : stop - 64 * w0]
    return 1.0 - 2.0 * bits


def buckets(key: int, start: int, stop: int, size: int) -> np.ndarray:
    """The bucket of each position in ``[start, stop)``: ``(r_k + p mod size) mod size``, ``k = p // size``."""
    log = check_size(size)
    p = np.arange(start, stop, dtype=np.int64)
    if p.size == 0:
        return p
    k0 = start >> log
    shifts = (_hashes(key, 2 * np.arange(k0, ((stop - 1) >> log) + 1, dtype=np.int64) + 2) >> np.uint64(64 - log))
    return np.asarray((shifts.astype(np.int64)[(p >> log) - k0] + (p & (size - 1))) & (size - 1))


def project(values: np.ndarray, key: int, start: int, size: int) -> np.ndarray:
    """The sketch (``size`` float64) of ``values`` at positions ``[start, start + len)`` of one tensor."""
    v = np.asarray(values, dtype=np.float64).ravel()
    b = buckets(key, start, start + v.size, size)
    return np.bincount(b, weights=signs(key, start, start + v.size) * v, minlength=size)


# == sketches ================================================================================


@dataclass(eq=False)  # arrays inside: compare coverage_id, values, moments explicitly
class Sketch:
    """The sketch of one model's delta: projection, projection of ones, and exact moments.

    Attributes:
        seed, size: the projection; only sketches with equal seed and size compare.
        n: delta elements seen.
        sum: ``Σδ`` (exact float64 accumulation).
        sumsq: ``Σδ²``; None for a ``combine`` made without the parents' Gram matrix.
        values: the projection of the delta, ``size`` float64.
        ones: the projection of the all-ones vector on the same positions: integers, identical
            for every model sketched over the same tensors and rows (see ``coverage_id``).
    """

    seed: int
    size: int
    n: int
    sum: float
    sumsq: float | None
    values: np.ndarray
    ones: np.ndarray

    @classmethod
    def empty(cls, size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> Sketch:
        check_size(size)
        return cls(int(seed) & _MASK64, size, 0, 0.0, 0.0, np.zeros(size), np.zeros(size))

    def add(self, delta: np.ndarray, tensor: str, start: int = 0) -> None:
        """Add the delta values at positions ``[start, start + len)`` of ``tensor`` (numpy reference)."""
        d = np.asarray(delta, dtype=np.float64).ravel()
        key = tensor_key(self.seed, tensor)
        b = buckets(key, start, start + d.size, self.size)
        s = signs(key, start, start + d.size)
        self.values += np.bincount(b, weights=s * d, minlength=self.size)
        self.ones += np.bincount(b, weights=s, minlength=self.size)
        self.n += d.size
        self.sum += float(d.sum())
        if self.sumsq is not None:
            self.sumsq += float(d @ d)

    def _check(self, other: Sketch, *, same_positions: bool = False) -> None:
        if (self.seed, self.size) != (other.seed, other.size):
            raise SketchMismatchError(
                f"sketches differ in seed/size ({self.seed}/{self.size} vs {other.seed}/{other.size}); "
                "sketch every model of a family with the same seed and size"
            )
        if same_positions and (self.n != other.n or not np.array_equal(self.ones, other.ones)):
            raise SketchMismatchError(
                f"sketches cover different positions ({self.n} vs {other.n} elements; e.g. another "
                "vocabulary size or tensor list): re-sketch both over the same tensors and rows"
            )

    def __iadd__(self, other: Sketch) -> Sketch:
        """Add the sketch of a disjoint part of the same model (other tensors, chunks, workers)."""
        self._check(other)
        self.n += other.n
        self.sum += other.sum
        self.sumsq = None if self.sumsq is None or other.sumsq is None else self.sumsq + other.sumsq
        self.values += other.values
        self.ones += other.ones
        return self

    def __add__(self, other: Sketch) -> Sketch:
        out = self.copy()
        out += other
        return out

    def copy(self) -> Sketch:
        return Sketch(self.seed, self.size, self.n, self.sum, self.sumsq, self.values.copy(), self.ones.copy())

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0

    @property
    def coverage_id(self) -> str:
        """A digest of the positions sketched (seed, size, n, ``ones``): equal ids compare."""
        h = hashlib.blake2b(digest_size=12)
        h.update(struct.pack("<QIq", self.seed, self.size, self.n))
        h.update(np.ascontiguousarray(self.ones, dtype="<i8").tobytes())
        return h.hexdigest()

    # -- storage -------------------------------------------------------------------------------
    def to_bytes(self, *, compact: bool = False) -> bytes:
        """A self-describing blob. ``compact``: values as float32 (half the size; relative
        rounding 6e-8, far below any estimate's error) and ones as int32."""
        if np.abs(self.ones).max(initial=0) >= 2**31:
            raise ValueError("ones exceed int32; store this sketch with compact=False")
        vdt, odt = ("<f4", "<i4") if compact else ("<f8", "<i8")
        head = struct.pack("<8sBBQIqdd", _MAGIC, _FORMAT, int(compact), self.seed, self.size, self.n, self.sum,
                           math.nan if self.sumsq is None else self.sumsq)
        return bytes(head + self.values.astype(vdt).tobytes() + np.rint(self.ones).astype(odt).tobytes())

    @classmethod
    def from_bytes(cls, blob: bytes) -> Sketch:
        """Inverse of ``to_bytes``; raises ``ValueError`` for a blob that is not a sketch."""
        fmt = "<8sBBQIqdd"
        hs = struct.calcsize(fmt)
        if len(blob) < hs:
            raise ValueError("not a kinmerge sketch (too short)")
        magic, version, compact, seed, size, n, s, sq = struct.unpack_from(fmt, blob)
        if magic != _MAGIC or version != _FORMAT:
            raise ValueError("not a kinmerge sketch (bad magic or format version)")
        vdt, odt = ("<f4", "<i4") if compact else ("<f8", "<i8")
        check_size(size)
        if len(blob) != hs + size * (np.dtype(vdt).itemsize + np.dtype(odt).itemsize):
            raise ValueError(f"kinmerge sketch of size {size} has {len(blob)} bytes: truncated")
        values = np.frombuffer(blob, vdt, size, hs).astype(np.float64)
        ones = np.frombuffer(blob, odt, size, hs + size * np.dtype(vdt).itemsize).astype(np.float64)
        return cls(seed, size, n, s, None if math.isnan(sq) else sq, values, ones)


def combine(weights: Sequence[float], sketches: Sequence[Sketch], gram: np.ndarray | None = None) -> Sketch:
    """The sketch of ``Σ_k weights[k] · δ_k``: a linear merge (weights summing to 1) or task
    arithmetic (``base + Σ λ_k δ_k``), scored before it is made.

    ``n``, ``Σδ`` and the projection follow exactly; ``Σδ²`` needs the parents' Gram matrix
    ``Σδ_jδ_k`` (``KinshipStats.gram`` of an exact scan), else it is None (estimates then take
    the norm from the sketch). Raises ``SketchMismatchError`` unless all cover the same positions.

    >>> a, b = Sketch.empty(256), Sketch.empty(256)
    >>> a.add(np.arange(10.0), "w"); b.add(np.ones(10), "w")
    >>> c = Sketch.empty(256); c.add(0.5 * np.arange(10.0) + 0.5, "w")
    >>> bool(np.allclose(combine([0.5, 0.5], [a, b]).values, c.values))
    True
    """
    if not sketches or len(weights) != len(sketches):
        raise ValueError("combine needs one weight per sketch and at least one sketch")
    first = sketches[0]
    for s in sketches[1:]:
        first._check(s, same_positions=True)
    w = np.asarray(weights, dtype=np.float64)
    values = sum((wk * s.values for wk, s in zip(w, sketches, strict=True)), np.zeros(first.size))
    sumsq = None
    if gram is not None:
        g = np.asarray(gram, dtype=np.float64)
        if g.shape != (len(w), len(w)):
            raise ValueError(f"gram must be {len(w)}x{len(w)}, got {g.shape}")
        sumsq = float(w @ g @ w)
    total = float(sum(wk * s.sum for wk, s in zip(w, sketches, strict=True)))
    return Sketch(first.seed, first.size, first.n, total, sumsq, values, first.ones.copy())


# == estimates ===============================================================================


@dataclass(frozen=True)
class Estimate:
    """An estimated kinship: ``value ± bound`` holds with probability ``confidence``.

    ``value`` is None when the kinship is undefined (``reason`` says why, like
    ``KinshipStats.why_undefined``); ``stderr`` is ``bound / z``, the normal-equivalent
    standard error (for ranking and for combining with other errors).
    """

    metric: str
    value: float | None
    bound: float
    confidence: float
    stderr: float
    reason: str | None = None

    def covers(self, exact: float) -> bool:
        """True when ``exact`` lies within ``value ± bound``."""
        return self.value is not None and abs(exact - self.value) <= self.bound


def z_score(confidence: float) -> float:
    """Two-sided normal quantile: 0.99 -> 2.576."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def t_score(confidence: float, dof: int) -> float:
    """Two-sided Student-t quantile (Cornish-Fisher; within 1e-4 of the exact value for dof >= 15).

    >>> round(t_score(0.99, 31), 3)
    2.744
    """
    z = z_score(confidence)
    g = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
         (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    return float(z + sum(gk / dof ** (k + 1) for k, gk in enumerate(g)))


def estimate(a: Sketch, b: Sketch, metric: str, confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    """Estimated kinship of the two sketched models under ``metric`` ("pcc", "cs" or "ed").

    Raises:
        SketchMismatchError: the sketches differ in seed, size or positions covered.
        ValueError: an unknown metric or a confidence outside (0, 1).
    """
    vals, bounds, reasons = estimate_matrix([a, b], metric, confidence)
    why = reasons[0][1]
    return Estimate(metric, None if why else float(vals[0, 1]), float(bounds[0, 1]), confidence,
                    float(bounds[0, 1]) / z_score(confidence), why)


def estimate_matrix(sketches: Sequence[Sketch], metric: str, confidence: float = DEFAULT_CONFIDENCE
                    ) -> tuple[np.ndarray, np.ndarray, list[list[str | None]]]:
    """Estimates for every pair at once: (values, bounds, reasons).

    Values and bounds are NaN where undefined; ``reasons[i][j]`` then says why (else None).
    Costs about one matrix product over the stacked sketches.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown kinship metric '{metric}': choose from {', '.join(METRICS)}")
    first = sketches[0]
    for s in sketches[1:]:
        first._check(s, same_positions=True)
    k = len(sketches)
    v = np.stack([s.values for s in sketches])
    if metric == "pcc":
        v = v - np.array([s.mean for s in sketches])[:, None] * first.ones[None, :]
    parts = group_grams(v)
    diag = np.diagonal(parts, axis1=1, axis2=2)  # (GROUPS, K)
    aa, bb = diag[:, :, None], diag[:, None, :]
    sq = np.array([np.nan if s.sumsq is None else s.sumsq for s in sketches])
    c, half = estimate_parts(aa, parts, bb, metric, first.size, confidence, sq[:, None], sq[None, :])
    np.fill_diagonal(c, 0.0 if metric == "ed" else 1.0)
    np.fill_diagonal(half, 0.0)
    g = parts.sum(axis=0)
    bad = [why_undefined(s, metric, g[i, i]) for i, s in enumerate(sketches)]
    reasons: list[list[str | None]] = [[None] * k for _ in range(k)]
    for i in range(k):
        for j in range(k):
            if why := bad[i] or bad[j]:
                reasons[i][j] = why
                c[i, j] = half[i, j] = np.nan
    return c, half, reasons


def group_grams(v: np.ndarray) -> np.ndarray:
    """(GROUPS, K, K): the Gram of the stacked sketches over each bucket group (h mod GROUPS).

    Interleaved, not contiguous: a run of positions (a tensor smaller than a block fills one
    contiguous run of buckets) then spreads over every group, so differences between tensors
    do not pass for collision noise.
    """
    k, size = v.shape
    v3 = np.ascontiguousarray(v.reshape(k, size // GROUPS, GROUPS).transpose(2, 0, 1))  # (GROUPS, K, size/GROUPS)
    return np.asarray(v3 @ v3.transpose(0, 2, 1))


def group_products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``<a, b>`` over each bucket group: (GROUPS, ...) for ``a`` of shape (size,) and ``b`` of
    shape (..., size) (one query against many sketches: one pass over ``b``)."""
    size = a.shape[-1]
    a2 = a.reshape(size // GROUPS, GROUPS).T
    b2 = b.reshape(*b.shape[:-1], size // GROUPS, GROUPS)
    return np.asarray(np.einsum("gk,...kg->g...", a2, b2, optimize=True))


def estimate_parts(aa: np.ndarray, ab: np.ndarray, bb: np.ndarray, metric: str, size: int, confidence: float,
                   sq_a: np.ndarray | float = np.nan, sq_b: np.ndarray | float = np.nan
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Estimate and bound from per-bucket-group products (arrays of shape (GROUPS, ...)).

    ``aa``, ``ab``, ``bb``: ``<S_a, S_a>``, ``<S_a, S_b>``, ``<S_b, S_b>`` per bucket group, of the
    centred sketches for PCC; any trailing shape that broadcasts (a K x K matrix, one query
    against M sketches). ``sq_a``, ``sq_b``: exact ``Σδ²`` (NaN where unknown) for ED.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        c, half = _cosine_bound(aa, ab, bb, size, confidence)
        if metric == "ed":
            c, half = _ed_bound(aa, ab, bb, c, half, size, confidence, sq_a, sq_b)
    return c, half


def _cosine_bound(aa: np.ndarray, ab: np.ndarray, bb: np.ndarray, size: int, confidence: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The ratio estimate ĉ = g_ab / sqrt(g_aa g_bb) and its bound at ``confidence``.

    The bound is the larger of z·(1 − c'²)/sqrt(size) (the variance bound; c' is ĉ moved z
    errors towards 0) and t·SE_jackknife, leaving out one bucket group at a time (t with
    GROUPS − 1 degrees of freedom). The jackknife sees what the variance bound cannot: deltas
    whose mass sits in a few coordinates, where one collision of two of them is a rare, large
    error (measured: docs/index.md).
    """
    z, t = z_score(confidence), t_score(confidence, GROUPS - 1)
    a_all, b_all, ab_all = aa.sum(axis=0), bb.sum(axis=0), ab.sum(axis=0)
    c = np.clip(ab_all / np.sqrt(a_all * b_all), -1.0, 1.0)
    c_edge = np.maximum(np.abs(c) - z * (1.0 - c * c) / math.sqrt(size), 0.0)
    analytic = z * (1.0 - c_edge * c_edge) / math.sqrt(size)
    c_out = (ab_all - ab) / np.sqrt((a_all - aa) * (b_all - bb))  # leave one group out
    se_jack = np.sqrt((GROUPS - 1) / GROUPS * ((c_out - c_out.mean(axis=0)) ** 2).sum(axis=0))
    return c, np.maximum(analytic, t * se_jack)


def _ed_bound(aa: np.ndarray, ab: np.ndarray, bb: np.ndarray, c: np.ndarray, c_half: np.ndarray, size: int,
              confidence: float, sq_a: np.ndarray | float, sq_b: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """ED and its bound. With both Σδ² exact: ED² = na² + nb² − 2·na·nb·ĉ, whose error is
    2·na·nb times the cosine's. Otherwise (a ``combine`` without a Gram): ED² = ‖S_a − S_b‖²,
    bounded like the cosine (variance bound sqrt(2/size)·ED², or the jackknife). The bound on ED
    is the larger distance from ED to the ends of ``sqrt(ED² ± bound(ED²))``.
    """
    z, t = z_score(confidence), t_score(confidence, GROUPS - 1)
    sa, sb = np.asarray(sq_a, dtype=np.float64), np.asarray(sq_b, dtype=np.float64)
    nn = np.sqrt(sa * sb)
    zero = nn == 0.0  # a zero delta: ED is the other norm, exactly
    ed_sq = np.maximum(sa + sb - 2.0 * nn * np.where(zero, 0.0, c), 0.0)
    half_sq = np.where(zero, 0.0, 2.0 * nn * c_half)
    d_parts = aa + bb - 2.0 * ab  # ‖S_a − S_b‖² per group
    sk_sq = np.maximum(d_parts.sum(axis=0), 0.0)
    out = (d_parts.sum(axis=0)[None] - d_parts) * GROUPS / (GROUPS - 1)
    se_jack = np.sqrt((GROUPS - 1) / GROUPS * ((out - out.mean(axis=0)) ** 2).sum(axis=0))
    sk_half = np.maximum(z * math.sqrt(2.0 / size) * sk_sq, t * se_jack)
    exact = np.isfinite(nn)
    ed_sq = np.where(exact, ed_sq, sk_sq)
    half_sq = np.where(exact, half_sq, sk_half)
    ed = np.sqrt(ed_sq)
    return ed, np.maximum(ed - np.sqrt(np.maximum(ed_sq - half_sq, 0.0)), np.sqrt(ed_sq + half_sq) - ed)


def why_undefined(s: Sketch, metric: str, sketch_sq: float) -> str | None:
    """Why ``metric`` is undefined for this sketch (``sketch_sq``: its own ``<S, S>``), or None."""
    if s.n == 0:
        return "no tensors sketched"
    if metric == "ed":
        return None
    if s.sumsq == 0.0 or (s.sumsq is None and sketch_sq == 0.0):
        return "delta is all zeros (model identical to the base)"
    if metric == "pcc" and s.sumsq is not None and s.sumsq - s.sum * s.sum / s.n <= 0.0:
        return "delta is constant (zero variance)"
    if sketch_sq == 0.0:
        return "the sketch of this delta is zero; compare it with an exact scan"
    return None
