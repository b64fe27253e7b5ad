"""Executors: where an evolution run's steps (hash, merge, evaluate, kinship scan) run.

The runner hands an executor a step function from :mod:`kinmerge.evolve.steps` and a list of
small frozen tasks, and gets plain data back (the contract is written in that module). So the
same steps run in this process, in a pool of local processes (``local``), or on the machines of a
Ray cluster (``ray``: :mod:`kinmerge.evolve.executors.ray`, which imports Ray only when used), and
the store stays with the driver, which records each result as it arrives. A new executor is one
small module (usually a :class:`~kinmerge.evolve.executors.base.BaseExecutor`) that registers a
factory here.

Example:
    >>> with get_executor("local", workers=1) as ex:
    ...     ex.map(abs, [-1, 2, -3])
    [1, 2, 3]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from kinmerge.errors import ConfigError
from kinmerge.evolve.executors.base import BaseExecutor, Link
from kinmerge.evolve.executors.local import LocalExecutor
from kinmerge.evolve.executors.ray import RayExecutor

__all__ = ["EXECUTORS", "BaseExecutor", "Executor", "LocalExecutor", "RayExecutor", "executor_settings",
           "get_executor", "register_executor"]

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs a step function over tasks (see :mod:`kinmerge.evolve.steps` for the contract)."""

    @property
    def workers(self) -> int: ...

    def imap(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R]]: ...

    def chain(self, first: Callable[[Any], Any], then: Callable[[Any], Any] | None, items: Iterable[Any],
              link: Link | None = None) -> Iterator[tuple[int, int, Any]]: ...

    def flow(self, first: Callable[[Any], Any], then: Callable[[Any], Any] | None,
             pull: Callable[[], tuple[Any, Any] | None], link: Link | None = None,
             limit: int | None = None) -> Iterator[tuple[Any, int, Any]]: ...

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]: ...

    def check_storage(self, read: Sequence[str], write: str | None = None) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


#: name -> factory(**settings) -> Executor.
EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor, "ray": RayExecutor}


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


def executor_settings(name: str) -> list[str]:
    """The settings an executor takes (its factory's keyword arguments), for config validation.

    Example:
        >>> executor_settings("local")
        ['workers']
    """
    params = inspect.signature(EXECUTORS[name]).parameters.values()
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
