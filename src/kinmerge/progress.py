"""Progress bars on stderr, so stdout stays clean for tables and ``--json``.

Example:
    >>> with progress_bar(total=3, description="evaluating") as advance:  # doctest: +SKIP
    ...     for _ in range(3):
    ...         advance(1)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


@contextlib.contextmanager
def progress_bar(total: float, description: str, *, unit: str = "items",
                 enabled: bool = True) -> Iterator[Callable[[float], None]]:
    """Yield ``advance(amount)``; draws a bar on stderr (bytes with throughput when unit="bytes")."""
    if not enabled:
        yield lambda amount: None
        return
    counter = [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        *counter,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda amount: bar.advance(task, amount)
