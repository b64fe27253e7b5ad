#!/usr/bin/env python
"""What reproducible runs cost (issue 18): the evolution loop with and without kinmerge's pins.

The pins: merges on one torch thread (``merge._mergekit._one_torch_thread``) and the builtin
evaluator's fixed-order attention and log-softmax (``evaluate.fixed_order``). The unpinned
baseline swaps them for torch's own (the thread count as it is, sdpa, ``torch.log_softmax``) in
the same process, so both variants share one warm import and one machine state; rounds alternate
the variants to spread load changes evenly.

Two measurements:

1. ``loop``: a kinship run on the shipped tiny zoo (3 foundations, k = 3, 3 generations, builtin
   evaluator, limit 20), each round in a fresh run directory and evaluation cache; prints the
   median wall time of each variant and the ratio pinned / unpinned.
2. ``merge``: one SLERP merge of two generated Llama-shaped BF16 models of ``--merge-params``
   parameters, pinned (one thread) vs torch's default thread count: what a CPU merge of a larger
   model pays.

Usage::

    python benchmarks/repro_bench.py --rounds 3
    python benchmarks/repro_bench.py --rounds 3 --merge-params 1e8
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

CONFIG: dict[str, Any] = {
    "foundation": ["zoo:add", "zoo:caesar", "zoo:count"],
    "base": "zoo:base",
    "strategy": {"name": "kinship", "k": 3, "max_generations": 3},
    "merge": {"method": "slerp"},
    "evaluator": {"name": "builtin", "tasks_dir": "zoo:tasks", "limit": 20},
    "kinship_metric": "pcc",
    "seed": 5,
}


@contextlib.contextmanager
def unpinned() -> Iterator[None]:
    """kinmerge as it was before issue 18: torch's threads in merges, torch's attention kernels."""
    import torch

    import kinmerge.evaluate.builtin as builtin
    import kinmerge.merge._mergekit as mk

    saved = (mk._one_torch_thread, builtin.fixed_order_attention, builtin.log_softmax)
    mk._one_torch_thread = lambda cuda: contextlib.nullcontext()  # type: ignore[assignment]
    builtin.fixed_order_attention = lambda model: contextlib.nullcontext()  # type: ignore[assignment]
    builtin.log_softmax = lambda x: torch.log_softmax(x, dim=-1)  # type: ignore[assignment]
    try:
        yield
    finally:
        mk._one_torch_thread, builtin.fixed_order_attention, builtin.log_softmax = saved


def run_loop(root: Path, pinned: bool) -> tuple[float, float]:
    from kinmerge.evolve import evolve

    root.mkdir(parents=True)
    os.environ["KINMERGE_CACHE"] = str(root / "cache")
    cfg = root / "run.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    started, cpu = time.perf_counter(), time.process_time()
    with contextlib.nullcontext() if pinned else unpinned():
        summary = evolve(cfg, root / "run", progress=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert summary.status == "finished", summary.status
    return seconds, cpu


def make_model(folder: Path, params: float, seed: int) -> Path:
    """A random Llama-shaped BF16 model of about ``params`` parameters (config and weights only)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden = 1024
    layers = max(1, round(params / (12 * hidden * hidden)))
    config = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    return folder


def run_merge(work: Path, params: float, rounds: int) -> dict[str, list[tuple[float, float]]]:
    import shutil

    import torch

    from kinmerge.merge import Slerp, merge

    a, b = make_model(work / "a", params, 1), make_model(work / "b", params, 2)
    times: dict[str, list[tuple[float, float]]] = {"pinned": [], "unpinned": []}
    for r in range(rounds):
        for variant in ("pinned", "unpinned") if r % 2 == 0 else ("unpinned", "pinned"):
            out = work / f"m-{variant}-{r}"
            started, cpu = time.perf_counter(), time.process_time()
            with contextlib.nullcontext() if variant == "pinned" else unpinned():
                merge([a, b], Slerp(), out)
            times[variant].append((time.perf_counter() - started, time.process_time() - cpu))
            shutil.rmtree(out)
    print(f"torch threads (unpinned): {torch.get_num_threads()}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--merge-params", type=float, default=0.0, help="also time one merge of this size")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="repro-bench-") as tmp:
        work = Path(tmp)
        run_loop(work / "warm-up", pinned=True)  # imports, page cache
        times: dict[str, list[tuple[float, float]]] = {"pinned": [], "unpinned": []}
        for r in range(args.rounds):
            for variant in ("pinned", "unpinned") if r % 2 == 0 else ("unpinned", "pinned"):
                times[variant].append(run_loop(work / f"{variant}-{r}", pinned=variant == "pinned"))
        report("loop", times)
        if args.merge_params:
            report(f"merge ({args.merge_params:.0e} params)", run_merge(work, args.merge_params, args.rounds))


def report(label: str, times: dict[str, list[tuple[float, float]]]) -> None:
    """Median wall and CPU seconds of each variant, and pinned / unpinned: under load (a shared
    machine) wall times swing with other processes; CPU seconds show the work itself."""
    wall = {k: statistics.median(t for t, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    print(f"{label}: wall pinned {wall['pinned']:.2f} s, unpinned {wall['unpinned']:.2f} s, ratio "
          f"{wall['pinned'] / wall['unpinned']:.3f}; CPU pinned {cpu['pinned']:.2f} s, unpinned "
          f"{cpu['unpinned']:.2f} s, ratio {cpu['pinned'] / cpu['unpinned']:.3f} "
          f"(rounds {len(times['pinned'])}; 1-min load {os.getloadavg()[0]:.1f})")
    for k, v in times.items():
        print(f"  {k}: wall {[round(t, 2) for t, _ in v]}, CPU {[round(c, 2) for _, c in v]}")


if __name__ == "__main__":
    main()
