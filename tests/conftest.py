"""What every test shares: no network, and a kinmerge cache of its own.

Tests must never reach the Hugging Face hub (CI has no network besides package registries) nor
read or write the user's ``~/.cache/kinmerge``: each test gets an empty cache folder. A module may
override these (e.g. to share one cache across a module's long fixtures).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` on and ``KINMERGE_CACHE`` in ``tmp_path``; returns the cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("KINMERGE_CACHE", str(cache))
    return cache


OLD_STORE = Path(__file__).parent / "data" / "store-0.1.0"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A run directory holding a copy of the 0.1.0 store (a finished greedy and kinship run)."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(OLD_STORE / "kinmerge.db", run / "kinmerge.db")
    return run
