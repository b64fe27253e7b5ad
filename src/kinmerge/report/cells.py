"""Small HTML building blocks of the report page: escaped text, tables, figures, swatches.

Every helper returns a string of HTML; text from the store passes through :func:`esc`. Tables
sit in a ``div.scroll``: a table wider than the page scrolls inside its box and never widens
the page.

Example:
    >>> print(table(["a"], [["1"]], numeric=(0,)).replace("<tbody>", "\\n<tbody>"))
    <div class="scroll"><table><thead><tr><th>a</th></tr></thead>
    <tbody><tr><td class="num">1</td></tr></tbody></table></div>
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kinmerge.report.groups import Style

__all__ = ["badge", "empty", "esc", "figure", "swatch", "table", "when"]


def esc(value: Any) -> str:
    """``value`` as text, HTML-escaped (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, classes: Sequence[str] = (),
          numeric: Sequence[int] = (), caption: str = "") -> str:
    """An HTML table; cells are already-escaped HTML; ``numeric`` columns align right."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        cells = "".join(
            f'<td class="num">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    cap = f"<caption>{caption}</caption>" if caption else ""
    return (f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def empty(text: str) -> str:
    """The placeholder shown instead of a figure or table with nothing to show yet."""
    return f'<div class="empty">{text}</div>'


def figure(path: Path | None, alt: str, howto: str, missing: str) -> str:
    """A PNG embedded as a ``data:`` URI with its how-to-read note, or the ``missing`` note."""
    if path is None:
        return empty(missing)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">'
        f'<div class="howto"><strong>How to read this.</strong> {howto}</div></figure>'
    )


def swatch(name: str, style: Style | None) -> str:
    """A variant's name after a square of its colour (the colour of its lines in every figure)."""
    color = style.color if style else "#999999"
    return f'<span class="nw"><span class="sw" style="background:{esc(color)}"></span>{esc(name)}</span>'


def badge(reason: str | None) -> str:
    """Why a model was made (greedy / exploration / random), or ``foundation``."""
    name = reason or "foundation"
    return f'<span class="badge {esc(name)}">{esc(name)}</span>'


def when(ts: str | None) -> str:
    """An ISO timestamp as ``2025-01-31 14:05:09 UTC`` (the store writes UTC)."""
    if not ts:
        return "—"
    try:
        return datetime.fromisoformat(ts).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return ts
