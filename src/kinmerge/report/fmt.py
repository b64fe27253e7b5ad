"""Numbers as the report and ``kinmerge compare`` print them: as many decimals as the scores'
resolution needs (``compare.resolution``), ``—`` for unknown, ± a standard error, intervals.

Example:
    >>> num(0.51333, 3), signed(0.0123, 3), pval(0.00012)
    ('0.513', '+0.012', '1.2e-04')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["mean_se", "num", "paired_text", "pval", "signed"]


def num(value: float | None, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals; ``—`` when unknown (``None`` or not finite)."""
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def signed(value: float | None, digits: int = 2) -> str:
    """Like :func:`num`, with a sign (a gain, a difference)."""
    return "—" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def pval(p: float | None) -> str:
    """A p-value: two significant digits, scientific below 0.001; ``n/a`` when undefined."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def mean_se(spread: Mapping[str, Any], digits: int = 2, *, sign: bool = False) -> str:
    """``mean ± sem`` of a spread dict (``stats.Spread.__dict__``); the mean alone for one value."""
    show = signed if sign else num
    if spread.get("sem") is None:
        return show(spread.get("mean"), digits)
    return f"{show(spread['mean'], digits)} ± {num(spread['sem'], digits)}"


def paired_text(p: Mapping[str, Any] | None, digits: int = 2, *, sep: str = " ") -> str:
    """A paired comparison (``stats.Paired.to_dict``): ``+0.010 [-0.003, +0.020] 2/1/1 p=0.62`` —
    mean difference, bootstrap 95% interval, wins/ties/losses, sign-test p; ``—`` without pairs.
    ``sep`` goes between the difference and the counts (a line break in a narrow cell)."""
    if not p or p.get("mean") is None:
        return "—"
    ci = f" [{signed(p['ci95'][0], digits)}, {signed(p['ci95'][1], digits)}]" if p.get("ci95") else ""
    return f"{signed(p['mean'], digits)}{ci}{sep}{p['wins']}/{p['ties']}/{p['losses']} p={p['p_sign']:.2g}"
