#!/usr/bin/env python
"""Estimated vs exact kinship: sketches against exact scans, over every pair of generated
families and of the shipped tiny zoo (its 6 specialists and merges of them).

Hypothesis (docs/index.md): at the default sketch size (2^17 buckets) the error of PCC and
cosine is <= 0.01 for >= 99% of pairs, and the stated 99% bounds cover the exact value at least
99% of the time.

What it does:

1. Generates (once, cached in ``--workdir``) families with ``benchmarks/family7b.py``: Llama-2
   names at four sizes (0.23 M to 167 M parameters), BF16 / F16 / F32, 4-8 children whose
   designed PCC ranges from ~0.09 to ~0.99, one family with a child that has 64 more
   vocabulary rows (the common rows are compared, like the exact scan).
2. Makes merges of the zoo's specialists with ``kinmerge.merge`` (linear, task arithmetic, SLERP
   with the paper's layer gradient, one second-generation merge); needs the ``merge`` extra.
3. Per source: one exact scan (``kinmerge.scan``) of all models against the base; then, for every
   sketch size and several seeds, one sketch pass (``kinmerge.sketch_scan.sketch_models``) and the
   estimates of every pair (``kinmerge.sketch.estimate_matrix``).
4. Merges scored before they are made: the sketch of each linear / task-arithmetic merge
   predicted from its parents' sketches (``kinmerge.sketch.combine`` with the parents' exact
   Gram) against the exact kinship of the merge actually written.

Prints the error distributions and the size/accuracy table; ``--write-doc docs/index.md``
replaces the generated part of that page (between its markers).

Usage::

    python benchmarks/sketch_accuracy.py --workdir /tmp/skacc --write-doc docs/index.md
    python benchmarks/sketch_accuracy.py --quick          # two small families, three sizes
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import family7b
from kinmerge.scan import scan
from kinmerge.sketch import DEFAULT_SIZE, METRICS, combine, estimate_matrix
from kinmerge.sketch_scan import sketch_models
from kinmerge.sources import open_models

# name, preset, shape overrides, children, dtype, seed, extra vocabulary rows for the last child
FAMILIES = [
    ("tiny-f32", "tiny", {}, 8, "f32", 1, 0),
    ("small-bf16", "small", {}, 8, "bf16", 2, 0),
    ("small-f16", "small", {}, 8, "f16", 3, 0),
    ("mid-bf16-vocab", "small", family7b.shape(512, 1376, 6, 8, 32000), 6, "bf16", 4, 64),
    ("medium-bf16", "medium", {}, 4, "bf16", 5, 0),
]
SIZES = [1 << k for k in (12, 13, 14, 15, 16, 17, 18)]
ZOO = ROOT / "src" / "kinmerge" / "data" / "zoo"
MARK_BEGIN = "<!-- sketch_accuracy: generated from here -->"
MARK_END = "<!-- sketch_accuracy: generated up to here -->"


# == sources =================================================================================


def families(workdir: Path, quick: bool) -> list[dict]:
    out = []
    for name, preset, over, children, dtype, seed, extra in FAMILIES[:2] if quick else FAMILIES:
        folder = workdir / name
        cfg = {**family7b.SCALES[preset], **over}
        if not (folder / "family.json").exists():
            family7b.generate(folder, cfg, children, dtype=dtype, seed=seed, extra_vocab=extra, log=lambda s: None)
        info = json.loads((folder / "family.json").read_text())
        out.append({"name": name, "base": folder / "base", "models": [folder / m for m in info["models"][1:]],
                    "params": info["params"], "dtype": dtype.upper(), "predict": {}})
    return out


def zoo_with_merges(workdir: Path) -> dict:
    """The shipped zoo's specialists plus merges of them (made once, reused)."""
    from kinmerge.merge import Linear, Slerp, TaskArithmetic, merge

    spec = {p.name: p for p in sorted((ZOO / "specialists").iterdir()) if p.is_dir()}
    out_root = workdir / "zoo-merges"
    recipes = [  # (label, parents, recipe, weights for the prediction or None)
        ("linear(add,sort)", ["add", "sort"], Linear(weight=0.5, dtype="float32"), [0.5, 0.5]),
        ("linear(caesar,count,double)", ["caesar", "count", "double"], Linear(weight=(0.5, 0.3, 0.2), dtype="float32"),
         [0.5, 0.3, 0.2]),
        ("task_arithmetic(reverse,double)", ["reverse", "double"], TaskArithmetic(weight=0.5, dtype="float32"),
         [0.5, 0.5]),
        ("task_arithmetic(add,caesar,sort)", ["add", "caesar", "sort"], TaskArithmetic(weight=0.3, dtype="float32"),
         [0.3, 0.3, 0.3]),
        ("linear(add,sort) bf16", ["add", "sort"], Linear(weight=0.5), [0.5, 0.5]),
        ("slerp(add,reverse)", ["add", "reverse"], Slerp(), None),
        ("slerp(count,sort) t=0.5", ["count", "sort"], Slerp(t=0.5), None),
    ]
    models, labels, predict = list(spec.values()), list(spec), {}
    for label, parents, recipe, weights in recipes:
        res = merge([spec[p] for p in parents], recipe, out_root, base=ZOO / "base", quiet=True)
        models.append(res.path)
        labels.append(label)
        if weights is not None:
            predict[label] = ([labels.index(p) for p in parents], weights)
    res = merge([models[labels.index("linear(add,sort)")], models[labels.index("slerp(add,reverse)")]],
                Slerp(t=0.5), out_root, quiet=True)
    models.append(res.path)
    labels.append("slerp(linear(add,sort), slerp(add,reverse))")
    return {"name": "zoo + merges", "base": ZOO / "base", "models": models, "labels": labels,
            "params": 1_063_296, "dtype": "F16 (merges F32/BF16)", "predict": predict}


# == measuring ===============================================================================


def measure(source: dict, sizes: list[int], seeds: int, seeds_default: int, threads: int | None) -> dict:
    n = len(source["models"])
    with open_models([source["base"], *source["models"]]) as (base, *models):
        t0 = time.perf_counter()
        exact = scan(base, models, threads=threads)
        exact_s = time.perf_counter() - t0
        truth = {m: exact.stats.matrix(m) for m in METRICS}
        iu = np.triu_indices(n, 1)
        rows, predicted, seconds = [], [], {}
        for size in sizes:
            for seed in range(seeds_default if size == DEFAULT_SIZE else seeds):
                t0 = time.perf_counter()
                res = sketch_models(base, models, size=size, seed=seed, threads=threads)
                seconds.setdefault(size, []).append(time.perf_counter() - t0)
                for metric in METRICS:
                    est, bound, _ = estimate_matrix(res.sketches, metric)
                    for i, j in zip(*iu, strict=True):
                        rows.append((size, seed, metric, int(i), int(j), float(est[i, j]), float(bound[i, j]),
                                     float(truth[metric][i, j])))
                if size == DEFAULT_SIZE:
                    predicted += _predictions(source, res.sketches, exact.stats, truth, seed)
    return {"name": source["name"], "models": n, "params": source["params"], "dtype": source["dtype"],
            "labels": source.get("labels"), "notes": exact.notes, "exact_seconds": exact_s,
            "sketch_seconds": {str(k): v for k, v in seconds.items()}, "rows": rows, "predicted": predicted}


def _predictions(source: dict, sketches: list, stats, truth: dict, seed: int) -> list:
    """Each predictable merge: its sketch from its parents', compared with the merge's own."""
    out = []
    for label, (parents, weights) in source["predict"].items():
        k = source["labels"].index(label)
        gram = stats.gram[np.ix_(parents, parents)]
        pred = combine(weights, [sketches[p] for p in parents], gram)
        others = [j for j in range(len(sketches)) if j != k]
        for metric in METRICS:
            est, bound, _ = estimate_matrix([pred] + [sketches[j] for j in others], metric)
            for col, j in enumerate(others, start=1):
                out.append((seed, label, metric, j, float(est[0, col]), float(bound[0, col]),
                            float(truth[metric][k, j])))
    return out


# == summaries ===============================================================================


def _errors(rows: list, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """|error| (relative for ED) and whether the bound covered the exact value."""
    est = np.array([r[-3] for r in rows if r[2] == metric])
    bound = np.array([r[-2] for r in rows if r[2] == metric])
    exact = np.array([r[-1] for r in rows if r[2] == metric])
    err = np.abs(est - exact)
    covered = err <= bound
    if metric == "ed":
        err = err / exact
    return err, covered


def summary(rows: list) -> dict:
    out = {"estimates": len(rows) // len(METRICS)}
    both_ok = None
    for metric in METRICS:
        err, covered = _errors(rows, metric)
        out[metric] = {"median": float(np.median(err)), "p99": float(np.quantile(err, 0.99)), "max": float(err.max()),
                       "coverage": float(covered.mean())}
        if metric != "ed":
            both_ok = (err <= 0.01) if both_ok is None else both_ok & (err <= 0.01)
    out["share_within_0.01"] = float(both_ok.mean())
    out["median_bound_pcc"] = float(np.median([r[-2] for r in rows if r[2] == "pcc"]))
    return out


def render(results: list[dict], meta: dict) -> str:
    L: list[str] = []
    w = L.append
    all_rows = [(src["name"], *r) for src in results for r in src["rows"]]
    w(f"Run {meta['when']} on {meta['machine']}, kinmerge commit {meta['commit']}: "
      f"`{meta['command']}` ({meta['seconds']:.0f} s).")
    w("")
    w("**Sources** (exact kinship: one `kinmerge.scan` pass each):")
    w("")
    w("| source | params | dtype | models | pairs | PCC range (exact) | note |")
    w("|---|---:|---|---:|---:|---|---|")
    for src in results:
        n = src["models"]
        pcc = [r[-1] for r in src["rows"] if r[2] == "pcc" and r[0] == src["rows"][0][0] and r[1] == 0]
        note = "; ".join(src["notes"])[:90]
        w(f"| {src['name']} | {src['params'] / 1e6:,.2f} M | {src['dtype']} | {n} | {n * (n - 1) // 2} | "
          f"{min(pcc):.3f} .. {max(pcc):.3f} | {note} |")
    w("")
    w("**Size / accuracy trade-off** (all sources pooled; |error| of PCC and cosine, relative error of ED; "
      "coverage: share of estimates whose stated 99% bound contains the exact value):")
    w("")
    w("| size (buckets) | bytes / sketch (compact / full) | estimates | PCC median | PCC p99 | PCC max | CS p99 "
      "| CS max | "
      "ED rel. p99 | PCC & CS <= 0.01 | coverage PCC / CS / ED | median PCC bound |")
    w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    sizes = sorted({r[1] for r in all_rows})
    table = {}
    for size in sizes:
        s = summary([r[1:] for r in all_rows if r[1] == size])
        table[size] = s
        w(f"| 2^{size.bit_length() - 1} = {size:,} | {size * 8 // 1024} KB / {size * 16 // 1024} KB | "
          f"{s['estimates']} | "
          f"{s['pcc']['median']:.4f} | {s['pcc']['p99']:.4f} | {s['pcc']['max']:.4f} | {s['cs']['p99']:.4f} | "
          f"{s['cs']['max']:.4f} | {s['ed']['p99']:.2%} | {s['share_within_0.01']:.1%} | "
          f"{s['pcc']['coverage']:.1%} / {s['cs']['coverage']:.1%} / {s['ed']['coverage']:.1%} | "
          f"{s['median_bound_pcc']:.4f} |")
    w("")
    w(f"**At the default size (2^{DEFAULT_SIZE.bit_length() - 1})**, per source:")
    w("")
    w("| source | estimates (pairs x seeds) | PCC p99 | PCC max | CS p99 | CS max | ED rel. p99 | PCC & CS <= 0.01 | "
      "coverage PCC / CS / ED |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for src in results:
        s = summary([r for r in src["rows"] if r[0] == DEFAULT_SIZE])
        w(f"| {src['name']} | {s['estimates']} | {s['pcc']['p99']:.4f} | {s['pcc']['max']:.4f} | "
          f"{s['cs']['p99']:.4f} | "
          f"{s['cs']['max']:.4f} | {s['ed']['p99']:.2%} | {s['share_within_0.01']:.1%} | "
          f"{s['pcc']['coverage']:.1%} / {s['cs']['coverage']:.1%} / {s['ed']['coverage']:.1%} |")
    w("")
    pred = [p for src in results for p in src["predicted"]]
    if pred:
        w("**Merges scored before they are made** (zoo, default size): the sketch of each linear or task-arithmetic "
          "merge predicted from its parents' sketches (`combine` with the parents' exact Gram) against the exact "
          "kinship of the merge actually written (mergekit, float32 output unless marked bf16), to every other model:")
        w("")
        w("| merge | estimates | PCC |err| p99 | PCC max | CS max | ED rel. max | coverage PCC / CS / ED |")
        w("|---|---:|---:|---:|---:|---:|---|")
        for label in dict.fromkeys(p[1] for p in pred):
            rows = [(None, p[0], p[2], 0, p[3], p[4], p[5], p[6]) for p in pred if p[1] == label]
            s = summary(rows)
            w(f"| {label} | {s['estimates']} | {s['pcc']['p99']:.4f} | {s['pcc']['max']:.4f} | {s['cs']['max']:.4f} | "
              f"{s['ed']['max']:.2%} | {s['pcc']['coverage']:.1%} / {s['cs']['coverage']:.1%} / "
              f"{s['ed']['coverage']:.1%} |")
        w("")
    w("Sketch pass time per source and size (median seconds, all models of the source in one pass, "
      f"{meta['threads']} threads, shared machine): " + "; ".join(
          f"{src['name']} " + ", ".join(f"2^{int(k).bit_length() - 1}: {np.median(v):.2f}"
                                        for k, v in src["sketch_seconds"].items() if int(k) in (4096, DEFAULT_SIZE))
          + f" (exact scan {src['exact_seconds']:.2f})" for src in results) + ".")
    return "\n".join(L)


def write_doc(path: Path, text: str) -> None:
    page = path.read_text()
    if MARK_BEGIN not in page or MARK_END not in page:
        raise SystemExit(f"{path}: no '{MARK_BEGIN}' ... '{MARK_END}' markers to write between")
    head, rest = page.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1)
    path.write_text(f"{head}{MARK_BEGIN}\n\n{text}\n\n{MARK_END}{tail}")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/skacc"), help="families, merges, results")
    ap.add_argument("--seeds", type=int, default=4, help="sketch seeds per size (default 4)")
    ap.add_argument("--seeds-default", type=int, default=10, help="seeds at the default size (default 10)")
    ap.add_argument("--threads", type=int, default=None, help="scan/sketch threads (default: all cores)")
    ap.add_argument("--no-zoo", action="store_true", help="skip the zoo and its merges (no mergekit needed)")
    ap.add_argument("--quick", action="store_true", help="two small families, three sizes, two seeds")
    ap.add_argument("--write-doc", type=Path, default=None, help="write the tables into this page's markers")
    ap.add_argument("--render-only", action="store_true", help="re-render the last results without measuring")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    store = args.workdir / "results.json"
    if args.render_only:
        data = json.loads(store.read_text())
    else:
        t0 = time.perf_counter()
        sizes = [1 << 12, 1 << 14, DEFAULT_SIZE] if args.quick else SIZES
        seeds, seeds_default = (2, 2) if args.quick else (args.seeds, args.seeds_default)
        zoo = [] if args.no_zoo or args.quick else [zoo_with_merges(args.workdir)]
        sources = families(args.workdir, args.quick) + zoo
        results = []
        for src in sources:
            print(f"[accuracy] {src['name']}: {len(src['models'])} models", flush=True)
            results.append(measure(src, sizes, seeds, seeds_default, args.threads))
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
        meta = {"when": _dt.datetime.now().isoformat(timespec="seconds"), "commit": commit or "?",
                "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores",
                "command": "python benchmarks/sketch_accuracy.py " + " ".join(sys.argv[1:]),
                "seconds": time.perf_counter() - t0, "threads": args.threads or "all"}
        data = {"meta": meta, "results": results}
        store.write_text(json.dumps(data, default=str))
    text = render(data["results"], data["meta"])
    print(text)
    if args.write_doc:
        write_doc(args.write_doc, text)


if __name__ == "__main__":
    main()
