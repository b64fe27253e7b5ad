"""One rule for what a model reference means: a local path, or a hub id fetched into the cache.

Scan (through ``open_model``), merge and the run config all call :func:`resolve_ref`, so a
reference that works in one place works the same in the others, and a typo gets the same
one-line error everywhere ("no such model folder ...", never a confusing hub error).

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "zoo" / "base").mkdir(parents=True)
    >>> resolve_ref("zoo/base", root=root).path == (root / "zoo" / "base").resolve()
    True
    >>> resolve_ref("org/model@v1", root=root, fetch=False).hub_id
    'org/model@v1'
    >>> resolve_ref("zoo/bse", root=root)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    kinmerge.errors.SourceError: no such file or folder ... (zoo/ is a local folder, so this is not read as a hub id)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kinmerge.errors import SourceError
from kinmerge.sources.hub import HUB_ID, WEIGHT_PATTERNS, fetch_from_hub, hub_id_of_cache_path, is_hub_id

__all__ = ["ZOO_PREFIX", "Resolved", "resolve_ref", "zoo_path"]

#: ``zoo:add``, ``zoo:base``, ``zoo:tasks``: the models and task folder kinmerge ships (docs/zoo.md).
ZOO_PREFIX = "zoo:"
_DATA = Path(__file__).resolve().parents[1] / "data"


def _shipped_zoos() -> dict[str, Path]:
    """Zoo name -> folder: the zoos shipped in the package, then those built into the cache
    (``$KINMERGE_CACHE/zoos/NAME``, e.g. the real-model ``smol`` zoo; a shipped name wins)."""
    from kinmerge.sources.content_ids import cache_dir

    built = cache_dir() / "zoos"
    zoos = {p.name: p for p in sorted(built.iterdir()) if (p / "zoo.json").is_file()} if built.is_dir() else {}
    if _DATA.is_dir():
        zoos.update({("tiny" if p.name == "zoo" else p.name.removeprefix("zoo-")): p
                     for p in sorted(_DATA.iterdir()) if p.is_dir() and (p.name == "zoo" or p.name.startswith("zoo-"))})
    return zoos


def zoo_path(ref: str) -> Path:
    """The folder a ``zoo:`` reference names: ``zoo:NAME`` in the tiny zoo (``base``, ``tasks`` or a
    specialist such as ``add``), ``zoo:ZOO/NAME`` in another shipped zoo. Short names make every
    example in the docs runnable as written, from any folder.

    Raises:
        SourceError: no such shipped zoo or model (the message lists what there is).
    """
    spec = ref[len(ZOO_PREFIX):].strip()
    zoo, _, name = spec.rpartition("/")
    zoos = _shipped_zoos()
    root = zoos.get(zoo or "tiny")
    if root is None:
        raise SourceError(f"{ref}: no shipped zoo {zoo!r}; shipped: {', '.join(zoos) or 'none'}")
    for candidate in (root / name, root / "specialists" / name, root / "models" / name):
        if name and candidate.exists():
            return candidate
    names = sorted({"base", "tasks", *(p.name for sub in ("specialists", "models") if (root / sub).is_dir()
                                       for p in (root / sub).iterdir() if p.is_dir())})
    raise SourceError(f"{ref}: the {zoo or 'tiny'} zoo has no {name!r}; it has: {', '.join(names)}")


@dataclass(frozen=True)
class Resolved:
    """What a model reference names.

    Attributes:
        given: the reference as written (stripped).
        path: the local file or folder, absolute; None for a hub id resolved with ``fetch=False``.
        hub_id: ``org/name[@revision]`` when the model comes from the hub (given as a hub id, or
            a folder inside a huggingface_hub cache snapshot, then without revision); else None.
    """

    given: str
    path: Path | None
    hub_id: str | None = None

    @property
    def ref(self) -> str:
        """The reference to keep: the hub id when given as one, else the absolute local path."""
        if self.hub_id is not None and (self.path is None or self.given == self.hub_id):
            return self.hub_id
        return str(self.path)

    @property
    def repo_id(self) -> str | None:
        """The hub id without its revision (what a model card's ``base_model`` lists)."""
        return self.hub_id.partition("@")[0] if self.hub_id else None


def resolve_ref(
    ref: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    want: Literal["any", "folder"] = "any",
    fetch: bool = True,
    patterns: Sequence[str] = WEIGHT_PATTERNS,
) -> Resolved:
    """Resolve a model reference to a local path, fetching hub ids into the HF cache.

    Args:
        ref: a local file or folder (``~`` expanded; relative paths are taken under ``root``), a
            hub id ``org/name[@revision]``, or a shipped model (``zoo:add``, see :func:`zoo_path`).
        root: the folder relative paths start from (a config file's folder); default the
            working directory.
        want: ``"folder"`` refuses a single file (merging needs a Hugging Face model folder).
        fetch: fetch hub ids (with ``patterns``); ``False`` only recognises them (``path`` None).
        patterns: the files to fetch from the hub (default configs and safetensors).

    Returns:
        The :class:`Resolved` reference.

    Raises:
        SourceError: the path does not exist and ``ref`` is not a hub id (including a mistyped
            path whose first folder exists), a file where a folder is wanted, or the hub id
            cannot be fetched (not cached while offline, unknown, unreachable).
    """
    given = os.fspath(ref).strip()
    if not given:
        raise SourceError("empty model reference: give a model folder, a weights file or a hub id")
    here = Path(root).expanduser() if root is not None else Path.cwd()
    path = zoo_path(given) if given.startswith(ZOO_PREFIX) else Path(given).expanduser()
    full = path if path.is_absolute() else here / path
    what = "model folder" if want == "folder" else "file or folder"
    if full.exists():
        if want == "folder" and not full.is_dir():
            raise SourceError(
                f"{given}: a file, but a Hugging Face model folder (config.json + weights) is needed here"
            )
        local = full.resolve()
        return Resolved(given, local, hub_id_of_cache_path(local))
    if is_hub_id(given, here):
        return Resolved(given, fetch_from_hub(given, patterns) if fetch else None, given)
    shown = full if path.is_absolute() or root is not None else path
    if HUB_ID.match(given):  # hub-shaped, but its first folder is here: a mistyped path
        first = given.split("/", 1)[0]
        raise SourceError(f"no such {what} {shown} ({first}/ is a local folder, so this is not read as a hub id)")
    raise SourceError(f"no such {what} {shown} (and not a hub id like org/name[@revision])")
