"""The local executor: steps in this process, one after another, or in a pool of processes.

Example:
    >>> with LocalExecutor(workers=1) as ex:
    ...     ex.map(abs, [-1, 2, -3])
    [1, 2, 3]
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TypeVar

from kinmerge.errors import ConfigError

__all__ = ["LocalExecutor"]

T = TypeVar("T")
R = TypeVar("R")


class LocalExecutor:
    """Steps on this machine: in sequence (``workers=1``) or in a pool of processes.

    With ``workers > 1`` each step runs in a fresh *spawned* process (no forked torch or SQLite
    state), so step functions must be module-level and their tasks and results picklable. A
    step that raises re-raises in the caller; the steps not yet started are cancelled.

    Args:
        workers: steps in flight at once (>= 1).

    Raises:
        ConfigError: ``workers`` < 1.
    """

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"executor workers must be an integer >= 1, got {workers!r}")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def imap(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R]]:
        """Yield ``(index, fn(item))`` as each finishes (in order when ``workers == 1``)."""
        if self.workers == 1:
            for i, item in enumerate(items):
                yield i, fn(item)
            return
        pool = self._get_pool()
        source = iter(enumerate(items))
        running: dict[Future[R], int] = {}

        def submit_one() -> bool:
            try:
                i, item = next(source)
            except StopIteration:
                return False
            running[pool.submit(fn, item)] = i
            return True

        try:
            while len(running) < self.workers and submit_one():
                pass
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: running[f]):
                    i = running.pop(fut)
                    result = fut.result()  # re-raises the step's error here
                    submit_one()
                    yield i, result
        finally:
            for fut in running:
                fut.cancel()

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(item) for item in items]``, run by this executor."""
        out: dict[int, R] = dict(self.imap(fn, items))
        return [out[i] for i in range(len(out))]

    def close(self) -> None:
        """Shut the process pool down (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
