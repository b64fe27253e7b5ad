"""``kinmerge suggest``: pairs ranked by kinship and, with scores, by the predicted child score."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from kinmerge.cli import cli
from kinmerge.suggest import PRIOR, PRIOR_SOURCE, rank_pairs

ZOO = "src/kinmerge/data/zoo"


def test_ranking_by_gain_then_by_predicted_child() -> None:
    pcc = np.array([[1.0, 0.95, 0.1], [0.95, 1.0, 0.3], [0.1, 0.3, 1.0]])
    by_gain = rank_pairs(["a", "b", "c"], pcc)
    assert [(r.a, r.b) for r in by_gain] == [("a", "c"), ("b", "c"), ("a", "b")]
    assert by_gain[0].predicted_gain == pytest.approx(PRIOR.a + PRIOR.b * 0.1)
    # a strong pair beats a distant but weak one once scores are known
    scores = {"a": 0.70, "b": 0.69, "c": 0.30}
    by_child = rank_pairs(["a", "b", "c"], pcc, scores=scores)
    assert (by_child[0].a, by_child[0].b) == ("a", "b") and "predicted child" in by_child[0].reason
    undefined = rank_pairs(["a", "b"], np.array([[1.0, np.nan], [np.nan, 1.0]]))
    assert undefined[0].kinship is None and "undefined" in undefined[0].reason


def test_suggest_cli(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[1])
    models = [f"{ZOO}/specialists/{t}" for t in ("add", "sort", "count")]
    res = CliRunner().invoke(cli, ["suggest", *models, "--base", f"{ZOO}/base", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert len(data["pairs"]) == 3 and data["prior"] == PRIOR_SOURCE
    gains = [p["predicted_gain"] for p in data["pairs"]]
    assert gains == sorted(gains, reverse=True)
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({m: s for m, s in zip(models, (0.45, 0.50, 0.46), strict=True)}))
    res = CliRunner().invoke(cli, ["suggest", *models, "--base", f"{ZOO}/base", "--scores", str(scores),
                                   "--top", "1", "--no-progress"])
    assert res.exit_code == 0 and "predicted child" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({models[0]: 0.4}))
    res = CliRunner().invoke(cli, ["suggest", *models, "--base", f"{ZOO}/base", "--scores", str(bad)])
    assert res.exit_code == 2 and "no score for" in res.output and res.output.count("\n") == 1
