"""Kinship statistics of low-rank deltas (LoRA adapters), exactly, without ever forming B·A.

A LoRA adapter's delta of one weight matrix is ``ΔW = s·L·R`` with thin factors ``L`` (rows × r)
and ``R`` (r × cols): for a PEFT ``Linear`` ``L = lora_B`` and ``R = lora_A``; for an embedding or
a ``fan_in_fan_out`` (GPT-2 ``Conv1D``) layer, whose stored weight is the transpose,
``L = lora_Aᵀ`` and ``R = lora_Bᵀ``. Kinship needs, per tensor, the element count and the
additive sums of :class:`kinmerge.kinship.KinshipStats`; each has an r × r form:

    Σ ΔW            = s·(1ᵀL)(R1)
    Σ ΔW₁∘ΔW₂       = s₁s₂·Σ (L₁ᵀL₂) ∘ (R₁R₂ᵀ)     = s₁s₂·tr((L₁ᵀL₂)(R₂R₁ᵀ))
    Σ D∘ΔW          = s·Σ (D Rᵀ) ∘ L               (D a dense delta, streamed by rows)

so the kinship of two adapters of a 7B model costs their factor reads and r × r products instead
of two 7B densifications (benchmarks/lora_kinship.py). Everything is float64. Like
``kinship.py``, this module is pure math on arrays: no files, no torch.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> f = Factors(rng.standard_normal((5, 2)), rng.standard_normal((2, 3)), 0.5)
    >>> bool(np.isclose(sq_norm(f), np.sum(f.dense() ** 2)))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Factors", "delta_sum", "dense_inner", "gram", "inner", "sq_norm"]


@dataclass(frozen=True)
class Factors:
    """One low-rank delta ``scale · left @ right`` in the base tensor's own layout (float64).

    Attributes:
        left: (rows, r).
        right: (r, cols).
        scale: the adapter's scaling ``s`` (``lora_alpha / r``, or ``/ √r`` with rsLoRA).
    """

    left: np.ndarray
    right: np.ndarray
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.left.shape[0]), int(self.right.shape[1])

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    def rows(self, stop: int) -> Factors:
        """The first ``stop`` rows of the delta (a vocabulary tensor compared on common rows)."""
        return Factors(self.left[:stop], self.right, self.scale)

    def dense(self) -> np.ndarray:
        """``scale · left @ right`` as a dense array: for tests and the benchmark's baseline only."""
        return np.asarray(self.scale * (self.left @ self.right))


def delta_sum(f: Factors) -> float:
    """Σ ΔW = s·(1ᵀL)(R1).

    >>> delta_sum(Factors(np.ones((2, 1)), np.ones((1, 3)), 2.0))
    12.0
    """
    return float(f.scale * (f.left.sum(axis=0) @ f.right.sum(axis=1)))


def inner(f: Factors, g: Factors) -> float:
    """Σ ΔW_f ∘ ΔW_g = s_f·s_g·Σ (L_fᵀL_g) ∘ (R_fR_gᵀ): an r_f × r_g product, ranks may differ.

    >>> f = Factors(np.eye(2), np.eye(2), 1.0); g = Factors(np.eye(2)[:, :1], np.eye(2)[:1], 3.0)
    >>> inner(f, g)
    3.0
    """
    return float(f.scale * g.scale * np.sum((f.left.T @ g.left) * (f.right @ g.right.T)))


def sq_norm(f: Factors) -> float:
    """Σ ΔW² = s²·tr((LᵀL)(RRᵀ)), never below zero."""
    return max(inner(f, f), 0.0)


def gram(factors: Sequence[Factors]) -> np.ndarray:
    """Σ ΔW_i∘ΔW_j of every pair of ``factors`` at once (K × K): :func:`inner` for all pairs.

    Why not a loop over pairs: stacking the factors (``L = [L_1 … L_K]``, ``R = [R_1; …; R_K]``)
    turns K² small products into two matrix products, ``LᵀL`` and ``RRᵀ`` (Σr × Σr), whose
    elementwise product summed block by block is the answer: a 20-adapter matrix costs two BLAS
    calls per tensor instead of 400 Python-level ones.

    >>> f = Factors(np.eye(2), np.eye(2), 1.0); g = Factors(np.eye(2)[:, :1], np.eye(2)[:1], 3.0)
    >>> gram([f, g]).tolist()
    [[2.0, 3.0], [3.0, 9.0]]
    """
    if not factors:
        return np.zeros((0, 0))
    left = np.concatenate([f.left for f in factors], axis=1)
    right = np.concatenate([f.right for f in factors], axis=0)
    blocks = (left.T @ left) * (right @ right.T)
    starts = np.cumsum([0] + [f.rank for f in factors[:-1]])
    summed = np.add.reduceat(np.add.reduceat(blocks, starts, axis=0), starts, axis=1)
    scales = np.array([f.scale for f in factors])
    out = summed * np.outer(scales, scales)
    return np.asarray((out + out.T) / 2)  # summation order differs across the diagonal: symmetric to the bit


def dense_inner(delta_rows: np.ndarray, f: Factors, lo: int) -> float:
    """Σ D∘ΔW over rows ``[lo, lo + len(delta_rows))`` of a dense delta ``D`` (rows × cols, float64).

    Summed over row blocks this is ``s·tr(Lᵀ D Rᵀ)``: a full fine-tune's delta is streamed block
    by block and the adapter is never densified (rows × cols × r multiply-adds per block).

    >>> f = Factors(np.ones((2, 1)), np.ones((1, 2)), 1.0)
    >>> dense_inner(np.ones((1, 2)), f, 1)
    2.0
    """
    hi = lo + delta_rows.shape[0]
    return float(f.scale * np.sum((delta_rows @ f.right.T) * f.left[lo:hi]))
