"""Issue 3's facts, on the shipped zoo, through real mergekit merges and the kinmerge CLI."""

from __future__ import annotations

import json
from itertools import combinations

import pytest
from click.testing import CliRunner

pytest.importorskip("mergekit")
torch = pytest.importorskip("torch")

from kinmerge.cli import cli  # noqa: E402
from kinmerge.evaluate.builtin import BuiltinEvaluator  # noqa: E402
from kinmerge.merge import Slerp, merge  # noqa: E402
from kinmerge.zoo import shipped_zoo  # noqa: E402


@pytest.fixture(scope="module")
def zoo():
    return shipped_zoo()


@pytest.fixture(scope="module")
def merges(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo-merges")
    return {pair: merge([zoo.specialists[pair[0]], zoo.specialists[pair[1]]], Slerp(), out)
            for pair in combinations(sorted(zoo.specialists), 2)}


def _state(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_slerp_at_t0_and_t1_returns_the_parents(zoo, tmp_path):
    a, b = zoo.specialists["add"], zoo.specialists["sort"]
    for t, parent in ((0.0, a), (1.0, b)):
        result = merge([a, b], Slerp(t=t, dtype="float16"), tmp_path)
        got, want = _state(result.path), _state(parent)
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k].float(), want[k].float(), rtol=0,
                                       atol=1e-3 * want[k].abs().max().item() + 1e-6)


@pytest.mark.slow
def test_specialist_merges_load_keep_lineage_and_mostly_beat_their_parents(zoo, merges):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # 50 examples a task (the first 50, deterministic): 14 of the 15 merges beat their parents' mean
    # there, as on 100 (measured 2026-12-07); the test needs more than half
    evaluator = BuiltinEvaluator(zoo.tasks_dir, limit=50, progress=False)
    parent_scores = {n: evaluator.evaluate(p).average for n, p in zoo.specialists.items()}
    wins = []
    for (a, b), result in merges.items():
        AutoModelForCausalLM.from_pretrained(result.path)
        AutoTokenizer.from_pretrained(result.path)
        card = (result.path / "README.md").read_text()
        front = card.split("---")[1]
        assert "base_model_relation: merge" in front
        assert f"- {zoo.specialists[a].name}\n" in front and f"- {zoo.specialists[b].name}\n" in front
        assert str(zoo.specialists[a].parent) not in card  # no local paths in a card
        score = evaluator.evaluate(result.path).average
        wins.append(score > (parent_scores[a] + parent_scores[b]) / 2)
    assert sum(wins) > len(wins) / 2, f"{sum(wins)} of {len(wins)} merges beat the mean of their parents"


@pytest.mark.slow
def test_kinship_low_between_specialists_high_between_merge_and_parent(zoo, merges):
    names = sorted(zoo.specialists)
    res = CliRunner().invoke(cli, ["matrix", *[str(zoo.specialists[n]) for n in names], "--base", str(zoo.base),
                                   "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    pcc = json.loads(res.output)["kinship"]["pcc"]
    for i, j in combinations(range(len(names)), 2):
        assert pcc[i][j] < 0.5, (names[i], names[j], pcc[i][j])
    (a, _b), result = next(iter(merges.items()))
    res = CliRunner().invoke(cli, ["kinship", str(result.path), str(zoo.specialists[a]), "--base", str(zoo.base),
                                   "--metric", "pcc", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["kinship"]["pcc"] > 0.5
