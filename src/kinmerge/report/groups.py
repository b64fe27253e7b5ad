"""How a report groups many runs: testbeds (one panel each), variants (one colour each), seeds.

A *testbed* is what makes runs comparable pair by pair (the same foundation models scored by
the same evaluator: ``RunHistory.testbed``); a *variant* is a strategy with its settings, the run
id without its seed (``RunHistory.variant``). Every figure and table of the page draws a variant
in the same colour and marker, so a reader learns the colours once: the paper's strategies have
fixed colours (greedy blue, kinship green, random purple), other variants take the spare ones in
order of appearance.

Example:
    >>> from kinmerge.report.groups import variant_styles
    >>> variant_styles([("greedy", "greedy"), ("kinship-nostop", "kinship"), ("kinship", "kinship")])["kinship"]
    Style(color='#2ca02c', marker='^')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kinmerge.report.queries import RunHistory

__all__ = ["Style", "bed_labels", "by_testbed", "variant_styles", "variants_of"]

#: The paper's strategies, and the study's best new one, always in these colours.
STRATEGY_COLORS = {"greedy": "#1f77b4", "kinship": "#2ca02c", "random": "#9467bd", "diverse": "#e377c2",
                   "predicted": "#ff7f0e"}
_SPARE_COLORS = ("#8c564b", "#17becf", "#bcbd22", "#d62728", "#7f7f7f", "#393b79", "#637939")
_MARKERS = "os^Dv<>pP*hX"


@dataclass(frozen=True)
class Style:
    """How one variant is drawn: a colour (hex, usable in CSS too) and a matplotlib marker."""

    color: str
    marker: str


def variants_of(runs: Sequence[RunHistory]) -> list[tuple[str, str]]:
    """``(variant, strategy)`` of the runs, in order of first appearance."""
    return list(dict.fromkeys((r.variant, r.run.strategy) for r in runs))


def variant_styles(variants: Sequence[tuple[str, str]]) -> dict[str, Style]:
    """A :class:`Style` per variant name: a variant named like its strategy (``kinship``), else
    the first variant of a strategy, gets the strategy's colour; the others the spare colours."""
    colors: dict[str, str] = {}
    taken: set[str] = set()
    # First the variants named exactly like their strategy, so ``kinship`` keeps green even when
    # ``kinship-nostop`` appears before it.
    ordered = sorted(variants, key=lambda vs: vs[0] != vs[1])
    for name, strategy in ordered:
        color = STRATEGY_COLORS.get(strategy)
        if color is not None and color not in taken:
            colors[name] = color
            taken.add(color)
    spare = iter(c for c in _SPARE_COLORS if c not in taken)
    for name, _ in variants:
        if name not in colors:
            colors[name] = next(spare, "#444444")
    return {name: Style(colors[name], _MARKERS[i % len(_MARKERS)]) for i, (name, _) in enumerate(variants)}


def bed_labels(runs: Sequence[RunHistory]) -> dict[tuple[tuple[str, ...], str | None], str]:
    """A short name per testbed, in order of appearance: the run directory of its first run (the
    demo names each directory after its foundation set), made unique with the evaluator key when
    one directory holds several testbeds."""
    first: dict[tuple[tuple[str, ...], str | None], RunHistory] = {}
    for r in runs:
        first.setdefault(r.testbed, r)
    names = {t: r.run_dir.name for t, r in first.items()}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {t: (name if counts[name] == 1 else f"{name} ({t[1] or 'no scores'})") for t, name in names.items()}


def by_testbed(runs: Sequence[RunHistory]) -> list[RunHistory]:
    """The runs with each testbed's runs together (testbeds and runs in order of appearance)."""
    first = {t: i for i, t in enumerate(dict.fromkeys(r.testbed for r in runs))}
    return sorted(runs, key=lambda r: first[r.testbed])
