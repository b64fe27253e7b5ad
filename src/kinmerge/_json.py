"""Inputs read the strict way, in one place: JSON, YAML, JSON Lines, and the numbers inside them.

Every file a user hands kinmerge (a scores file, a run config, a task file, a model's headers) is
parsed here, so one rule holds everywhere (docs/inputs.md):

- JSON: no duplicate keys, no ``NaN``/``Infinity``, no lone surrogates, bounded nesting (below).
- YAML: no duplicate keys (PyYAML keeps the last of two, silently dropping a whole block).
- JSON Lines: records split on ``\n`` only; ``str.splitlines`` also splits on U+2028 and other
  separators that are legal *inside* a JSON string, cutting a valid record in two.
- Numbers: :func:`number` refuses booleans (``true`` is 1 to Python), non-finite values, a
  fraction where an integer is meant (``limit: 2.5``), and values outside a field's range
  (:func:`score`: an accuracy lies in [0, 1]; 46 of 50 is 0.92, not 46).

JSON, in detail: what Python's ``json`` lets through but no JSON writer produces.

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
import math
from typing import Any

__all__ = ["MAX_DEPTH", "StrictInputError", "StrictJSONError", "StrictYAMLError", "json_lines", "load_yaml_strict",
           "loads_strict", "number", "score"]

MAX_DEPTH = 127  # nested arrays/objects serde_json (the reference safetensors reader) accepts


class StrictInputError(ValueError):
    """An input is not what its field means (the message says which field and what it must be)."""


class StrictJSONError(StrictInputError):
    """The text is not JSON, or is JSON of a kind :func:`loads_strict` refuses (message says which)."""


class StrictYAMLError(StrictInputError):
    """The text is not YAML, or gives a key twice in one mapping (message says where)."""


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


def load_yaml_strict(text: str) -> Any:
    r"""Parse YAML as ``yaml.safe_load`` does, but refuse a key given twice in one mapping.

    Raises:
        StrictYAMLError: not valid YAML (with line and column), or a duplicate key (with the line
            of its second use).

    Example:
        >>> load_yaml_strict("a: 1\nb: 2")
        {'a': 1, 'b': 2}
        >>> load_yaml_strict("strategy: {k: 2}\nstrategy: {k: 3}")
        Traceback (most recent call last):
        ...
        kinmerge._json.StrictYAMLError: key 'strategy' is given twice (again at line 2); keep one
    """
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *defaults`` merges, it is no key
                continue
            key = loader.construct_object(key_node)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise StrictYAMLError(f"key {key!r} is given twice (again at line {key_node.start_mark.line + 1}); "
                                          "keep one")
                seen.add(key)
        return loader.construct_mapping(node)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise StrictYAMLError(f"not valid YAML{where} ({problem})") from None


def json_lines(text: str) -> list[tuple[int, str]]:
    r"""The records of a JSON Lines text as (line number, line), blank lines left out.

    Lines end at ``\n`` (a ``\r`` before it is dropped) and nowhere else: U+2028, U+0085 or a
    form feed inside a JSON string are part of the record.

    Example:
        >>> json_lines('{"a": "x\u2028y"}\r\n\n{"b": 1}\n')
        [(1, '{"a": "x\u2028y"}'), (3, '{"b": 1}')]
    """
    out = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            out.append((lineno, line))
    return out


def number(value: Any, field: str, *, integer: bool = False, low: float | None = None,
           high: float | None = None) -> int | float:
    """``value`` as the number ``field`` means, or a :class:`StrictInputError` saying why not.

    Args:
        value: what the input held.
        field: how the user named it (``limit``, ``scores.json: zoo:add``).
        integer: a whole number is meant (``2.0`` is read as 2; ``2.5`` is refused).
        low, high: the inclusive range.

    Example:
        >>> number(3, "limit", integer=True, low=1)
        3
        >>> number(True, "limit", integer=True)
        Traceback (most recent call last):
        ...
        kinmerge._json.StrictInputError: limit must be a whole number, got true (a boolean)
    """
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool):
        raise StrictInputError(f"{field} must be {kind}, got {str(value).lower()} (a boolean)")
    if not isinstance(value, (int, float)):
        raise StrictInputError(f"{field} must be {kind}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise StrictInputError(f"{field} must be a finite number, got {value}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise StrictInputError(f"{field} must be {kind}, got {value}")
        value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        span = (f"in [{low:g}, {high:g}]" if low is not None and high is not None
                else f"at least {low:g}" if low is not None else f"at most {high:g}")
        raise StrictInputError(f"{field} must be {span}, got {value}")
    return value


def score(value: Any, field: str) -> float:
    """An accuracy: a finite number in [0, 1] (46 of 50 correct is 0.92, not 46).

    Example:
        >>> score(46, "add")
        Traceback (most recent call last):
        ...
        kinmerge._json.StrictInputError: add must be in [0, 1], got 46 (a score is a fraction: 46 of 50 correct is 0.92)
    """
    try:
        return float(number(value, field, low=0.0, high=1.0))
    except StrictInputError as exc:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            raise StrictInputError(f"{exc} (a score is a fraction: 46 of 50 correct is 0.92)") from None
        raise
