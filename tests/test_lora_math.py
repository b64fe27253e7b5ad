"""Kinship of LoRA adapters from their factors equals the densified float64 scan (to 1e-9 relative).

The identities of ``kinmerge.lowrank`` on generated shapes, ranks and scalings; then whole pools
of adapter folders (written as PEFT writes them) and full models, scanned by
``kinmerge.scan_lora``, against the statistics of the densified deltas.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinmerge.kinship import METRICS, KinshipStats
from kinmerge.lowrank import Factors, delta_sum, dense_inner, gram, inner, sq_norm
from kinmerge.scan_lora import scan_adapters
from kinmerge.sources import open_models, save_safetensors
from lora_files import adapter_config, write_adapter

REL = 1e-9


def _close(got: float, want: float, scale: float) -> bool:
    return abs(got - want) <= REL * max(abs(want), scale, 1e-300)


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), r1=st.integers(1, 8), r2=st.integers(1, 8),
       s1=st.floats(1e-3, 1e3), s2=st.floats(-1e3, 1e3), seed=st.integers(0, 2**31))
def test_lowrank_identities_equal_dense_products(rows, cols, r1, r2, s1, s2, seed):
    rng = np.random.default_rng(seed)
    f = Factors(rng.standard_normal((rows, r1)), rng.standard_normal((r1, cols)) * 0.01, s1)
    g = Factors(rng.standard_normal((rows, r2)) + 0.5, rng.standard_normal((r2, cols)), s2)
    fd, gd = f.dense(), g.dense()
    d = rng.standard_normal((rows, cols))
    scale_fg = math.sqrt(np.sum(fd**2) * np.sum(gd**2))
    assert _close(sq_norm(f), float(np.sum(fd**2)), 0.0)
    assert _close(inner(f, g), float(np.sum(fd * gd)), scale_fg)
    both = gram([f, g])  # all pairs at once, from the stacked factors
    assert _close(both[0, 1], float(np.sum(fd * gd)), scale_fg) and both[1, 0] == both[0, 1]
    assert _close(both[1, 1], float(np.sum(gd**2)), 0.0)
    assert _close(delta_sum(f), float(fd.sum()), math.sqrt(fd.size * np.sum(fd**2)))
    split = rows // 2  # streamed in two row blocks, as scan_lora does
    streamed = dense_inner(d[:split], f, 0) + dense_inner(d[split:], f, split)
    assert _close(streamed, float(np.sum(d * fd)), math.sqrt(np.sum(d**2) * np.sum(fd**2)))


@st.composite
def pools(draw):
    """A base of 2-d tensors and a norm vector; adapters (random modules, ranks, scalings, config
    fields) and full models; their densified deltas."""
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    n_mat = draw(st.integers(1, 3))
    shapes = {f"model.layers.{k}.proj.weight": (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
              for k in range(n_mat)}
    shapes["model.norm.weight"] = (draw(st.integers(1, 6)),)
    base = {k: rng.standard_normal(s) for k, s in shapes.items()}
    models = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()) or not models:
            dtype = draw(st.sampled_from([np.float64, np.float32]))
            cfg_r = draw(st.integers(1, 4))
            rslora, fan = draw(st.booleans()), draw(st.booleans())
            alpha = draw(st.floats(0.5, 64))
            cfg = adapter_config(r=cfg_r, lora_alpha=alpha, use_rslora=rslora, fan_in_fan_out=fan)
            factors, deltas, dense = {}, {}, {}
            for name, (rows, cols) in ((n, s) for n, s in shapes.items() if len(s) == 2):
                if not draw(st.booleans()):
                    continue  # untouched: a zero delta
                mod = name.removesuffix(".weight")
                r = draw(st.integers(1, 4))
                a_alpha = draw(st.one_of(st.none(), st.floats(0.5, 64)))
                if r != cfg_r:
                    cfg["rank_pattern"][mod.split(".", 1)[1]] = r  # a tail pattern: layers.K.proj
                if a_alpha is not None:
                    cfg["alpha_pattern"][mod] = a_alpha
                out, inn = (cols, rows) if fan else (rows, cols)
                a = (rng.standard_normal((r, inn)) * 0.1).astype(dtype)
                b = (rng.standard_normal((out, r)) * 0.1).astype(dtype)
                factors[mod] = (a, b)
                al = alpha if a_alpha is None else a_alpha
                s = al / math.sqrt(r) if rslora else al / r
                ba = s * (b.astype(np.float64) @ a.astype(np.float64))
                deltas[name] = ba.T if fan else ba
            if draw(st.booleans()):  # modules_to_save: the norm saved whole
                norm = "model.norm.weight"
                dense[norm] = base[norm] + rng.standard_normal(shapes[norm])
                deltas[norm] = dense[norm] - base[norm]
            models.append(("adapter", factors, dense, cfg, deltas))
        else:
            full = {k: v + rng.standard_normal(v.shape) * 0.1 for k, v in base.items()}
            models.append(("full", full, None, None, {k: full[k] - base[k] for k in base}))
    return base, models


def _reference(base: dict, models: list) -> tuple[KinshipStats, dict[str, KinshipStats]]:
    per = {}
    for name, arr in base.items():
        st_ = KinshipStats.empty(len(models))
        st_.add_deltas(np.stack([m[4].get(name, np.zeros(arr.shape)).ravel() for m in models]))
        per[name] = st_
    total = KinshipStats.empty(len(models))
    for s in per.values():
        total += s
    return total, per


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(pool=pools(), chunk=st.integers(1, 50))
def test_mixed_pool_equals_densified_scan(tmp_path_factory, pool, chunk):
    base, models = pool
    root = tmp_path_factory.mktemp("pool")
    save_safetensors(root / "base.safetensors", base)
    refs = []
    for k, (kind, tensors, dense, cfg, _) in enumerate(models):
        if kind == "adapter":
            refs.append(write_adapter(root / f"ad{k}", tensors, cfg, dense))
        else:
            refs.append(save_safetensors(root / f"full{k}.safetensors", tensors))
    want, want_per = _reference(base, models)
    with open_models([root / "base.safetensors", *refs], adapters=True) as (b, *ms):
        got = scan_adapters(b, ms, chunk=chunk)
    n = len(models)
    assert got.stats.n == want.n
    for i in range(n):
        norm_i = math.sqrt(want.gram[i, i])
        assert _close(got.stats.sums[i], want.sums[i], math.sqrt(want.n) * norm_i)
        for j in range(n):
            assert _close(got.stats.gram[i, j], want.gram[i, j], norm_i * math.sqrt(want.gram[j, j]))
        for j in range(n):
            for metric in METRICS:
                g, w = got.stats.value(metric, i, j), want.value(metric, i, j)
                assert (g is None) == (w is None) or min(want.gram[i, i], want.gram[j, j]) < 1e-20
                if g is not None and w is not None:
                    assert abs(g - w) <= 1e-9 * max(1.0, abs(w)), (metric, g, w)
    for name, st_ in want_per.items():
        assert np.allclose(got.per_tensor[name].gram, st_.gram, rtol=1e-9, atol=1e-12)


def test_embedding_lora_against_a_model_with_a_larger_vocabulary(tmp_path):
    # PEFT saves an embedding LoRA as lora_embedding_A (r x vocab) and _B (hidden x r): the delta is
    # (B·A)ᵀ. A full model with two added tokens is compared on the rows all models have.
    import json

    rng = np.random.default_rng(3)
    base = {"model.embed_tokens.weight": rng.standard_normal((6, 4)), "model.norm.weight": rng.standard_normal(4)}
    grown = {"model.embed_tokens.weight": np.vstack([base["model.embed_tokens.weight"] + 0.1 * rng.standard_normal(
        (6, 4)), rng.standard_normal((2, 4))]), "model.norm.weight": base["model.norm.weight"] + 0.1}
    a, b = rng.standard_normal((2, 6)), rng.standard_normal((4, 2))
    ad = tmp_path / "ad"
    ad.mkdir()
    save_safetensors(ad / "adapter_model.safetensors", {
        "base_model.model.model.embed_tokens.lora_embedding_A": a,
        "base_model.model.model.embed_tokens.lora_embedding_B": b})
    (ad / "adapter_config.json").write_text(json.dumps(adapter_config(r=2, lora_alpha=3)))
    save_safetensors(tmp_path / "base.safetensors", base)
    save_safetensors(tmp_path / "grown.safetensors", grown)
    with open_models([tmp_path / "base.safetensors", ad, tmp_path / "grown.safetensors"], adapters=True) as (bs, *ms):
        got = scan_adapters(bs, ms, chunk=5)
    d_ad = np.concatenate([(1.5 * (b @ a)).T.ravel(), np.zeros(4)])
    d_full = np.concatenate([(grown["model.embed_tokens.weight"][:6] - base["model.embed_tokens.weight"]).ravel(),
                             np.full(4, 0.1)])
    want = KinshipStats.empty(2)
    want.add_deltas(np.stack([d_ad, d_full]))
    assert got.stats.n == want.n == 28 and any("vocabulary sizes differ" in n for n in got.notes)
    assert np.allclose(got.stats.gram, want.gram, rtol=1e-12) and np.allclose(got.stats.sums, want.sums, rtol=1e-12)


def test_nonfinite_factor_is_one_line(tmp_path):
    from click.testing import CliRunner

    from cli_checks import assert_one_line_error
    from kinmerge.cli import cli

    base = {"model.layers.0.q.weight": np.ones((3, 3))}
    save_safetensors(tmp_path / "base.safetensors", base)
    bad_a = np.ones((1, 3))
    bad_a[0, 1] = np.nan
    bad = write_adapter(tmp_path / "bad", {"model.layers.0.q": (bad_a, np.ones((3, 1)))}, adapter_config(r=1))
    good = write_adapter(tmp_path / "good", {"model.layers.0.q": (np.ones((1, 3)), np.ones((3, 1)))},
                         adapter_config(r=1))
    res = CliRunner().invoke(cli, ["kinship", str(bad), str(good), "--base", str(tmp_path / "base.safetensors"),
                                   "--no-progress"])
    assert_one_line_error(res, "bad", "model.layers.0.q.weight", "NaN or Inf")
