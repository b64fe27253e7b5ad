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


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One Ray cluster of three nodes on this machine for every Ray test, this process its driver.

    Real ``ray start`` nodes (``tests/ray_nodes.py``), 1 CPU each: the head; ``a`` with a
    custom resource ``node_a``, a GPU that is not there (``--num-gpus=1``: Ray hands out the
    resource and sets ``CUDA_VISIBLE_DEVICES``; torch sees no CUDA) and a share of ``spare``;
    ``b`` with ``node_b``, which does not see the folder ``hidden`` (an empty tmpfs there, in a
    mount namespace of its own; ``hidden`` is None where this process may not make one).
    Workers see ``HF_HUB_OFFLINE`` and this session's kinmerge cache. Tests add nodes of their own
    (``ray_cluster.nodes.add``) to kill them.
    """
    import logging
    from types import SimpleNamespace

    ray = pytest.importorskip("ray")
    from ray_nodes import RayNodes, can_hide_folders

    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")  # a local test cluster; the token of ~/.ray would be used otherwise
    mp.delenv("RAY_ADDRESS", raising=False)
    from ray._raylet import Config

    Config.initialize("")  # as Ray does when it changes the mode: this process must see it too
    env = {"HF_HUB_OFFLINE": "1", "KINMERGE_CACHE": str(tmp_path_factory.getbasetemp() / "kinmerge-cache")}
    nodes = RayNodes.start(env)
    hidden = nodes.root / "hidden"
    hidden.mkdir()
    try:
        nodes.add("head")
        hide = can_hide_folders()
        nodes.add("a", num_gpus=1, resources={"spare": 1})  # one at a time: nodes started together
        nodes.add("b", hide=hidden if hide else None)      # may pick the same free port and fail
        ray.init(address=nodes.address, logging_level=logging.ERROR, log_to_driver=False)
        ids = {}
        for n in ray.nodes():
            names = [r[len("node_"):] for r in n["Resources"] if r.startswith("node_")]
            if names:
                ids[names[0]] = n["NodeID"]
        yield SimpleNamespace(address=nodes.address, nodes=nodes, ids=ids,
                              hidden=hidden if hide else None)
    finally:
        ray.shutdown()
        nodes.stop()
        mp.undo()


@pytest.fixture(scope="session")
def ray_reference(micro_zoo: Any, choice_tasks: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The Ray tests' run (greedy, k=3, 2 generations, run id ``g``) made by the local executor,
    in sequence: ``(config data, summary, run dir)``; every Ray run must end with its pool."""
    from evolve_helpers import run_config, write_config
    from kinmerge.evolve import evolve

    root = tmp_path_factory.mktemp("ray-reference")
    data = run_config(micro_zoo, choice_tasks, run_id="g", strategy={"name": "greedy", "k": 3, "max_generations": 2})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("KINMERGE_CACHE", str(tmp_path_factory.getbasetemp() / "kinmerge-cache"))
        summary = evolve(write_config(root / "local.yaml", data), root / "run", progress=False)
    return data, summary, root / "run"


OLD_STORE = Path(__file__).parent / "data" / "store-0.1.0"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A run directory holding a copy of the 0.1.0 store (a finished greedy and kinship run)."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(OLD_STORE / "kinmerge.db", run / "kinmerge.db")
    return run
