"""The report of ``kinship_bench.py``: the table it prints after a run, and docs/benchmarks.md,
rendered from every stored result (``<workdir>/results-*.json``), with the targets and the
exactness against the float64 reference derived from the stored measurements.

Hand-written notes below ``NOTES_MARKER`` in an existing page survive re-rendering.

Example::

    results = [json.loads(p.read_text()) for p in sorted(Path("/tmp/kbench").glob("results-*.json"))]
    render_doc(results, Path("docs/benchmarks.md"))
"""

from __future__ import annotations

from pathlib import Path

from bench_harness import LOAD_LIMIT, machine_info
from bench_workers import READ_BUF

NOTES_MARKER = "<!-- notes: everything from this line on is kept when the page is re-rendered -->"


def _rel(x: float, ref: float) -> float:
    return abs(x - ref) / abs(ref) if ref else float("nan")


def exactness(res: dict) -> dict:
    ex = res["exact"]["data"]
    ms = ("pcc", "cs", "ed")
    out: dict = {"reference": {m: ex[m] for m in ms}}
    out["kinmerge"] = {m: res["kinship_json"]["kinship"][m] for m in ms}
    out["kinmerge_rel_err"] = {m: _rel(out["kinmerge"][m], ex[m]) for m in ms}
    if "naive_json" in res:
        out["naive"] = {m: res["naive_json"][m] for m in ms}
        out["naive_rel_err"] = {m: _rel(out["naive"][m], ex[m]) for m in ms}
    if "naive_torch" in res:
        out["torch"] = {m: res["naive_torch"]["data"][m] for m in ms}
        out["torch_rel_err"] = {m: _rel(out["torch"][m], ex[m]) for m in ms}
    if "matrix_json" in res:
        mat = res["matrix_json"]["kinship"]
        out["matrix_vs_pair"] = {m: abs(mat[m][0][1] - out["kinmerge"][m]) for m in ms}
    return out


def targets(res: dict) -> list[tuple[str, str, bool | None]]:
    s = res["summary"]
    out: list[tuple[str, str, bool | None]] = []
    k, f = s["kinship"], s["floor_pair"]
    out.append(("pair kinship within 1.5x of the warm read floor (process wall)",
                f"{k['wall'] / f['wall']:.2f}x ({k['wall']:.2f} s vs {f['wall']:.2f} s){_best(k, f, 'wall')}",
                k["wall"] <= 1.5 * f["wall"]))
    out.append(("  same, in-process (plan + scan vs the read loop, no start-up)",
                f"{k['inproc'] / f['inproc']:.2f}x ({k['inproc']:.2f} s vs {f['inproc']:.2f} s){_best(k, f, 'inproc')}",
                k["inproc"] <= 1.5 * f["inproc"]))
    if "naive" in s:
        n, kp = s["naive"], s["kinship_paired"]
        out.append(("pair kinship >= 6x faster than the naive baseline",
                    f"{n['wall'] / kp['wall']:.1f}x ({n['wall']:.1f} s vs {kp['wall']:.2f} s, paired runs)",
                    n["wall"] >= 6 * kp["wall"]))
    rss = [("kinship", k["rss_mb_max"])]
    if "matrix" in s:
        rss.append(("matrix", s["matrix"]["rss_mb_max"]))
    worst = max(v for _, v in rss)
    out.append(("peak RSS under 1 GB", ", ".join(f"{n} {v:.0f} MB" for n, v in rss), worst < 1024))
    if "matrix" in s:
        m, fa = s["matrix"], s["floor_all"]
        out.append((f"{res['models']}-model matrix within 1.5x of reading the {res['models'] + 1} files once",
                    f"{m['wall'] / fa['wall']:.2f}x ({m['wall']:.2f} s vs {fa['wall']:.2f} s){_best(m, fa, 'wall')}",
                    m["wall"] <= 1.5 * fa["wall"]))
        out.append(("  same, in-process", f"{m['inproc'] / fa['inproc']:.2f}x ({m['inproc']:.2f} s vs "
                    f"{fa['inproc']:.2f} s){_best(m, fa, 'inproc')}", m["inproc"] <= 1.5 * fa["inproc"]))
    return out


def _best(a: dict, b: dict, key: str) -> str:
    """The same ratio from the best (least disturbed) run of each, when there were several."""
    if a.get("n", 1) < 2 or f"{key}_min" not in a:
        return ""
    return f"; best runs {a[key + '_min'] / b[key + '_min']:.2f}x"


def print_table(res: dict) -> None:
    s = res["summary"]
    gb = res["family"]["file_bytes"] / 1e9
    print(f"\n== {res['params'] / 1e9:.3f} B params, {gb:.2f} GB per model, median of {res['repeat']} ==")
    print(f"{'measurement':<40}{'wall s':>8}{'in-proc s':>10}{'peak RSS MB':>13}  ratio")
    for label, key, ref, what in _rows(res):
        r = s[key]
        ratio = f"{r['wall'] / s[ref]['wall']:.2f}x {what}" if ref else ""
        print(f"{label:<40}{r['wall']:8.2f}{r['inproc']:10.2f}{r['rss_mb']:13.0f}  {ratio}")
    if "naive_skipped" in res:
        print(f"{'naive fp32 pair':<40}{res['naive_skipped']}")
    for name, val, ok in targets(res):
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {val}")
    ex = exactness(res)
    print("  rel. error vs float64 reference:",
          ", ".join(f"kinmerge {m} {v:.1e}" for m, v in ex["kinmerge_rel_err"].items()))
    for key, name in (("naive_rel_err", "naive numpy fp32"), ("torch_rel_err", "naive torch (reference code)")):
        if key in ex:
            print(f"  {name}: " + ", ".join(f"{m} {v:.2%}" for m, v in ex[key].items()))


def _rows(res: dict) -> list[tuple[str, str, str | None, str]]:
    s = res["summary"]
    rows = [("floor: read base + 2 children", "floor_pair", None, ""),
            ("kinmerge kinship (pair)", "kinship", "floor_pair", "of floor")]
    if "naive" in s:
        rows.append(("kinmerge kinship, paired with naive runs", "kinship_paired", "floor_pair", "of floor"))
        rows.append(("naive fp32 pair (reference-like)", "naive", "kinship_paired", "of kinmerge"))
    if "matrix" in s:
        rows += [(f"floor: read base + {res['models']} children", "floor_all", None, ""),
                 (f"kinmerge matrix (N={res['models']})", "matrix", "floor_all", "of floor")]
    return rows


def render_doc(results: list[dict], path: Path) -> None:
    mi = machine_info()
    L: list[str] = []
    w = L.append
    w("# Kinship benchmarks")
    w("")
    w("Generated by `benchmarks/kinship_bench.py` from the measurements it stores in its work directory;")
    w("rerun the commands below to refresh this page.")
    w("")
    w("## Machine")
    w("")
    w(f"- CPU: {mi['cpu']}, {mi['nproc']} cores ({mi['affinity']} usable), {mi['mem_gb']:.1f} GiB RAM, "
      f"Linux {mi['kernel']}")
    w(f"- Python {mi['python']}, numpy {mi['numpy']}, kinship kernel: {mi.get('kinship_kernel', '?')}")
    for r in sorted(results, key=lambda r: r["params"]):
        commit = r.get("machine", mi)["commit"]
        w(f"- ~{r['params'] / 1e9:.2f} B run: {r['when']}, kinmerge commit {commit}")
    w("")
    w("## How to rerun")
    w("")
    w("```bash")
    for r in results:
        w(r["command"])
    w("python benchmarks/kinship_bench.py --render-only --write-doc docs/benchmarks.md   # re-render only")
    w("```")
    w("")
    w("## Method")
    w("")
    w("- **Models**: Llama-shaped BF16 safetensors (`model.embed_tokens`, per layer `self_attn.{q,k,v,o}_proj`,")
    w("  `mlp.{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm`; `model.norm`, untied")
    w("  `lm_head`; vocabulary 32000), scaled in hidden size and depth to the parameter count. Children =")
    w("  base + delta; delta = a shared family direction (non-zero mean, so PCC and cosine differ) + a")
    w("  direction shared by children 1-2 (strong) or 3-4 (weaker) + each child's own noise, so kinship")
    w("  varies by pair. Generated tensor by tensor (never a whole model in RAM), cached in the work directory.")
    w("- **Each measurement is its own subprocess.** *wall* is the whole process (interpreter start-up")
    w("  included), *in-proc* the time the process reports for its own work (kinmerge's `seconds`: plan +")
    w("  scan; the floor's read loop; the naive baseline's load + reduce). Peak RSS is that process's own")
    w("  `ru_maxrss` (`os.wait4`), started from a ~10 MB launcher: Linux carries the RSS high-water mark")
    w("  across `exec`, so a command forked straight from the benchmark would inherit its peak.")
    w("- **Warm-up**: one `kinmerge kinship` and one `kinmerge matrix` run first (not in the tables). The")
    w("  kernel is C, compiled at install time: there is nothing to compile or cache at run time.")
    w("- **Warm page cache**: every file is read right before each timed block. (This VM runs DAMON")
    w("  proactive reclaim, which pages out file pages left untouched for about a minute: cached data")
    w("  does not stay warm for long here.)")
    w(f"- **Floor**: a subprocess reading the same files once, start to end, with {READ_BUF >> 20} MB `readinto`")
    w("  calls into a page-aligned buffer (see the diagnostics for why the alignment matters).")
    w("- **Naive baseline**: a subprocess that, like the reference tool (zjunlp/ModelKinship), loads every")
    w("  model fully in fp32 (BF16 bits -> float32), builds the per-tensor deltas, frees the models,")
    w("  concatenates the deltas and reduces in float32 with numpy (dot products for the cosine,")
    w("  `np.linalg.norm` of the difference, centring then dot products for PCC). It is timed back to back")
    w("  with a `kinmerge kinship` run (*paired*); the speed-up uses those pairs. Once more with the reference")
    w("  tool's own reductions (`torch.corrcoef` of the stacked deltas, `torch.dist`) for its exactness.")
    w("- **Exact reference**: an independent numpy pass, chunk by chunk, float64 throughout, chunk sums")
    w("  added with `math.fsum`; ED from the sum of squared differences (no cancellation).")
    w("- Figures are medians of `--repeat` runs. The 1-minute load average is recorded before each block;")
    w(f"  above {LOAD_LIMIT} other work was running (other users' training and tests share these 2 cores),")
    w("  which inflates absolute times and hides kinmerge's parallelism (one scan worker per core):")
    w("  then the ratios, measured back to back in the same run, are the figures to trust.")
    w("")
    for res in sorted(results, key=lambda r: r["params"]):
        _render_size(res, w)
    if path.exists():  # hand-written analysis below the marker survives re-rendering
        old = path.read_text()
        if NOTES_MARKER in old:
            L.append(old[old.index(NOTES_MARKER):].rstrip("\n"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")
    print(f"wrote {path}")


def _render_size(res: dict, w) -> None:
    cfg = res["family"]["config"]
    s = res["summary"]
    gb = res["family"]["file_bytes"] / 1e9
    p = res["params"]
    w(f"## ~{p / 1e9:.2f} B parameters")
    w("")
    w(f"hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, intermediate {cfg['intermediate_size']}, "
      f"{cfg['num_attention_heads']} heads ({cfg['num_key_value_heads']} kv), vocabulary {cfg['vocab_size']}: "
      f"{p:,} parameters, {gb:.2f} GB per BF16 file; base + {res['models']} children. "
      f"Median of {res['repeat']} runs, warm page cache. Run {res['when']}: `{res['command']}`.")
    w("")
    loads = res["loads"]
    hot = [x for x in loads if x["load1"] > LOAD_LIMIT]
    if hot:
        w(f"**Machine load**: the 1-minute load average was above {LOAD_LIMIT} before {len(hot)} of "
          f"{len(loads)} timed blocks (values: {', '.join(format(x['load1'], '.2f') for x in loads)}): other "
          "processes shared the 2 cores, so absolute times are pessimistic; compare the ratios, which come "
          "from runs made back to back under the same load.")
    else:
        w(f"Machine load: 1-minute load average at most {max(x['load1'] for x in loads):.2f} before every block.")
    w("")
    w("| measurement | wall s | in-proc s | peak RSS | CPU s | ratio (wall) |")
    w("|---|---:|---:|---:|---:|---|")
    for label, key, ref, what in _rows(res):
        r = s[key]
        ratio = f"{r['wall'] / s[ref]['wall']:.2f}x {what}" if ref else ""
        if key == "naive":
            ratio += f"; RSS {r['rss_mb'] / s['kinship']['rss_mb']:.0f}x"
        w(f"| {label} | {r['wall']:.2f} | {r['inproc']:.2f} | {_mb(r['rss_mb'])} | {r['cpu']:.2f} | {ratio} |")
    if "naive_skipped" in res:
        w(f"| naive fp32 pair (reference-like) | — | — | — | — | {res['naive_skipped']} |")
    if "naive_torch" in res:
        nt = res["naive_torch"]
        w(f"| naive, reference tool's torch reductions (1 run) | {nt['wall']:.2f} | {nt['data']['seconds']:.2f} | "
          f"{_mb(nt['rss_mb'])} | {nt['cpu']:.2f} | {nt['wall'] / s['kinship_paired']['wall']:.1f}x of kinmerge |")
    w("")
    fl = s["floor_pair"]
    line = f"Warm read floor: {fam_bytes(res, 3) / fl['inproc'] / 1e9:.1f} GB/s in-process for the pair"
    if "floor_all" in s:
        line += (f", {fam_bytes(res, res['models'] + 1) / s['floor_all']['inproc'] / 1e9:.1f} GB/s for all "
                 f"{res['models'] + 1} files")
    w(line + ". Per-run wall times: " + "; ".join(
        f"{key} {', '.join(format(x, '.2f') for x in s[key]['walls'])}" for _, key, _, _ in _rows(res)) + ".")
    if "naive" in s:
        nj = res["naive_json"]
        w(f"The naive run's own split (last run): load {nj['load_seconds']:.1f} s, deltas + concatenation "
          f"{nj['concat_seconds']:.1f} s, float32 reductions {nj['reduce_seconds']:.1f} s.")
    w("")
    w("**Targets**")
    w("")
    w("| target | measured | met |")
    w("|---|---|---|")
    for name, val, ok in targets(res):
        w(f"| {name} | {val} | {'yes' if ok else '**no**'} |")
    w("")
    ex = exactness(res)
    w("**Exactness** (pair child1 ~ child2; relative error against the independent float64 reference)")
    w("")
    head = "| metric | float64 reference | kinmerge | rel. err |"
    sep = "|---|---:|---:|---:|"
    for key, name in (("naive", "naive numpy fp32"), ("torch", "reference tool's torch fp32")):
        if key in ex:
            head += f" {name} | rel. err |"
            sep += "---:|---:|"
    w(head)
    w(sep)
    for m in ("pcc", "cs", "ed"):
        row = f"| {m} | {ex['reference'][m]:.9f} | {ex['kinmerge'][m]:.9f} | {ex['kinmerge_rel_err'][m]:.1e} |"
        for key in ("naive", "torch"):
            if key in ex:
                row += f" {ex[key][m]:.6f} | {ex[key + '_rel_err'][m]:.2%} |"
        w(row)
    w("")
    tail = (f"The independent numpy float64 pass took {res['exact']['wall']:.1f} s "
            f"({res['exact']['wall'] / s['kinship']['wall']:.1f}x kinmerge).")
    if "matrix_vs_pair" in ex:
        tail = ("`kinmerge matrix` gives the same pair values as `kinmerge kinship` (max abs difference "
                f"{max(ex['matrix_vs_pair'].values()):.1e}). " + tail)
    w(tail)
    w("")
    if "matrix_json" in res:
        mat = res["matrix_json"]["kinship"]["pcc"]
        n = len(mat)
        w("PCC matrix of the children (the designed structure: 1-2 close, 3-4 less, the rest far):")
        w("")
        w("| | " + " | ".join(f"c{j + 1}" for j in range(n)) + " |")
        w("|---|" + "---:|" * n)
        for i in range(n):
            w(f"| c{i + 1} | " + " | ".join(f"{mat[i][j]:.3f}" for j in range(n)) + " |")
        w("")
    d = res.get("diagnostics")
    if d:
        _render_diagnostics(res, d, w)
    cold = res.get("cold") or {}
    if cold.get("floor_pair"):
        cf, ck = cold["floor_pair"], cold["kinship"]
        w(f"**Cold cache** (the 3 files' pages evicted with `posix_fadvise(DONTNEED)`; `/proc/sys/vm/drop_caches`: "
          f"{res.get('drop_caches', '?')}; the VM's virtual disk may still be cached by the host, so this is"
          f" guest-cold only): floor {cf['wall']:.2f} s ({fam_bytes(res, 3) / cf['data']['seconds'] / 1e9:.2f} GB/s),"
          f" kinmerge kinship {ck['wall']:.2f} s ({ck['wall'] / cf['wall']:.2f}x of the cold floor), "
          f"peak RSS {_mb(ck['rss_mb'])}. One run each.")
        w("")
    wu = res.get("warmup", {})
    if wu:
        fam = res["family"]
        gen = (f"{fam['generate_seconds']:.0f} s for {', '.join(fam['generated'])}" if fam["generated"]
               else "reused cached files")
        w("Warm-up runs (not in the tables): " + ", ".join(f"{k} {v['wall']:.2f} s" for k, v in wu.items())
          + f". Model generation ({fam['generator']}): {gen}.")
        w("")


_AB_LABELS = {
    "floor_1mb": "read loop, 1 MB `readinto` calls (the floor)",
    "floor_2mb": "read loop, 2 MB `readinto` calls (kinmerge's read size per input)",
    "floor_8mb": "read loop, 8 MB `readinto` calls",
    "floor_1mb_page16": "read loop, 1 MB calls into a buffer at page + 16 bytes (a `bytearray`'s place)",
    "scan_default": "scan, default (chunk 1M elements, one worker per core)",
    "scan_chunk_256k": "scan, chunk 256K elements",
    "scan_chunk_512k": "scan, chunk 512K elements",
    "scan_chunk_1m": "scan, chunk 1M elements",
    "scan_chunk_2m": "scan, chunk 2M elements",
    "scan_chunk_4m": "scan, chunk 4M elements",
    "scan_1_thread": "scan, default chunk, 1 worker",
    "scan_1_kernel_thread": "scan, chunk 4M, 1 kernel thread",
    "scan_noop_kernel": "scan with a no-op kernel (reads + pipeline only)",
    "scan_noop_kernel_chunk_1m": "scan with a no-op kernel, chunk 1M",
    "kernel_per_pos_t1": "fused kernel alone on in-memory chunks, 1 thread",
    "kernel_per_pos_t2": "fused kernel alone on in-memory chunks, 2 threads",
}


def _render_ab(res: dict, ab: dict, n_files: int, w) -> None:
    p = res["params"]
    nbytes = fam_bytes(res, n_files)
    floor = ab["median"]["floor_1mb"]
    w(f"| step ({ab['rounds']} alternating rounds, loads {', '.join(format(x, '.1f') for x in ab['loads'])}) "
      "| median s | best s | vs floor | throughput |")
    w("|---|---:|---:|---:|---|")
    for key in ab["median"]:
        label = _AB_LABELS.get(key, key)
        if key == "scan_default" and "workers" in ab:
            c = ab["chunk_default"]
            size = f"{c >> 20}M" if c >= 1 << 20 else f"{c >> 10}K"
            label = f"scan, default (chunk {size} elements, {ab['workers']} workers)"
        med, best = ab["median"][key], ab["min"][key]
        if key.startswith("kernel_per_pos"):
            med, best = med * p, best * p
            thr = f"{p / med / 1e9:.2f} G positions/s"
        elif key.startswith("floor") or "noop" in key:
            thr = f"{nbytes / med / 1e9:.1f} GB/s"
        else:
            thr = f"{p / med / 1e9:.2f} G positions/s"
        w(f"| {label} | {med:.2f} | {best:.2f} | {med / floor:.2f}x | {thr} |")
    w("")


def _render_diagnostics(res: dict, d: dict, w) -> None:
    s = res["summary"]
    w("**Where the time goes.** Start-up of a process that does what the CLI does before reading "
      "(one subprocess each):")
    w("")
    w("| step | seconds |")
    w("|---|---:|")
    st = d["startup"]
    w(f"| whole process: interpreter + imports + first kernel call | {st['wall']:.2f} |")
    w(f"| &nbsp; import numpy | {st['data']['numpy']:.2f} |")
    if "backend" in st["data"]:
        w(f"| &nbsp; import kinmerge.cli + kinmerge.scan | {st['data']['kinmerge_import']:.2f} |")
        w(f"| &nbsp; first kernel call ({st['data']['backend']} kernel, {st['data']['isa']} code path; "
          "loads the library) "
          f"| {st['data']['first_kernel_call']:.3f} |")
        heavy = ", ".join(st["data"]["heavy_modules"]) or "none"
        w(f"| &nbsp; heavy modules imported (scipy, numba, llvmlite, matplotlib, torch, transformers) | {heavy} |")
    else:  # results from the numba kernel (before the C kernel)
        sn = d["startup_noscipy"]
        w(f"| &nbsp; import kinmerge.cli + kinmerge.scan (imports numba) | {st['data']['kinmerge_import']:.2f} |")
        w(f"| &nbsp; first kernel call: numba loads the cached kernel, refreshing its registries (which imports "
          f"`scipy.linalg` for a BLAS probe) | {st['data']['first_kernel_call']:.2f} |")
        w(f"| &nbsp; first kernel call with `scipy.linalg` made unimportable | {sn['data']['first_kernel_call']:.2f} |")
        w(f"| whole process with `scipy.linalg` made unimportable | {sn['wall']:.2f} |")
    w("")
    if "ab_pair" in d:
        w("In-process, after the kernel is loaded, variants alternated round by round (so machine noise hits")
        w("them alike): the pair (3 files)")
        w("")
        _render_ab(res, d["ab_pair"]["data"], 3, w)
    if "ab_all" in d:
        w(f"The matrix ({res['models'] + 1} files):")
        w("")
        _render_ab(res, d["ab_all"]["data"], res["models"] + 1, w)
    if "ab_pair" in d:
        ab = d["ab_pair"]["data"]["median"]
        w(f"So `kinmerge kinship` ({s['kinship']['wall']:.2f} s wall) = process start-up and first kernel call "
          f"(~{st['wall']:.2f} s) + the scan itself (~{ab['scan_default']:.2f} s), against "
          f"{ab['floor_1mb']:.2f} s for the reads alone.")
        w("")


def fam_bytes(res: dict, n_files: int) -> int:
    return res["family"]["file_bytes"] * n_files


def _mb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"
