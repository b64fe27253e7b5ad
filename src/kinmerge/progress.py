"""Progress bars on stderr, so stdout stays clean for tables and ``--json``.

Example:
    >>> with progress_bar(total=3, description="evaluating") as advance:   # draws on stderr only
    ...     for _ in range(3):
    ...         advance(1)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

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


class StatusLines:
    """Lines of progress on stderr (one per generation of a run, say); on a terminal also a live
    status of the step running, replaced as the next one starts."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._status: Any = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console

            self._console = Console(stderr=True)
            self._status = self._console.status("starting")
            self._status.start()

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self._status is not None:
            self._console.print(text, soft_wrap=True, highlight=False, markup=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def step(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
