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


# ------------------------------------------------------------------------------------------------
# pytest-xdist (``scripts/test.sh`` runs ``-n 2 --dist loadgroup --no-loadscope-reorder``)

#: Fixtures whose users share one Ray cluster per worker process: they run in the same group.
_RAY_FIXTURES = {"ray_cluster", "ray_reference"}


def _keeps_both_cores_busy(item: pytest.Item) -> bool:
    """A test that keeps both cores busy by itself: marked ``both_cores``, in a Ray test module
    (``test_*ray*.py``), or a user of the session's Ray cluster."""
    return (item.get_closest_marker("both_cores") is not None
            or (item.path.name.startswith("test_") and "ray" in item.path.stem.split("_"))
            or bool(_RAY_FIXTURES & set(getattr(item, "fixturenames", ()))))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist: one group per module (a module's fixtures are made once, on one worker), and
    one group ``both_cores`` for every module with a test that keeps both cores busy (Ray, a
    2-worker pool, the demo), so that two of those never run at once on 2 cores. Groups are sent
    to the workers longest first, roughly: ``both_cores``, then modules with slow tests, then the
    rest, which fill the gaps at the end. A run without xdist keeps pytest's order."""
    if not hasattr(config, "workerinput"):  # the controller, or no xdist
        return

    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]

    busy = {module(item) for item in items if _keeps_both_cores_busy(item)}
    slow = {module(item) for item in items if item.get_closest_marker("slow") is not None}
    for item in items:
        item.add_marker(pytest.mark.xdist_group("both_cores" if module(item) in busy else module(item)))
    items.sort(key=lambda item: 0 if module(item) in busy else 1 if module(item) in slow else 2)  # stable
