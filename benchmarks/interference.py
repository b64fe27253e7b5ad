"""Which task pairs of a zoo interfere when their specialists are merged (docs/zoo.md)?

Every pair of the zoo's specialists is merged the way the study merges (SLERP with the paper's
gradient, ``kinmerge.merge``), and the child is scored on both parents' own tasks, on the
held-out part of each task (the part no run selects on). A pair **interferes** when the child
loses part of *both* skills: on each parent's task its score is below that parent's by more
than sampling error (Newcombe's 95% interval of the difference excludes 0). Losing one skill
and keeping the other is one-sided loss, not interference.

Resumable: each pair's result is saved as it lands (``--out``/interference.json) and the child's
folder is deleted once scored (a smol child is 270 MB).

    python benchmarks/interference.py --zoo smol --out /tmp/interference   # ~25 min on one core
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from study_real import heldout_evaluator  # the study's split: the same held-out examples


def measure(zoo: Any, out: Path, log: Any) -> dict[str, Any]:
    """Every specialist pair merged and scored held out; saved pair by pair."""
    import kinmerge
    from kinmerge._io import atomic_write

    path = out / "interference.json"
    done: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"parents": {}, "pairs": {}}
    names = sorted(zoo.specialists)
    for name in names:  # each specialist on its own task: the skill a merge may lose
        if name not in done["parents"]:
            result = heldout_evaluator(zoo, [name]).evaluate(Path(zoo.specialists[name]))
            done["parents"][name] = {"score": result.scores[name], "n": int(result.details[name]["n"])}
            atomic_write(path, json.dumps(done, indent=1))
    pairs = list(itertools.combinations(names, 2))
    for i, (a, b) in enumerate(pairs):
        key = f"{a}+{b}"
        if key in done["pairs"]:
            continue
        t0 = time.perf_counter()
        child = kinmerge.merge([zoo.specialists[a], zoo.specialists[b]], "slerp", out=out / "models",
                               base=str(zoo.base))
        result = heldout_evaluator(zoo, [a, b]).evaluate(Path(child.path))
        n = {t: int(d["n"]) for t, d in result.details.items()}
        done["pairs"][key] = {"child": child.id, "scores": result.scores, "n": n,
                              "seconds": round(time.perf_counter() - t0, 1)}
        atomic_write(path, json.dumps(done, indent=1))
        shutil.rmtree(child.path, ignore_errors=True)
        log(f"{i + 1}/{len(pairs)} {key}: {result.scores}")
    return done


def table(done: dict[str, Any]) -> tuple[str, int]:
    """The markdown table (one row per pair) and the number of interfering pairs."""
    from kinmerge.report.stats import proportion_difference_ci

    lines = ["| pair | parent A → child on A | parent B → child on B | interferes |", "|---|--:|--:|:-:|"]
    interfering = 0
    for key, row in sorted(done["pairs"].items()):
        cells, lost = [], []
        for task in key.split("+"):
            parent = done["parents"][task]
            child, n = row["scores"][task], row["n"][task]
            lo, hi = proportion_difference_ci(parent["score"], parent["n"], child, n)
            lost.append(lo > 0)
            cells.append(f"{task} {parent['score']:.2f} → {child:.2f} (loss [{lo:+.3f}, {hi:+.3f}])")
        interfering += all(lost)
        lines.append(f"| {key} | {cells[0]} | {cells[1]} | {'**yes**' if all(lost) else 'no'} |")
    return "\n".join(lines), interfering


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="smol", help="a zoo folder or preset name (default: smol, built in the cache)")
    ap.add_argument("--out", type=Path, default=Path("interference"))
    args = ap.parse_args(argv)
    from kinmerge.demo import resolve_zoo

    args.out.mkdir(parents=True, exist_ok=True)
    done = measure(resolve_zoo(args.zoo), args.out, lambda line: print(f"[interference] {line}", file=sys.stderr,
                                                                         flush=True))
    text, interfering = table(done)
    print(text)
    print(f"\n{interfering} of {len(done['pairs'])} pairs interfere (a loss on both tasks beyond sampling error)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
