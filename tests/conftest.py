"""The fixtures tests share, found by name in every test module (no import, no ``noqa``).

No network and an own kinmerge cache per test come from the root ``conftest.py`` (the docstring
examples in ``src/`` need them too). Helpers that are plain functions stay in their modules
(``evolve_helpers``, ``tiny_models``, ``st_family``, ...) and are imported as usual.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from evolve_helpers import make_choice_tasks


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` once per test run, also under pytest-xdist, where every worker process has
    its own session: the workers' temp folders share a parent, and a file lock there lets the
    first build while the others wait, then read. What is built this way must not be changed."""
    from filelock import FileLock  # a dependency of huggingface_hub, hence of kinmerge

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    folder, done = shared / name, shared / f"{name}.built"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            if folder.exists():  # a worker died mid-build
                shutil.rmtree(folder)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def micro_zoo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A micro zoo (hidden 32, 2 layers, tasks add/reverse/caesar), built once per test run in
    seconds (``built_once``): real Hugging Face folders."""
    pytest.importorskip("torch")
    from kinmerge.zoo import build_zoo, load_zoo

    folder = built_once(tmp_path_factory, "micro-zoo",
                        lambda folder: build_zoo(folder / "micro", preset="micro", seed=0, log=lambda line: None))
    return load_zoo(folder / "micro")


@pytest.fixture(scope="session")
def micro_model(micro_zoo: Any) -> Any:
    """The micro zoo's caesar specialist, loaded in float32 with its tokenizer."""
    from kinmerge.evaluate.builtin import load_model

    return load_model(micro_zoo.specialists["caesar"])


@pytest.fixture(scope="session")
def choice_tasks(micro_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 2-way choice tasks (8 examples each) built from the micro zoo's tasks
    (``evolve_helpers.make_choice_tasks`` says why choices)."""
    return make_choice_tasks(micro_zoo.tasks_dir, tmp_path_factory.mktemp("choice-tasks"))


OLD_STORE = Path(__file__).parent / "data" / "store-0.1.0"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A run directory holding a copy of the 0.1.0 store (a finished greedy and kinship run)."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(OLD_STORE / "kinmerge.db", run / "kinmerge.db")
    return run
