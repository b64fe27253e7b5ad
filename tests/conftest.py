"""The fixtures tests share, found by name in every test module (no import, no ``noqa``).

No network and an own kinmerge cache per test come from the root ``conftest.py`` (the docstring
examples in ``src/`` need them too). Helpers that are plain functions stay in their modules
(``evolve_helpers``, ``tiny_models``, ``st_family``, ...) and are imported as usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evolve_helpers import make_choice_tasks


@pytest.fixture(scope="session")
def micro_zoo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A micro zoo (hidden 32, 2 layers, tasks add/reverse/caesar), built once per test session
    in seconds: real Hugging Face folders."""
    pytest.importorskip("torch")
    from kinmerge.zoo import build_zoo, load_zoo

    root = tmp_path_factory.mktemp("zoo") / "micro"
    build_zoo(root, preset="micro", seed=0, log=lambda line: None)
    return load_zoo(root)


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
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(OLD_STORE / "kinmerge.db", run / "kinmerge.db")
    return run
