"""The lm-evaluation-harness adapter, offline: a local task YAML over a local JSONL, a tiny Llama."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("torch")

from kinmerge.errors import ConfigError, EvaluationError
from kinmerge.evaluate import EvalResult, Evaluator, get_evaluator
from kinmerge.evaluate.lm_eval import PAPER_FEWSHOT, PAPER_METRICS, PAPER_TASKS, LmEvalEvaluator, _pick_metric
from tiny_models import make_family


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_family(tmp_path_factory.mktemp("family"), children=1)["child0"]


CHOICE_YAML = """\
task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

GEN_YAML = """\
task: tiny_echo
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["</s>"]
  max_gen_toks: 3
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture
def task_dir(tmp_path) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    with open(folder / "choice.jsonl", "w") as f:
        for i in range(12):
            f.write(json.dumps({"question": f"w{i} w{i + 1}", "choices": [f"w{i + 2}", f"w{i + 7}", "w50"],
                                "label": i % 3}) + "\n")
    with open(folder / "echo.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"question": f"w{i} w{i}", "answer": f"w{i}"}) + "\n")
    (folder / "choice.yaml").write_text(CHOICE_YAML.format(data=folder / "choice.jsonl"))
    (folder / "echo.yaml").write_text(GEN_YAML.format(data=folder / "echo.jsonl"))
    return folder


def test_local_yaml_tasks_score_offline(model, task_dir):
    ev = LmEvalEvaluator(tasks=[task_dir], batch_size=4, device="cpu", num_fewshot={"tiny_choice": 2})
    assert isinstance(ev, Evaluator)
    assert ev.task_names == ["tiny_choice", "tiny_echo"]
    res = ev.evaluate(model)
    assert isinstance(res, EvalResult)
    assert set(res.scores) == {"tiny_choice", "tiny_echo"}
    assert all(0.0 <= s <= 1.0 for s in res.scores.values())
    assert res.average == pytest.approx(sum(res.scores.values()) / 2)
    choice = res.details["tiny_choice"]
    assert choice["acc"] == res.scores["tiny_choice"] and "acc_norm" in choice
    assert choice["n"] == 12 and choice["num_fewshot"] == 2
    assert res.details["tiny_echo"]["num_fewshot"] == 0 and res.details["tiny_echo"]["n"] == 6
    # Deterministic: the same model scores the same.
    again = ev.evaluate(model)
    assert again.scores == res.scores


def test_registry_limit_and_metric_choice(model, task_dir):
    ev = get_evaluator("lm_eval", tasks=[str(task_dir / "choice.yaml")], metrics={"tiny_choice": "acc_norm"},
                       limit=5, batch_size=2)
    assert ev.name == "lm_eval" and ev.task_names == ["tiny_choice"]
    res = ev.evaluate(model)
    assert res.scores["tiny_choice"] == res.details["tiny_choice"]["acc_norm"]
    assert res.details["tiny_choice"]["n"] == 5
    assert 0.0 <= res.scores["tiny_choice"] <= 1.0


def test_settings_track_task_content(task_dir):
    ev = LmEvalEvaluator(tasks=[task_dir])
    s1 = ev.settings()
    json.dumps(s1)  # JSON-ready
    assert s1["evaluator"] == "lm_eval" and set(s1["tasks"]) == {"tiny_choice", "tiny_echo"}
    assert s1["metrics"] == {"tiny_choice": None, "tiny_echo": None}
    assert LmEvalEvaluator(tasks=[task_dir]).settings() == s1
    with open(task_dir / "choice.jsonl", "a") as f:  # new data -> new settings
        f.write(json.dumps({"question": "w1", "choices": ["w2", "w3"], "label": 0}) + "\n")
    s2 = LmEvalEvaluator(tasks=[task_dir]).settings()
    assert s2["tasks"]["tiny_choice"] != s1["tasks"]["tiny_choice"]
    assert s2["tasks"]["tiny_echo"] == s1["tasks"]["tiny_echo"]
    assert LmEvalEvaluator(tasks=[task_dir], limit=3).settings() != s2


def test_paper_defaults():
    ev = LmEvalEvaluator()
    assert ev.task_names == list(PAPER_TASKS) == ["winogrande", "gsm8k", "truthfulqa_mc2"]
    s = ev.settings()
    assert s["metrics"] == PAPER_METRICS
    assert s["num_fewshot"] == PAPER_FEWSHOT == {"winogrande": 5, "gsm8k": 5, "truthfulqa_mc2": 0}
    assert sorted(ev._fewshot_groups()) == [(0, ["truthfulqa_mc2"]), (5, ["winogrande", "gsm8k"])]


def test_pick_metric():
    gsm = {"exact_match,strict-match": 0.4, "exact_match_stderr,strict-match": 0.01,
           "exact_match,flexible-extract": 0.5}
    assert _pick_metric("gsm8k", gsm, "exact_match") == "exact_match,strict-match"
    assert _pick_metric("gsm8k", gsm, "exact_match,flexible-extract") == "exact_match,flexible-extract"
    assert _pick_metric("x", {"acc_norm,none": 0.2, "acc,none": 0.3}, None) == "acc,none"
    with pytest.raises(EvaluationError, match="reports no metric 'f1'; it reports exact_match,strict-match"):
        _pick_metric("gsm8k", gsm, "f1")


def test_errors(model, task_dir, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        LmEvalEvaluator(tasks=[tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no lm_eval task defined"):
        LmEvalEvaluator(tasks=[empty])
    with pytest.raises(ConfigError, match="batch_size"):
        LmEvalEvaluator(batch_size=0)
    with pytest.raises(EvaluationError, match="not a Hugging Face model folder"):
        LmEvalEvaluator(tasks=[task_dir]).evaluate(tmp_path)
    with pytest.raises(EvaluationError, match="unknown lm_eval task no_such_task_xyz"):
        LmEvalEvaluator(tasks=["no_such_task_xyz"], include_path=[task_dir]).evaluate(model)
    with pytest.raises(EvaluationError, match="reports no metric 'f1'"):
        LmEvalEvaluator(tasks=[task_dir / "choice.yaml"], metrics={"tiny_choice": "f1"}, limit=2).evaluate(model)



def test_scores_of_a_merge(tmp_path, task_dir):
    """Merge → evaluate, the way the runner chains them."""
    pytest.importorskip("mergekit")
    from kinmerge.merge import Slerp, merge

    fam = make_family(tmp_path / "fam", children=2)
    res = merge([fam["child0"], fam["child1"]], Slerp(), tmp_path / "merges")
    out = LmEvalEvaluator(tasks=[task_dir / "choice.yaml"], limit=4, dtype="float32").evaluate(res.path)
    assert math.isfinite(out.average) and 0.0 <= out.average <= 1.0


def test_eval_cli_speaks_lm_evals_language(model, task_dir, tmp_path, monkeypatch):
    """Issue 10: comma-separated tasks, --batch-size auto, --num-fewshot, --device, --model-args,
    --option, and a hub id for the model (from an offline local cache)."""
    from click.testing import CliRunner

    from hub_cache import fake_hub_cache
    from kinmerge.cli import cli

    tasks = f"{task_dir / 'choice.yaml'},{task_dir / 'echo.yaml'}"
    args = ["eval", str(model), "--evaluator", "lm_eval", "--tasks", tasks, "--limit", "4", "--batch-size", "auto",
            "--num-fewshot", "1", "--device", "cpu", "--model-args", "max_length=64", "--option", "seed=7", "--json"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # the harness's own notes went to stderr
    assert set(data["scores"]) == {"tiny_choice", "tiny_echo"}
    assert all(d["num_fewshot"] == 1 and d["n"] == 4 for d in data["details"].values())
    snap = fake_hub_cache(tmp_path / "hub", "org/tiny", model, "c" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    res = CliRunner().invoke(cli, ["eval", "org/tiny", *args[2:]])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["scores"] == data["scores"] and snap.is_dir()
    bad = CliRunner().invoke(cli, ["eval", str(model), "--tasks", str(task_dir), "--num-fewshot", "2"])
    assert bad.exit_code == 2 and "unknown setting 'num_fewshot' for evaluator 'builtin'" in bad.output
    assert bad.output.count("\n") == 1
    bad = CliRunner().invoke(cli, ["eval", str(model), "--evaluator", "lm_eval", "--tasks", tasks,
                                   "--model-args", "device=cuda"])
    assert bad.exit_code == 2 and "have their own settings" in bad.output


def test_an_adapter_goes_to_the_harness_as_peft(tmp_path, task_dir):
    """``eval ADAPTER --evaluator lm_eval``: the base as ``pretrained``, the adapter as ``peft=``;
    the scores are its merged model's, and not the base's (the adapter is applied)."""
    pytest.importorskip("peft")
    import torch
    from click.testing import CliRunner
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from kinmerge.cli import cli
    from tiny_models import save_model, tiny_config

    fam = make_family(tmp_path / "fam", children=0)
    model = LlamaForCausalLM.from_pretrained(fam["base"])
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, prm in peft_model.named_parameters():
            if "lora_" in name:  # B is zero when PEFT makes it: give the adapter a real delta
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.3)
    peft_model.peft_config["default"].base_model_name_or_path = str(fam["base"])
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = save_model(tmp_path / "merged", dict(peft_model.merge_and_unload().state_dict()), tiny_config())

    def scores(folder: Path) -> dict:
        args = ["eval", str(folder), "--evaluator", "lm_eval", "--tasks", str(task_dir / "choice.yaml"),
                "--batch-size", "4", "--device", "cpu", "--dtype", "float32", "--no-cache", "--json"]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)["details"]["tiny_choice"]

    got, want, base = scores(tmp_path / "adapter"), scores(merged), scores(fam["base"])
    assert got == want
    assert got != base
    bad = CliRunner().invoke(cli, ["eval", str(tmp_path / "adapter"), "--evaluator", "lm_eval", "--tasks",
                                   str(task_dir / "choice.yaml"), "--model-args", "peft=x"])
    assert bad.exit_code == 2 and "peft" in bad.output
