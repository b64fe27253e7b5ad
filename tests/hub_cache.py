"""A local Hugging Face cache laid out exactly as huggingface_hub leaves it after a download.

With ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing here, hub ids resolve without network.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def fake_hub_cache(cache: Path, repo: str, folder: Path, commit: str) -> Path:
    """Lay out ``folder``'s files as huggingface_hub's cache of ``repo`` at ``commit``; the snapshot."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copy(f, snap / f.name)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snap
