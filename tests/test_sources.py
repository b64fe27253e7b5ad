"""Model sources on real files: HF folders written by transformers, shards, the HF cache offline,
pickles behind a flag, and one-line errors for broken files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from st_family import load_stored, make_family

from kinmerge.errors import CorruptFileError, PickleNotAllowedError, SourceError
from kinmerge.scan import scan
from kinmerge.sources import content_id, open_model, open_models

torch = pytest.importorskip("torch")


def _kinmerge(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kinmerge.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_transformers_written_models_match_torch_reference(tmp_path):
    from tiny_models import make_family as hf_family

    fam = hf_family(tmp_path, children=2)
    with open_models([fam["base"], fam["child0"], fam["child1"]]) as srcs:
        assert srcs[0].config["model_type"] == "llama" and srcs[0].vocab_size == 64
        result = scan(srcs[0], srcs[1:])
    from safetensors.torch import load_file

    b, a, c = (load_file(str(fam[k] / "model.safetensors")) for k in ("base", "child0", "child1"))
    da = torch.cat([(a[k].double() - b[k].double()).flatten() for k in b])
    dc = torch.cat([(c[k].double() - b[k].double()).flatten() for k in b])
    want_cs = float(torch.nn.functional.cosine_similarity(da, dc, dim=0))
    want_pcc = float(torch.corrcoef(torch.stack([da, dc]))[0, 1])
    assert result.stats.value("cs", 0, 1) == pytest.approx(want_cs, rel=1e-9)
    assert result.stats.value("pcc", 0, 1) == pytest.approx(want_pcc, rel=1e-9)
    assert result.stats.value("ed", 0, 1) == pytest.approx(float((da - dc).norm()), rel=1e-9)


def test_truncated_file_is_a_one_line_error(tmp_path):
    base, (a,) = make_family(tmp_path, 1)
    f = a / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match=r"truncated — re-download it"):
        open_model(a)
    f.write_bytes(b"\x05\x00")
    with pytest.raises(CorruptFileError, match="too short"):
        open_model(a)
    f.write_bytes((20).to_bytes(8, "little") + b"{not json at all....")
    with pytest.raises(CorruptFileError, match="unreadable safetensors header"):
        open_model(a)


def test_missing_index_shard(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CorruptFileError, match="shard 'model-00001-of-00002.safetensors' listed in the index is missing"):
        open_model(folder)


def test_nothing_there(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        open_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no model.safetensors"):
        open_model(tmp_path / "empty")


def test_pickle_needs_allow_flag_and_loads_weights_only(tmp_path):
    base, (a, b) = make_family(tmp_path, 2, dtype="F32")
    pkl = tmp_path / "b_pickle"
    pkl.mkdir()
    shutil.copy(b / "config.json", pkl / "config.json")
    torch.save({k: torch.from_numpy(v.astype(np.float32)) for k, v in load_stored(b).items()}, pkl / "pytorch_model.bin")
    with pytest.raises(PickleNotAllowedError, match="--allow-pickle"):
        open_model(pkl)
    with open_models([base, a, b]) as srcs:
        want = scan(srcs[0], srcs[1:]).stats.value("pcc", 0, 1)
    base_s, a_s, p_s = open_model(base), open_model(a), open_model(pkl, allow_pickle=True)
    assert scan(base_s, [a_s, p_s]).stats.value("pcc", 0, 1) == pytest.approx(want, rel=1e-12)
    # a pickle that is not a plain state dict of tensors is refused by weights_only loading
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, pkl / "pytorch_model.bin")
    with pytest.raises(CorruptFileError, match="weights_only=True"):
        open_model(pkl, allow_pickle=True)


def _fake_hub_cache(cache: Path, repo: str, folder: Path, commit: str) -> None:
    """Lay out ``folder`` as huggingface_hub's cache would after a download of ``repo``."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copy(f, snap / f.name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_hub_ids_resolve_offline_from_the_hf_cache(tmp_path):
    base, (a, b) = make_family(tmp_path / "src", 2)
    cache = tmp_path / "hf_cache"
    commits = {"org/base": "a" * 40, "org/model-a": "b" * 40, "org/model-b": "c" * 40}
    for repo, folder in zip(commits, (base, a, b), strict=True):
        _fake_hub_cache(cache, repo, folder, commits[repo])
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf_home"),
           "KINMERGE_CACHE": str(tmp_path / "kc")}
    local = _kinmerge("kinship", str(a), str(b), "--base", str(base), "--json", "--no-progress", env=env)
    hub = _kinmerge("kinship", "org/model-a", f"org/model-b@{'c' * 40}", "--base", "org/base", "--json", "--no-progress", env=env)
    assert hub.returncode == 0, hub.stderr
    assert json.loads(hub.stdout)["kinship"] == json.loads(local.stdout)["kinship"]
    assert json.loads(hub.stdout)["models"] == ["org/model-a", f"org/model-b@{'c' * 40}"]
    missing = _kinmerge("kinship", "org/model-a", "org/not-cached", "--base", "org/base", env=env)
    assert missing.returncode == 2
    assert "org/not-cached: cannot fetch from the Hugging Face hub" in missing.stderr
    assert "HF_HUB_OFFLINE" in missing.stderr and "Traceback" not in missing.stderr


def test_content_id_is_stable_and_content_based(tmp_path):
    base, (a, b) = make_family(tmp_path, 2)
    ida = content_id(a)
    assert ida == content_id(a) and len(ida) == 32
    assert ida != content_id(b)
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    assert content_id(copy) == ida
