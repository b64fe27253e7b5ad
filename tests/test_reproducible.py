"""The same config and seed give the same pool on any x86 CPU, thread count and executor (issue 18).

What varied: a SLERP merge's bytes followed torch's thread count (whole-tensor sums split per
thread), and the evaluator's log-likelihoods followed the CPU's vector width (torch's softmax and
fused attention use a fast exponential that differs between AVX2 and AVX-512). Each run below is
compared on everything it stores: the pool, every merged file's bytes, every score and its
details, every kinship value, every plan and the stop.

The CPU capability is read once when torch is imported, so runs that vary it are subprocesses
with ``ATEN_CPU_CAPABILITY`` set; on a CPU without AVX-512 the "default" runs are AVX2 too and
the comparison is weaker, not wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("mergekit")
pytest.importorskip("pydantic")

import yaml

# The run benchmarks/repro_bench.py times (three shipped specialists, the kinship strategy over 3
# SLERP generations: every top-k, exploration partner and stop depends on the scores and kinship
# of the merges before it), on 8 examples per task to keep the test short.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
try:
    from repro_bench import CONFIG as BENCH_CONFIG
finally:
    sys.path.pop(0)

CONFIG: dict[str, Any] = {**BENCH_CONFIG, "evaluator": {**BENCH_CONFIG["evaluator"], "limit": 8}}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def _evolve_in_subprocess(root: Path, **env: str) -> Path:
    """``kinmerge evolve`` in a fresh process with ``env`` (its torch reads the CPU capability)."""
    root.mkdir(parents=True)
    cfg = root / "run.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    run_dir = root / "run"
    done = subprocess.run([sys.executable, "-m", "kinmerge.cli", "evolve", str(cfg), "--run-dir", str(run_dir)],
                          env=_env(**env), cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return run_dir


def _everything(run_dir: Path) -> dict[str, Any]:
    """What a run stored, without times and paths: pool, bytes, scores, kinship, plans, stop."""
    db = sqlite3.connect(run_dir / "kinmerge.db")
    try:
        def rows(sql: str) -> list[tuple[Any, ...]]:
            return sorted(tuple(r) for r in db.execute(sql))

        out = {
            "pool": rows("SELECT model_id, generation FROM pool"),
            "parents": rows("SELECT * FROM parents"),
            "scores": rows("SELECT model_id, evaluator, task, score, details FROM evaluations"),
            "kinship": rows("SELECT model_a, model_b, metric, scope, value FROM kinship"),
            "plans": rows("SELECT generation, plan, stop, status FROM plans"),
            "runs": rows("SELECT status FROM runs"),
        }
    finally:
        db.close()
    out["bytes"] = {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()
                    for p in sorted((run_dir / "models").glob("*/model.safetensors"))}
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The run on this machine's own CPU capability and torch's default thread count."""
    run_dir = _evolve_in_subprocess(tmp_path_factory.mktemp("repro") / "default")
    return _everything(run_dir)


@pytest.mark.slow
def test_avx2_and_one_thread_give_the_same_pool(reference, tmp_path):
    run_dir = _evolve_in_subprocess(tmp_path / "avx2", ATEN_CPU_CAPABILITY="avx2", OMP_NUM_THREADS="1")
    got = _everything(run_dir)
    assert len(got["pool"]) > 3 + 3 and len(got["bytes"]) == len(got["pool"]) - 3  # three generations of merges
    assert got == reference


@pytest.mark.slow
def test_ray_executor_gives_the_local_pool(reference, ray_cluster, tmp_path):
    """Ray workers run with one OpenMP thread each, on three nodes; the local reference used the
    machine's cores."""
    from kinmerge.evolve import evolve

    cfg = tmp_path / "ray.yaml"
    cfg.write_text(yaml.safe_dump({**CONFIG, "executor": {"name": "ray"}}, sort_keys=False))
    summary = evolve(cfg, tmp_path / "run", progress=False)
    assert summary.status == "finished"
    assert _everything(tmp_path / "run") == reference


# -- the two fixes, each on its own ------------------------------------------------------------


def test_a_merge_has_the_same_bytes_on_1_and_2_threads_and_leaves_torchs_threads_alone(tmp_path):
    import torch

    from kinmerge.merge import Slerp, merge

    before = torch.get_num_threads()
    digests = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            res = merge(["zoo:add", "zoo:caesar"], Slerp(), tmp_path / f"t{threads}")
            assert torch.get_num_threads() == threads  # restored after the merge
            digests.append(hashlib.sha256((res.path / "model.safetensors").read_bytes()).hexdigest())
    finally:
        torch.set_num_threads(before)
    assert digests[0] == digests[1]


_EVALUATE = """
import json, sys
from pathlib import Path
import kinmerge, torch
from kinmerge.evaluate.builtin import BuiltinEvaluator
zoo = Path(kinmerge.__file__).parent / "data" / "zoo"
ev = BuiltinEvaluator(zoo / "tasks", limit=6, threads=int(sys.argv[1]), progress=False, tasks=["add", "caesar"])
r = ev.evaluate(zoo / "specialists" / "caesar")
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                  "details": {t: {k: float(v).hex() for k, v in d.items()} for t, d in r.details.items()}}))
"""


def test_evaluations_have_the_same_bits_on_avx2_and_the_default_capability():
    outs = []
    for env, threads in (({}, "2"), ({"ATEN_CPU_CAPABILITY": "avx2"}, "1")):
        done = subprocess.run([sys.executable, "-c", _EVALUATE, threads], env=_env(**env),
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        outs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert outs[1]["capability"] == "AVX2"
    assert outs[0]["details"] == outs[1]["details"]  # generation and choice log-likelihoods, bit for bit


def test_fixed_order_softmax_matches_torch_and_the_attention_switch_is_restored(micro_model):
    import torch

    from kinmerge.evaluate.fixed_order import ATTENTION, fixed_order_attention, log_softmax, softmax

    x = torch.randn(4, 3, 7, 11, generator=torch.Generator().manual_seed(0)) * 5
    assert torch.allclose(softmax(x), torch.softmax(x, dim=-1), atol=1e-6)
    assert torch.allclose(log_softmax(x), torch.log_softmax(x, dim=-1), atol=1e-5)
    model, _ = micro_model
    before = model.config._attn_implementation
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
        with fixed_order_attention(model):
            assert model.config._attn_implementation == ATTENTION
            got = model(input_ids=ids).logits
    assert model.config._attn_implementation == before
    assert torch.allclose(got, expected, atol=1e-5)



def test_only_a_gpu_is_part_of_a_merges_id_and_an_evaluations_key():
    """What cannot be made the same bits (a GPU's kernels) keys what it makes; the CPU does not."""
    import kinmerge
    from kinmerge.evaluate.builtin import BuiltinEvaluator
    from kinmerge.merge import Slerp, merge_id

    a, b = "a" * 32, "b" * 32
    assert merge_id([a, b], Slerp()) == merge_id([a, b], Slerp(), device=None) == "54884bdbefcf11f3"  # as before
    on_gpu = {merge_id([a, b], Slerp(), device=f"cuda:{name}") for name in ("NVIDIA H100 80GB HBM3", "NVIDIA A10G")}
    assert len(on_gpu) == 2 and "54884bdbefcf11f3" not in on_gpu
    tasks = Path(kinmerge.__file__).parent / "data" / "zoo" / "tasks"
    cpu = BuiltinEvaluator(tasks, limit=4).settings()
    assert "device" not in cpu and BuiltinEvaluator(tasks, limit=4, device="cpu").settings() == cpu
    assert BuiltinEvaluator(tasks, limit=4, device="cuda").settings() == {**cpu, "device": "cuda"}
