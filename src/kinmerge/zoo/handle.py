"""The zoo handle: a built zoo's folders, read from its ``zoo.json`` manifest.

Example:
    >>> shipped_zoo().base.name
    'base'
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kinmerge.errors import ConfigError, SourceError

__all__ = ["MANIFEST", "SHIPPED", "Zoo", "built_zoo_dir", "load_zoo", "shipped_zoo"]

MANIFEST = "zoo.json"

#: The zoos shipped inside the package: preset name -> folder under ``kinmerge/data``.
SHIPPED: dict[str, str] = {"tiny": "zoo", "headroom": "zoo-headroom"}


@dataclass(frozen=True)
class Zoo:
    """Paths of a built zoo, read from its ``zoo.json``."""

    root: Path
    base: Path
    specialists: dict[str, Path]
    tasks_dir: Path
    manifest: dict[str, Any] = field(repr=False)

    def task_of(self, specialist: str) -> str:
        """The task the specialist was fine-tuned on."""
        return str(self.manifest["specialists"][specialist]["task"])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (absolute paths)."""
        return {"root": str(self.root), "base": str(self.base),
                "specialists": {k: str(v) for k, v in self.specialists.items()},
                "tasks_dir": str(self.tasks_dir), "tasks": list(self.manifest.get("tasks", [])),
                "preset": self.manifest.get("preset"), "scores": self.manifest.get("scores", {}),
                "headroom": self.manifest.get("headroom")}


def load_zoo(root: str | os.PathLike[str]) -> Zoo:
    """Open the zoo at ``root`` through its ``zoo.json`` manifest.

    Raises:
        SourceError: if ``root`` has no readable ``zoo.json`` or a listed folder is missing.

    Example:
        >>> from kinmerge.sources import zoo_path
        >>> zoo = load_zoo(zoo_path("zoo:base").parent)   # the shipped tiny zoo
        >>> sorted(zoo.specialists)
        ['add', 'caesar', 'count', 'double', 'reverse', 'sort']
    """
    root = Path(root).resolve()
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{path}: no zoo manifest; build a zoo with "
                          f"`kinmerge zoo build {root}`") from None
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: unreadable zoo manifest ({exc})") from None
    base = root / manifest["base"]
    specialists = {name: root / spec["path"] for name, spec in manifest["specialists"].items()}
    tasks_dir = root / manifest["tasks_dir"]
    for p in (base, tasks_dir, *specialists.values()):
        if not p.is_dir():
            raise SourceError(f"{p}: listed in {path} but missing; rebuild the zoo")
    return Zoo(root=root, base=base, specialists=specialists, tasks_dir=tasks_dir,
               manifest=manifest)


def built_zoo_dir(preset: str) -> Path:
    """Where ``kinmerge zoo build --preset PRESET`` builds by default, and where ``zoo:PRESET/NAME``
    looks for a zoo that is not shipped: ``$KINMERGE_CACHE/zoos/PRESET`` (read when called).

    Example:
        >>> built_zoo_dir("smol").parts[-2:]
        ('zoos', 'smol')
    """
    cache = os.environ.get("KINMERGE_CACHE") or Path.home() / ".cache" / "kinmerge"
    return Path(cache) / "zoos" / preset


def shipped_zoo(name: str = "tiny") -> Zoo:
    """A zoo shipped inside the package: ``"tiny"`` (``kinmerge/data/zoo``, the default) or
    another name from :data:`SHIPPED`.

    Raises:
        ConfigError: if no zoo of that name is shipped.
        SourceError: if the package was installed without its data files.

    Example:
        >>> zoo = shipped_zoo()
        >>> zoo.base.name
        'base'
    """
    if name not in SHIPPED:
        raise ConfigError(f"no shipped zoo {name!r}; choose from {', '.join(SHIPPED)} or build "
                          f"one with `kinmerge zoo build DIR --preset {name}`")
    return load_zoo(Path(str(resources.files("kinmerge") / "data" / SHIPPED[name])))
