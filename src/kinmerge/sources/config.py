"""A model folder's ``config.json``, read strictly and checked where kinmerge relies on it.

Kinship reads ``vocab_size`` (which rows of an embedding line up), merging compares
``architectures`` and ``model_type``, and evaluation builds the model from the sizes. A config
that is not a JSON object, or whose sizes are not positive integers, would otherwise be ignored
(kinship) or fail deep inside transformers: it is refused here with the file and the field.
Fields kinmerge does not use are left to transformers; ``null`` means "not given" everywhere.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text('{"model_type": "llama", "vocab_size": 0}')
    >>> read_config(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    kinmerge.errors.CorruptFileError: .../config.json: 'vocab_size' is 0; it must be a positive integer
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kinmerge._json import StrictJSONError, loads_strict
from kinmerge.errors import CorruptFileError

__all__ = ["POSITIVE_INT_FIELDS", "read_config", "read_json_object"]

#: Sizes a config may give; each, when present and not null, must be a positive integer.
POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
)


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """``path`` read as one strict JSON object (model and adapter configs alike).

    Raises:
        CorruptFileError: unreadable, not strict JSON, or not an object (``what`` names it).
    """
    try:
        data = loads_strict(path.read_bytes())
    except (OSError, StrictJSONError) as exc:
        raise CorruptFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path}: {what} must be a JSON object, not {type(data).__name__}")
    return data


def read_config(folder: Path) -> dict[str, Any]:
    """A model folder's ``config.json`` ({} when absent), checked; a composite config's
    ``vocab_size`` is lifted from its ``text_config``.

    Raises:
        CorruptFileError: the file is not strict JSON (see ``kinmerge._json``), not an object,
            or a field kinmerge relies on has the wrong type: a size in
            :data:`POSITIVE_INT_FIELDS` that is not a positive integer (here or in
            ``text_config``), ``architectures`` not a list of strings, ``model_type`` not a
            string, ``tie_word_embeddings`` not a boolean, ``text_config`` not an object.
    """
    cfg = folder / "config.json"
    if not cfg.exists():
        return {}
    data = read_json_object(cfg, "a model config")
    _check_fields(cfg, data, "")
    text = data.get("text_config")
    if text is not None:
        if not isinstance(text, dict):
            raise CorruptFileError(f"{cfg}: 'text_config' must be an object")
        _check_fields(cfg, text, "text_config.")
        # Multimodal/composite configs keep the language model's fields under text_config.
        if data.get("vocab_size") is None:
            data = {**data, "vocab_size": text.get("vocab_size")}
    return data


def _check_fields(cfg: Path, data: dict[str, Any], prefix: str) -> None:
    for key in POSITIVE_INT_FIELDS:
        v = data.get(key)
        if v is not None and not (type(v) is int and v > 0):
            raise CorruptFileError(f"{cfg}: '{prefix}{key}' is {v!r}; it must be a positive integer")
    for key, ok, what in _TYPED_FIELDS:
        v = data.get(key)
        if v is not None and not ok(v):
            raise CorruptFileError(f"{cfg}: '{prefix}{key}' is {v!r}; it must be {what}")


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(a, str) for a in v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


_TYPED_FIELDS = (("architectures", _names, "a list of class names"), ("model_type", _is_str, "a string"),
                 ("tie_word_embeddings", _is_bool, "true or false"))
