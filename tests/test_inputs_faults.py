"""Bad inputs typed or pointed at (options, folders, pickles, task lines): one line, exit 2.

Each case here ended in a traceback or in a misleading message before (issue 8, section 5),
except where a test says it guards behaviour that was already right. Every refusal goes through
``cli_checks.assert_one_line_error`` (exit 2, no traceback, stderr one ``Error:`` line naming the
file or value at fault).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli_checks import assert_one_line_error, kinmerge_subprocess
from kinmerge.cli import cli
from kinmerge.sources import save_safetensors
from st_family import load_stored, make_family


def _run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def family(tmp_path):
    base, kids = make_family(tmp_path, 2)
    return base, kids


def _kinship(a: Path, b: Path, base: Path, *extra: str) -> dict:
    res = _run("kinship", a, b, "--base", base, "--json", "--no-progress", *extra)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


# --------------------------------------------------------------------------- options


def test_a_negative_chunk_is_one_line(family):
    base, (a, b) = family
    assert_one_line_error(_run("kinship", a, b, "--base", base, "--chunk", "-5"), "--chunk", "-5")
    assert_one_line_error(kinmerge_subprocess("kinship", a, b, "--base", base, "--chunk", "-5"), "--chunk")
    assert_one_line_error(_run("kinship", a, "--base", base), "MODEL_B", "kinship -h")


@pytest.mark.parametrize("weight", ["abc", "0.5,x", "nan", "1e999"])
def test_a_weight_that_is_not_a_number_is_one_line(family, tmp_path, weight):
    _, (a, b) = family
    res = _run("merge", a, b, "--method", "linear", "--weight", weight, "--out", tmp_path / "merges")
    assert_one_line_error(res, "--weight")
    assert not (tmp_path / "merges").exists()


def test_a_weight_that_is_not_a_number_in_a_real_process(family, tmp_path):
    _, (a, b) = family
    proc = kinmerge_subprocess("merge", a, b, "--method", "linear", "--weight", "abc", "--out", tmp_path / "m")
    assert_one_line_error(proc, "'abc' is not a number")


# --------------------------------------------------------------------------- folders


def test_two_safetensors_and_no_index_says_what_it_found(family, tmp_path):
    base, (a, b) = family
    folder = tmp_path / "split"
    folder.mkdir()
    tensors = {k: v.astype(np.float32) for k, v in load_stored(a).items()}
    names = list(tensors)
    save_safetensors(folder / "a.safetensors", {k: tensors[k] for k in names[:4]})
    save_safetensors(folder / "b.safetensors", {k: tensors[k] for k in names[4:]})
    line = assert_one_line_error(_run("kinship", folder, b, "--base", base),
                                 "found a.safetensors and b.safetensors but no model.safetensors.index.json")
    assert str(folder) in line


def test_a_local_typo_is_no_such_folder(family, tmp_path, monkeypatch):
    """Guards behaviour that was already right: ``models/typo`` with ``models/`` here is no hub id."""
    base, (_, b) = family
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(_run("kinship", "models/typo", b, "--base", base), "no such file or folder models/typo")


def test_an_extra_tensor_is_reported_as_extra_and_a_missing_one_as_missing(family, tmp_path):
    base, (a, b) = family
    tensors = {k: v.astype(np.float32) for k, v in load_stored(a).items()}
    extra = tmp_path / "extra"
    extra.mkdir()
    save_safetensors(extra / "model.safetensors", {**tensors, "extra.weight": np.ones(3, np.float32)})
    assert_one_line_error(_run("kinship", extra, b, "--base", base),  # no progress bar before the error
                          "extra has 1 tensor(s) the base (base) lacks: extra.weight")
    lacking = tmp_path / "lacking"
    lacking.mkdir()
    save_safetensors(lacking / "model.safetensors", {k: v for k, v in tensors.items() if k != "model.norm.weight"})
    assert_one_line_error(_run("kinship", lacking, b, "--base", base),
                          "lacking lacks 1 tensor(s) the base has: model.norm.weight")
    data = _kinship(extra, b, base, "--allow-missing")
    assert data["skipped_tensors"] == ["extra.weight"]


def test_models_with_the_same_folder_name_get_distinct_labels(family, tmp_path):
    base, (a, b) = family
    for parent, src in (("x", a), ("y", b)):
        shutil.copytree(src, tmp_path / parent / "model")
    out_csv = tmp_path / "k.csv"
    res = _run("matrix", tmp_path / "x/model", tmp_path / "y/model", "--base", base, "--json", "--no-progress",
               "--csv", out_csv)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["models"] == ["x/model", "y/model"]
    with out_csv.open() as fh:
        assert next(csv.reader(fh)) == ["metric", "model", "x/model", "y/model"]
    table = _run("matrix", tmp_path / "x/model", tmp_path / "y/model", "--base", base, "--no-progress").stdout
    assert "x/model" in table and "y/model" in table


def test_three_checkpoints_of_one_name(tmp_path):
    base, kids = make_family(tmp_path / "fam", 3)
    refs = []
    for run, kid in zip(("run-a", "run-b", "run-c"), kids, strict=True):
        shutil.copytree(kid, tmp_path / "runs" / run / "checkpoint-500")
        refs.append(tmp_path / "runs" / run / "checkpoint-500")
    res = _run("matrix", *refs, "--base", base, "--json", "--no-progress", "--metric", "pcc")
    data = json.loads(res.stdout)
    assert data["models"] == ["run-a/checkpoint-500", "run-b/checkpoint-500", "run-c/checkpoint-500"]
    assert len(data["undefined"]) == 0 and len({*data["models"]}) == 3


# --------------------------------------------------------------------------- pickled checkpoints


def _pickled(tmp_path: Path, name: str, obj, config_from: Path) -> Path:
    torch = pytest.importorskip("torch")
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(config_from / "config.json", folder)
    torch.save(obj, folder / "pytorch_model.bin")
    return folder


def _state(folder: Path) -> dict:
    torch = pytest.importorskip("torch")
    return {k: torch.from_numpy(v.astype(np.float32)).to(torch.bfloat16) for k, v in load_stored(folder).items()}


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model_state_dict", "model", "module", "module.state_dict"])
def test_common_checkpoint_layouts_are_read(family, tmp_path, layout):
    base, (a, b) = family
    sd = _state(a)
    obj = {"plain": sd, "state_dict": {"state_dict": sd, "epoch": 3, "global_step": 10},
           "model_state_dict": {"model_state_dict": sd, "optimizer_state_dict": {"lr": 0.1}},
           "model": {"model": sd, "args": {"lr": 0.1}}, "module": {"module": sd},
           "module.state_dict": {"module": {"state_dict": sd}, "step": 1}}[layout]
    pkl = _pickled(tmp_path, "pkl", obj, a)
    truth = _kinship(a, b, base)["kinship"]
    got = _kinship(pkl, b, base, "--allow-pickle")["kinship"]
    assert got == pytest.approx(truth, rel=1e-12)


@pytest.mark.parametrize("layout, says", [
    ("list", "holds a list, not a state dict"),
    ("mixed", "holds a dict whose entry 'step' is an int"),
    ("empty", "holds an empty dict"),
    ("nested_list", "holds a dict whose entry 'state_dict' is a list"),
    ("fp8", "tensor 'model.norm.weight' is float8_e4m3fn"),
])
def test_other_checkpoint_layouts_are_one_line(family, tmp_path, layout, says):
    torch = pytest.importorskip("torch")
    base, (a, b) = family
    sd = _state(a)
    obj = {"list": [sd], "mixed": {**sd, "step": 3}, "empty": {}, "nested_list": {"state_dict": [sd]},
           "fp8": {**sd, "model.norm.weight": sd["model.norm.weight"].to(torch.float8_e4m3fn)}}[layout]
    pkl = _pickled(tmp_path, "pkl", obj, a)
    assert_one_line_error(_run("kinship", pkl, b, "--base", base, "--allow-pickle"), pkl / "pytorch_model.bin", says)


def test_a_bad_pickle_in_a_real_process(family, tmp_path):
    base, (a, b) = family
    pkl = _pickled(tmp_path, "pkl", [1, 2, 3], a)
    proc = kinmerge_subprocess("kinship", pkl, b, "--base", base, "--allow-pickle", "--no-progress")
    assert_one_line_error(proc, pkl / "pytorch_model.bin", "holds a list")


# --------------------------------------------------------------------------- merging and evaluating


def test_a_merge_parent_with_a_broken_config_is_one_line(family, tmp_path):
    pytest.importorskip("torch")
    _, (a, b) = family
    (a / "config.json").write_text('{"model_type": "llama", "vocab_size": -1}')
    assert_one_line_error(_run("merge", a, b, "--out", tmp_path / "m"), a / "config.json", "'vocab_size' is -1")


@pytest.fixture
def hf_family(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_models import make_family as hf_make_family

    return hf_make_family(tmp_path / "hf", children=1)


def _tasks(tmp_path: Path, *lines: dict) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir(exist_ok=True)
    (folder / "t.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return folder


def test_weights_of_another_size_are_one_line_before_transformers_reports(hf_family, tmp_path):
    from tiny_models import random_state, save_model, tiny_config

    other = save_model(tmp_path / "other", random_state(1, tiny_config(hidden=48)))
    shutil.copy(hf_family["base"] / "config.json", other / "config.json")  # config of hidden 32
    tasks = _tasks(tmp_path, {"prompt": "w1 w2", "answer": " w3"})
    line = assert_one_line_error(_run("eval", other, "--tasks", tasks, "--no-cache"), other,
                                 "is [64, 48] in the weights but [64, 32]")
    assert "hidden_size 32" in line


def test_weights_missing_a_tensor_are_refused_not_left_random(hf_family, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "lacking"
    shutil.copytree(hf_family["base"], folder)
    state = load_file(str(folder / "model.safetensors"))
    del state["model.norm.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tasks = _tasks(tmp_path, {"prompt": "w1 w2", "answer": " w3"})
    assert_one_line_error(_run("eval", folder, "--tasks", tasks, "--no-cache"), "model.norm.weight",
                          "transformers would leave them random")


def _with_normalizer(folder: Path) -> None:
    """Make the folder's tokenizer drop '~' (so an answer of '~' tokenizes to nothing)."""
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.backend_tokenizer.normalizer = normalizers.Replace("~", "")
    tok.save_pretrained(folder)


@pytest.mark.parametrize("line, says", [
    ({"prompt": "w1 w2", "answer": " Zebra"}, "the answer ' Zebra' has characters ('Z', 'e', 'b', 'r', 'a') the "
                                              "tokenizer of child0 does not know"),
    ({"prompt": "w1 Ω", "answer": " w3"}, "the prompt 'w1 Ω' has characters"),
    ({"prompt": "w1", "answer": " w3", "choices": [" w3", " w4", "\tw3"]},
     "choices ' w3' and '\\tw3' tokenize the same"),
    ({"prompt": " ".join(["w1"] * 200), "answer": " w3"}, "needs 201 positions but child0 has 128"),
    ({"prompt": "w1", "answer": " ~"}, "the answer ' ~' tokenizes to nothing"),
])
def test_task_lines_the_model_cannot_score_are_refused_with_file_and_line(hf_family, tmp_path, line, says):
    child = hf_family["child0"]
    _with_normalizer(child)
    first = {"prompt": "w1 w2", "answer": " w3"} | ({"choices": [" w3", " w4"]} if "choices" in line else {})
    tasks = _tasks(tmp_path, first, line)
    assert_one_line_error(_run("eval", child, "--tasks", tasks, "--no-cache"), f"{tasks / 't.jsonl'}:2: ", says)


def test_task_lines_in_a_real_process(hf_family, tmp_path):
    tasks = _tasks(tmp_path, {"prompt": "w1 w2", "answer": " w3"}, {"prompt": "w1", "answer": " QQ"})
    proc = kinmerge_subprocess("eval", hf_family["child0"], "--tasks", tasks, "--no-cache")
    assert_one_line_error(proc, f"{tasks / 't.jsonl'}:2: ", "does not know")


def test_a_task_line_with_a_duplicate_key_is_refused(tmp_path):
    from kinmerge.errors import EvaluationError
    from kinmerge.evaluate.tasks import load_task

    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "answer": "b", "answer": "c"}\n', encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"t.jsonl:1: duplicate key 'answer'"):
        load_task(path)


@pytest.mark.parametrize("record", [{"parents": 3}, {"parents": ["x"]}, {"parents": [{"descends_from": 5}]},
                                    {"parents": [{"path": ["a"]}]}])
def test_a_damaged_kinmerge_json_is_not_taken_for_lineage(family, record):
    """A parent folder's ``kinmerge.json`` is read to list what it descends from (the model card)."""
    from kinmerge.merge.parents import load_parent

    _, (a, _) = family
    (a / "kinmerge.json").write_text(json.dumps(record))
    assert load_parent(a).descends_from is None  # read as a plain model, not a merge


def test_a_merge_with_a_damaged_kinmerge_json_in_a_parent(hf_family, tmp_path):
    pytest.importorskip("mergekit")
    a, b = hf_family["child0"], hf_family["base"]
    (a / "kinmerge.json").write_text(json.dumps({"parents": [{"descends_from": 5}]}))
    res = _run("merge", a, b, "--out", tmp_path / "m", "--json")
    assert res.exit_code == 0, res.output
    assert (Path(json.loads(res.stdout)["path"]) / "config.json").exists()
