"""What every test and every docstring example shares: no network, and a kinmerge cache of its own.

It sits at the repository root, above ``tests/`` and ``src/kinmerge/``, because ``python -m
pytest`` also runs the docstring examples of ``src/kinmerge`` (``--doctest-modules``), and those
must not reach the Hugging Face hub (CI has no network besides package registries) nor read or
write the user's ``~/.cache/kinmerge`` either. The tests' shared fixtures live in
``tests/conftest.py``. A module may override ``offline`` (e.g. to share one cache across a
module's long fixtures). The tests' groups for pytest-xdist are here too: they span both folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
# pytest-xdist: ``scripts/test.sh`` runs ``-n 2 --dist loadgroup --no-loadscope-reorder``, with the
# groups below (xdist's own ``xdist_group`` marks are lost under pytest 9, whose node ids are
# structured: xdist 3.8 appends the group to an attribute pytest no longer reads).

#: Test modules that share the worker's Ray cluster with the Ray modules, and why. They run in
#: one group with every module that has ``ray`` in its name: one cluster per run, not one per
#: worker. (Modules whose tests start 2 processes of their own, e.g. the demo's and the zoo
#: builds' workers, are not grouped: on 2 cores that costs a little overlap, while one group of
#: them made the whole run wait for it: 911 s with the group, most of it in that group alone.)
BOTH_CORES = {
    "tests/test_reproducible.py": "a run on a Ray cluster (its module fixture is shared with it)",
}
#: Fixtures of a Ray cluster (one per worker process): their users must be in the group.
_RAY_FIXTURES = {"ray_cluster", "ray_reference"}


def xdist_group(nodeid: str) -> str:
    """The group a test runs in: ``both_cores``, or its module (a module's fixtures are then made
    once, on one worker)."""
    module = nodeid.split("::", 1)[0]
    name = module.rsplit("/", 1)[-1]
    if module in BOTH_CORES or (name.startswith("test_") and "ray" in name.removesuffix(".py").split("_")):
        return "both_cores"
    return module


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist's own; none without xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``: xdist's scheduler of whole groups, with :func:`xdist_group`'s groups."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Groups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

    return Groups(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, each worker orders the tests so that groups go out roughly longest first:
    ``both_cores``, then modules with slow tests, then the rest, which fill the gaps at the end.
    A run without xdist keeps pytest's order."""
    if not hasattr(config, "workerinput"):  # the controller, or no xdist
        return
    missing = [module for module in BOTH_CORES if not (config.rootpath / module).is_file()]
    if missing:
        raise pytest.UsageError(f"BOTH_CORES in conftest.py names no such file: {', '.join(missing)}")
    for item in items:
        if _RAY_FIXTURES & set(getattr(item, "fixturenames", ())) and xdist_group(item.nodeid) != "both_cores":
            raise pytest.UsageError(f"{item.nodeid} uses a Ray cluster: add its module to BOTH_CORES in conftest.py")
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: 0 if xdist_group(item.nodeid) == "both_cores" else 1 if item.path in slow else 2)
