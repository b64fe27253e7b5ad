"""Values read back from a run store are checked before anyone uses them.

SQLite keeps whatever it is given: a column declared ``REAL`` holds the text ``'abc'`` if a hand
edit (or a damaged copy) put it there, and a JSON column holds any text. Left unchecked, such a
value crashes ``status``, ``report`` or ``evolve`` deep inside with a traceback, or worse, plans
on a number that is not one. Every read of a stored number or JSON field goes through here and a
bad one becomes :class:`DamagedStoreError`: one line naming the file, the table, the row and the
way out.

Example:
    >>> read_number("runs/r/kinmerge.db", "evaluations", "model 1a2b3c4d, task 'add'", "score", 0.5, lo=0, hi=1)
    0.5
    >>> str(damaged("kinmerge.db", "runs", "'r1'", "config is not valid JSON")).split(";")[0]
    "kinmerge.db is damaged: table runs, row 'r1': config is not valid JSON"
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from kinmerge.errors import StoreError

__all__ = ["DamagedStoreError", "damaged", "read_json", "read_number"]

#: What a user can do about a damaged store, said at the end of every message.
WAY_OUT = ("restore the file from a copy, or start a new run directory (merges in its models/ folder are found "
           "again by content)")


class DamagedStoreError(StoreError):
    """A stored value is not what its column's schema says (a text score, corrupt JSON, ...)."""


def damaged(db: str | os.PathLike[str], table: str, row: str, problem: str) -> DamagedStoreError:
    """The one-line error for a bad value at ``table``/``row`` of the store ``db``."""
    return DamagedStoreError(f"{os.fspath(db)} is damaged: table {table}, row {row}: {problem}; {WAY_OUT}")


def read_number(db: str | os.PathLike[str], table: str, row: str, column: str, value: Any, *,
                lo: float | None = None, hi: float | None = None, integer: bool = False) -> float:
    """``value`` as a finite float within ``[lo, hi]``; a :class:`DamagedStoreError` otherwise.

    SQLite hands back ``int``/``float`` for numbers and ``str``/``bytes`` for anything else in a
    ``REAL`` column, so a type check is enough to tell a number from text.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise damaged(db, table, row, f"{column} {_show(value)} is not a number")
    if integer and not isinstance(value, int):
        raise damaged(db, table, row, f"{column} {_show(value)} is not an integer")
    number = float(value)
    if not math.isfinite(number):
        raise damaged(db, table, row, f"{column} {_show(value)} is not a finite number")
    if lo is not None and hi is not None and not lo <= number <= hi:
        raise damaged(db, table, row, f"{column} {number!r} is outside [{lo:g}, {hi:g}]")
    if lo is not None and number < lo:
        raise damaged(db, table, row, f"{column} {number!r} is below {lo:g}")
    if hi is not None and number > hi:
        raise damaged(db, table, row, f"{column} {number!r} is above {hi:g}")
    return number


def read_json(db: str | os.PathLike[str], table: str, row: str, column: str, text: Any,
              *, kind: type | None = None) -> Any:
    """The JSON value of a stored field (``None`` stays ``None``); ``kind``: the type it must have."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise damaged(db, table, row, f"{column} is not JSON text ({type(text).__name__})")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise damaged(db, table, row, f"{column} is not valid JSON ({exc})") from None
    if kind is not None and not isinstance(value, kind):
        raise damaged(db, table, row, f"{column} is a JSON {type(value).__name__}, not a {kind.__name__}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
