"""The 7B family generator (benchmarks/family7b.py), run at a tiny scale through its CLI: Llama-2
names, sharded safetensors with an index, readable by kinmerge and by the safetensors library,
deterministic, and with the designed kinship."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kinmerge.scan import scan
from kinmerge.sources import open_model, open_models

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "family7b.py"
sys.path.insert(0, str(SCRIPT.parent))
import family7b  # noqa: E402


def _generate(out: Path, *args: str) -> dict:
    run = subprocess.run([sys.executable, str(SCRIPT), str(out), "--scale", "tiny", *args],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    return json.loads((out / "family.json").read_text())


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fam") / "tiny"
    _generate(out, "--children", "4", "--shard-mb", "0.1", "--extra-vocab", "5")
    return out


def test_layout_names_and_shards(family):
    info = json.loads((family / "family.json").read_text())
    assert info["models"] == ["base", "child1", "child2", "child3", "child4"]
    cfg = family7b.SCALES["tiny"]
    want = [name for name, _ in family7b.tensor_list(cfg)]
    assert want[:3] == ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                        "model.layers.0.self_attn.k_proj.weight"] and want[-1] == "lm_head.weight"
    for name in info["models"]:
        folder = family / name
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        shards = sorted(folder.glob("model-*-of-*.safetensors"))
        assert len(shards) > 1 and set(index["weight_map"].values()) == {s.name for s in shards}
        assert sorted(index["weight_map"]) == sorted(want)
        assert index["metadata"]["total_size"] == sum(s.stat().st_size for s in shards) - sum(
            8 + int.from_bytes(s.read_bytes()[:8], "little") for s in shards)
        src = open_model(folder)
        assert set(src.tensors) == set(want) and len(src.files) == len(shards)
        assert all(t.dtype == "BF16" for t in src.tensors.values())
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "llama" and config["num_hidden_layers"] == cfg["num_hidden_layers"]
    big = open_model(family / "child4")
    assert big.tensors["lm_head.weight"].shape == (cfg["vocab_size"] + 5, cfg["hidden_size"])
    assert big.vocab_size == cfg["vocab_size"] + 5


def test_kinship_matches_the_design(family):
    info = json.loads((family / "family.json").read_text())
    with open_models([family / m for m in info["models"]]) as (base, *children):
        result = scan(base, children)
    assert any("vocabulary sizes differ" in note for note in result.notes)
    got = result.stats.matrix("pcc")
    assert np.abs(got - np.array(info["designed_pcc"])).max() < 0.02
    assert got[0, 1] > 0.98 and 0.5 < got[2, 3] < 0.65  # pairs: 0.99, 0.58 by design
    cs = result.stats.matrix("cs")
    assert np.abs(cs - got).max() > 1e-3  # the family direction's mean makes them differ


def test_the_safetensors_library_reads_the_shards(tmp_path):
    out = tmp_path / "f32"
    _generate(out, "--children", "1", "--dtype", "f32", "--shard-mb", "0.2")
    from safetensors import safe_open

    src = open_model(out / "child1")
    for shard in sorted((out / "child1").glob("*.safetensors")):
        with safe_open(shard, framework="numpy") as fh:
            for name in fh.keys():  # noqa: SIM118  (a safetensors handle, not a dict)
                assert np.array_equal(fh.get_tensor(name), src.read(name))


def test_bf16_matches_torch(family):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    src = open_model(family / "child2")
    shard = min((family / "child2").glob("*.safetensors"))
    for name, tensor in load_file(shard).items():
        assert tensor.dtype == torch.bfloat16
        bits = tensor.view(torch.int16).numpy().view(np.uint16).ravel()
        assert np.array_equal(bits, src.read(name).ravel())


def test_deterministic_for_a_seed(tmp_path, family):
    again = tmp_path / "again"
    _generate(again, "--children", "4", "--shard-mb", "0.1", "--extra-vocab", "5")
    other = tmp_path / "other"
    _generate(other, "--children", "1", "--seed", "1")

    def digest(folder: Path) -> str:
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.safetensors")))).hexdigest()

    for name in ("base", "child1", "child4"):
        assert digest(again / name) == digest(family / name)
    assert digest(other / "base") != digest(family / "base")


def test_help_states_disk_and_time():
    run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 0
    assert "40.4 GB" in run.stdout and "minutes" in run.stdout
