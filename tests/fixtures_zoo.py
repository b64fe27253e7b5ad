"""Shared zoo fixtures: one micro zoo per test session (built in seconds, real HF folders).

Import the fixtures into a test module (``from fixtures_zoo import micro_zoo``). The built zoo
is cached at module level, so several modules importing the fixture still build it once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="session")
def micro_zoo(tmp_path_factory: pytest.TempPathFactory):
    """A micro zoo (hidden 32, 2 layers, tasks add/reverse/caesar) in a session temp folder."""
    pytest.importorskip("torch")
    from kinmerge.zoo import build_zoo, load_zoo

    if "micro" not in _BUILT:
        root = tmp_path_factory.mktemp("zoo") / "micro"
        build_zoo(root, preset="micro", seed=0, log=lambda line: None)
        _BUILT["micro"] = root
    return load_zoo(_BUILT["micro"])


@pytest.fixture(scope="session")
def micro_model(micro_zoo):
    """The micro zoo's caesar specialist, loaded in float32 with its tokenizer."""
    from kinmerge.evaluate.builtin import load_model

    return load_model(micro_zoo.specialists["caesar"])
