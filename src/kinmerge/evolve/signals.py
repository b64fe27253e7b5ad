"""Stopping a run on SIGTERM as on Ctrl-C: recorded as interrupted, resumable.

A scheduler's preemption or ``kill`` sends SIGTERM; the run must end the way Ctrl-C ends it
(the runner marks it interrupted, a rerun resumes), not die between a step and its record.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["sigterm_interrupts", "stop_if_terminated"]

_TERMINATED = threading.Event()


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a scheduler's preemption, ``kill``) stops a run like Ctrl-C: recorded as interrupted,
    resumable. Only the main thread may install signal handlers; elsewhere nothing changes.

    The handler raises KeyboardInterrupt where the main thread is; if that lands somewhere Python
    swallows it (a finalizer: "Exception ignored in ..."), the flag stops the run at its next step.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _TERMINATED.clear()

    def interrupt(signum: int, frame: object) -> None:
        _TERMINATED.set()
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_if_terminated() -> None:
    if _TERMINATED.is_set():
        raise KeyboardInterrupt("SIGTERM")
