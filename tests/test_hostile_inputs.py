"""Inputs parsed strictly, in one place (issue 17, item 4): run configs, task files, numbers.

Each case is a real file run through the real CLI; it must end in one ``Error:`` line with exit 2
(naming the file and the field) or in the right answer. Cases that need the evolve extra (pydantic,
PyYAML) skip without it; the task-file and parser cases run in the light CI job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli_checks import assert_one_line_error
from kinmerge._json import StrictInputError, json_lines, loads_strict, number, score
from kinmerge.cli import cli
from kinmerge.evaluate.tasks import load_task
from kinmerge.sources import zoo_path

EXAMPLE = Path(__file__).parent.parent / "examples" / "evolve.yaml"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "evolve.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _evolve_text(evaluator: str = "  tasks: [add, reverse, sort]\n  limit: 4\n") -> str:
    return ("foundation: [zoo:add, zoo:reverse, zoo:sort]\nbase: zoo:base\n"
            "strategy: {name: greedy, k: 2, max_generations: 1}\nmerge: {method: slerp}\n"
            f"evaluator:\n  name: builtin\n  tasks_dir: zoo:tasks\n{evaluator}")


# -- run configs (YAML) ----------------------------------------------------------------------------

@pytest.mark.parametrize(("evaluator", "names"), [
    ("  tasks: [add]\n  limit: 2.5\n", ["limit", "whole number", "2.5"]),
    ("  tasks: [add]\n  limit: true\n", ["limit", "boolean"]),
    ("  tasks: []\n  limit: 4\n", ["tasks", "non-empty"]),
    ("  tasks: [add]\n  limit: 4\n  batch_size: 0.5\n", ["batch_size"]),
])
def test_evolve_refuses_a_setting_the_run_would_crash_on_before_it_starts(tmp_path: Path, evaluator: str,
                                                                           names: list[str]) -> None:
    pytest.importorskip("pydantic")
    cfg = _config(tmp_path, _evolve_text(evaluator))
    for extra in (["--dry-run"], []):  # the dry run and the real run refuse alike, before any work
        result = CliRunner().invoke(cli, ["evolve", str(cfg), "--run-dir", str(tmp_path / "run"), *extra])
        assert_one_line_error(result, cfg, *names)
    assert not (tmp_path / "run").exists()


def test_evolve_refuses_a_key_given_twice(tmp_path: Path) -> None:
    pytest.importorskip("pydantic")
    text = _evolve_text() + "strategy: {name: kinship, k: 3, max_generations: 1}\n"  # a second block
    cfg = _config(tmp_path, text)
    line = assert_one_line_error(CliRunner().invoke(cli, ["evolve", str(cfg), "--dry-run"]), cfg, "'strategy'",
                                 "twice")
    assert "line 10" in line


def test_a_raw_mergekit_yaml_with_a_key_twice_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    raw = tmp_path / "raw.yaml"
    raw.write_text("merge_method: slerp\nbase_model: ${parent_a}\nmodels:\n  - model: ${parent_a}\n"
                   "  - model: ${parent_b}\nparameters: {t: 0.5}\nparameters: {t: 0.9}\ndtype: float32\n")
    result = CliRunner().invoke(cli, ["merge", "zoo:add", "zoo:sort", "--config", str(raw), "--out",
                                      str(tmp_path / "m")])
    assert_one_line_error(result, "'parameters'", "twice")
    assert not (tmp_path / "m").exists()


# -- task files (JSON Lines) -----------------------------------------------------------------------

def test_a_task_line_holding_u2028_is_one_example(tmp_path: Path) -> None:
    path = tmp_path / "sep.jsonl"
    lines = [json.dumps({"prompt": "a\u2028b =", "answer": " 1"}, ensure_ascii=False),
             json.dumps({"prompt": "c\x85d =", "answer": " 2"}, ensure_ascii=False)]
    path.write_text("\r\n".join(lines) + "\n", encoding="utf-8")
    task = load_task(path)
    assert [ex.prompt for ex in task.examples] == ["a\u2028b =", "c\x85d ="]


def test_eval_reads_such_a_task_folder_up_to_the_model(tmp_path: Path) -> None:
    pytest.importorskip("yaml")  # eval's KEY=VALUE options are read as YAML scalars
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "sep.jsonl").write_text(json.dumps({"prompt": "x\u2028y", "answer": "z"}, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    # No model is loaded: the bad --limit is refused after the task folder parsed cleanly.
    result = CliRunner().invoke(cli, ["eval", "zoo:add", "--tasks", str(tasks), "--limit", "2.5"])
    assert_one_line_error(result, "limit", "whole number")


# -- the parsers themselves ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "why"), [
    ('{"a": NaN}', "NaN"), ('{"a": Infinity}', "Infinity"), ('{"a": 1, "a": 2}', "duplicate key 'a'"),
])
def test_strict_json_refuses(text: str, why: str) -> None:
    with pytest.raises(StrictInputError, match=why):
        loads_strict(text)


def test_numbers_and_scores() -> None:
    assert number(2.0, "limit", integer=True) == 2 and isinstance(number(2.0, "limit", integer=True), int)
    for bad in (True, 2.5, float("nan"), "3", None):
        with pytest.raises(StrictInputError, match="limit"):
            number(bad, "limit", integer=True, low=1)
    assert score(0, "s") == 0.0 and score(1, "s") == 1.0
    for bad in (46, -0.1, 1.0001, float("nan"), False):
        with pytest.raises(StrictInputError):
            score(bad, "s")


def test_json_lines_split_on_newline_only() -> None:
    assert json_lines("a\u2028b\nc\x0cd\r\n\n e\n") == [(1, "a\u2028b"), (2, "c\x0cd"), (4, " e")]
    assert zoo_path("zoo:tasks").is_dir()
