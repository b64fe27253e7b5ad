"""JSON read the strict way: what Python's ``json`` lets through but no JSON writer produces.

Python's parser keeps the *last* of two equal keys, accepts ``NaN`` and ``Infinity``, accepts
lone UTF-16 surrogates (``"\\ud800"``, a string that cannot even be printed), and recurses until
the interpreter's limit. The reference safetensors reader (Rust, serde_json) refuses all of these
but duplicate keys; we refuse duplicate keys too, since they mean two tensors, two shards or two
settings under one name and whichever Python kept would be a silent choice. Nesting is bounded
as serde_json bounds it (127 nested arrays or objects), and numbers follow serde_json's rules
(an overflowing ``1e400`` is refused; ``-0`` is the float ``-0.0``, never the integer 0).

Example:
    >>> loads_strict('{"a": 1}')
    {'a': 1}
    >>> loads_strict('{"a": 1, "a": 2}')
    Traceback (most recent call last):
    ...
    kinmerge._json.StrictJSONError: duplicate key 'a'
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_DEPTH", "StrictJSONError", "loads_strict"]

MAX_DEPTH = 127  # nested arrays/objects serde_json (the reference safetensors reader) accepts


class StrictJSONError(ValueError):
    """The text is not JSON, or is JSON of a kind :func:`loads_strict` refuses (message says which)."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise StrictJSONError(f"number {text[:40]} is out of range")
    return value


def _int(text: str) -> int | float:
    return -0.0 if text == "-0" else int(text)  # serde_json reads -0 as a float


def loads_strict(text: str | bytes) -> Any:
    """Parse ``text`` (bytes must be UTF-8) as JSON, refusing what real JSON writers never write.

    Raises:
        StrictJSONError: not UTF-8, not JSON, a duplicate key, ``NaN``/``Infinity``, a string
            that is not valid Unicode (a lone surrogate), or more than :data:`MAX_DEPTH` levels of
            nesting. The message says which, with the position for syntax errors.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StrictJSONError(f"not UTF-8 text (byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float,
                           parse_int=_int)
    except StrictJSONError:
        raise
    except RecursionError:
        raise StrictJSONError(f"nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    _check_tree(value)
    return value


def _check_tree(value: Any) -> None:
    """Depth and string validity of a parsed value, walked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_str(node)
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise StrictJSONError(f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            for key, item in node.items():
                _check_str(key)
                stack.append((item, depth + 1))
        else:
            stack.extend((item, depth + 1) for item in node)


def _check_str(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise StrictJSONError(f"string {s[:40]!r} is not valid Unicode (a lone surrogate escape)") from None
