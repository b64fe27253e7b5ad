"""The Python examples in the README and the docs run as written (doctest, from the repo root)."""

from __future__ import annotations

import doctest
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc", ["README.md", "docs/kinship.md", "docs/api.md"])
def test_python_examples_run(doc: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if doc == "docs/api.md":  # merges and evaluates: not in the light install (scripts/test_light.sh)
        pytest.importorskip("mergekit", reason="docs/api.md merges: needs the merge extra")
    monkeypatch.chdir(ROOT)
    result = doctest.testfile(str(ROOT / doc), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{doc} has no Python example"
    assert result.failed == 0, f"{result.failed} example(s) in {doc} failed (see the output above)"


def test_import_kinmerge_is_light() -> None:
    import subprocess
    import sys

    code = ("import sys, kinmerge, kinmerge.kinship; "
            "heavy = {'torch', 'transformers', 'mergekit', 'pydantic', 'rich'} & set(sys.modules); "
            "assert not heavy, heavy; assert callable(kinmerge.kinship), kinmerge.kinship")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
