"""Real mergekit merges on tiny random Llamas (hidden 32, 2 layers, vocab 64): each a second or less."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mergekit")
torch = pytest.importorskip("torch")

from tiny_models import load_state, make_family, random_state, save_model, tiny_config  # noqa: E402

from kinmerge.errors import KinmergeError, MergeError  # noqa: E402
from kinmerge.merge import (  # noqa: E402
    RECIPES,
    DareTies,
    Linear,
    Raw,
    Slerp,
    TaskArithmetic,
    Ties,
    get_recipe,
    merge,
    merge_id,
)


@pytest.fixture(scope="module")
def fam(tmp_path_factory) -> dict[str, Path]:
    return make_family(tmp_path_factory.mktemp("family"), children=3)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# -- every method makes a loadable model -------------------------------------------------------


@pytest.mark.parametrize(
    "recipe",
    [Slerp(), Slerp(t=0.3), Linear(), TaskArithmetic(), Ties(), DareTies(seed=1)],
    ids=["slerp-paper", "slerp-const", "linear", "task_arithmetic", "ties", "dare_ties"],
)
def test_each_method_makes_a_model_that_loads(fam, tmp_path, recipe):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = merge([fam["child0"], fam["child1"]], recipe, tmp_path / "m", base=fam["base"])
    assert not res.reused and res.path == tmp_path / "m" / res.id
    model = AutoModelForCausalLM.from_pretrained(res.path)
    tok = AutoTokenizer.from_pretrained(res.path)
    assert model.dtype == torch.bfloat16  # the default dtype
    ids = tok("w1 w2 w3", return_tensors="pt")["input_ids"]
    assert ids.tolist() == [[5, 6, 7]]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 3, 64) and torch.isfinite(logits).all()
    assert (res.path / "tokenizer.json").read_bytes() == (fam["child0"] / "tokenizer.json").read_bytes()


# -- the numbers ---------------------------------------------------------------------------------


def test_slerp_t0_is_parent_a_and_t1_is_parent_b(fam, tmp_path):
    a, b = load_state(fam["child0"]), load_state(fam["child1"])
    r0 = merge([fam["child0"], fam["child1"]], Slerp(t=0, dtype="float32"), tmp_path)
    r1 = merge([fam["child0"], fam["child1"]], Slerp(t=1.0, dtype="float32"), tmp_path)
    assert _equal(load_state(r0.path), a)
    assert _equal(load_state(r1.path), b)


def test_slerp_default_follows_the_papers_layer_gradient(fam, tmp_path):
    # 2 layers: layer 0 takes the first gradient value, layer 1 the last.
    # self_attn [0 .. 1]: layer 0 = A, layer 1 = B; mlp [1 .. 0]: layer 0 = B, layer 1 = A.
    a, b = load_state(fam["child0"]), load_state(fam["child1"])
    out = load_state(merge([fam["child0"], fam["child1"]], Slerp(dtype="float32"), tmp_path).path)
    for name, t in out.items():
        if "layers.0.self_attn" in name or "layers.1.mlp" in name:
            assert torch.equal(t, a[name]), name
        elif "layers.1.self_attn" in name or "layers.0.mlp" in name:
            assert torch.equal(t, b[name]), name
        else:  # t = 0.5 elsewhere: strictly between the parents
            assert not torch.equal(t, a[name]) and not torch.equal(t, b[name]), name


def test_linear_half_half_is_the_average(fam, tmp_path):
    a, b = load_state(fam["child0"]), load_state(fam["child1"])
    out = load_state(merge([fam["child0"], fam["child1"]], Linear(weight=0.5, dtype="float32"), tmp_path).path)
    for name in a:
        torch.testing.assert_close(out[name], (a[name] + b[name]) / 2, rtol=0, atol=1e-6)


def test_linear_weights_per_parent(fam, tmp_path):
    a, b = load_state(fam["child0"]), load_state(fam["child1"])
    out = load_state(merge([fam["child0"], fam["child1"]], Linear(weight=(3, 1), dtype="float32"), tmp_path).path)
    for name in a:
        torch.testing.assert_close(out[name], 0.75 * a[name] + 0.25 * b[name], rtol=0, atol=1e-6)


def test_task_arithmetic_adds_weighted_deltas_to_the_base(fam, tmp_path):
    base, a, b = (load_state(fam[k]) for k in ("base", "child0", "child1"))
    rec = TaskArithmetic(weight=(1.0, 0.5), dtype="float32")
    out = load_state(merge([fam["child0"], fam["child1"]], rec, tmp_path, base=fam["base"]).path)
    for name in base:
        want = base[name] + 1.0 * (a[name] - base[name]) + 0.5 * (b[name] - base[name])
        torch.testing.assert_close(out[name], want, rtol=0, atol=1e-5)


def test_three_parent_ties(fam, tmp_path):
    res = merge([fam["child0"], fam["child1"], fam["child2"]], Ties(density=0.3, dtype="float32"),
                tmp_path, base=fam["base"])
    assert len(res.metadata["parents"]) == 3
    assert set(load_state(res.path)) == set(load_state(fam["base"]))


def test_dare_ties_is_reproducible_with_its_seed(fam, tmp_path):
    parents = [fam["child0"], fam["child1"]]
    r1 = merge(parents, DareTies(seed=7, dtype="float32"), tmp_path / "one", base=fam["base"])
    torch.manual_seed(12345)  # the caller's global seed must not matter
    r2 = merge(parents, DareTies(seed=7, dtype="float32"), tmp_path / "two", base=fam["base"])
    r3 = merge(parents, DareTies(seed=8, dtype="float32"), tmp_path / "one", base=fam["base"])
    assert r1.id == r2.id != r3.id
    assert _equal(load_state(r1.path), load_state(r2.path))
    assert not _equal(load_state(r1.path), load_state(r3.path))


# -- identity, idempotence, layout -----------------------------------------------------------------


def test_same_merge_twice_is_made_once(fam, tmp_path, monkeypatch):
    import kinmerge.merge as km

    parents = [fam["child0"], fam["child1"]]
    first = merge(parents, Slerp(), tmp_path)
    stamp = (first.path / "kinmerge.json").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("merged again")

    monkeypatch.setattr(km, "_run_mergekit", boom)
    second = merge([str(p) for p in parents], Slerp(), tmp_path)
    assert second.reused and second.id == first.id and second.path == first.path
    assert (first.path / "kinmerge.json").stat().st_mtime_ns == stamp
    assert second.metadata == first.metadata
    assert _entries(tmp_path) == sorted([first.id, "cache"])


def test_id_depends_on_recipe_parents_order_and_content(fam, tmp_path):
    a, b = fam["child0"], fam["child1"]
    ids = {
        merge([a, b], Slerp(), tmp_path).id,
        merge([a, b], Slerp(t=0.5), tmp_path).id,
        merge([b, a], Slerp(), tmp_path).id,
        merge([a, b], Slerp(dtype="float32"), tmp_path).id,
        merge([a, b], Linear(), tmp_path).id,
    }
    assert len(ids) == 5
    # A copy elsewhere has the same content, hence the same id.
    copy = tmp_path / "elsewhere" / "child0"
    shutil.copytree(a, copy)
    assert merge([copy, b], Slerp(), tmp_path).reused
    # Numbers are normalised: t=0 and t=0.0 are one recipe.
    assert Slerp(t=0).params() == Slerp(t=0.0).params()


def test_merge_id_counts_the_base_only_when_used():
    assert merge_id(["a", "b"], Slerp(), "base1") == merge_id(["a", "b"], Slerp(), "base2")
    assert merge_id(["a", "b"], Ties(), "base1") != merge_id(["a", "b"], Ties(), "base2")


def test_metadata_and_model_card(fam, tmp_path):
    import yaml

    kin = {"pcc": 0.4125, "cs": 0.41, "ed": 1.5}
    res = merge([fam["child0"], fam["child1"]], Ties(density=0.4), tmp_path, base=fam["base"], kinship=kin)
    meta = json.loads((res.path / "kinmerge.json").read_text())
    assert meta == res.metadata
    assert meta["id"] == res.id == res.path.name
    assert [p["path"] for p in meta["parents"]] == [str(fam["child0"].resolve()), str(fam["child1"].resolve())]
    assert all(len(p["content_id"]) == 32 for p in meta["parents"])
    assert meta["base"]["path"] == str(fam["base"].resolve())
    assert meta["recipe"] == {"method": "ties", "density": 0.4, "weight": 0.5, "dtype": "bfloat16"}
    assert meta["kinship"] == kin
    assert set(meta["versions"]) >= {"kinmerge", "mergekit", "transformers"}
    assert meta["versions"]["mergekit"] and meta["created"].endswith("+00:00")
    assert meta["mergekit_config"]["base_model"] == str(fam["base"].resolve())

    card = (res.path / "README.md").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front == {
        "base_model": [str(fam["child0"].resolve()), str(fam["child1"].resolve())],
        "base_model_relation": "merge",
        "tags": ["merge", "mergekit", "kinmerge"],
        "library_name": "transformers",
    }
    body = card.split("---\n", 2)[2]
    assert "ties" in body and "| pcc | 0.4125 |" in body and meta["parents"][1]["content_id"] in body
    config = yaml.safe_load((res.path / "mergekit_config.yml").read_text())
    assert config["merge_method"] == "ties"


def test_parent_paths_with_plus_and_at(fam, tmp_path):
    odd_a = tmp_path / "odd+lora@rev" / "a+b"
    odd_b = tmp_path / "user@host" / "model"
    shutil.copytree(fam["child0"], odd_a)
    shutil.copytree(fam["child1"], odd_b)
    res = merge([odd_a, odd_b], Slerp(t=0, dtype="float32"), tmp_path / "out")
    assert _equal(load_state(res.path), load_state(fam["child0"]))
    assert res.parents == [str(odd_a.resolve()), str(odd_b.resolve())]
    assert res.metadata["mergekit_config"]["base_model"] == str(odd_a.resolve())  # not the temp link


def test_stale_incomplete_folder_is_replaced(fam, tmp_path):
    rec = Slerp(t=0.25)
    mid = merge_id([merge([fam["child0"], fam["child1"]], rec, tmp_path / "x").metadata["parents"][i]["content_id"]
                    for i in range(2)], rec)
    stale = tmp_path / "m" / mid
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half a file")
    res = merge([fam["child0"], fam["child1"]], rec, tmp_path / "m")
    assert res.path == stale and not res.reused and (stale / "kinmerge.json").exists()


def test_import_is_light():
    code = "import sys, kinmerge.merge; print(sorted(m for m in ('torch', 'mergekit', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- errors leave nothing behind ------------------------------------------------------------------


def test_mismatched_shapes_fail_cleanly(fam, tmp_path):
    wide = save_model(tmp_path / "wide", random_state(3, tiny_config(hidden=48)), tiny_config(hidden=48))
    out = tmp_path / "out"
    with pytest.raises(MergeError, match=r"tensor .* is \[.*\] in .* but \[.*\]"):
        merge([fam["child0"], wide], Slerp(), out)
    assert _entries(out) == []


@pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")  # mergekit's import
def test_mergekit_failure_is_wrapped_and_leaves_no_temp_dir(fam, tmp_path, monkeypatch):
    import mergekit.merge

    def failing_run_merge(config, out_path, options, config_source=None):
        os.makedirs(out_path, exist_ok=True)
        Path(out_path, "model-00001.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(mergekit.merge, "run_merge", failing_run_merge)
    out = tmp_path / "out"
    with pytest.raises(MergeError, match=r"^mergekit failed: disk on fire second line$"):
        merge([fam["child0"], fam["child1"]], Slerp(), out)
    assert _entries(out) == []


def test_different_architectures_are_refused(fam, tmp_path):
    other = tmp_path / "mistral"
    shutil.copytree(fam["child1"], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(architectures=["MistralForCausalLM"], model_type="mistral")
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MergeError, match="MistralForCausalLM .*LlamaForCausalLM.*same base"):
        merge([fam["child0"], other], Slerp(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_same_model_twice_is_refused(fam, tmp_path):
    with pytest.raises(MergeError, match="given twice"):
        merge([fam["child0"], fam["child0"]], Slerp(), tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(fam["child0"], copy)
    with pytest.raises(MergeError, match="same weights as"):
        merge([fam["child0"], copy], Linear(), tmp_path)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f, o: merge([f["child0"], f["child1"]], Ties(), o), "ties needs the parents' shared base"),
        (lambda f, o: merge([f["child0"], f["child1"], f["child2"]], Slerp(), o), "slerp merges exactly 2"),
        (lambda f, o: merge([f["child0"]], Linear(), o), "linear merges at least 2"),
        (lambda f, o: merge([f["child0"], f["child1"], f["child2"]], Linear(weight=(1, 2)), o), "2 values for 3 parents"),
        (lambda f, o: merge([f["child0"], o / "nope"], Slerp(), o), "no such folder"),
    ],
)
def test_bad_requests(fam, tmp_path, call, message):
    with pytest.raises(KinmergeError, match=message):
        call(fam, tmp_path)
    assert [p for p in _entries(tmp_path) if p != "cache"] == []


def test_recipe_validation():
    with pytest.raises(MergeError, match="t=1.5"):
        Slerp(t=1.5)
    with pytest.raises(MergeError, match="dtype"):
        Linear(dtype="int8")
    with pytest.raises(MergeError, match="density=0"):
        Ties(density=0)
    with pytest.raises(MergeError, match="unknown merge method 'soup'"):
        get_recipe("soup")
    with pytest.raises(MergeError, match="slerp takes no parameter density"):
        get_recipe("slerp", density=0.5)
    assert get_recipe("dare_ties", seed=3, weight=None) == DareTies(seed=3)
    assert set(RECIPES) == {"slerp", "linear", "task_arithmetic", "ties", "dare_ties", "raw"}
    assert Slerp().to_yaml(["a", "b"]).count("filter:") == 2


# -- raw mergekit YAML --------------------------------------------------------------------------

RAW_LINEAR = """\
# a hand-written mergekit config
merge_method: linear
base_model: ${parent_a}
models:
  - model: ${parent_a}
    parameters: {weight: 0.5}
  - model: ${parent_b}
    parameters: {weight: 0.5}
dtype: float32
"""


def test_raw_yaml_with_placeholders(fam, tmp_path):
    raw_res = merge([fam["child0"], fam["child1"]], Raw(RAW_LINEAR), tmp_path)
    lin_res = merge([fam["child0"], fam["child1"]], Linear(dtype="float32"), tmp_path)
    assert raw_res.id != lin_res.id
    assert _equal(load_state(raw_res.path), load_state(lin_res.path))
    # Comments and layout do not change the id.
    assert merge([fam["child0"], fam["child1"]], Raw(RAW_LINEAR.replace("# a hand", "#  hand")), tmp_path).reused


def test_raw_yaml_errors(fam, tmp_path):
    with pytest.raises(MergeError, match="without gaps"):
        Raw(RAW_LINEAR.replace("${parent_b}", "${parent_c}"))
    with pytest.raises(MergeError, match="merge_method"):
        Raw("models: []")
    with pytest.raises(MergeError, match="uses 2 parent placeholders but 3"):
        merge([fam["child0"], fam["child1"], fam["child2"]], Raw(RAW_LINEAR), tmp_path)
    with pytest.raises(MergeError, match="uses \\$\\{base\\}"):
        merge([fam["child0"], fam["child1"]], Raw(RAW_LINEAR + "tokenizer_source: ${base}\n"), tmp_path)
    bad = Raw(RAW_LINEAR.replace("merge_method: linear", "merge_method: no_such_method"))
    with pytest.raises(MergeError, match="no_such_method"):
        merge([fam["child0"], fam["child1"]], bad, tmp_path / "out")
    assert _entries(tmp_path / "out") == []


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_merge_json(fam, tmp_path):
    from click.testing import CliRunner

    from kinmerge.cli import cli

    runner = CliRunner()
    args = ["merge", str(fam["child0"]), str(fam["child1"]), "--method", "linear", "--weight", "0.7,0.3",
            "--dtype", "float32", "--out", str(tmp_path / "m"), "--json"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["reused"] is False and data["recipe"]["weight"] == [0.7, 0.3]
    assert Path(data["path"]) == tmp_path / "m" / data["id"] and (Path(data["path"]) / "kinmerge.json").exists()
    again = json.loads(runner.invoke(cli, args).stdout)
    assert again["reused"] is True and again["id"] == data["id"]

    res = runner.invoke(cli, ["merge", str(fam["child0"]), str(fam["child1"]), "--t", "0.4",
                              "--out", str(tmp_path / "m"), "--name", "nice"])
    assert res.exit_code == 0, res.output
    assert "id: " in res.stdout and "path: " in res.stdout
    assert (tmp_path / "m" / "nice" / "kinmerge.json").exists()


def test_cli_errors_are_one_line(fam, tmp_path):
    from click.testing import CliRunner

    from kinmerge.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["merge", str(fam["child0"]), str(fam["child1"]), "--method", "ties",
                              "--out", str(tmp_path / "m")])
    assert res.exit_code == 2
    assert res.stderr.strip() == "Error: ties needs the parents' shared base model: pass base= (CLI: --base)"
    res = runner.invoke(cli, ["merge", str(fam["child0"]), str(fam["child1"]), "--density", "0.3",
                              "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "--density does not apply to --method slerp" in res.stderr
    raw = tmp_path / "raw.yaml"
    raw.write_text(RAW_LINEAR)
    res = runner.invoke(cli, ["merge", str(fam["child0"]), str(fam["child1"]), "--config", str(raw),
                              "--out", str(tmp_path / "m"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["recipe"]["method"] == "raw"
    assert "Example:" in runner.invoke(cli, ["merge", "--help"]).output
