"""Executors: where an evolution run's steps (hash, merge, evaluate, kinship scan) run.

The runner hands an executor a step function from :mod:`kinmerge.evolve.steps` and a list of
small frozen tasks, and gets plain data back (the contract is written in that module). So the
same steps run in this process, in a pool of local processes, or on a cluster, and the store
stays with the driver, which records each result as it arrives. A new executor is one small
module that registers a factory here.

Example:
    >>> with get_executor("local", workers=1) as ex:
    ...     ex.map(abs, [-1, 2, -3])
    [1, 2, 3]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from kinmerge.errors import ConfigError
from kinmerge.evolve.executors.local import LocalExecutor

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "get_executor", "register_executor"]

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs a step function over tasks (see :mod:`kinmerge.evolve.steps` for the contract)."""

    workers: int

    def imap(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R]]: ...

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


#: name -> factory(**settings) -> Executor.
EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor}


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    """Make ``get_executor(name, ...)`` call ``factory(**settings)``."""
    EXECUTORS[name] = factory


def get_executor(name: str = "local", **settings: Any) -> Executor:
    """An executor by name, e.g. ``get_executor("local", workers=2)``.

    Raises:
        ConfigError: unknown name or invalid settings.
    """
    try:
        factory = EXECUTORS[name]
    except KeyError:
        raise ConfigError(f"unknown executor {name!r}; choose one of {', '.join(sorted(EXECUTORS))}") from None
    return factory(**settings)
