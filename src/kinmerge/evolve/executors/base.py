"""What every executor shares: ``imap``, ``chain`` and ``map`` over four small primitives.

An executor only says how to *submit* one step, *wait* for some to finish, get a finished one's
*result* (re-raising the step's own error) and *cancel* one; :class:`BaseExecutor` turns that into
the contract of :mod:`kinmerge.evolve.steps` — lazy pulling, at most ``workers`` steps in flight,
pipelined chains — so the local process pool and a Ray cluster schedule steps the same way.

Example:
    >>> from kinmerge.evolve.executors import LocalExecutor
    >>> with LocalExecutor() as ex:
    ...     list(ex.chain(abs, str, [-1, 2], lambda i, r: r * 10))
    [(0, 0, 1), (0, 1, '10'), (1, 0, 2), (1, 1, '20')]
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

__all__ = ["BaseExecutor", "Link"]

T = TypeVar("T")
R = TypeVar("R")

#: ``link(index, first_result)`` -> the follow-up step's task, or None for no follow-up.
Link = Callable[[int, Any], Any]


class BaseExecutor:
    """Schedules steps over the primitives a subclass provides (see the module docstring)."""

    name = "base"

    @property
    def workers(self) -> int:
        """Steps in flight at once."""
        raise NotImplementedError

    # -- the primitives ---------------------------------------------------------------------------

    def _submit(self, fn: Callable[[Any], Any], task: Any) -> Hashable:
        """Start ``fn(task)``; return a handle."""
        raise NotImplementedError

    def _wait(self, handles: Sequence[Hashable]) -> Iterable[Hashable]:
        """Block until at least one of ``handles`` is finished; return the finished ones."""
        raise NotImplementedError

    def _result(self, handle: Hashable, fn: Callable[[Any], Any], task: Any) -> Any:
        """The result of a finished step; re-raises the step's own error."""
        raise NotImplementedError

    def _cancel(self, handle: Hashable) -> None:
        """Cancel a step that is no longer wanted (best effort)."""

    # -- the contract -----------------------------------------------------------------------------

    def chain(self, first: Callable[[Any], Any], then: Callable[[Any], Any] | None, items: Iterable[Any],
              link: Link | None = None) -> Iterator[tuple[int, int, Any]]:
        """Yield ``(index, 0, first(item))`` and, where ``link`` gives a task,
        ``(index, 1, then(link(index, first_result)))`` as each step finishes.

        ``link`` runs in this process after the first result was handed to the caller, so the
        caller has recorded it; follow-ups start before new items are pulled.
        """
        source = iter(enumerate(items))
        running: dict[Hashable, tuple[int, int, Any]] = {}  # handle -> (index, stage, task)
        limit = self.workers

        def start_next() -> bool:
            for i, item in source:  # at most one: pulled only when a slot is free
                running[self._submit(first, item)] = (i, 0, item)
                return True
            return False

        try:
            while len(running) < limit and start_next():
                pass
            while running:
                for handle in sorted(self._wait(list(running)), key=lambda h: running[h][:2]):
                    i, stage, task = running.pop(handle)
                    result = self._result(handle, first if stage == 0 else then, task)  # type: ignore[arg-type]
                    yield i, stage, result
                    follow = link(i, result) if stage == 0 and then is not None and link is not None else None
                    if follow is not None:
                        running[self._submit(then, follow)] = (i, 1, follow)  # type: ignore[arg-type]
                    while len(running) < limit and start_next():
                        pass
        finally:
            for handle in running:
                self._cancel(handle)

    def imap(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R]]:
        """Yield ``(index, fn(item))`` as each finishes (in order when ``workers == 1``)."""
        for i, _, result in self.chain(fn, None, items):
            yield i, result

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(item) for item in items]``, run by this executor."""
        out: dict[int, R] = dict(self.imap(fn, items))
        return [out[i] for i in range(len(out))]

    def check_storage(self, read: Sequence[str], write: str | None = None) -> None:
        """Nothing to check for steps that run on this machine."""

    def close(self) -> None:
        """Release what the executor holds (idempotent)."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
