"""The local executor: steps in this process, one after another, or in a pool of processes.

Example:
    >>> with LocalExecutor(workers=1) as ex:
    ...     ex.map(abs, [-1, 2, -3])
    [1, 2, 3]
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from kinmerge.errors import ConfigError
from kinmerge.evolve.executors.base import BaseExecutor

__all__ = ["LocalExecutor"]


class LocalExecutor(BaseExecutor):
    """Steps on this machine: in sequence (``workers=1``) or in a pool of processes.

    With ``workers > 1`` each step runs in a fresh *spawned* process (no forked torch or SQLite
    state), so step functions must be module-level and their tasks and results picklable. A
    step that raises re-raises in the caller; the steps not yet started are cancelled. With
    ``workers=1`` a chain runs each task's two steps back to back: merge, evaluate, next merge.

    Args:
        workers: steps in flight at once (>= 1).

    Raises:
        ConfigError: ``workers`` < 1.
    """

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"executor workers must be an integer >= 1, got {workers!r}")
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None

    @property
    def workers(self) -> int:
        return self._workers

    def _submit(self, fn: Callable[[Any], Any], task: Any) -> Hashable:
        if self._workers > 1:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=self._workers,
                                                 mp_context=multiprocessing.get_context("spawn"))
            return self._pool.submit(fn, task)
        done: Future[Any] = Future()  # in this process, now: a finished future
        try:
            done.set_result(fn(task))
        except BaseException as exc:
            if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM: stop here, not at the next wait
                raise
            done.set_exception(exc)
        return done

    def _wait(self, handles: Sequence[Hashable]) -> Iterable[Hashable]:
        return wait(handles, return_when=FIRST_COMPLETED).done  # type: ignore[arg-type]

    def _result(self, handle: Hashable, fn: Callable[[Any], Any], task: Any) -> Any:
        assert isinstance(handle, Future)
        return handle.result()  # re-raises the step's error here

    def _cancel(self, handle: Hashable) -> None:
        assert isinstance(handle, Future)
        handle.cancel()

    def close(self) -> None:
        """Shut the process pool down (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> LocalExecutor:
        return self
