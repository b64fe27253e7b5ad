"""What every test and every docstring example shares: no network, and a kinmerge cache of its own.

It sits at the repository root, above ``tests/`` and ``src/kinmerge/``, because ``python -m
pytest`` also runs the docstring examples of ``src/kinmerge`` (``--doctest-modules``), and those
must not reach the Hugging Face hub (CI has no network besides package registries) nor read or
write the user's ``~/.cache/kinmerge`` either. The tests' shared fixtures live in
``tests/conftest.py``. A module may override ``offline`` (e.g. to share one cache across a
module's long fixtures).
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
