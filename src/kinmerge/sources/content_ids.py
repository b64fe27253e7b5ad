"""Content ids: a stable name for a model's weights, and the cache that makes them cheap.

The id is BLAKE2b (16 bytes, 32 hex characters) over the weight files in name order, each
preceded by its name: a copy of a model elsewhere has the same id, any changed byte a new one.
Hashing a 7B checkpoint takes seconds, so ids are cached by (absolute path, size, mtime) in
``$KINMERGE_CACHE/content_ids.json`` (default ``~/.cache/kinmerge``), read when called.

(The module is ``content_ids``, plural, so that ``kinmerge.sources.content_id`` stays the
function callers import, not a module of the same name.)

Example:
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "model.safetensors"
    >>> _ = f.write_bytes(b"weights")
    >>> len(content_id_of_files([f]))
    32
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from kinmerge._io import atomic_write

__all__ = ["cache_dir", "content_id_of_files"]


def cache_dir() -> Path:
    """kinmerge's cache folder: ``$KINMERGE_CACHE``, else ``~/.cache/kinmerge``."""
    return Path(os.environ.get("KINMERGE_CACHE") or Path.home() / ".cache" / "kinmerge")


def content_id_of_files(files: list[Path]) -> str:
    """The content id of these weight files (see the module docstring), cached."""
    cache_file = cache_dir() / "content_ids.json"
    ordered = sorted(files, key=lambda p: p.name)
    keys = []
    for f in ordered:
        st = f.stat()
        keys.append(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    key = "\n".join(keys)
    cache = _load_cache(cache_file)
    if key in cache:
        return cache[key]
    h = hashlib.blake2b(digest_size=16)
    view = memoryview(bytearray(8 << 20))
    for f in ordered:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                h.update(view[:n])
    digest = h.hexdigest()
    # Re-read before writing: another process may have added ids since (the last writer wins,
    # so this keeps most of theirs; a lost entry only costs one more hash later).
    cache = {**_load_cache(cache_file), key: digest}
    with contextlib.suppress(OSError):  # a cache we cannot write only costs time
        atomic_write(cache_file, json.dumps(cache), fsync=False)
    return digest


def _load_cache(f: Path) -> dict[str, str]:
    try:
        data = json.loads(f.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
