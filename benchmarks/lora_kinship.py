#!/usr/bin/env python
"""Kinship of LoRA adapters from their factors, against densifying them and running the exact scan.

Goal (issue 19): on Llama-2-7B shapes, two r = 16 adapters on every attention and MLP projection
of the 32 layers: >= 100x faster than densify + exact scan, < 100 MB peak memory; also a
20-adapter matrix.

What runs, in one invocation, side by side:

* **factors** (kinmerge): ``kinmerge.kinship(ad0, ad1)`` in a subprocess of its own (its wall time,
  in-process time and peak RSS are its own): the adapters' files are read, the base only as a
  header. The base is a *sparse* 13.5 GB BF16 safetensors file (header + holes): it takes no disk,
  and the factor path never reads its data.
* **densified** (the baseline): what a user without kinmerge's adapter support does, minus the
  disk: per projection tensor, in blocks of rows (~1 M elements), a base block (random), the two
  merged blocks ``W + s·B·A`` in float32 (``merge_and_unload``), and the exact fused kernel over
  the three (``kinmerge._kernels.accumulate``, as ``kinmerge kinship`` on merged F32 models). It
  runs on the first ``--baseline-tensors`` projections (default 14: layers 0-1) and is scaled
  by elements to all 224 (its cost is linear in elements); embeddings, norms and the head (no
  delta) and the reading and writing of three 27 GB F32 files are left out: the baseline shown
  is a *lower bound*, so the ratio is conservative.
  Its kinship over those tensors is checked against the factor path's per-tensor statistics.
* the same for a **20-adapter matrix** (baseline on ``--matrix-baseline-tensors``, default 2).

Usage::

    python benchmarks/lora_kinship.py --workdir /tmp/lorabench                 # ~3 GB of adapters
    python benchmarks/lora_kinship.py --workdir /tmp/lorabench --baseline-tensors 224   # no scaling
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

from llama_layout import safetensors_header, tensor_list

LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000}
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")
PREFIX = "base_model.model."
ALPHA = 32


def projections(cfg: dict) -> list[tuple[str, tuple[int, int]]]:
    """(base tensor name, (out, in)) of every adapted projection, in file order."""
    return [(name, shape) for name, shape in tensor_list(cfg)  # type: ignore[misc]
            if any(f".{p}." in name for p in PROJ)]


def write_base(folder: Path, cfg: dict) -> Path:
    """config.json + a sparse BF16 model.safetensors: a valid header, holes for data (no disk used)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForCausalLM"],
                                                    "model_type": "llama"}))
    f = folder / "model.safetensors"
    if not f.exists():
        header, size = safetensors_header(tensor_list(cfg), "lora_kinship")
        with open(f, "wb") as fh:
            fh.write(header)
            fh.truncate(len(header) + size)
    return folder


def write_adapter(folder: Path, cfg: dict, seed: int, rank: int) -> Path:
    """A PEFT folder: r = ``rank`` BF16 factors on every projection; adapters share a common part
    (seed 0) so that their kinship is not ~0. Streamed tensor by tensor."""
    from kinmerge.sources import to_bf16_bits

    f = folder / "adapter_model.safetensors"
    if f.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for name, (out, inn) in projections(cfg):
        mod = PREFIX + name.removesuffix(".weight")
        keys += [(f"{mod}.lora_A.weight", (rank, inn)), (f"{mod}.lora_B.weight", (out, rank))]
    header, _ = safetensors_header(keys, "lora_kinship")
    common, own = np.random.default_rng(0), np.random.default_rng(1000 + seed)
    tmp = f.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(header)
        for _, shape in keys:
            std = 1 / np.sqrt(shape[1]) if shape[0] == rank else 0.002  # A: kaiming-like; B: a trained B's scale
            vals = (0.6 * common.standard_normal(shape, dtype=np.float32)
                    + 0.8 * own.standard_normal(shape, dtype=np.float32)) * np.float32(std)
            fh.write(to_bf16_bits(vals).tobytes())
    os.replace(tmp, f)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": ALPHA, "use_rslora": False, "fan_in_fan_out": False,
        "target_modules": [p.split(".")[1] for p in PROJ], "base_model_name_or_path": str(folder.parent / "base"),
        "task_type": "CAUSAL_LM"}))
    return folder


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, work: Path, n: int) -> None:
    """One measurement in this (fresh) process; prints JSON."""
    if kind == "import":
        import kinmerge.scan_lora  # noqa: F401

        print(json.dumps({"maxrss_mb": maxrss_mb()}))
        return
    from kinmerge.scan import scan_refs

    t0 = time.perf_counter()
    res = scan_refs(work / "base", [work / f"adapter{k}" for k in range(n)])
    seconds = time.perf_counter() - t0
    per = {name: [st.n, st.sums.tolist(), st.gram.tolist()] for name, st in res.per_tensor.items()
           if ".layers.0." in name or ".layers.1." in name}
    print(json.dumps({"seconds": seconds, "pcc": res.stats.value("pcc", 0, 1), "bytes_read": res.bytes_read,
                      "maxrss_mb": maxrss_mb(), "per_tensor": per}))


def run_child(kind: str, work: Path, n: int) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--workdir", str(work), "--n", str(n)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    data = json.loads(out.stdout)
    data["wall"] = time.perf_counter() - t0
    return data


def densified(work: Path, cfg: dict, n: int, tensors: int, block: int = 1 << 20) -> tuple[float, Any]:
    """The baseline on the first ``tensors`` projections: seconds, and the ``KinshipStats`` it found."""
    from kinmerge import _kernels
    from kinmerge.kinship import KinshipStats
    from kinmerge.sources import open_model, to_bf16_bits

    ads = [open_model(work / f"adapter{k}", adapters=True) for k in range(n)]
    rng = np.random.default_rng(7)
    st = KinshipStats.empty(n)
    t0 = time.perf_counter()
    for name, (out, inn) in projections(cfg)[:tensors]:
        mod = PREFIX + name.removesuffix(".weight")
        factors = []
        for ad in ads:
            a = _kernels.widen(ad.read(f"{mod}.lora_A.weight"), "BF16").astype(np.float32).reshape(-1, inn)
            b = _kernels.widen(ad.read(f"{mod}.lora_B.weight"), "BF16").astype(np.float32).reshape(out, -1)
            factors.append((a, b, np.float32(ALPHA / a.shape[0])))
        rows = max(1, block // inn)
        for lo in range(0, out, rows):
            hi = min(out, lo + rows)
            base = _kernels.widen(to_bf16_bits(rng.standard_normal((hi - lo, inn), dtype=np.float32) * 0.02),
                                  "BF16").astype(np.float32)
            merged = [base + s * (b[lo:hi] @ a) for a, b, s in factors]  # merge_and_unload, in float32
            sums, gram = _kernels.accumulate(base.ravel(), "F32", [m.ravel() for m in merged], ["F32"] * n)
            st.n += base.size
            st.sums += sums
            st.gram += gram
    return time.perf_counter() - t0, st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lorabench"))
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--matrix", type=int, default=20, help="adapters in the matrix run (0: none)")
    ap.add_argument("--baseline-tensors", type=int, default=14, help="projections the pair baseline runs on")
    ap.add_argument("--matrix-baseline-tensors", type=int, default=2, help="projections the matrix baseline runs on")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = LLAMA2_7B
    if args.child:
        child(args.child, args.workdir, args.n)
        return
    work = args.workdir
    write_base(work / "base", cfg)
    for k in range(max(2, args.matrix)):
        write_adapter(work / f"adapter{k}", cfg, k, args.rank)
    from kinmerge.kinship import KinshipStats

    imp = run_child("import", work, 2)
    pair = run_child("pair", work, 2)
    projs = projections(cfg)
    total = sum(o * i for _, (o, i) in projs)

    def scale(k: int) -> float:
        return total / sum(o * i for _, (o, i) in projs[:k])

    k = args.baseline_tensors
    base_s, base_st = densified(work, cfg, 2, k)
    mine = KinshipStats.empty(2)
    checked = {name for name, _ in projs[:k]} & set(pair["per_tensor"])
    for name in checked:
        n_el, sums, gram = pair["per_tensor"][name]
        mine += KinshipStats(n_el, np.array(sums), np.array(gram))
    diff = abs(mine.value("pcc", 0, 1) - base_st.value("pcc", 0, 1)) if len(checked) == k else None
    rows = [("pair", 2, pair, base_s, k, scale(k), diff)]
    if args.matrix:
        mat = run_child("matrix", work, args.matrix)
        km = args.matrix_baseline_tensors
        m_s, _ = densified(work, cfg, args.matrix, km)
        rows.append(("matrix", args.matrix, mat, m_s, km, scale(km), None))
    print(f"\ninterpreter + numpy + kinmerge imports alone: {imp['maxrss_mb']:.0f} MB peak RSS")
    print("| run | adapters | factors: time (in-proc / wall) | factors: peak RSS | adapter bytes read "
          "| densified + exact scan | measured on | speed-up (in-proc / wall) | PCC: factors vs densified |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for what, n, r, b_s, b_k, sc, diff in rows:
        est = b_s * sc
        print(f"| {what} | {n} | {r['seconds']:.2f} s / {r['wall']:.2f} s | {r['maxrss_mb']:.0f} MB | "
              f"{r['bytes_read'] / 1e6:.0f} MB | {est:.0f} s (est.) | {b_k} of 224 tensors: {b_s:.1f} s x {sc:.1f} | "
              f"{est / r['seconds']:.0f}x / {est / r['wall']:.0f}x | "
              f"{'' if diff is None else f'{diff:.1e}'} |")
    print(f"\npair PCC (factors, whole model): {pair['pcc']:.6f}")


if __name__ == "__main__":
    main()
