"""The study behind docs/results.md: does kinship guidance make merging better or cheaper?

Hypotheses, fixed before the runs (docs/results.md states them with their verdicts):

  H1  The paper's kinship-guided loop (exploration + early stop at top-k PCC 0.9) ends with a
      better best model than top-k greedy merging at equal merge budgets.
  H2  It beats the random-partner control (the same loop, a random extra partner instead of the
      lowest-kinship one) at equal budgets: kinship, not just an extra merge, is what helps.
  H3  Early stopping at a top-k kinship threshold saves merges at a small loss in final best
      (replayed at 0.8, 0.85, 0.9, 0.95 on runs recorded without it).
  H4  The new strategies (diverse top-k, predicted gain) beat greedy and the random control at
      equal budgets.
  H5  Racing evaluation uses >= 2x fewer examples at <= 0.005 loss in final best.
  H6  A merge's gain falls with its parents' kinship (the paper's §2), strongly enough to rank
      candidate pairs (``kinmerge suggest``).

Design: two zoos (the shipped headroom zoo and the tiny zoo); testbeds = the first ``--sets``
four-specialist foundation sets of the headroom zoo's recorded list (the same names exist in the
tiny zoo), each scored on all six tasks on ``--seeds`` held-out samples (``sample_seed``: 100 of
each task's 200 held-out examples), so a seed varies the testbed and deterministic strategies get
several observations; k = 3, SLERP with the paper's gradient, 6 generations. Variants on every
testbed: greedy, kinship (paper), kinship with early stop off, random control (seeded by the
sample), diverse, predicted, and greedy with racing evaluation at confidence 0.95 and 0.8 (each in its own run
directory, so its example counts are its own). Every run is reported; nothing is selected.

    python benchmarks/study.py run --out study                 # hours on 2 cores; resumable
    python benchmarks/study.py render --out study --write-doc docs/results.md
    python benchmarks/study.py merges --out study      # every distinct merge -> docs/results-<zoo>-merges.csv

``run`` resumes (every run is a resumable kinmerge run); ``render`` reads the stores and prints
(or writes into docs/results.md between the study markers) the tables: budget-matched gains with
bootstrap 95% intervals against greedy and against the random control, the early-stop replay,
racing against full evaluation, and the gain-vs-kinship correlations.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from kinmerge.demo import DemoSettings, Testbed, Variant, resolve_zoo, run_configs, write_configs

ZOOS = ("headroom", "tiny")
BUDGETS = (3, 6, 9, 12, 18)
GENERATIONS = 6
#: Racing variants: the default confidence and a bolder one (each in its own run directory).
RACING = {"greedy-race": {"first": 25, "growth": 2.0, "confidence": 0.95},
          "greedy-race80": {"first": 25, "growth": 2.0, "confidence": 0.8}}
BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"


def variants(seed: int) -> tuple[Variant, ...]:
    return (
        Variant("greedy", "greedy"),
        Variant("kinship", "kinship", {"threshold": 0.9}),
        Variant("kinship-noes", "kinship", {"early_stop": False}),
        Variant("random", "random", seed=seed),
        Variant("diverse", "diverse"),
        Variant("predicted", "predicted"),
        *(Variant(run_id, "greedy", racing=racing) for run_id, racing in RACING.items()),
    )


def testbeds(sets: int, seeds: list[int]) -> list[Testbed]:
    recorded = resolve_zoo("headroom").manifest["headroom"]
    tasks = tuple(resolve_zoo("headroom").manifest["tasks"])
    return [Testbed(tuple(s), tasks, seed) for s in recorded["sets"][:sets] for seed in seeds]


def run(out: Path, zoos: list[str], sets: int, seeds: list[int], workers: int) -> None:
    for name in zoos:
        zoo = resolve_zoo(name)
        configs = []
        for tb in testbeds(sets, seeds):
            # heldout: false: the recorded study (docs/results.md, tiny zoos) predates held-out splits;
            # its testbeds are held-out samples themselves (sample_seed), scored whole.
            settings = DemoSettings(testbeds=(tb,), variants=variants(tb.sample_seed or 0), generations=GENERATIONS,
                                    evaluator={"heldout": False})
            configs += write_configs(out / name, settings, zoo, [tb])
        t0 = time.perf_counter()
        print(f"{name}: {len(configs)} runs", file=sys.stderr)
        run_configs(configs, workers=workers, log=lambda line: print(f"{name} {line}", file=sys.stderr, flush=True))
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


# -- render ---------------------------------------------------------------------------------------


def summarize(runs: list[Any], name: str) -> dict[str, Any]:
    """Every number the results page shows for one zoo, from its finished runs."""
    from kinmerge.evolve.strategies.predicted import fit_gain
    from kinmerge.report.budget import budget_table, early_stop_table
    from kinmerge.report.figures import gain_points
    from kinmerge.report.plots import gain_correlations
    from kinmerge.report.stats import paired, spread

    full = [r for r in runs if r.variant not in RACING]
    greedy = {r.testbed: r for r in runs if r.variant == "greedy"}
    racing = {}
    for variant, settings in RACING.items():
        raced = {r.testbed: r for r in runs if r.variant == variant}
        shared = sorted(set(raced) & set(greedy))
        examples = [(raced[t].anytime.examples[-1], greedy[t].anytime.examples[-1]) for t in shared]
        # Racing can change which children survive, so runs differ in length: examples per child
        # (what racing is for) compare runs of any length; whole-run totals are shown beside them.
        per_child = [(_examples_per_child(raced[t]), _examples_per_child(greedy[t])) for t in shared]
        racing[variant] = {
            "settings": settings,
            "testbeds": len(shared),
            "examples_ratio": spread([g / r for r, g in examples if r and g]).__dict__,
            "per_child_ratio": spread([g / r for r, g in per_child if r and g]).__dict__,
            "merges": {"raced": spread([raced[t].merges_used for t in shared]).__dict__,
                       "full": spread([greedy[t].merges_used for t in shared]).__dict__},
            "final_best_diff": paired([raced[t].final_best or 0.0 for t in shared],
                                      [greedy[t].final_best or 0.0 for t in shared]).to_dict(),
            "lost_more_than_0.005": sum((greedy[t].final_best or 0.0) - (raced[t].final_best or 0.0) > 0.005
                                        for t in shared),
        }
    points = gain_points(full)
    correlations = {}
    for metric in ("pcc", "cs", "ed"):
        signed, size = gain_correlations(points, metric)
        correlations[metric] = {"gain": signed.__dict__, "abs_gain": size.__dict__}
    fit = fit_gain([(float(p.kinship["pcc"]), p.gain) for p in points if p.kinship.get("pcc") is not None])
    return {
        "zoo": name,
        "runs": len(runs),
        "run_list": [{"dir": r.run_dir.name, "run": r.run.id, "status": r.run.status, "stop": r.stop_reason,
                      "merges": r.merges_used, "foundation_best": r.foundation_best, "final_best": r.final_best,
                      "best_per_generation": r.best_per_generation(), "examples": r.anytime.examples[-1]}
                     for r in runs],
        "vs_greedy": budget_table(full, budgets=BUDGETS, reference="greedy"),
        "vs_random": budget_table(full, budgets=BUDGETS, reference="random"),
        "early_stop": early_stop_table(full),
        "racing": racing,
        "correlations": correlations,
        "merges_for_correlation": len(points),
        "gain_fit_pcc": fit.__dict__,
    }


def _examples_per_child(run: Any) -> float | None:
    """Examples spent scoring the run's merged children, per child (foundations left out)."""
    examples, merges = run.anytime.examples, run.anytime.merges
    if not merges or examples[-1] is None or examples[0] is None:
        return None
    return float(examples[-1] - examples[0]) / merges


def _ci(p: dict[str, Any]) -> str:
    if p.get("mean") is None:
        return "—"
    ci = p.get("ci95")
    return f"{p['mean']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else f"{p['mean']:+.4f}"


def markdown(summary: dict[str, Any]) -> str:
    """The tables of one zoo, in the page's format."""
    name = summary["zoo"]
    out = [f"### {name} zoo: {summary['runs']} runs", ""]
    for key, title in (("vs_greedy", "greedy"), ("vs_random", "the random control")):
        table = summary[key]
        budgets = table["budgets"]
        out += [f"Gain over the best foundation model at equal merge budgets, paired with {title} testbed by "
                f"testbed ({table['testbeds']} testbeds): mean difference [bootstrap 95% interval], "
                "wins/ties/losses, sign-test p.", "",
                "| variant | runs | " + " | ".join(f"{b} merges" for b in budgets) + " | AUC | merges used |",
                "|---|---:|" + "---:|" * (len(budgets) + 2)]
        for row in table["variants"]:
            cells = []
            for b in budgets:
                g = row["gain"][b]
                if "vs_reference" in row:
                    d = row["vs_reference"][b]
                    cells.append(f"{g['mean']:+.4f} ({_ci(d)}; {d['wins']}/{d['ties']}/{d['losses']}, "
                                 f"p={d['p_sign']:.2g})" if g.get("mean") is not None and d.get("mean") is not None
                                 else "—")
                else:
                    cells.append(f"{g['mean']:+.4f} ± {g['sem']:.4f}" if g.get("sem") is not None
                                 else f"{g['mean']:+.4f}" if g.get("mean") is not None else "—")
            auc = row["auc"]
            auc_cell = (_ci(row["auc_vs_reference"]) if "auc_vs_reference" in row
                        else f"{auc['mean']:+.4f}" if auc.get("mean") is not None else "—")
            out.append(f"| {row['variant']} | {row['runs']} | " + " | ".join(cells)
                       + f" | {auc_cell} | {row['merges_used']['mean']:.1f} |")
        out.append("")
    es = summary["early_stop"]
    out += [f"Early stop replayed on {es['runs']} runs of {es['variant']}:", "",
            "| threshold | fired | merges saved (mean) | share saved | final best lost (mean, max) | runs that lost |",
            "|---:|---:|---:|---:|---:|---:|"]
    for row in es["rows"]:
        saved, lost = row["merges_saved"], row["best_lost"]
        share = "—" if row["share_saved"] is None else f"{row['share_saved']:.0%}"
        out.append(f"| {row['threshold']} | {row['fired']}/{row['runs']} | {saved['mean']:.1f} | {share} | "
                   f"{lost['mean']:.4f}, {lost['high']:.4f} | {row['runs_that_lost']} |")
    out += ["", "Racing vs full evaluation (greedy, paired by testbed): examples saved per merged child and "
            "over the whole run (full / raced: mean, min), merges made, final best:", "",
            "| variant | first / growth / confidence | testbeds | examples per child, full / raced | whole run, "
            "full / raced | merges, full / raced (mean) | final best, raced − full [95% CI] | testbeds that lost "
            "> 0.005 |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for variant, rc in summary["racing"].items():
        st, ratio, child = rc["settings"], rc["examples_ratio"], rc.get("per_child_ratio", {})
        if ratio.get("mean") is None:
            continue
        child_cell = f"{child['mean']:.2f}x, {child['low']:.2f}x" if child.get("mean") is not None else "—"
        merges = rc.get("merges", {})
        merges_cell = (f"{merges['full']['mean']:.1f} / {merges['raced']['mean']:.1f}"
                       if merges.get("full", {}).get("mean") is not None else "—")
        out.append(f"| {variant} | {st['first']} / {st['growth']} / {st['confidence']} | {rc['testbeds']} | "
                   f"{child_cell} | {ratio['mean']:.2f}x, {ratio['low']:.2f}x | {merges_cell} | "
                   f"{_ci(rc['final_best_diff'])} | {rc['lost_more_than_0.005']} |")
    out.append("")
    c = summary["correlations"]
    out.append(f"Gain vs parents' kinship over {summary['merges_for_correlation']} distinct merges: "
               + "; ".join(f"{m.upper()} r = {c[m]['gain']['pearson_r']:+.2f} "
                           f"(|gain|: {c[m]['abs_gain']['pearson_r']:+.2f})"
                           for m in ("pcc", "cs", "ed") if c[m]["gain"].get("pearson_r") is not None)
               + " (merges of one run are related, so these are descriptions, not tests). "
               + "Least squares: gain = {a:+.4f} {b:+.4f} × PCC, residual sd {sd:.4f}, n = {n}.".format(
                   **summary["gain_fit_pcc"]))
    return "\n".join(out) + "\n"


def finished_runs(out: Path, name: str) -> list[Any]:
    """The zoo's finished runs (a run still going, or killed, would enter the tables short)."""
    from kinmerge.report.queries import load_runs

    run_dirs = sorted(p for p in (out / name / "runs").iterdir() if (p / "kinmerge.db").exists())
    return [r for r in load_runs(run_dirs) if r.run.status == "finished"]


def draw_figures(runs: list[Any], name: str, folder: Path) -> list[str]:
    """The anytime curves (mean and min-max band per variant, against merges and examples) and the
    early-stop trade-off of one zoo, as PNGs beside the page; their markdown lines."""
    from kinmerge.report.budget import anytime_bands, early_stop_table
    from kinmerge.report.budget_plots import plot_anytime, plot_early_stop
    from kinmerge.report.groups import variant_styles, variants_of

    full = [r for r in runs if r.variant not in RACING]
    lines = []
    anytime = folder / f"results-{name}-anytime.png"
    if plot_anytime(anytime_bands(full), anytime_bands(full, unit="examples"), anytime,
                    styles=variant_styles(variants_of(full)),
                    title=f"{name} zoo: best of the pool − best foundation model (mean over testbeds; band: min–max)"):
        lines.append(f"![{name} zoo: anytime curves]({anytime.name})")
    early = folder / f"results-{name}-early-stop.png"
    if plot_early_stop(early_stop_table(full)["rows"], early,
                       title=f"{name} zoo: kinship early stop replayed (label: top-k PCC threshold)"):
        lines.append(f"![{name} zoo: early-stop trade-off]({early.name})")
    return lines


def runs_csv(summaries: list[dict[str, Any]]) -> str:
    """Every run of the study, one line each (the page's tables summarise these)."""
    lines = ["zoo,run_dir,run,status,stop,merges,examples,foundation_best,final_best,"
             + ",".join(f"gen{g}" for g in range(GENERATIONS + 1))]
    for summary in summaries:
        for r in summary["run_list"]:
            best = r["best_per_generation"]
            gens = [best.get(g) for g in range(GENERATIONS + 1)]
            cells = [summary["zoo"], r["dir"], r["run"], r["status"], r["stop"] or "", r["merges"], r["examples"],
                     r["foundation_best"], r["final_best"], *gens]
            lines.append(",".join("" if c is None else f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells))
    return "\n".join(lines) + "\n"


def render(out: Path, zoos: list[str], write_doc: Path | None) -> None:
    parts, summaries = [], []
    for name in zoos:
        if not (out / name / "runs").is_dir():
            continue
        runs = finished_runs(out, name)  # read once: the tables and the figures share them
        summary = summarize(runs, name)
        summaries.append(summary)
        (out / f"{name}-summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
        parts.append(markdown(summary))
        if write_doc is not None:
            parts.append("\n".join(draw_figures(runs, name, write_doc.parent)) + "\n")
    text = "\n".join(parts)
    if write_doc is None:
        print(text)
        return
    csv = write_doc.with_name("results-runs.csv")
    csv.write_text(runs_csv(summaries), encoding="utf-8")
    text += (f"\nEvery run, one line each (status, stop, merges, examples, best per generation): "
             f"[{csv.name}]({csv.name}).\n")
    write_between(write_doc, BEGIN, END, text)
    print(f"wrote {write_doc}")


def write_between(page_path: Path, begin: str, end: str, text: str) -> None:
    """Replace what lies between the ``begin`` and ``end`` markers of a page (generated results
    live between markers; the prose around them is written by hand)."""
    page = page_path.read_text(encoding="utf-8")
    if begin not in page or end not in page:
        sys.exit(f"{page_path}: no {begin} ... {end} markers to write between")
    page = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{text}{end}", page, flags=re.S)
    page_path.write_text(page, encoding="utf-8")


def merges(out: Path, zoos: list[str], folder: Path) -> None:
    """Every distinct merge of each zoo's finished runs (racing left out: its children are scored
    on fewer examples) as ``results-<zoo>-merges.csv`` in ``folder``, and its gain-kinship
    numbers; the real-model study's page reads these files to set the three zoos side by side."""
    from kinmerge.report.merges import merge_records, records_csv

    sys.path.insert(0, str(Path(__file__).parent))
    from real_analysis import gain_kinship

    for name in zoos:
        if not (out / name / "runs").is_dir():
            continue
        records = merge_records([r for r in finished_runs(out, name) if r.variant not in RACING])
        path = folder / f"results-{name}-merges.csv"
        path.write_text(records_csv(records), encoding="utf-8")
        g = gain_kinship(records, gain="gain_selection", parents="parents_selection")
        print(f"{name}: {path} ({len(records)} distinct merges): {json.dumps(g)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python benchmarks/study.py run --out study --workers 2")
    parser.add_argument("command", choices=("run", "render", "merges"))
    parser.add_argument("--out", type=Path, default=Path("study"))
    parser.add_argument("--zoo", action="append", choices=ZOOS, help="default: both")
    parser.add_argument("--sets", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args()
    zoos = args.zoo or list(ZOOS)
    if args.command == "run":
        run(args.out.resolve(), zoos, args.sets, args.seeds, args.workers)
    elif args.command == "merges":
        merges(args.out.resolve(), zoos, args.write_doc.parent if args.write_doc else Path("docs"))
    else:
        render(args.out.resolve(), zoos, args.write_doc)


if __name__ == "__main__":
    main()
