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
        source = enumerate(items)
        yield from self.flow(first, then, lambda: next(source, None), link)

    def flow(self, first: Callable[[Any], Any], then: Callable[[Any], Any] | None,
             pull: Callable[[], tuple[Any, Any] | None], link: Link | None = None,
             limit: int | None = None) -> Iterator[tuple[Any, int, Any]]:
        """:meth:`chain` over tasks that come from ``pull()`` as ``(key, item)``, or ``None`` for
        "nothing to start now"; ``pull`` is asked again whenever a slot is free after a result
        was handed to the caller (so what it returns may depend on that result: the steady-state
        schedule plans from it). Ends when nothing is in flight and ``pull`` gives ``None``.
        At most ``limit`` (default ``workers``) steps in flight; keys must be orderable
        (results that finish together are handed over by key).
        """
        running: dict[Hashable, tuple[Any, int, Any]] = {}  # handle -> (key, stage, task)
        cap = self.workers if limit is None else limit

        def fill() -> None:
            while len(running) < cap:
                got = pull()  # asked only when a slot is free
                if got is None:
                    return
                running[self._submit(first, got[1])] = (got[0], 0, got[1])

        try:
            fill()
            while running:
                for handle in sorted(self._wait(list(running)), key=lambda h: running[h][:2]):
                    key, stage, task = running.pop(handle)
                    result = self._result(handle, first if stage == 0 else then, task)  # type: ignore[arg-type]
                    yield key, stage, result
                    follow = link(key, result) if stage == 0 and then is not None and link is not None else None
                    if follow is not None:
                        running[self._submit(then, follow)] = (key, 1, follow)  # type: ignore[arg-type]
                    fill()
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
