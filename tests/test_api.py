"""The public API (``kinmerge.__all__``) is a contract: every name works on every call, in any order,
in one process, and takes every reference the CLI takes (issue 18, item 1). docs/api.md's examples
run in tests/test_docs.py."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import kinmerge
from kinmerge.cli import cli
from kinmerge.errors import ConfigError, EvaluationError

#: One call per exported name, each in a fresh process that has imported nothing but ``kinmerge``.
#: The calls run twice, in two orders, so each function is called after every other one has
#: imported its subpackages.
CALLS = textwrap.dedent('''
    import json, os, sys
    import kinmerge

    work = sys.argv[1]
    config = {"foundation": ["zoo:add", "zoo:sort"], "base": "zoo:base",
              "strategy": {"name": "greedy", "k": 2, "max_generations": 1},
              "evaluator": {"name": "builtin", "tasks_dir": "zoo:tasks", "tasks": ["add"], "limit": 3}}


    def evolve():
        summary = kinmerge.evolve(config, os.path.join(work, "run"), progress=False)
        return [summary.status, list(summary.top_k)]

    def index():
        idx = kinmerge.Index(os.path.join(work, "f.kmi"))
        added = idx.add(["zoo:add", "zoo:sort"], base="zoo:base").added
        return [len(added), sorted(m.label for m in idx.models())]

    calls = {
        "kinship": lambda: kinmerge.kinship("zoo:add", "zoo:sort", base="zoo:base").pcc,
        "matrix": lambda: kinmerge.matrix(["zoo:add", "zoo:sort", "zoo:count"], base="zoo:base").matrix("pcc").tolist(),
        "merge": lambda: kinmerge.merge(["zoo:add", "zoo:sort"], out=os.path.join(work, "merges")).id,
        "evaluate": lambda: kinmerge.evaluate("zoo:add", tasks_dir="zoo:tasks", tasks=["add"], limit=3).scores,
        "evolve": evolve,
        "Index": index,
        "__version__": lambda: kinmerge.__version__,
    }
    missing = set(kinmerge.__all__) ^ set(calls)
    assert not missing, f"kinmerge.__all__ and this test's calls differ: {sorted(missing)}"
    results = {}
    for order in (list(calls), list(reversed(calls))):
        for name in order:
            results.setdefault(name, []).append(calls[name]())
    print(json.dumps(results))
''')


def test_every_export_works_twice_in_any_order(tmp_path: Path) -> None:
    script = tmp_path / "calls.py"
    script.write_text(CALLS)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    # An index is a file: the second add finds both models there already and adds nothing.
    assert results.pop("Index") == [[2, ["zoo:add", "zoo:sort"]], [0, ["zoo:add", "zoo:sort"]]]
    for name, (first, second) in results.items():
        assert first == second, f"kinmerge.{name}: the second call gave {second!r}, the first {first!r}"
    assert results["evolve"][0][0] == "finished"


def test_exports_stay_functions_after_every_subpackage_import() -> None:
    for module in ("kinmerge.kinship", "kinmerge.merge", "kinmerge.merge.recipes", "kinmerge.evaluate",
                   "kinmerge.evaluate.cache", "kinmerge.evolve", "kinmerge.evolve.runner", "kinmerge.index"):
        importlib.import_module(module)
    for name in ("kinship", "matrix", "merge", "evaluate", "evolve"):
        function = getattr(kinmerge, name)
        assert callable(function) and function.__module__ == "kinmerge", (name, function)
    from kinmerge.evolve import get_strategy
    from kinmerge.kinship import KinshipStats
    from kinmerge.merge import Slerp

    assert callable(get_strategy) and isinstance(Slerp(), object) and KinshipStats is sys.modules[
        "kinmerge.kinship"].KinshipStats
    # A module attribute that is not a public function still binds as usual.
    kinmerge.some_test_attribute = 1  # type: ignore[attr-defined]
    assert kinmerge.some_test_attribute == 1  # type: ignore[attr-defined]
    del kinmerge.some_test_attribute  # type: ignore[attr-defined]


def test_evaluate_takes_the_references_the_cli_takes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``zoo:add`` / ``zoo:tasks`` and a path relative to the working directory, as ``kinmerge eval``."""
    cli_run = CliRunner().invoke(cli, ["eval", "zoo:add", "--tasks", "zoo:tasks", "--limit", "4", "--json"])
    assert cli_run.exit_code == 0, cli_run.output
    by_cli = json.loads(cli_run.output)["scores"]
    assert kinmerge.evaluate("zoo:add", tasks_dir="zoo:tasks", limit=4).scores == by_cli

    from kinmerge.sources import zoo_path

    monkeypatch.chdir(zoo_path("zoo:tasks").parent)
    assert kinmerge.evaluate("specialists/add", tasks_dir="tasks", limit=4, cache=False).scores == by_cli


def test_a_bad_task_folder_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^tasks_dir: zoo:taks: the tiny zoo has no 'taks'; it has: add, "):
        kinmerge.evaluate("zoo:add", tasks_dir="zoo:taks")
    missing = f"{tmp_path}/nowhere: task folder not found; expected a folder of <task>.jsonl files (see docs/tasks.md)"
    with pytest.raises(EvaluationError, match=f"^{re.escape(missing)}$"):
        kinmerge.evaluate("zoo:add", tasks_dir="nowhere")
    done = subprocess.run([sys.executable, "-m", "kinmerge.cli", "eval", "zoo:add", "--tasks", "nowhere"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.splitlines() == [f"Error: {missing}"]
