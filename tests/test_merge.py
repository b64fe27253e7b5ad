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

from kinmerge._io import OWNER_MARKER  # noqa: E402
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
from tiny_models import load_state, make_family, random_state, save_model, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def fam(tmp_path_factory) -> dict[str, Path]:
    return make_family(tmp_path_factory.mktemp("family"), children=3)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _pair(fam: dict[str, Path], out: Path, **kw):
    return merge([fam["child0"], fam["child1"]], Slerp(), out, **kw)


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


@pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")  # mergekit's import
def test_same_merge_twice_is_made_once(fam, tmp_path, monkeypatch):
    import mergekit.merge

    parents = [fam["child0"], fam["child1"]]
    first = merge(parents, Slerp(), tmp_path)
    stamp = (first.path / "kinmerge.json").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("merged again")

    monkeypatch.setattr(mergekit.merge, "run_merge", boom)
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


def test_merge_ids_are_pinned():
    # Run stores and the demo name merges by these ids: the same inputs must keep the same id.
    a, b, base = "a" * 32, "b" * 32, "c" * 32
    assert merge_id([a, b], Slerp()) == "54884bdbefcf11f3"
    assert merge_id([a, b], Ties(density=0.3), base) == "fdc87fb5430d2c84"
    assert merge_id([a, b], DareTies(seed=7, weight=(1, 0.5))) == "f0897288c5200201"
    assert merge_id([a, b], Slerp(t=0.25, dtype="float32")) == "340df78e59da5d1e"


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

    assert meta["format"] == 2 and [p["hub_id"] for p in meta["parents"]] == [None, None]

    card = (res.path / "README.md").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front == {
        "base_model": ["child0", "child1"],  # folder names, never this machine's paths
        "base_model_relation": "merge",
        "tags": ["merge", "mergekit", "kinmerge"],
        "library_name": "transformers",
    }
    assert str(fam["base"].parent) not in card and str(tmp_path) not in card
    body = card.split("---\n", 2)[2]
    assert "ties" in body and "| PCC (Pearson correlation) | 0.4125 |" in body
    assert "| ED (Euclidean distance) | 1.5 |" in body
    assert meta["parents"][1]["content_id"] in body
    assert "| B | `child1` | local folder (not on the hub) |" in body and "not a hub id" in body
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
        (lambda f, o: merge([f["child0"], f["child1"], f["child2"]], Linear(weight=(1, 2)), o),
         "2 values for 3 parents"),
        (lambda f, o: merge([f["child0"], o / "nope"], Slerp(), o), "no such model folder"),
        (lambda f, o: merge([f["child0"], f["child1"] / "model.safetensors"], Slerp(), o),
         "a file, but a Hugging Face model folder"),
        (lambda f, o: _pair(f, o, kinship={"pcc": 1.5}), r"kinship pcc=1\.5 must be a number in \[-1, 1\]"),
        (lambda f, o: _pair(f, o, kinship={"ed": -0.1}), r"kinship ed=-0\.1 must be a number >= 0"),
        (lambda f, o: _pair(f, o, kinship={"cs": float("nan")}), "kinship cs=nan"),
        (lambda f, o: _pair(f, o, kinship={"pcc": "high"}), "kinship pcc='high'"),
        (lambda f, o: _pair(f, o, kinship={"kl": 0.1}), "unknown metric"),
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
    assert set(RECIPES) == {"slerp", "linear", "task_arithmetic", "ties", "dare_ties", "raw", "lora"}
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


# -- kinship of the parents: given (checked) or measured against the base -------------------------


def test_kinship_is_measured_against_the_base_when_not_given(fam, tmp_path):
    base, a, b = (load_state(fam[k]) for k in ("base", "child0", "child1"))
    da = torch.cat([(a[k].double() - base[k].double()).flatten() for k in base])
    db = torch.cat([(b[k].double() - base[k].double()).flatten() for k in base])
    res = merge([fam["child0"], fam["child1"]], Slerp(t=0.5), tmp_path, base=fam["base"])  # SLERP: base not in the id
    assert res.id == merge([fam["child0"], fam["child1"]], Slerp(t=0.5), tmp_path).id
    kin = res.metadata["kinship"]
    assert list(kin) == ["pcc", "cs", "ed"]
    assert kin["pcc"] == pytest.approx(float(torch.corrcoef(torch.stack([da, db]))[0, 1]), rel=1e-9)
    assert kin["cs"] == pytest.approx(float(torch.nn.functional.cosine_similarity(da, db, dim=0)), rel=1e-9)
    assert kin["ed"] == pytest.approx(float((da - db).norm()), rel=1e-9)
    assert f"| CS (cosine similarity) | {kin['cs']:.4g} |" in (res.path / "README.md").read_text()
    # a parent that is the base has no delta: nothing to compare, and nothing made up
    same = merge([fam["base"], fam["child1"]], TaskArithmetic(dtype="float32"), tmp_path, base=fam["base"])
    assert same.metadata["kinship"] is None
    assert "Not computed" in (same.path / "README.md").read_text()


# -- vocabularies that differ only in their rows ---------------------------------------------------


def _with_added_tokens(fam: dict[str, Path], folder: Path, *, tokenizer: bool = True) -> Path:
    """child1 fine-tuned with two added tokens: 66 embedding and head rows, and its tokenizer."""
    from tiny_models import tiny_tokenizer

    state = load_state(fam["child1"])
    g = torch.Generator().manual_seed(5)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        state[k] = torch.cat([state[k], 0.02 * torch.randn(2, state[k].shape[1], generator=g)])
    save_model(folder, state, tiny_config(vocab=66))
    tok = tiny_tokenizer()
    tok.add_tokens(["<tool>", "</tool>"])
    tok.save_pretrained(folder)
    if not tokenizer:
        for f in folder.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens")):
                f.unlink()
    return folder


def test_a_fine_tune_with_a_larger_vocabulary_compares_and_merges(fam, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kinmerge.scan import scan
    from kinmerge.sources import open_models

    big = _with_added_tokens(fam, tmp_path / "big")
    with open_models([fam["base"], fam["child0"], big]) as (base, a, b):
        result = scan(base, [a, b])  # kinship compares the 64 rows all three have
    assert any("vocabulary sizes differ" in n and "64 rows" in n for n in result.notes)

    small_first = merge([fam["child0"], big], Slerp(t=0, dtype="float32"), tmp_path / "m")
    assert _equal(load_state(small_first.path), load_state(fam["child0"]))  # t=0: parent A, A's vocabulary
    big_first = merge([big, fam["child0"]], Slerp(t=0, dtype="float32"), tmp_path / "m")
    assert _equal(load_state(big_first.path), load_state(big))
    assert len(AutoTokenizer.from_pretrained(big_first.path)) == 66
    assert AutoModelForCausalLM.from_pretrained(big_first.path).config.vocab_size == 66
    ties = merge([fam["child0"], big], Ties(dtype="float32"), tmp_path / "m", base=fam["base"])
    assert load_state(ties.path)["lm_head.weight"].shape == (64, 32)
    assert ties.metadata["kinship"]["pcc"] is not None

    bare = _with_added_tokens(fam, tmp_path / "bare", tokenizer=False)
    with pytest.raises(MergeError, match=r"vocabularies differ .* has no tokenizer to align"):
        merge([fam["child0"], bare], Slerp(), tmp_path / "n")
    assert _entries(tmp_path / "n") == []


# -- model cards that fit the hub -------------------------------------------------------------------


def _card(folder: Path):
    from huggingface_hub import ModelCard

    return ModelCard((folder / "README.md").read_text())  # parses and checks the front matter offline


def test_card_of_local_parents_is_valid_hub_metadata_and_takes_scores(fam, tmp_path):
    from huggingface_hub import ModelCardData

    from kinmerge.merge import write_card

    res = merge([fam["child0"], fam["child1"]], Slerp(), tmp_path, kinship={"pcc": 0.25, "cs": 0.3, "ed": 2.0})
    card = _card(res.path)
    assert isinstance(card.data, ModelCardData)
    assert card.data.base_model == ["child0", "child1"] and card.data.base_model_relation == "merge"
    assert card.data.eval_results is None
    assert str(fam["child0"]) not in card.content

    write_card(res.path, scores={"add": 0.75, "reverse": 0.5}, generation=3, run="kinship-s0")
    card = _card(res.path)
    assert card.data.model_name == res.id
    got = {(r.task_type, r.dataset_name, r.dataset_type, r.metric_type, r.metric_value) for r in card.data.eval_results}
    assert got == {("text-generation", "add", "add", "accuracy", 0.75),
                   ("text-generation", "reverse", "reverse", "accuracy", 0.5)}
    assert "Made in generation 3 of run `kinship-s0`." in card.text and "| **average** | 0.6250 |" in card.text
    assert json.loads((res.path / "kinmerge.json").read_text()) == res.metadata  # the lineage is untouched
    assert sorted(p.name for p in res.path.iterdir() if p.name.startswith(".")) == [OWNER_MARKER]  # no temp
    with pytest.raises(MergeError, match="score of task 'add' must be a finite number"):
        write_card(res.path, scores={"add": float("inf")})
    with pytest.raises(MergeError, match=r"no readable kinmerge\.json"):
        write_card(fam["child0"])


def test_card_names_hub_parents_and_what_a_merge_descends_from(fam, tmp_path, monkeypatch):
    from hub_cache import fake_hub_cache

    cache = tmp_path / "hf_cache"
    fake_hub_cache(cache, "org/model-a", fam["child0"], "a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # HF_HUB_OFFLINE=1 from the fixture
    monkeypatch.chdir(tmp_path)
    first = merge(["org/model-a", fam["child1"]], Slerp(), tmp_path / "m")
    assert first.metadata["parents"][0]["hub_id"] == "org/model-a"
    card = _card(first.path)
    assert card.data.base_model == ["org/model-a", "child1"]
    assert "| A | `org/model-a` | Hugging Face hub |" in card.text
    # a merge of a merge: base_model names what the merge parent descends from
    second = merge([first.path, fam["child2"]], Slerp(), tmp_path / "m")
    card = _card(second.path)
    assert card.data.base_model == ["org/model-a", "child1", "child2"]
    assert f"| A | `{first.id}` | kinmerge merge of `org/model-a`, `child1` |" in card.text
    assert second.metadata["parents"][0]["descends_from"] == ["org/model-a", "child1"]


# -- temp folders -----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")  # mergekit's import
def test_merges_build_in_a_temp_folder_the_runner_can_recognise(fam, tmp_path, monkeypatch):
    import mergekit.merge

    from kinmerge.merge import is_temp_merge_folder, remove_stale_temp

    seen: list[str] = []
    real = mergekit.merge.run_merge

    def spy(config, out_path, options, config_source=None):
        seen.append(out_path)
        return real(config, out_path, options)

    monkeypatch.setattr(mergekit.merge, "run_merge", spy)
    old = os.umask(0o022)
    try:
        res = merge([fam["child0"], fam["child1"]], Slerp(), tmp_path / "m")
    finally:
        os.umask(old)
    assert len(seen) == 1 and is_temp_merge_folder(seen[0]) and Path(seen[0]).parent == tmp_path / "m"
    assert not is_temp_merge_folder(res.path)
    assert {oct(p.stat().st_mode & 0o777) for p in res.path.iterdir()} == {"0o644"}  # ordinary files
    # a killed merge leaves its temp folder; the runner removes it on its next start
    stale = [tmp_path / "m" / ".0123456789abcdef.4242-0a1b2c3d.tmp", tmp_path / "m" / ".tmp-0123-ab"]
    for p in stale:
        p.mkdir()
    assert remove_stale_temp(tmp_path / "m") == sorted(stale)
    assert _entries(tmp_path / "m") == [res.id]


def test_a_merge_prints_no_deprecation_notice(fam, tmp_path):
    """transformers 5 warns about mergekit's ``config.torch_dtype``; our users must not see it
    (a fresh process: the warning is printed once per process)."""
    code = ("import sys; from kinmerge.merge import Slerp, merge; "
            "merge(sys.argv[1:3], Slerp(t=0.3), sys.argv[3])")
    out = subprocess.run([sys.executable, "-c", code, str(fam["child0"]), str(fam["child1"]), str(tmp_path)],
                         capture_output=True, text=True, check=True)
    assert "deprecated" not in out.stderr.lower(), out.stderr


def test_a_parent_with_another_config_is_another_merge(fam, tmp_path):
    """Issue 8: a merge id covers the parents' configs, so a changed config is never 'reused'."""
    first = merge([fam["child0"], fam["child1"]], Slerp(t=0.5), tmp_path / "m")
    copy = tmp_path / "copy"
    shutil.copytree(fam["child0"], copy)
    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 10.0
    (copy / "config.json").write_text(json.dumps(config))
    second = merge([copy, fam["child1"]], Slerp(t=0.5), tmp_path / "m")
    assert second.id != first.id and not second.reused
    assert json.loads((second.path / "config.json").read_text())["rms_norm_eps"] == 10.0


def test_a_merge_with_nan_is_refused_and_nothing_is_written(fam, tmp_path):
    """Issue 8: a NaN parent makes a NaN merge; it is refused like kinship refuses the parent."""
    state = load_state(fam["child1"])
    name = next(k for k in state if k.endswith("q_proj.weight"))
    state[name] = state[name].clone()
    state[name].view(-1)[7] = float("nan")
    nanny = save_model(tmp_path / "nanny", state, tiny_config())
    with pytest.raises(MergeError, match=rf"has NaN in tensor '{name}'.*nothing was written"):
        merge([fam["child0"], nanny], Linear(weight=0.5), tmp_path / "m")
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


@pytest.fixture
def small_disk(tmp_path):
    """A 32 KiB tmpfs: too small for a merge. Needs the rights to mount (root, as CI runs)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mnt)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_is_one_line_naming_the_folder(fam, small_disk):
    """Issue 8: disk full named the source file (or nothing), after mergekit's logged traceback."""
    out = small_disk / "merges"
    code = ("import sys; from kinmerge.cli import main; sys.argv = ['kinmerge', 'merge', *sys.argv[1:]]; main()")
    res = subprocess.run([sys.executable, "-c", code, str(fam["child0"]), str(fam["child1"]), "--out", str(out),
                          "--json"], capture_output=True, text=True)  # --json: no progress bars on stderr
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no space left on the device of ") and str(out) in lines[0]
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
