"""LoRA adapters trained with peft on the shipped tiny zoo's base, merged, evaluated and evolved
through the CLI (issue 19, items 4-6).

The adapters are ``examples/adapters/{add,sort}`` (made by ``scripts/make_example_adapters.py``
with peft on ``zoo:base``) and one more trained here on ``reverse``. The checks that can fail:
PEFT's exact ``cat`` merge of two adapters has the same delta as mergekit's ``task_arithmetic`` of
the same two applied to the base (``--full``), while ``linear`` (which averages A and B
separately) does not; children of the ``lora`` recipe are adapter folders that kinship, eval and
the next merge read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli_checks import assert_one_line_error, kinmerge_subprocess
from kinmerge.cli import cli

pytest.importorskip("peft")
pytest.importorskip("mergekit")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    from kinmerge.zoo.adapters import train_adapter

    root = tmp_path_factory.mktemp("adapters")
    out = {name: Path(shutil.copytree(ROOT / "examples" / "adapters" / name, root / name)) for name in ("add", "sort")}
    out["reverse"] = train_adapter(root / "reverse", "reverse", steps=20)
    return out


def _json(*args: object) -> dict:
    result = CliRunner().invoke(cli, [str(a) for a in args] + ["--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    start = result.output.index("{")
    return json.loads(result.output[start:])


def test_merge_two_adapters_into_an_adapter_and_into_a_full_model(adapters, tmp_path):
    out = tmp_path / "merges"
    cat = _json("merge", adapters["add"], adapters["sort"], "--out", out)  # all adapters: the lora recipe
    child = Path(cat["path"])
    assert (child / "adapter_config.json").is_file() and not (child / "config.json").exists()
    assert cat["recipe"] == {"method": "lora", "combination": "cat", "weight": 0.5, "density": None, "svd_rank": None}
    assert [p["adapter"] for p in cat["parents"]] == [True, True]
    card = (child / "README.md").read_text()
    assert "library_name: peft" in card and "add_weighted_adapter" in card
    config = json.loads((child / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"].endswith("zoo/base")

    linear = _json("merge", adapters["add"], adapters["sort"], "--method", "lora", "--combination", "linear",
                   "--out", out)
    full = _json("merge", adapters["add"], adapters["sort"], "--full", "--method", "task_arithmetic",
                 "--dtype", "float32", "--base", "zoo:base", "--out", out)
    assert (Path(full["path"]) / "config.json").is_file() and (Path(full["path"]) / "model.safetensors").is_file()
    assert len({cat["id"], linear["id"], full["id"]}) == 3
    # cat is exact: base + 0.5 (ΔA + ΔB), what task_arithmetic of base+adapter gives; linear is not.
    same = _json("kinship", cat["path"], full["path"], "--base", "zoo:base")["kinship"]
    rough = _json("kinship", linear["path"], full["path"], "--base", "zoo:base")["kinship"]
    assert same["pcc"] > 0.9999 and same["ed"] < 0.01 * rough["ed"]
    # asked again: the same folder, nothing merged
    assert _json("merge", adapters["add"], adapters["sort"], "--out", out)["reused"] is True


def test_eval_an_adapter_and_its_merged_child(adapters, tmp_path):
    res = _json("eval", adapters["add"], "--tasks", "zoo:tasks", "--limit", "5")
    assert res["model"] == str(adapters["add"]) and set(res["scores"]) >= {"add", "sort"}
    child = _json("merge", adapters["add"], adapters["sort"], "--out", tmp_path)["path"]
    scores = _json("eval", child, "--tasks", "zoo:tasks", "--limit", "5")["scores"]
    assert scores != res["scores"]  # the child is another model, scored as base + its own delta


def test_evolve_with_adapter_foundations(adapters, tmp_path):
    config = tmp_path / "adapters.yaml"
    config.write_text(
        f"foundation: [{adapters['add']}, {adapters['sort']}, {adapters['reverse']}]\n"
        "base: zoo:base\n"
        "strategy: {name: kinship, k: 2, max_generations: 2, threshold: 0.99}\n"
        "merge: {method: lora, combination: cat}\n"
        "evaluator: {name: builtin, tasks_dir: zoo:tasks, tasks: [add, sort, reverse], limit: 10}\n"
        f"out: {{run_dir: {tmp_path / 'run'}}}\n")
    result = CliRunner().invoke(cli, ["evolve", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    children = [p for p in (tmp_path / "run" / "models").iterdir() if not p.name.startswith(".")]
    assert len(children) >= 2
    assert all((c / "adapter_config.json").is_file() and not (c / "config.json").exists() for c in children)
    status = _json("status", tmp_path / "run")
    assert "generation budget" in json.dumps(status)


def test_bad_adapter_merges_end_in_one_line(adapters, tmp_path):
    a, s = adapters["add"], adapters["sort"]
    run = kinmerge_subprocess("merge", a, s, "--method", "slerp", "--out", tmp_path)
    assert_one_line_error(run, "is a LoRA adapter", "--full")
    run = kinmerge_subprocess("merge", a, "zoo:add", "--method", "lora", "--out", tmp_path)
    assert_one_line_error(run, "zoo:add is not a LoRA adapter", "mergekit recipe")
    run = kinmerge_subprocess("merge", a, s, "--full", "--method", "lora", "--out", tmp_path)
    assert_one_line_error(run, "--full", "--method lora")
    run = kinmerge_subprocess("merge", a, s, "--method", "lora", "--combination", "linear", "--density", "0.5",
                              "--out", tmp_path)
    assert_one_line_error(run, "density applies to the pruning combinations")
    # an adapter whose base is not here: eval names base_model_name_or_path
    lost = Path(shutil.copytree(a, tmp_path / "lost"))
    cfg = json.loads((lost / "adapter_config.json").read_text())
    (lost / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(tmp_path / "nope")}))
    run = kinmerge_subprocess("eval", lost, "--tasks", "zoo:tasks", "--limit", "2")
    assert_one_line_error(run, "base_model_name_or_path")
    # a base of another size: merge names the tensor
    from tiny_models import random_state, save_model, tiny_config

    small = save_model(tmp_path / "small", random_state(0, tiny_config()), tiny_config())  # hidden 32, not 128
    run = kinmerge_subprocess("merge", a, s, "--base", small, "--out", tmp_path / "other")
    assert list(tmp_path.glob("other/*/adapter_config.json")) == []
    assert_one_line_error(run, "q_proj")


def test_adapter_content_id_covers_its_config(adapters, tmp_path):
    from kinmerge.sources import content_id

    copy = Path(shutil.copytree(adapters["add"], tmp_path / "add"))
    before = content_id(copy)
    cfg = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": 16}))
    assert content_id(copy) != before  # twice the scale: another model, another id
