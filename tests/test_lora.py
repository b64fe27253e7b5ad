"""LoRA adapters made with peft, through the CLI and the API: the same numbers as their merged models.

The fixture makes a tiny float64 Llama base and three adapters with peft's ``get_peft_model``
(factors set to random values of a realistic scale, then ``save_pretrained``), covering
``rank_pattern``/``alpha_pattern``, ``modules_to_save``, rsLoRA, ``layers_to_transform`` (layer 1
untouched) and an embedding LoRA; each is also merged with ``merge_and_unload`` and saved as a
full model. peft densifies, kinmerge reads the factors: the kinship must agree to 1e-9. The
index's sketches of adapters (one block of rows densified at a time) must equal the merged
models' sketches to float rounding, and index estimates must hold their bounds.
"""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli_checks import assert_one_line_error, kinmerge_subprocess
from hub_cache import fake_hub_cache
from kinmerge.cli import cli
from lora_files import adapter_config, write_adapter

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

ADAPTERS = {
    "attn": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"],
                 rank_pattern={"layers.1.self_attn.q_proj": 2}, alpha_pattern={"v_proj": 3}),
    "mlp": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["gate_proj", "up_proj", "down_proj", "q_proj"],
                layers_to_transform=[0]),
    "emb": dict(r=2, lora_alpha=4, target_modules=["embed_tokens", "k_proj"]),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    """``base``; ``attn``, ``mlp``, ``emb`` (adapters); ``attn_full``, ... (merged with peft)."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from tiny_models import random_state, save_model, tiny_config

    root = tmp_path_factory.mktemp("lora")
    config = tiny_config()
    base_state = {k: v.to(torch.float64) for k, v in random_state(7, config).items()}
    out = {"base": save_model(root / "base", base_state, tiny_config())}
    model = LlamaForCausalLM(config).to(torch.float64)
    model.load_state_dict(base_state)
    for k, (name, kwargs) in enumerate(ADAPTERS.items()):
        peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**kwargs))
        g = torch.Generator().manual_seed(100 + k)
        with torch.no_grad():
            for pname, prm in peft_model.named_parameters():
                if "lora_" in pname:  # a trained adapter's scale: B is no longer zero
                    prm.copy_(torch.randn(prm.shape, generator=g, dtype=prm.dtype) * 0.05)
                elif "modules_to_save" in pname:
                    prm.add_(torch.randn(prm.shape, generator=g, dtype=prm.dtype) * 0.01)
        peft_model.peft_config["default"].base_model_name_or_path = str(out["base"])
        peft_model.save_pretrained(root / name)
        merged = peft_model.merge_and_unload()
        out[name] = root / name
        out[f"{name}_full"] = save_model(root / f"{name}_full", dict(merged.state_dict()), tiny_config())
    return out


def _json(*args: object, has_progress: bool = True) -> dict:
    extra = ["--json", "--no-progress"] if has_progress else ["--json"]  # index matrix reads no model
    res = CliRunner().invoke(cli, [*map(str, args), *extra], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _same(got, want, rel: float = 1e-9) -> None:
    if isinstance(want, list):
        for g, w in zip(got, want, strict=True):
            _same(g, w, rel)
    elif want is None:
        assert got is None
    else:
        assert abs(got - want) <= rel * max(1.0, abs(want)), (got, want)


def test_adapter_config_is_what_peft_wrote(zoo):
    cfg = json.loads((zoo["attn"] / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["rank_pattern"] and cfg["modules_to_save"] == ["lm_head"]
    from kinmerge.sources.lora import LoraSource

    with LoraSource("attn", zoo["attn"]) as ad:
        assert ad.modules["model.layers.0.self_attn.v_proj.weight"].scale == 3 / 4  # alpha_pattern
        assert ad.modules["model.layers.1.self_attn.q_proj.weight"].scale == 8 / 2  # rank_pattern
        assert ad.modules["model.layers.0.self_attn.q_proj.weight"].scale == 8 / 4
        assert ad.modules["lm_head.weight"].dense_key is not None  # modules_to_save
    with LoraSource("mlp", zoo["mlp"]) as ad:
        assert ad.modules["model.layers.0.mlp.up_proj.weight"].scale == 16 / 8**0.5  # rsLoRA
        assert not any(".layers.1." in t for t in ad.modules)
    with LoraSource("emb", zoo["emb"]) as ad:
        assert ad.modules["model.embed_tokens.weight"].transposed


def test_kinship_of_two_adapters_equals_their_merged_models(zoo):
    # no --base: the adapters name it (base_model_name_or_path)
    got = _json("kinship", zoo["attn"], zoo["mlp"], "--metric", "pcc,cs,ed")
    want = _json("kinship", zoo["attn_full"], zoo["mlp_full"], "--base", zoo["base"], "--metric", "pcc,cs,ed")
    assert got["elements_compared"] == want["elements_compared"]
    for m in ("pcc", "cs", "ed"):
        _same(got["kinship"][m], want["kinship"][m])
    assert abs(got["kinship"]["pcc"]) > 1e-4  # not a trivial zero: lm_head and q_proj of layer 0 overlap
    # adapters only: the base's tensors are not read at all, except lm_head (a modules_to_save delta)
    assert got["bytes_read"] < want["bytes_read"] / 2


def test_matrix_of_adapters_and_full_models_equals_all_merged(zoo, tmp_path):
    twin = shutil.copytree(zoo["attn_full"], tmp_path / "attn_twin")
    mixed = _json("matrix", zoo["attn"], zoo["mlp_full"], zoo["emb"], zoo["attn_full"], zoo["mlp"],
                  "--base", zoo["base"], "--metric", "pcc,cs,ed")
    dense = _json("matrix", twin, zoo["mlp_full"], zoo["emb_full"], zoo["attn_full"],
                  shutil.copytree(zoo["mlp_full"], tmp_path / "mlp_twin"), "--base", zoo["base"],
                  "--metric", "pcc,cs,ed")
    for m in ("pcc", "cs", "ed"):
        _same(mixed["kinship"][m], dense["kinship"][m])
        _same(mixed["mean_pairwise"][m], dense["mean_pairwise"][m])
    assert mixed["kinship"]["pcc"][0][3] == pytest.approx(1.0, abs=1e-12)  # an adapter and its own merge


def test_api_and_suggest_accept_adapters(zoo):
    import kinmerge

    k = kinmerge.kinship(zoo["attn"], zoo["emb_full"])  # the base named by the adapter
    by_file = kinmerge.kinship(zoo["attn"] / "adapter_model.safetensors", zoo["emb_full"], base=zoo["base"])
    assert by_file.pcc == k.pcc  # the weights file named directly reads as its adapter folder
    want = _json("kinship", zoo["attn_full"], zoo["emb_full"], "--base", zoo["base"])
    _same(k.pcc, want["kinship"]["pcc"])
    m = kinmerge.matrix([zoo["attn"], zoo["mlp"], zoo["emb"]], base=zoo["base"])
    pair = _json("kinship", zoo["attn"], zoo["emb"], "--base", zoo["base"])
    assert m.matrix("pcc").shape == (3, 3)
    _same(float(m.matrix("pcc")[0, 2]), pair["kinship"]["pcc"])
    ranked = _json("suggest", zoo["attn"], zoo["mlp"], zoo["emb"])  # no --base: the adapters name it
    assert len(ranked["pairs"]) == 3


def test_per_layer_shows_what_an_adapter_leaves_untouched(zoo):
    data = _json("kinship", zoo["mlp"], zoo["attn"], "--per-layer", "--metric", "pcc,ed")
    layers = data["per_layer"]
    assert layers["layer 1"]["pcc"] is None  # mlp adapter: layers_to_transform=[0], a zero delta in layer 1
    assert layers["lm_head"]["pcc"] is None  # only the attn adapter saves lm_head
    assert layers["layer 0"]["pcc"] is not None and layers["layer 1"]["ed"] > 0
    assert layers["model.norm"]["ed"] == 0.0  # neither touches the norm: both deltas are zero


def test_matrix_reads_every_adapter_tensor_once(zoo):
    from kinmerge.scan_lora import scan_adapters
    from kinmerge.sources import open_models

    with open_models([zoo["base"], zoo["attn"], zoo["mlp_full"], zoo["emb"], zoo["mlp"]], adapters=True) as srcs:
        scan_adapters(srcs[0], srcs[1:], chunk=100)
        for src in srcs:
            assert src.stats.tensor_reads and max(src.stats.tensor_reads.values()) == 1, src.ref
        assert set(srcs[1].stats.tensor_reads) == set(srcs[1].tensors)  # every tensor of the adapter, once


def test_adapters_from_the_hub_offline(zoo, tmp_path):
    cache = tmp_path / "hf"
    fake_hub_cache(cache, "org/tiny-base", zoo["base"], "a" * 40)
    for k, name in enumerate(("attn", "mlp")):
        local = shutil.copytree(zoo[name], tmp_path / name)
        cfg = json.loads((local / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = "org/tiny-base"
        (local / "adapter_config.json").write_text(json.dumps(cfg))
        fake_hub_cache(cache, f"org/lora-{name}", local, str(k + 1) * 40)
    import os

    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        run = kinmerge_subprocess("kinship", "org/lora-attn", "org/lora-mlp", "--json", "--no-progress")
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    want = _json("kinship", zoo["attn"], zoo["mlp"])
    assert got["models"] == ["org/lora-attn", "org/lora-mlp"] and got["base"] == "org/tiny-base"
    for m in ("pcc", "cs", "ed"):
        _same(got["kinship"][m], want["kinship"][m])


# -- bad inputs: one Error line, exit 2 ------------------------------------------------------------
def _bad(*args: object):
    return CliRunner().invoke(cli, [*map(str, args), "--no-progress"])


def _q(hidden: int, r: int = 4, rb: int | None = None) -> dict:
    rng = np.random.default_rng(0)
    return {"model.layers.0.self_attn.q_proj": (rng.standard_normal((r, hidden)),
                                                rng.standard_normal((hidden, rb or r)))}


def test_rank_mismatch_between_a_and_b(zoo, tmp_path):
    bad = write_adapter(tmp_path / "bad", _q(32, r=4, rb=3), adapter_config(r=4))
    assert_one_line_error(_bad("kinship", bad, zoo["attn"], "--base", zoo["base"]), "lora_A has rank 4",
                          "lora_B has rank 3", "q_proj")


def test_config_rank_disagrees_with_the_factors(zoo, tmp_path):
    bad = write_adapter(tmp_path / "bad", _q(32, r=4), adapter_config(r=8))
    assert_one_line_error(_bad("kinship", bad, zoo["attn"], "--base", zoo["base"]), "r = 8", "rank 4")


def test_missing_base(zoo, tmp_path):
    gone = write_adapter(tmp_path / "gone", _q(32), adapter_config(base_model_name_or_path=str(tmp_path / "nobase")))
    assert_one_line_error(_bad("kinship", gone, zoo["attn"]), "nobase")
    unnamed = write_adapter(tmp_path / "unnamed", _q(32), adapter_config())
    unnamed2 = write_adapter(tmp_path / "unnamed2", _q(32), adapter_config())
    assert_one_line_error(_bad("kinship", unnamed, unnamed2), "--base")
    assert _bad("kinship", unnamed, zoo["emb"], "--json").exit_code == 0  # the one base named is taken
    assert_one_line_error(_bad("kinship", zoo["attn_full"], zoo["mlp_full"]), "no base given", "--base")


def test_truncated_adapter_file(zoo, tmp_path):
    cut = shutil.copytree(zoo["attn"], tmp_path / "cut")
    f = cut / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    assert_one_line_error(_bad("kinship", cut, zoo["mlp"]), "adapter_model.safetensors")


def test_adapter_for_another_architecture_or_size(zoo, tmp_path):
    rng = np.random.default_rng(1)
    gpt2 = write_adapter(tmp_path / "gpt2", {"transformer.h.0.attn.c_attn": (rng.standard_normal((4, 32)),
                                                                             rng.standard_normal((96, 4)))},
                         adapter_config(fan_in_fan_out=True, base_model_name_or_path="openai-community/gpt2"))
    assert_one_line_error(_bad("kinship", gpt2, zoo["attn"], "--base", zoo["base"]), "transformer.h.0.attn.c_attn",
                          "another architecture", "openai-community/gpt2")
    skipped = _json("kinship", gpt2, zoo["attn"], "--base", zoo["base"], "--allow-missing")
    assert skipped["kinship"]["pcc"] is None and "transformer.h.0.attn.c_attn.weight" in skipped["skipped_tensors"]
    assert any("the base lacks" in note for note in skipped["notes"])
    wide = write_adapter(tmp_path / "wide", _q(64), adapter_config())
    assert_one_line_error(_bad("matrix", zoo["attn"], wide, zoo["mlp_full"], "--base", zoo["base"]), "[64, 64]",
                          "[32, 32]", "another base")


@pytest.mark.parametrize("field,value,named", [("use_dora", True, "DoRA"), ("peft_type", "IA3", "IA3"),
                                               ("peft_type", "PROMPT_TUNING", "PROMPT_TUNING"),
                                               ("lora_bias", True, "lora_bias")])
def test_unsupported_kinds_refused_by_name(zoo, tmp_path, field, value, named):
    bad = write_adapter(tmp_path / "bad", _q(32), adapter_config(**{field: value}))
    assert_one_line_error(_bad("kinship", bad, zoo["attn"], "--base", zoo["base"]), named)


def test_adapter_as_base_and_where_adapters_are_not_read_yet(zoo, tmp_path):
    assert_one_line_error(_bad("kinship", zoo["attn_full"], zoo["mlp_full"], "--base", zoo["attn"]), "LoRA adapter")
    # a command that needs dense tensors refuses an adapter in one line, in a real process
    run = kinmerge_subprocess("matrix", zoo["attn"], zoo["mlp_full"], "--base", zoo["base"], "--ray")
    assert_one_line_error(run, "a PEFT LoRA adapter", "merge_and_unload")


# == the index: sketches of adapters (kinmerge.scan.adapter_sketches) ==========================


def _pool(base: Path, refs: list[Path], **kw):
    from kinmerge.scan.adapter_sketches import sketch_pool
    from kinmerge.scan.sketches import layer_group
    from kinmerge.sources import open_models

    with open_models([base, *refs], adapters=True) as (b, *ms):
        return sketch_pool(b, ms, size=4096, groups=layer_group, **kw)


def _close(got, want, scale: float) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * scale)


@pytest.mark.parametrize("chunk,threads", [(1 << 20, 1), (37, 2)])  # 37: chunks that end mid-row
def test_adapter_sketch_equals_its_merged_models(zoo, chunk, threads):
    names = ["attn", "mlp", "emb"]
    ads = _pool(zoo["base"], [zoo[n] for n in names], chunk=chunk, threads=threads)
    full = _pool(zoo["base"], [zoo[f"{n}_full"] for n in names], chunk=chunk, threads=threads)
    scale = float(np.abs(full.stats.gram).max()) ** 0.5
    _close(ads.stats.sums, full.stats.sums, scale)
    _close(ads.stats.gram, full.stats.gram, scale**2)
    assert ads.stats.n == full.stats.n
    for a, f in zip(ads.sketches, full.sketches, strict=True):
        assert a.coverage_id == f.coverage_id and a.n == f.n
        _close(a.values, f.values, scale)
        assert a.sumsq == pytest.approx(f.sumsq, rel=1e-9)
    assert ads.groups == full.groups
    for ga, gf in zip(ads.group_sketches, full.group_sketches, strict=True):
        for a, f in zip(ga, gf, strict=True):
            _close(a.values, f.values, scale)
            assert (a.n, a.sum) == pytest.approx((f.n, f.sum), rel=1e-9, abs=1e-12 * scale)
    assert any(np.abs(s.values).max() > 0 for s in ads.sketches)
    # a mixed pass: the adapters' cross terms with full models are the merged pool's
    mixed = _pool(zoo["base"], [zoo["attn"], zoo["mlp_full"], zoo["emb"]], chunk=chunk, threads=threads)
    _close(mixed.stats.gram, full.stats.gram, scale**2)
    for a, f in zip(mixed.sketches, full.sketches, strict=True):
        _close(a.values, f.values, scale)


def test_index_mixes_adapters_and_full_models(zoo, tmp_path):
    idx = tmp_path / "family.kmi"
    added = _json("index", "add", idx, zoo["attn"], zoo["mlp_full"], zoo["emb"], zoo["attn_full"],
                  "--base", zoo["base"])
    assert len(added["added"]) == 4
    exact = _json("matrix", zoo["attn"], zoo["mlp_full"], zoo["emb"], zoo["attn_full"], "--base", zoo["base"],
                  "--metric", "pcc,cs,ed")
    est = _json("index", "matrix", idx, "--metric", "pcc,cs,ed", has_progress=False)
    for m in ("pcc", "cs", "ed"):
        for i in range(4):
            for j in range(4):
                if i != j:
                    want, got, bound = exact["kinship"][m][i][j], est["kinship"][m][i][j], est["bound"][m][i][j]
                    assert abs(got - want) <= bound + 1e-12, (m, i, j, got, want, bound)
    assert est["kinship"]["pcc"][0][3] == pytest.approx(1.0, abs=1e-9)  # an adapter and its own merge
    # a query by an adapter not in the index is sketched once; --exact re-checks with the factor scan
    q = _json("index", "query", idx, zoo["mlp"], "--top", "0", "--exact")
    by_label = {n["label"]: n for n in q["neighbours"]}
    assert by_label["mlp_full"]["value"] == pytest.approx(1.0, abs=1e-9)
    for n in q["neighbours"]:
        assert abs(n["value"] - n["exact"]) <= n["bound"] + 1e-12, n
    # adding the adapter's merged twin's adapter again is a no-op (same content id)
    again = _json("index", "add", idx, zoo["attn"])
    assert again["added"] == [] and len(again["skipped"]) == 1


def test_sketch_memory_is_a_chunk_not_a_module(tmp_path):
    """One 2048 × 4096 module (64 MB as float64): the pass never forms it whole."""
    from kinmerge.scan.adapter_sketches import sketch_pool
    from kinmerge.sketch import Sketch
    from kinmerge.sources import open_models, save_safetensors

    rows, cols, r = 2048, 4096, 8
    rng = np.random.default_rng(3)
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    save_safetensors(base_dir / "model.safetensors", {"layers.0.proj.weight": w})
    (base_dir / "config.json").write_text("{}")
    a = (rng.standard_normal((r, cols)) * 0.05).astype(np.float32)
    b = (rng.standard_normal((rows, r)) * 0.05).astype(np.float32)
    ad = write_adapter(tmp_path / "ad", {"layers.0.proj": (a, b)}, adapter_config(r=r, lora_alpha=16))
    module_bytes = rows * cols * 8
    with open_models([base_dir, ad], adapters=True) as (bs, *ms):
        tracemalloc.start()
        res = sketch_pool(bs, ms, size=1 << 12, chunk=1 << 16, threads=1)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < module_bytes / 8, f"peak {peak / 1e6:.1f} MB for a {module_bytes / 1e6:.0f} MB module"
    want = Sketch.empty(1 << 12)
    want.add(2.0 * (b.astype(np.float64) @ a.astype(np.float64)), "layers.0.proj.weight")
    np.testing.assert_allclose(res.sketches[0].values, want.values, rtol=1e-9, atol=1e-9)
    assert res.sketches[0].sumsq == pytest.approx(want.sumsq, rel=1e-9)
