"""``kinmerge suggest --scores`` refuses a scores file it would misread (issue 17, item 4).

A NaN score ranked its pairs first and printed a bare ``NaN`` in ``--json``; a score out of 50
predicted a child of 48.059; a key given twice kept the last; ``true`` counted as 1. Each is one
``Error:`` line, exit 2, naming the file (and the model), before any model is read. Needs no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli_checks import assert_one_line_error
from kinmerge.cli import cli

MODELS = ["zoo:add", "zoo:sort", "zoo:count"]


def _suggest(tmp_path: Path, text: str, *extra: str) -> tuple[Path, object]:
    path = tmp_path / "scores.json"
    path.write_text(text, encoding="utf-8")
    return path, CliRunner().invoke(cli, ["suggest", *MODELS, "--base", "zoo:base", "--scores", str(path),
                                          "--no-progress", *extra])


@pytest.mark.parametrize(("text", "names"), [
    ('{"zoo:add": NaN, "zoo:sort": 0.5, "zoo:count": 0.4}', ["NaN"]),
    ('{"zoo:add": Infinity, "zoo:sort": 0.5, "zoo:count": 0.4}', ["Infinity"]),
    ('{"zoo:add": 46, "zoo:sort": 45, "zoo:count": 40}', ["'zoo:add'", "[0, 1]", "0.92"]),
    ('{"zoo:add": 0.4, "zoo:add": 0.9, "zoo:sort": 0.5, "zoo:count": 0.4}', ["duplicate key 'zoo:add'"]),
    ('{"zoo:add": true, "zoo:sort": 0.5, "zoo:count": 0.4}', ["'zoo:add'", "boolean"]),
    ('{"zoo:add": "0.4", "zoo:sort": 0.5, "zoo:count": 0.4}', ["'zoo:add'", "a number"]),
    ('{"zoo:add": -0.1, "zoo:sort": 0.5, "zoo:count": 0.4}', ["'zoo:add'", "[0, 1]"]),
    ('[0.4, 0.5, 0.4]', ["JSON object"]),
    ('{"zoo:add": 0.4}', ["no score for zoo:sort, zoo:count"]),
    ('{"zoo:add": 0.4,', ["not valid JSON"]),
])
def test_a_scores_file_it_would_misread_is_refused(tmp_path: Path, text: str, names: list[str]) -> None:
    path, result = _suggest(tmp_path, text, "--json")
    assert_one_line_error(result, path, *names)
    assert result.stdout == ""  # no bare NaN, no half a table


def test_good_scores_predict_children_on_the_same_scale(tmp_path: Path) -> None:
    _, result = _suggest(tmp_path, json.dumps({"zoo:add": 0.46, "zoo:sort": 0.5, "zoo:count": 0.46, "other": 1}),
                         "--json")
    assert result.exit_code == 0, result.output
    pairs = json.loads(result.stdout)["pairs"]
    assert len(pairs) == 3 and all(0.0 <= p["predicted_score"] <= 1.0 for p in pairs)
