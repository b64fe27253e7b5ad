"""What one step of the loop costs on the real-model zoo (SmolLM2-135M fine-tunes), on this machine.

Measures, on a built ``smol`` (or ``smol-ci``) zoo: the exact kinship of two specialists (wall
time and the read floor of the same three files, measured in the same run, so the ratio is the
figure to compare), a SLERP merge through mergekit, and greedy evaluation (examples per second,
at the evaluator's default threads and at one thread); each in its own subprocess so its peak RSS
is its own. Prints a table and the load average, since on a shared machine absolute seconds say
as much about the neighbours as about kinmerge.

    python benchmarks/real_costs.py --zoo ~/.cache/kinmerge/zoos/smol
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_STEP = r'''
import json, resource, sys, time
from pathlib import Path
what, zoo, a, b, out, threads = sys.argv[1:7]
t0 = time.perf_counter()
if what == "floor":
    n = 0
    for p in (Path(zoo) / "base", Path(a), Path(b)):
        with open(p / "model.safetensors", "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 24):
                n += len(chunk)
    extra = {"bytes": n}
elif what == "kinship":
    import kinmerge
    k = kinmerge.kinship(a, b, base=str(Path(zoo) / "base"))
    extra = {"pcc": k.pcc}
elif what == "merge":
    import kinmerge
    extra = {"id": kinmerge.merge([a, b], "slerp", out=out).id}
else:
    from kinmerge.evaluate.builtin import BuiltinEvaluator
    ev = BuiltinEvaluator(Path(zoo) / "tasks", limit=50, progress=False,
                          threads=None if threads == "default" else int(threads))
    res = ev.evaluate(Path(a))
    extra = {"examples": int(sum(d["n"] for d in res.details.values()))}
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  **extra}))
'''


def _step(what: str, zoo: Path, a: str, b: str, out: str, threads: str = "default") -> dict:
    proc = subprocess.run([sys.executable, "-c", _STEP, what, str(zoo), a, b, out, threads],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, required=True)
    args = ap.parse_args()
    manifest = json.loads((args.zoo / "zoo.json").read_text())
    a, b = (str(args.zoo / spec["path"]) for spec in list(manifest["specialists"].values())[:2])
    rows = []
    with tempfile.TemporaryDirectory() as out:
        _step("floor", args.zoo, a, b, out)  # warm the page cache: every step below reads warm files
        floor = _step("floor", args.zoo, a, b, out)
        kin = _step("kinship", args.zoo, a, b, out)
        rows.append(("read floor (base + 2 models, warm)", floor["seconds"], floor["peak_rss_mb"], ""))
        rows.append(("exact kinship, one pair", kin["seconds"], kin["peak_rss_mb"],
                     f"{kin['seconds'] / floor['seconds']:.2f}x the floor (in-process + start-up)"))
        merge = _step("merge", args.zoo, a, b, out)
        rows.append(("SLERP merge (mergekit, 1 torch thread)", merge["seconds"], merge["peak_rss_mb"], ""))
        for threads in ("default", "1"):
            ev = _step("eval", args.zoo, merge and str(Path(out) / merge["id"]), b, out, threads)
            rows.append((f"greedy evaluation, threads={threads}", ev["seconds"], ev["peak_rss_mb"],
                         f"{ev['examples'] / ev['seconds']:.1f} examples/s ({ev['examples']} examples)"))
    print(f"zoo {args.zoo} ({manifest['preset']}), {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"| {'step':40} | seconds | peak RSS MB | note |")
    print(f"|{'-' * 42}|--------:|------------:|------|")
    for name, sec, rss, note in rows:
        print(f"| {name:40} | {sec:7.2f} | {rss:11.0f} | {note} |")


if __name__ == "__main__":
    main()
