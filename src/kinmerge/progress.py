"""Progress bars on stderr, so stdout stays clean for tables and ``--json``.

Example:
    >>> with progress_bar(total=3, description="evaluating") as advance:   # draws on stderr only
    ...     for _ in range(3):
    ...         advance(1)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
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
    with Progress(*_columns(unit), console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda amount: bar.advance(task, amount)


@contextlib.contextmanager
def progress_bars(totals: Mapping[str, float], *, enabled: bool = True) -> Iterator[Callable[[str, float], None]]:
    """Several bars in one display on stderr, one per kind of work whose units differ (a zoo
    build's training steps and its scoring answers); yield ``advance(name, amount)``."""
    if not enabled:
        yield lambda name, amount: None
        return
    with Progress(*_columns("items"), console=Console(stderr=True), transient=False) as bar:
        tasks = {name: bar.add_task(name, total=total) for name, total in totals.items()}
        yield lambda name, amount: bar.advance(tasks[name], amount)


def _columns(unit: str) -> list[Any]:
    counter = [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
    return [TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), *counter,
            TimeElapsedColumn(), TimeRemainingColumn()]


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


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' own load/save progress bars (ours is on stderr) and its warnings, such
    as the ~20-line load report it prints before raising; restore both after. What the report
    says that matters is checked by ``load_model`` and said in one line."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    if was_enabled:
        hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()
