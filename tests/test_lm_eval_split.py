"""The lm_eval evaluator's selection / held-out split (issue 16, item 3): the harness scores the
same examples as the builtin evaluator's parts, and an evolution run with it records held-out scores.

The tasks are the micro zoo's 2-way choice tasks (``evolve_helpers.make_choice_tasks`` says why
choices), written twice as harness YAMLs over local JSONL: with a validation and a test split
(the parts, as the real zoo writes them) and with one test split (the whole task).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("torch")

from evolve_helpers import make_choice_tasks, run_config, write_config
from kinmerge.errors import ConfigError, EvaluationError
from kinmerge.evaluate import evaluator_accepts, get_evaluator
from kinmerge.evaluate.builtin import BuiltinEvaluator
from kinmerge.evaluate.tasks import load_task, split_task

TASKS = ("add", "caesar", "reverse")

CHOICE_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
{files}
{splits}
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: choices
doc_to_target: 0  # the answer is the first choice
target_delimiter: ""
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def choices(micro_zoo, tmp_path_factory) -> Path:
    """16 choice examples per task (8 selection, 8 held-out): enough for scores between 0 and 1."""
    return make_choice_tasks(micro_zoo.tasks_dir, tmp_path_factory.mktemp("choices"), n=16)


def _yaml(folder: Path, task: str, files: dict[str, Path]) -> None:
    (folder / f"{task}.yaml").write_text(CHOICE_YAML.format(
        task=task, files="\n".join(f"    {split}: {path}" for split, path in files.items()),
        splits="\n".join(f"{split}_split: {split}" for split in files)))


@pytest.fixture(scope="module")
def two_splits(choices, tmp_path_factory) -> Path:
    """Tasks ``<t>_vt`` whose validation split is the builtin selection part and test the held-out one."""
    folder = tmp_path_factory.mktemp("two-splits")
    for t in TASKS:
        rows = [json.loads(line) for line in (choices / f"{t}.jsonl").read_text().splitlines()]
        files = {}
        for split, part in (("validation", "selection"), ("test", "heldout")):
            prompts = {e.prompt for e in split_task(load_task(choices / f"{t}.jsonl"), part).examples}
            files[split] = folder / f"{t}.{split}.jsonl"
            files[split].write_text("".join(json.dumps(r) + "\n" for r in rows if r["prompt"] in prompts))
        _yaml(folder, f"{t}_vt", files)
    return folder


@pytest.fixture(scope="module")
def one_split(choices, tmp_path_factory) -> Path:
    """Tasks named like the builtin ones (the split is seeded by name) with only a test split."""
    folder = tmp_path_factory.mktemp("one-split")
    for t in TASKS:
        _yaml(folder, t, {"test": choices / f"{t}.jsonl"})
    return folder


def _builtin(choices: Path, model: Path, split: str) -> dict[str, float]:
    return BuiltinEvaluator(choices, split=split, progress=False).evaluate(model).scores


def test_validation_selects_and_test_holds_out(micro_zoo, choices, two_splits):
    model = micro_zoo.specialists["add"]
    for split in ("selection", "heldout"):
        ev = get_evaluator("lm_eval", tasks=[two_splits], num_fewshot=0, dtype="float32", split=split)
        res = ev.evaluate(model)
        assert {t: res.details[f"{t}_vt"]["n"] for t in TASKS} == {t: 8 for t in TASKS}
        assert {t: res.scores[f"{t}_vt"] for t in TASKS} == _builtin(choices, model, split), split
    # The parts differ (else this test could not tell them apart): add scores 1.0 held out, less on selection.
    sel = get_evaluator("lm_eval", tasks=[two_splits], num_fewshot=0, dtype="float32", split="selection")
    held = get_evaluator("lm_eval", tasks=[two_splits], num_fewshot=0, dtype="float32", split="heldout")
    assert sel.evaluate(model).scores != held.evaluate(model).scores
    assert len({json.dumps(e.settings(), sort_keys=True) for e in (sel, held)}) == 2
    # `limit` applies within the part, as the harness's own limit.
    few = get_evaluator("lm_eval", tasks=[two_splits], num_fewshot=0, dtype="float32", split="heldout", limit=3)
    assert all(d["n"] == 3 for d in few.evaluate(model).details.values())


def test_a_one_split_task_is_split_with_the_builtin_rule(micro_zoo, choices, one_split):
    model = micro_zoo.specialists["add"]
    for split in ("selection", "heldout"):
        ev = get_evaluator("lm_eval", tasks=[one_split], num_fewshot=0, dtype="float32", split=split,
                           heldout_fraction=0.5, split_seed=0)
        res = ev.evaluate(model)
        assert res.scores == _builtin(choices, model, split), split
        assert all(d["n"] == 8 for d in res.details.values())
    other_seed = get_evaluator("lm_eval", tasks=[one_split], num_fewshot=0, dtype="float32", split="heldout",
                               heldout_fraction=0.5, split_seed=3, limit=2)
    assert all(d["n"] == 2 for d in other_seed.evaluate(model).details.values())


def test_a_one_split_task_without_a_fraction_is_refused_naming_it(micro_zoo, one_split):
    ev = get_evaluator("lm_eval", tasks=[one_split / "caesar.yaml"], split="heldout")
    with pytest.raises(EvaluationError, match=r"^lm_eval task caesar has only a test split, so it cannot be split"):
        ev.evaluate(micro_zoo.specialists["add"])
    with pytest.raises(ConfigError, match="unknown split 'train'"):
        get_evaluator("lm_eval", tasks=[one_split], split="train")
    with pytest.raises(ConfigError, match="heldout_fraction must be between 0 and 1"):
        get_evaluator("lm_eval", tasks=[one_split], split="heldout", heldout_fraction=1.0)


def test_settings_name_the_split(one_split):
    assert evaluator_accepts("lm_eval", "split")
    plain = get_evaluator("lm_eval", tasks=[one_split]).settings()
    assert "split" not in plain  # runs recorded before the split keep their evaluator keys
    parts = [get_evaluator("lm_eval", tasks=[one_split], split=s, heldout_fraction=0.5).settings()
             for s in ("selection", "heldout")]
    assert parts[0]["split"] == "selection" and parts[1]["split"] == "heldout"
    assert parts[0] != parts[1] != plain


def test_an_evolution_run_with_lm_eval_records_held_out_scores(micro_zoo, one_split, tmp_path, monkeypatch):
    from kinmerge.evolve import evolve
    from kinmerge.evolve.config import load_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = run_config(micro_zoo, one_split, strategy={"name": "greedy", "k": 2, "max_generations": 1})
    cfg["evaluator"] = {"name": "lm_eval", "tasks": [str(one_split)], "num_fewshot": 0, "dtype": "float32"}
    path = write_config(tmp_path / "run.yaml", cfg)
    summary = evolve(path, tmp_path / "run", progress=False)
    assert summary.heldout and summary.made["heldout_evaluations"] >= 2
    scored = [m for m in summary.pool if m.heldout_score is not None]
    assert summary.best is not None and summary.best.id in {m.id for m in scored}
    # A foundation model's recorded held-out score is the lm_eval evaluator's on the held-out part.
    evaluator = load_config(path).evaluator
    assert evaluator.splits and evaluator.settings("heldout")["split"] == "heldout"
    model = next(m for m in scored if not m.parents)
    held = get_evaluator("lm_eval", **evaluator.settings("heldout")).evaluate(Path(model.path))
    assert held.average == pytest.approx(model.heldout_score)
