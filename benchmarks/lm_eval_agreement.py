"""Does lm-evaluation-harness agree with the builtin evaluator on a real zoo's tasks (docs/zoo.md)?

Merges two pairs of the zoo's specialists (children with mid-range scores, where a disagreement
would show), then scores each child on the held-out part of every task twice: with the builtin
evaluator (``split: heldout``) and with the harness on the zoo's own task YAMLs (``lm_eval/``,
whose test split is the same held-out part). Prints one row per task with both scores, the
difference in answers, and the 95% sampling error of a score at that n (Wilson), for scale.

    python benchmarks/lm_eval_agreement.py --zoo smol    # ~3 min on 2 quiet cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile

PAIRS = (("word_add", "word_sub"), ("reverse_words", "word_sub"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="smol", help="a zoo folder or preset name (default: smol, built in the cache)")
    args = ap.parse_args(argv)
    import kinmerge
    from kinmerge.demo import resolve_zoo
    from kinmerge.report.stats import wilson_ci

    zoo = resolve_zoo(args.zoo)
    print("| child | task | n | builtin | lm-eval | answers apart | ±95% sampling error |")
    print("|---|---|--:|--:|--:|--:|--:|")
    worst = 0
    with tempfile.TemporaryDirectory() as out:
        for a, b in PAIRS:
            child = kinmerge.merge([zoo.specialists[a], zoo.specialists[b]], "slerp", out=out, base=str(zoo.base))
            builtin = kinmerge.evaluate(child.path, tasks_dir=str(zoo.tasks_dir), split="heldout", cache=False)
            harness = kinmerge.evaluate(child.path, "lm_eval", tasks=[str(zoo.root / "lm_eval")], num_fewshot=0,
                                        cache=False)
            for task, score in builtin.scores.items():
                n = int(builtin.details[task]["n"])
                other = harness.scores[f"kinmerge_{task}"]
                apart = round(abs(score - other) * n)
                worst = max(worst, apart)
                lo, hi = wilson_ci(score, n)
                print(f"| {a}×{b} | {task} | {n} | {score:.2f} | {other:.2f} | {apart} | {(hi - lo) / 2:.3f} |")
    print(f"\nat most {worst} answer(s) apart on any task")
    return 0


if __name__ == "__main__":
    sys.exit(main())
