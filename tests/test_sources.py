"""Model sources on real files: HF folders written by transformers, shards, the HF cache offline,
pickles behind a flag, and one-line errors for broken files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hub_cache import fake_hub_cache
from kinmerge.errors import CorruptFileError, PickleNotAllowedError, SourceError, UnsupportedDtypeError
from kinmerge.scan import scan
from kinmerge.sources import content_id, is_vocab_tensor, open_model, open_models, resolve_ref
from st_family import load_stored, make_family

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
    _base, (a,) = make_family(tmp_path, 1)
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
    with pytest.raises(CorruptFileError,
                       match="shard 'model-00001-of-00002.safetensors' listed in the index is missing"):
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
    torch.save({k: torch.from_numpy(v.astype(np.float32)) for k, v in load_stored(b).items()},
               pkl / "pytorch_model.bin")
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


def test_hub_ids_resolve_offline_from_the_hf_cache(tmp_path):
    base, (a, b) = make_family(tmp_path / "src", 2)
    cache = tmp_path / "hf_cache"
    commits = {"org/base": "a" * 40, "org/model-a": "b" * 40, "org/model-b": "c" * 40}
    for repo, folder in zip(commits, (base, a, b), strict=True):
        fake_hub_cache(cache, repo, folder, commits[repo])
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf_home"),
           "KINMERGE_CACHE": str(tmp_path / "kc")}
    local = _kinmerge("kinship", str(a), str(b), "--base", str(base), "--json", "--no-progress", env=env)
    hub = _kinmerge("kinship", "org/model-a", f"org/model-b@{'c' * 40}", "--base", "org/base", "--json",
                    "--no-progress", env=env)
    assert hub.returncode == 0, hub.stderr
    assert json.loads(hub.stdout)["kinship"] == json.loads(local.stdout)["kinship"]
    assert json.loads(hub.stdout)["models"] == ["org/model-a", f"org/model-b@{'c' * 40}"]
    missing = _kinmerge("kinship", "org/model-a", "org/not-cached", "--base", "org/base", env=env)
    assert missing.returncode == 2
    assert "org/not-cached: cannot fetch from the Hugging Face hub" in missing.stderr
    assert "HF_HUB_OFFLINE" in missing.stderr and "Traceback" not in missing.stderr


def test_content_id_is_stable_and_content_based(tmp_path):
    _base, (a, b) = make_family(tmp_path, 2)
    ida = content_id(a)
    assert ida == content_id(a) and len(ida) == 32
    assert ida != content_id(b)
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    assert content_id(copy) == ida


# -- one reference resolver ---------------------------------------------------------------------


def test_resolver_local_paths_absolute_relative_to_root_and_to_cwd(tmp_path, monkeypatch):
    _, (a,) = make_family(tmp_path / "zoo", 1)
    assert resolve_ref(a).path == a.resolve() and resolve_ref(a).hub_id is None
    assert resolve_ref(f"  {a}  ").path == a.resolve()  # stray spaces from a config or a shell
    r = resolve_ref("zoo/child0", root=tmp_path)
    assert r.path == a.resolve() and r.ref == str(a.resolve()) and r.given == "zoo/child0"
    monkeypatch.chdir(tmp_path)
    assert resolve_ref("zoo/child0").path == a.resolve()
    assert resolve_ref("./zoo/child0", want="folder").path == a.resolve()
    with pytest.raises(SourceError, match="a file, but a Hugging Face model folder"):
        resolve_ref("zoo/child0/model.safetensors", want="folder")
    assert resolve_ref("zoo/child0/model.safetensors").path == (a / "model.safetensors").resolve()
    with pytest.raises(SourceError, match="empty model reference"):
        resolve_ref("  ")


def test_resolver_hub_ids_offline_from_a_local_hf_cache(tmp_path, monkeypatch):
    _, (a,) = make_family(tmp_path / "src", 1)
    cache = tmp_path / "hf_cache"
    snap = fake_hub_cache(cache, "org/model-a", a, "b" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # no local folder "org" here
    r = resolve_ref("org/model-a")
    assert r.path == snap and r.hub_id == "org/model-a" and r.ref == "org/model-a" and r.repo_id == "org/model-a"
    pinned = resolve_ref(f"org/model-a@{'b' * 40}")
    assert pinned.path == snap and pinned.repo_id == "org/model-a"
    # not fetched: recognised only (what a run config keeps)
    assert resolve_ref("org/other", fetch=False).path is None
    # a local path inside a cache snapshot still came from the hub
    local = resolve_ref(snap)
    assert local.hub_id == "org/model-a" and local.ref == str(snap)
    with open_models(["org/model-a", snap]) as (hub, by_path):
        assert hub.display_name == "org/model-a" and hub.content_id() == content_id(a)
        assert by_path.hub_id == "org/model-a"
    with pytest.raises(SourceError, match=r"org/missing: cannot fetch .* HF_HUB_OFFLINE is set"):
        resolve_ref("org/missing")


def test_a_mistyped_path_is_no_such_folder_not_a_hub_error(tmp_path, monkeypatch):
    make_family(tmp_path / "zoo", 1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    want = r"no such file or folder .*zoo/chidl0 \(zoo/ is a local folder, so this is not read as a hub id\)"
    with pytest.raises(SourceError, match=want):
        resolve_ref("zoo/chidl0", root=tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=want):  # the scan's path: open_model
        open_model("zoo/chidl0")
    with pytest.raises(SourceError, match=r"no such file or folder zoo/chidl0/x\.safetensors"):
        open_model("zoo/chidl0/x.safetensors")
    from kinmerge.evolve.config import resolve_model_ref  # the run config's path, same rule

    with pytest.raises(ValueError, match=r"no such model folder .*zoo/chidl0 \(zoo/ is a local folder"):
        resolve_model_ref("zoo/chidl0", tmp_path)
    assert resolve_model_ref("org/model", tmp_path) == "org/model"
    assert resolve_model_ref("zoo/child0", tmp_path) == str((tmp_path / "zoo" / "child0").resolve())
    cli = _kinmerge("kinship", "zoo/chidl0", "zoo/child0", "--base", "zoo/base")  # run in tmp_path
    assert cli.returncode == 2 and cli.stderr.count("Error:") == 1
    assert "zoo/ is a local folder" in cli.stderr and "Hugging Face hub" not in cli.stderr


# -- one vocabulary-tensor rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shapes", "vocab", "want"),
    [
        ("model.embed_tokens.weight", [(64, 8), (66, 8)], [None, None], True),  # by name
        ("lm_head.weight", [(64, 8), (66, 8)], [64, 66], True),
        ("transformer.wte.weight", [(64, 8), (70, 8)], [64, 70], True),
        ("output.weight", [(64, 8), (66, 8)], [None, None], True),  # GGUF's head
        ("model.custom_table", [(64, 8), (66, 8)], [64, 66], True),  # rows = each vocab_size
        ("model.custom_table", [(64, 8), (66, 8)], [64, None], False),
        ("model.layers.0.mlp.up_proj.weight", [(64, 8), (66, 8)], [None, None], False),
        ("model.embed_tokens.weight", [(64, 8), (64, 9)], [64, 64], False),  # columns differ
        ("model.embed_tokens.weight", [(64, 8), (64, 8, 1)], [64, 64], False),
        ("model.norm.weight", [(), ()], [None, None], False),
    ],
)
def test_vocab_tensor_rule(name, shapes, vocab, want):
    assert is_vocab_tensor(name, shapes, vocab) is want


def _expected_id(files) -> str:
    """The content id computed independently from its definition (version tag, then each file)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    h.update(b"kinmerge-content-id/2\0")
    for f in sorted(files, key=lambda p: p.name):
        data = f.read_bytes()
        h.update(f.name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def test_content_id_covers_weights_config_and_tokenizer_and_its_cache_is_written_whole(tmp_path, offline):
    base, (a,) = make_family(tmp_path / "m", 1)
    (a / "config.json").write_text(json.dumps({"model_type": "llama", "rms_norm_eps": 1e-6}))
    (a / "tokenizer.json").write_text("{}")
    (a / "README.md").write_text("not behaviour: not hashed")
    want = _expected_id([a / "model.safetensors", a / "config.json", a / "tokenizer.json"])
    assert content_id(a) == want  # what is hashed is part of every stored id
    cache = offline  # the conftest fixture's KINMERGE_CACHE
    assert sorted(p.name for p in cache.iterdir()) == ["content_ids.json"]  # no temp file left
    assert want in [e["id"] for e in json.loads((cache / "content_ids.json").read_text()).values()]
    content_id(base)
    assert len(json.loads((cache / "content_ids.json").read_text())) == 2
    # a lone weights file is itself only
    assert content_id(a / "model.safetensors") == _expected_id([a / "model.safetensors"])


def test_a_changed_config_is_another_model(tmp_path):
    """Issue 8: a copy with ``rms_norm_eps: 10`` behaves differently, so it must not share an id."""
    _, (a,) = make_family(tmp_path / "m", 1)
    (a / "config.json").write_text(json.dumps({"model_type": "llama", "rms_norm_eps": 1e-6}))
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    assert content_id(copy) == content_id(a)  # a byte-identical copy is the same model
    (copy / "config.json").write_text(json.dumps({"model_type": "llama", "rms_norm_eps": 10.0}))
    assert content_id(copy) != content_id(a)
    (copy / "generation_config.json").write_text("{}")
    changed = content_id(copy)
    (copy / "generation_config.json").write_text('{"do_sample": true}')
    assert content_id(copy) != changed


def test_the_id_cache_is_not_fooled_by_a_reset_mtime(tmp_path):
    """Issue 8: replace the weights with another model's of the same size, put the mtime back."""
    _, (a, b) = make_family(tmp_path / "m", 2)
    weights = a / "model.safetensors"
    first = content_id(a)
    st = weights.stat()
    assert (b / "model.safetensors").stat().st_size == st.st_size
    shutil.copyfile(b / "model.safetensors", weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # what `touch -d` does
    assert content_id(a) == content_id(b) != first


def test_a_file_changed_behind_an_unchanged_stat_is_rehashed(tmp_path, offline):
    """A cache hit re-checks a sample of the bytes: an entry that no longer matches is not trusted."""
    _, (a, b) = make_family(tmp_path / "m", 2)
    true_a = content_id(a)
    cache_file = offline / "content_ids.json"
    ((key, entry),) = json.loads(cache_file.read_text()).items()
    # As if the bytes had changed under the same stat key: the stored sample no longer matches.
    cache_file.write_text(json.dumps({key: {"id": content_id(b), "sample": "0" * 32}}))
    assert content_id(a) == true_a
    assert json.loads(cache_file.read_text())[key] == entry  # and the entry is mended


def test_save_safetensors_writes_whole_files_with_ordinary_permissions(tmp_path):
    from kinmerge.sources import save_safetensors

    old = os.umask(0o022)
    try:
        f = save_safetensors(tmp_path / "x.safetensors", {"w": np.ones(3, np.float32)})
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]
    assert f.stat().st_mode & 0o777 == 0o644
    with pytest.raises(UnsupportedDtypeError, match="cannot write dtype int8"):
        save_safetensors(tmp_path / "x.safetensors", {"w": np.ones(3, np.int8)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]
    assert open_model(f).read("w").tolist() == [1.0, 1.0, 1.0]


def test_zoo_references_name_the_shipped_models(tmp_path, monkeypatch):
    """``zoo:add``, ``zoo:base``, ``zoo:tasks`` work from any folder; a wrong name lists the right ones."""
    from kinmerge.sources import resolve_ref, zoo_path

    monkeypatch.chdir(tmp_path)
    assert zoo_path("zoo:add").name == "add" and (zoo_path("zoo:add") / "config.json").is_file()
    assert resolve_ref("zoo:base").path == zoo_path("zoo:base").resolve()
    assert zoo_path("zoo:tasks").is_dir() and zoo_path("zoo:tiny/sort") == zoo_path("zoo:sort")
    with pytest.raises(SourceError, match=r"zoo:nope: the tiny zoo has no 'nope'; it has: add, base, "):
        zoo_path("zoo:nope")
    with pytest.raises(SourceError, match="no shipped zoo 'gone'"):
        zoo_path("zoo:gone/base")
    with open_model("zoo:add") as src:
        assert len(src.tensors) > 0
