"""Hugging Face hub ids (``org/name[@revision]``) and fetching them into the local HF cache.

A hub id is only a *shape*: ``zoo/base`` is a valid hub id and also a relative path. The rule
deciding which one a reference means lives in :func:`is_hub_id` (and ``resolve_ref`` builds on
it): an existing local path always wins, and a reference whose first component is a local
folder is a mistyped path, never a hub id. Only configs and weights are fetched, never pickles.
Environment variables (``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``, ``HF_TOKEN``) are read when called.

Example:
    >>> bool(HUB_ID.match("HuggingFaceTB/SmolLM2-135M@main"))
    True
    >>> is_hub_id("/an/absolute/path")
    False
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from kinmerge.errors import SourceError

__all__ = ["HUB_ID", "WEIGHT_PATTERNS", "fetch_from_hub", "hub_id_of_cache_path", "is_hub_id"]

#: The shape of a hub id: ``org/name`` with an optional ``@revision`` (branch, tag or commit).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
#: What ``fetch_from_hub`` downloads by default: configs and safetensors weights.
WEIGHT_PATTERNS: tuple[str, ...] = ("*.json", "*.safetensors")
# huggingface_hub's cache layout: <cache>/models--<org>--<name>/snapshots/<commit>/...
_CACHE_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/[0-9a-f]{40}(?:/|$)")


def is_hub_id(ref: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> bool:
    """True when ``ref`` names a hub model: shaped ``org/name[@revision]``, not a local path.

    ``ref`` is not a hub id when it exists under ``root`` (default: the working directory) or
    its first component is a local folder there (``zoo/bse`` beside a folder ``zoo`` is a typo).

    Example:
        >>> is_hub_id("org/model@v1.0", root="/nonexistent")
        True
    """
    text = os.fspath(ref).strip()
    if not HUB_ID.match(text):
        return False
    here = Path(root) if root is not None else Path.cwd()
    return not (here / text).exists() and not (here / text.split("/", 1)[0]).is_dir()


def hub_id_of_cache_path(path: str | os.PathLike[str]) -> str | None:
    """``org/name`` when ``path`` lies in a huggingface_hub cache snapshot, else None.

    A folder fetched from the hub and passed on by its local path still came from the hub; this
    lets model cards name it by its hub id.

    Example:
        >>> hub_id_of_cache_path("/c/hub/models--org--name/snapshots/" + "a" * 40)
        'org/name'
    """
    m = _CACHE_SNAPSHOT.search(Path(path).as_posix())
    return f"{m.group(1)}/{m.group(2)}" if m else None


def fetch_from_hub(ref: str, allow_patterns: Sequence[str] = WEIGHT_PATTERNS) -> Path:
    """The local folder of hub model ``org/name[@revision]``: from the HF cache, else downloaded.

    Only files matching ``allow_patterns`` are fetched (weights and configs by default; never
    pickles). Honours ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_TOKEN``, read when called.

    Raises:
        SourceError: not in the cache while offline, or not reachable / not found online.
    """
    repo_id, _, revision = ref.partition("@")
    from huggingface_hub import snapshot_download

    # huggingface_hub reads these once, at its import; we honour their values now.
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    home = os.environ.get("HF_HOME")
    cache = os.environ.get("HF_HUB_CACHE") or (os.path.join(home, "hub") if home else None)
    try:
        folder = snapshot_download(repo_id, revision=revision or None, allow_patterns=list(allow_patterns),
                                   cache_dir=cache, local_files_only=offline)
    except Exception as exc:  # huggingface_hub raises a family of errors; all mean "not available"
        hint = (
            "it is not in the local HF cache and HF_HUB_OFFLINE is set"
            if offline
            else "check the id, the revision, your network and HF_TOKEN"
        )
        raise SourceError(
            f"{ref}: cannot fetch from the Hugging Face hub — {hint} ({type(exc).__name__}); "
            "or download it and pass the local folder"
        ) from None
    return Path(folder)
