"""Forward passes whose bits do not depend on the CPU's vector width (AVX2 or AVX-512).

Why: torch picks a kernel per CPU capability (``ATEN_CPU_CAPABILITY``, read once when torch is
imported). Most CPU kernels give the same bits on AVX2 and AVX-512 (exp, log, sums, silu, rsqrt,
matrix products: measured on torch 2.13), but softmax, log-softmax and the fused attention
kernel (``scaled_dot_product_attention``) use a fast exponential whose AVX-512 and AVX2 versions
differ in the last bits. A choice task's argmax or a near tie between two merges then reads
differently on another machine, and the run takes another path (issue 18).

So, while the builtin evaluator scores a model, attention runs as plain operations whose bits do
not depend on the vector width: ``exp(x - max) / sum`` in float32, never torch's softmax; and
log-likelihoods use :func:`log_softmax` below. The change is at float-rounding level (scores
match torch's kernels to ~1e-6), like ``batch_size``, so it is not part of the evaluator's key.

Example:
    >>> import torch
    >>> x = torch.tensor([[1.0, 2.0, 3.0]])
    >>> bool(torch.allclose(log_softmax(x), torch.log_softmax(x, dim=-1)))
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ATTENTION", "fixed_order_attention", "log_softmax", "softmax"]

#: the name our attention function is registered under in transformers' attention interface
ATTENTION = "kinmerge_fixed_order"


def softmax(x: Any) -> Any:
    """Softmax over the last axis from exp, sum and division: the same bits on AVX2 and AVX-512."""
    import torch

    shifted = x - x.amax(dim=-1, keepdim=True)
    e = torch.exp(shifted)
    return e / e.sum(dim=-1, keepdim=True)


def log_softmax(x: Any) -> Any:
    """Log-softmax over the last axis from exp, sum and log (see :func:`softmax`)."""
    import torch

    shifted = x - x.amax(dim=-1, keepdim=True)
    return shifted - torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))


def _attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
               scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, Any]:
    """transformers' eager attention with :func:`softmax` (same inputs, same output layout)."""
    import torch

    groups = query.shape[1] // key.shape[1]  # grouped-query attention: repeat each key/value head
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, : key.shape[-2]]
    weights = softmax(weights.float()).to(query.dtype)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ATTENTION, _attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, eager_mask)  # additive float masks, as eager


@contextmanager
def fixed_order_attention(model: Any) -> Iterator[None]:
    """Run ``model``'s attention as :func:`softmax`-based eager attention, restored on exit.

    A model whose class does not use transformers' attention interface (it cannot switch) is left
    as it is; its scores then carry its own kernels' rounding.
    """
    switch = getattr(model, "set_attn_implementation", None)
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    can_switch = callable(switch) and getattr(model, "_can_set_attn_implementation", lambda: False)()
    if not can_switch or before is None:
        yield
        return
    _register()
    switch(ATTENTION)
    try:
        yield
    finally:
        switch(before)
