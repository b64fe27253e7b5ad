"""Model kinship, as pure math on weight deltas (Hu et al. 2025, arXiv 2410.12613, §1).

A model's *delta* is its whole flattened parameter vector minus the base's. Kinship of two
models is a similarity of their deltas: Pearson correlation (PCC), signed cosine similarity (CS),
or Euclidean distance (ED, a distance: high kinship = small ED). All three follow exactly from a
few streaming float64 accumulators over the N deltas of a pool:

    n         number of delta elements seen
    sums[i]   Σ δ_i
    gram[i,j] Σ δ_i·δ_j

so one pass over the files gives the whole N×N kinship matrix for every metric, statistics from
disjoint parts of the model (tensors, chunks, workers) simply add up, and memory never depends
on model size. This module knows nothing of files: it takes arrays and returns numbers.

Example:
    >>> import numpy as np
    >>> base = np.zeros(4); a = np.array([1., 2, 3, 4]); b = np.array([2., 4, 6, 8])
    >>> stats = KinshipStats.empty(2)
    >>> stats.add_deltas(np.stack([a - base, b - base]))
    >>> round(stats.value("pcc", 0, 1), 12), round(stats.value("cs", 0, 1), 12)
    (1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from kinmerge.errors import ConfigError

METRICS = ("pcc", "cs", "ed")
METRIC_NAMES = {"pcc": "Pearson correlation", "cs": "cosine similarity", "ed": "Euclidean distance"}
# For ED a *smaller* value means *more* kinship; the others grow with kinship.
HIGHER_IS_CLOSER = {"pcc": True, "cs": True, "ed": False}
#: Early-stop thresholds when none is given. The paper's 0.9 is for PCC; signed cosine is close to
#: PCC on (nearly mean-zero) weight deltas. ED has no default: a distance depends on model size
#: (the paper's path fell from 20.4 to 1.6 on a 7B model), so the user must choose one.
DEFAULT_THRESHOLDS: dict[str, float] = {"pcc": 0.9, "cs": 0.9}


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is one of :data:`METRICS`, else raise a one-line ``ConfigError``.

    >>> check_metric("ed")
    'ed'
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown kinship metric {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """Parse a metric list separated by commas and/or spaces: ``"pcc,cs ed"`` -> ``[pcc, cs, ed]``.

    Raises ``ValueError`` naming the unknown metric (the reference tool split on spaces only and
    silently ran nothing for ``cs,pcc,ed``).
    """
    items = [text] if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        for tok in item.replace(",", " ").split():
            tok = tok.strip().lower()
            aliases = {"pearson": "pcc", "cos": "cs", "cosine": "cs", "euclidean": "ed"}
            tok = aliases.get(tok, tok)
            if tok not in METRICS:
                raise ValueError(f"unknown kinship metric '{tok}': choose from {', '.join(METRICS)}")
            if tok not in out:
                out.append(tok)
    if not out:
        raise ValueError(f"no kinship metric given: choose from {', '.join(METRICS)}")
    return out


@dataclass
class KinshipStats:
    """Streaming float64 accumulators over the deltas of N models (see the module docstring)."""

    n: int
    sums: np.ndarray  # (N,)
    gram: np.ndarray  # (N, N), symmetric

    @classmethod
    def empty(cls, n_models: int) -> KinshipStats:
        return cls(0, np.zeros(n_models), np.zeros((n_models, n_models)))

    @property
    def n_models(self) -> int:
        return int(self.sums.shape[0])

    def add_deltas(self, deltas: np.ndarray) -> None:
        """Accumulate an (N, m) block of deltas (any float dtype; reduced in float64)."""
        d = np.asarray(deltas, dtype=np.float64)
        self.n += d.shape[1]
        self.sums += d.sum(axis=1)
        self.gram += d @ d.T

    def __iadd__(self, other: KinshipStats) -> KinshipStats:
        self.n += other.n
        self.sums += other.sums
        self.gram += other.gram
        return self

    def __add__(self, other: KinshipStats) -> KinshipStats:
        out = self.copy()
        out += other
        return out

    def copy(self) -> KinshipStats:
        return KinshipStats(self.n, self.sums.copy(), self.gram.copy())

    # -- metrics -----------------------------------------------------------------------------
    def sq_norm(self, i: int) -> float:
        return float(self.gram[i, i])

    def value(self, metric: str, i: int, j: int) -> float | None:
        """Kinship of models i and j under ``metric``; None when undefined (see ``why_undefined``)."""
        return _VALUE[metric](self, i, j)

    def why_undefined(self, metric: str, i: int, j: int) -> str | None:
        """Why ``value(metric, i, j)`` is None, in words a user can act on; None if defined."""
        if self.n == 0:
            return "no tensors compared"
        if metric == "ed":
            return None
        zero = [k for k in (i, j) if self.gram[k, k] == 0.0]
        if zero:
            return "delta is all zeros (model identical to the base)"
        if metric == "pcc" and any(_centered_sq(self, k) <= 0.0 for k in (i, j)):
            return "delta is constant (zero variance)"
        return None

    def matrix(self, metric: str) -> np.ndarray:
        """The N×N kinship matrix, NaN where undefined (callers report the reason)."""
        n = self.n_models
        out = np.full((n, n), np.nan)
        for i in range(n):
            for j in range(n):
                v = self.value(metric, i, j)
                out[i, j] = np.nan if v is None else v
        return out

    def mean_pairwise(self, metric: str, members: Sequence[int] | None = None) -> float | None:
        """n-model kinship: the mean pairwise kinship over ``members`` (paper §1)."""
        idx = list(range(self.n_models)) if members is None else list(members)
        vals = [self.value(metric, i, j) for i, j in combinations(idx, 2)]
        known = [v for v in vals if v is not None]
        if not vals or len(known) < len(vals):
            return None
        return float(np.mean(known))


def _centered_sq(s: KinshipStats, i: int) -> float:
    # Σ(δ - mean)² = Σδ² - (Σδ)²/n, computed so it stays ≥ 0 up to rounding.
    return float(s.gram[i, i] - s.sums[i] * s.sums[i] / s.n)


def _pcc(s: KinshipStats, i: int, j: int) -> float | None:
    if s.n == 0:
        return None
    vi, vj = _centered_sq(s, i), _centered_sq(s, j)
    if vi <= 0.0 or vj <= 0.0:
        return None
    if i == j:
        return 1.0
    cov = float(s.gram[i, j] - s.sums[i] * s.sums[j] / s.n)
    return _clip(cov / math.sqrt(vi * vj))


def _cs(s: KinshipStats, i: int, j: int) -> float | None:
    ni, nj = s.gram[i, i], s.gram[j, j]
    if s.n == 0 or ni == 0.0 or nj == 0.0:
        return None
    if i == j:
        return 1.0
    return _clip(float(s.gram[i, j] / math.sqrt(ni * nj)))


def _ed(s: KinshipStats, i: int, j: int) -> float | None:
    if s.n == 0:
        return None
    if i == j:
        return 0.0
    # ‖δi − δj‖² = Σδi² + Σδj² − 2Σδiδj; rounding can push a true 0 slightly below.
    sq = float(s.gram[i, i] + s.gram[j, j] - 2.0 * s.gram[i, j])
    return math.sqrt(max(sq, 0.0))


def _clip(x: float) -> float:
    return max(-1.0, min(1.0, x))


_VALUE = {"pcc": _pcc, "cs": _cs, "ed": _ed}


def reference_kinship(a: np.ndarray, b: np.ndarray, base: np.ndarray, metric: str) -> float:
    """The paper's definition computed the plain way: flatten, subtract, reduce in float64.

    Used by tests and the benchmark as ground truth; needs all three vectors in memory.
    """
    da = np.asarray(a, np.float64).ravel() - np.asarray(base, np.float64).ravel()
    db = np.asarray(b, np.float64).ravel() - np.asarray(base, np.float64).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):  # undefined cases come out as NaN here
        if metric == "pcc":
            return float(np.corrcoef(da, db)[0, 1])
        if metric == "cs":
            return float(da @ db / (np.linalg.norm(da) * np.linalg.norm(db)))
        if metric == "ed":
            return float(np.linalg.norm(da - db))
    raise ValueError(f"unknown kinship metric '{metric}'")
