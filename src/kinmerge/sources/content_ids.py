"""Content ids: one name for everything that makes a model behave as it does, and its cache.

A model's *identity* is its weight files **and** the files that change what those weights do:
``config.json`` (an ``rms_norm_eps`` of 10 makes the same weights score 0), the generation config
and the tokenizer. Two folders share an id only if all of these are byte-identical, so an
evaluation cached for one folder is never answered for, or overwritten by, a different model.

The id is BLAKE2b (16 bytes, 32 hex characters) over a version tag, then each identity file in
name order as (name, size, bytes). Hashing a 7B checkpoint takes seconds, so ids are cached in
``$KINMERGE_CACHE/content_ids.json`` (default ``~/.cache/kinmerge``), keyed by each file's path,
size, mtime, *ctime and inode*: ``touch -d`` can reset an mtime, but it sets the ctime to now, and
a replaced file has a new inode. On every cache hit a sample of each file's bytes (a few 64 KiB
blocks spread over the file) is hashed again and compared, so a file changed in place behind an
unchanged stat (a coarse-timestamp filesystem) is re-hashed rather than trusted.

(The module is ``content_ids``, plural, so that ``kinmerge.sources.content_id`` stays the
function callers import, not a module of the same name.)

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "model.safetensors").write_bytes(b"weights")
    >>> _ = (folder / "config.json").write_text('{"rms_norm_eps": 1e-6}')
    >>> a = content_id_of_files(identity_files(folder, [folder / "model.safetensors"]))
    >>> _ = (folder / "config.json").write_text('{"rms_norm_eps": 10.0}')
    >>> a != content_id_of_files(identity_files(folder, [folder / "model.safetensors"]))
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from kinmerge._io import atomic_write

__all__ = ["BEHAVIOUR_FILES", "ID_VERSION", "TOKENIZER_FILES", "cache_dir", "content_id_of_files", "identity_files"]

#: Bumped whenever what the id covers changes: ids of different versions never compare equal.
ID_VERSION = 2
#: Files a tokenizer may consist of (a merge copies them from its first parent).
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
#: Besides the weights, what changes a model's behaviour: its config and its tokenizer.
BEHAVIOUR_FILES: tuple[str, ...] = ("config.json", *TOKENIZER_FILES)
_SAMPLE = 64 * 1024
_CACHE_NAME = "content_ids.json"


def cache_dir() -> Path:
    """kinmerge's cache folder: ``$KINMERGE_CACHE``, else ``~/.cache/kinmerge``."""
    return Path(os.environ.get("KINMERGE_CACHE") or Path.home() / ".cache" / "kinmerge")


def identity_files(folder: Path | None, weights: Sequence[Path]) -> list[Path]:
    """The files a model's id covers: its ``weights`` and, for a model folder, the behaviour files
    in it (config, generation config, tokenizer). A lone weights file is just itself."""
    extra = [folder / name for name in BEHAVIOUR_FILES if folder is not None and (folder / name).is_file()]
    return [*weights, *extra]


def content_id_of_files(files: Sequence[Path]) -> str:
    """The content id of these files (see the module docstring), cached and sample-checked."""
    ordered = sorted(files, key=lambda p: p.name)
    names = [p.name for p in ordered]
    if len(set(names)) != len(names):  # shards live in one folder: equal names mean a caller bug
        raise ValueError(f"files with the same name cannot form one identity: {sorted(names)}")
    key = "\n".join(_stat_key(f) for f in ordered)
    cache_file = cache_dir() / _CACHE_NAME
    entry = _load_cache(cache_file).get(key)
    if isinstance(entry, dict) and entry.get("sample") == _sample_digest(ordered):
        return str(entry["id"])
    digest = _full_digest(ordered)
    # Re-read before writing: another process may have added ids since (the last writer wins,
    # so this keeps most of theirs; a lost entry only costs one more hash later).
    cache = {**_load_cache(cache_file), key: {"id": digest, "sample": _sample_digest(ordered)}}
    with contextlib.suppress(OSError):  # a cache we cannot write only costs time
        atomic_write(cache_file, json.dumps(cache), fsync=False)
    return digest


def _stat_key(f: Path) -> str:
    st = f.stat()
    return f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_dev}:{st.st_ino}"


def _full_digest(ordered: Sequence[Path]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"kinmerge-content-id/{ID_VERSION}\0".encode())
    view = memoryview(bytearray(8 << 20))
    for f in ordered:
        h.update(f.name.encode() + b"\0" + f.stat().st_size.to_bytes(8, "little"))
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                h.update(view[:n])
    return h.hexdigest()


def _sample_digest(ordered: Sequence[Path]) -> str:
    """A hash of a few blocks of every file: cheap (a few reads), enough to catch a changed file."""
    h = hashlib.blake2b(digest_size=16)
    for f in ordered:
        size = f.stat().st_size
        h.update(f.name.encode() + b"\0" + size.to_bytes(8, "little"))
        with open(f, "rb", buffering=0) as fh:
            for offset in sorted({0, size // 4, size // 2, 3 * size // 4, max(0, size - _SAMPLE)}):
                fh.seek(offset)
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()


def _load_cache(f: Path) -> dict[str, object]:
    try:
        data = json.loads(f.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
