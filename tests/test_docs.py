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


#: Modules a user imports without paying for the heavy packages (seconds and gigabytes of import),
#: imported in turn in one interpreter: none may have pulled HEAVY in, and the package itself
#: (what `import kinmerge` costs every script) not even its lighter dependencies either.
LIGHT_MODULES = ("kinmerge", "kinmerge.kinship", "kinmerge.merge", "kinmerge.zoo", "kinmerge.evaluate.builtin",
                 "kinmerge.evaluate.tasks", "kinmerge.evaluate.lm_eval", "kinmerge.scan_ray", "kinmerge.evolve.runner")
HEAVY = ("torch", "transformers", "tokenizers", "mergekit", "lm_eval", "ray")
PACKAGE_ONLY = ("pydantic", "rich")


def test_importing_kinmerge_modules_is_light() -> None:
    """The heavy packages load only when a command uses them; even choosing the Ray executor
    imports ray only when it starts."""
    import importlib.util
    import subprocess
    import sys

    # The light install (kinship only: no pydantic) imports the package and its kinship path; the
    # full install every module.
    modules = LIGHT_MODULES if importlib.util.find_spec("pydantic") else LIGHT_MODULES[:2]
    code = f"""
import importlib, sys
for name in {modules!r}:
    importlib.import_module(name)
    banned = {HEAVY!r} + ({PACKAGE_ONLY!r} if name in ("kinmerge", "kinmerge.kinship") else ())
    loaded = sorted(set(banned) & set(sys.modules))
    assert not loaded, f"importing {{name}} imported {{loaded}}"
import kinmerge
assert callable(kinmerge.kinship), kinmerge.kinship
if {len(modules) > 2!r}:
    from kinmerge.evolve.executors import get_executor
    get_executor("ray", address="auto")
    assert "ray" not in sys.modules, "choosing the Ray executor imported ray"
"""
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
