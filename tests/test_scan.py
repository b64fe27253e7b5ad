"""One pass over real safetensors files: exact values, one read per file, and every kind of mismatch."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from kinmerge.errors import (
    DuplicateModelError,
    MissingTensorError,
    NonFiniteError,
    ShapeMismatchError,
    UnsupportedDtypeError,
)
from kinmerge.kinship import reference_kinship
from kinmerge.scan import layer_of, scan
from kinmerge.sources import open_model, open_models, save_safetensors
from st_family import LLAMA_SHAPES, flat_delta, load_stored, make_family, write_model


def _scan(base, models, **kw):
    with open_models([base, *models]) as srcs:
        return scan(srcs[0], srcs[1:], **kw), srcs


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64"])
@pytest.mark.parametrize("chunk", [7, 100, 1 << 20])
def test_matrix_equals_reference_on_files(tmp_path, dtype, chunk):
    base, kids = make_family(tmp_path, 4, dtype=dtype)
    result, _ = _scan(base, kids, chunk=chunk)
    deltas = [flat_delta(k, base) for k in kids]
    for i in range(4):
        for j in range(4):
            if i != j:
                for metric in ("pcc", "cs", "ed"):
                    want = reference_kinship(deltas[i], deltas[j], np.zeros_like(deltas[i]), metric)
                    assert result.stats.value(metric, i, j) == pytest.approx(want, rel=1e-6)
    # the family is built so kinship differs by pair
    assert result.stats.value("pcc", 2, 3) > result.stats.value("pcc", 0, 1) + 0.05


def test_each_file_read_once(tmp_path):
    base, kids = make_family(tmp_path, 6)
    result, srcs = _scan(base, kids, chunk=64)
    for src in srcs:
        assert set(src.stats.tensor_reads) == set(LLAMA_SHAPES)
        assert all(count == 1 for count in src.stats.tensor_reads.values())
        assert src.stats.bytes_read == sum(t.nbytes for t in src.tensors.values())
    assert result.bytes_read == sum(s.stats.bytes_read for s in srcs)


def test_sharded_model_equals_single_file(tmp_path):
    base, (a, b) = make_family(tmp_path, 2, dtype="F32")
    tensors = {k: v.astype(np.float32) for k, v in load_stored(b).items()}
    shard_dir = tmp_path / "b_sharded"
    shard_dir.mkdir()
    names = list(tensors)
    weight_map = {}
    for i, part in enumerate((names[:4], names[4:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_safetensors(shard_dir / fname, {k: tensors[k] for k in part})
        weight_map.update({k: fname for k in part})
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    single, _ = _scan(base, [a, b])
    sharded, _ = _scan(base, [a, shard_dir])
    assert sharded.stats.value("pcc", 0, 1) == pytest.approx(single.stats.value("pcc", 0, 1), rel=1e-12)


def test_vocab_mismatch_compares_common_rows_and_says_so(tmp_path):
    base, (a,) = make_family(tmp_path, 1, dtype="F32")
    b_vals = load_stored(a)
    vocab = ("model.embed_tokens.weight", "lm_head.weight")
    extra = {k: (np.concatenate([v, np.ones((3, v.shape[1]))]) if k in vocab else v)
             for k, v in b_vals.items()}
    b = write_model(tmp_path / "bigvocab", {k: v + 0.01 for k, v in extra.items()}, "F32", vocab=53)
    result, _ = _scan(base, [a, b])
    assert any("vocabulary sizes differ" in n and "50 rows" in n for n in result.notes)
    trimmed = {k: v + 0.01 for k, v in b_vals.items()}
    want = write_model(tmp_path / "trimmed", trimmed, "F32")
    ref, _ = _scan(base, [a, want])
    assert result.stats.value("pcc", 0, 1) == pytest.approx(ref.stats.value("pcc", 0, 1), rel=1e-12)
    # a smaller vocabulary than the base's works too (the reference tool crashed here)
    small = {k: (v[:45] if k in ("model.embed_tokens.weight", "lm_head.weight") else v) for k, v in b_vals.items()}
    c = write_model(tmp_path / "smallvocab", small, "F32", vocab=45)
    result, _ = _scan(base, [a, c])
    assert any("45 rows" in n for n in result.notes)


def test_missing_tensor_is_an_error_listing_it_or_skipped_on_request(tmp_path):
    base, (a, b) = make_family(tmp_path, 2, dtype="F32")
    vals = load_stored(b)
    del vals["model.layers.1.mlp.up_proj.weight"]
    c = write_model(tmp_path / "lacking", vals, "F32")
    with pytest.raises(MissingTensorError,
                       match=r"lacking lacks 1 tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
        _scan(base, [a, c])
    result, _ = _scan(base, [a, c], allow_missing=True)
    assert result.skipped == ["model.layers.1.mlp.up_proj.weight"]
    assert any("skipped 1 tensor" in n for n in result.notes)
    names = [n for n in LLAMA_SHAPES if n != "model.layers.1.mlp.up_proj.weight"]
    want = reference_kinship(flat_delta(a, base, names), flat_delta(c, base, names), 0.0, "pcc")
    assert result.stats.value("pcc", 0, 1) == pytest.approx(want, rel=1e-9)


def test_shape_mismatch_names_model_and_tensor(tmp_path):
    base, (a,) = make_family(tmp_path, 1, dtype="F32")
    vals = load_stored(a)
    vals["model.layers.0.mlp.up_proj.weight"] = np.zeros((32, 8))
    c = write_model(tmp_path / "odd", vals, "F32")
    want = r"odd: tensor 'model\.layers\.0\.mlp\.up_proj\.weight' has shape \[32, 8\] but the base has \[32, 16\]"
    with pytest.raises(ShapeMismatchError, match=want):
        _scan(base, [a, c])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_names_model_and_tensor(tmp_path, bad):
    base, (a,) = make_family(tmp_path, 1, dtype="F32")
    vals = load_stored(a)
    vals["model.layers.1.self_attn.q_proj.weight"][3, 4] = bad
    c = write_model(tmp_path / "broken", vals, "F32")
    kind = "NaN" if np.isnan(bad) else "Inf"
    with pytest.raises(NonFiniteError,
                       match=rf"broken: tensor 'model\.layers\.1\.self_attn\.q_proj\.weight' contains {kind}"):
        _scan(base, [a, c])


def test_nan_in_base_blames_the_base(tmp_path):
    base, (a, b) = make_family(tmp_path, 2, dtype="F32")
    vals = load_stored(base)
    vals["model.norm.weight"][0] = np.nan
    bad_base = write_model(tmp_path / "badbase", vals, "F32")
    with pytest.raises(NonFiniteError, match=r"the base: tensor 'model\.norm\.weight' contains NaN"):
        _scan(bad_base, [a, b])


def test_zero_delta_reported_undefined(tmp_path):
    base, (a,) = make_family(tmp_path, 1, dtype="F32")
    same = write_model(tmp_path / "copy_of_base", load_stored(base), "F32")
    result, _ = _scan(base, [a, same])
    assert result.stats.value("pcc", 0, 1) is None
    assert "identical to the base" in result.stats.why_undefined("cs", 0, 1)
    assert result.stats.value("ed", 0, 1) > 0


def test_same_model_twice_or_base_as_model_refused(tmp_path):
    base, (a,) = make_family(tmp_path, 1)
    with pytest.raises(DuplicateModelError, match="same model"):
        _scan(base, [a, a])
    with pytest.raises(DuplicateModelError, match="the base"):
        _scan(base, [a, base])


def test_unsupported_dtype_is_refused_naming_tensor(tmp_path):
    base, (a,) = make_family(tmp_path, 1, dtype="F32")
    vals = {k: v.astype(np.float32) for k, v in load_stored(a).items()}
    folder = tmp_path / "int32"
    folder.mkdir()
    path = save_safetensors(folder / "model.safetensors", vals)
    # rewrite one tensor's dtype in the header to I8 with a matching byte size
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["model.norm.weight"]["dtype"] = "I32"
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (n - len(blob))
    assert len(blob) == n
    data[8 : 8 + n] = blob
    path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedDtypeError, match=r"int32: tensor 'model\.norm\.weight' has dtype I32"):
        _scan(base, [a, folder])


def test_per_layer_breakdown_sums_to_global(tmp_path):
    base, kids = make_family(tmp_path, 2)
    result, _ = _scan(base, kids)
    layers = result.per_layer()
    assert list(layers)[:1] == ["model.embed_tokens"]
    assert {"layer 0", "layer 1", "model.norm", "lm_head"} <= set(layers)
    assert sum(s.n for s in layers.values()) == result.stats.n
    total = sum((s for s in layers.values()), start=type(result.stats).empty(2))
    np.testing.assert_allclose(total.gram, result.stats.gram, rtol=1e-12)
    assert layer_of("model.layers.12.mlp.up_proj.weight") == "layer 12"
    assert layer_of("transformer.h.3.attn.c_attn.weight") == "layer 3"


def test_backends_agree(tmp_path):
    from kinmerge import _kernels

    base, kids = make_family(tmp_path, 3)
    ref, _ = _scan(base, kids, backend="numpy")
    assert _kernels.have_c(), "the C kernel is not built here (pip install -e . with a C compiler)"
    got, _ = _scan(base, kids, backend="c")
    np.testing.assert_allclose(got.stats.gram, ref.stats.gram, rtol=1e-10)
    np.testing.assert_allclose(got.stats.sums, ref.stats.sums, rtol=1e-10)


@pytest.mark.parametrize("dtype", ["BF16", "F32"])
def test_bit_identical_whatever_the_threads(tmp_path, dtype):
    """Chunks are reduced in chunk order: thread count and timing never change a bit."""
    base, kids = make_family(tmp_path, 5, dtype=dtype)
    runs = [_scan(base, kids, chunk=37, threads=t)[0] for t in (1, 2, 3, 8, 2)]
    for r in runs[1:]:
        assert r.stats.n == runs[0].stats.n
        assert np.array_equal(r.stats.sums, runs[0].stats.sums)
        assert np.array_equal(r.stats.gram, runs[0].stats.gram)
        for name, st in r.per_tensor.items():
            assert np.array_equal(st.gram, runs[0].per_tensor[name].gram)


def test_threads_from_environment(tmp_path, monkeypatch):
    import threading

    from kinmerge import _kernels
    from kinmerge.scan import n_threads

    monkeypatch.setenv("KINMERGE_THREADS", "3")
    assert n_threads() == 3
    base, kids = make_family(tmp_path, 2)
    seen = set()
    real = _kernels.accumulate

    def spy(*a, **kw):
        seen.add(threading.current_thread().name)
        time.sleep(0.002)  # long enough that every worker gets a chunk
        return real(*a, **kw)

    monkeypatch.setattr(_kernels, "accumulate", spy)
    _scan(base, kids, chunk=16)
    assert len(seen) == 3 and all(name.startswith("kinmerge-scan-") for name in seen)


def test_progress_reports_every_byte(tmp_path):
    base, kids = make_family(tmp_path, 3)
    got = []
    result, srcs = _scan(base, kids, chunk=50, progress=got.append)
    assert sum(got) == result.bytes_read == sum(s.stats.bytes_read for s in srcs)
    assert len(got) == sum(-(-t.numel // 50) for t in srcs[0].tensors.values())


def test_read_error_in_a_worker_is_raised_and_workers_stop(tmp_path, monkeypatch):
    import threading

    from kinmerge.errors import CorruptFileError

    base, kids = make_family(tmp_path, 2)
    before = threading.active_count()
    with open_models([base, *kids]) as srcs:
        real = srcs[2].read_range
        calls = [0]

        def failing(name, start, stop, out=None):
            calls[0] += 1
            if calls[0] == 5:
                raise CorruptFileError("boom: cut short")
            return real(name, start, stop, out)

        monkeypatch.setattr(srcs[2], "read_range", failing)
        with pytest.raises(CorruptFileError, match="boom"):
            scan(srcs[0], srcs[1:], chunk=8, threads=3)
    assert threading.active_count() == before


def test_sources_without_concurrent_reads_are_serialised(tmp_path):
    """A source that is not thread-safe (like GGUF's one-tensor cache) is read under a lock."""
    import threading
    import time

    base, kids = make_family(tmp_path, 2)
    with open_models([base, *kids]) as srcs:
        inside = [0]
        worst = [0]
        lock = threading.Lock()
        real = srcs[1].read_range

        def slow(name, start, stop, out=None):
            with lock:
                inside[0] += 1
                worst[0] = max(worst[0], inside[0])
            time.sleep(0.001)
            try:
                return real(name, start, stop, out)
            finally:
                with lock:
                    inside[0] -= 1

        srcs[1].read_range = slow
        srcs[1].concurrent_reads = False
        serial = scan(srcs[0], srcs[1:], chunk=16, threads=4)
        assert worst[0] == 1
    ref, _ = _scan(base, kids, chunk=16, threads=1)
    assert np.array_equal(serial.stats.gram, ref.stats.gram)


def test_open_model_single_file(tmp_path):
    base, (a, b) = make_family(tmp_path, 2)
    r1, _ = _scan(base / "model.safetensors", [a / "model.safetensors", b / "model.safetensors"])
    r2, _ = _scan(base, [a, b])
    assert r1.stats.value("pcc", 0, 1) == r2.stats.value("pcc", 0, 1)
    assert open_model(a / "model.safetensors").display_name == "model"
