"""``kinmerge report`` and ``compare``: runs as a page, runs side by side."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kinmerge.cli.app import cli, echo_json, fmt_num, json_option, print_tables, wide_console
from kinmerge.kinship import METRICS


@cli.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for index.html and the PNGs  [default: FIRST_RUN_DIR/report]")
@click.option("--evaluator", default=None, help="Whose scores to use when a store holds several evaluators.")
@click.option("--metric", type=click.Choice(METRICS), default=None,
              help="Kinship metric of the top-k curve and heatmaps  [default: the strategy's, else pcc]")
def report_cmd(run_dirs: tuple[str, ...], out_dir: str | None, evaluator: str | None, metric: str | None) -> None:
    """Write a self-contained HTML report of the runs in RUN_DIRS and print its path.

    One page (images embedded, no network or JavaScript needed) with each run's config, a
    per-generation table, score and top-k kinship curves, merge gain vs kinship, the final pool's
    kinship heatmap and family tree. The PNGs are also written next to index.html.

    \b
    Example:
      kinmerge report runs/evolve-kinship
      kinmerge report runs/evolve-kinship runs/evolve-greedy --out runs/report
    """
    from kinmerge.report.html import write_report

    out = Path(out_dir) if out_dir else Path(run_dirs[0]) / "report"
    click.echo(str(write_report(list(run_dirs), out, evaluator=evaluator, metric=metric)))


@cli.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--evaluator", default=None, help="Whose scores to use when a store holds several evaluators.")
@json_option
def compare_cmd(run_dirs: tuple[str, ...], evaluator: str | None, as_json: bool) -> None:
    """Compare runs: best score per generation, merges used, early stop, final best.

    One row per run (every run of every store in RUN_DIRS, a directory given twice read once), then
    the mean, sample std and min-max across the runs of each strategy on the same foundation models
    (e.g. several seeds). Only finished runs enter those means: an interrupted run is shown, marked
    "not counted", and a line under the tables names it.

    \b
    Example:
      kinmerge compare runs/evolve-greedy runs/evolve-kinship
      kinmerge compare runs/evolve-* --json
    """
    from kinmerge.report.compare import compare_table

    data = compare_table(list(run_dirs), evaluator=evaluator)
    if as_json:
        echo_json(data)
        return
    print_compare(data)


def print_compare(data: dict) -> None:
    """The ``compare`` tables: one row per run; every variant at equal budgets against the reference,
    with intervals; the early-stop trade-off where unstopped kinship runs allow a replay."""
    from functools import partial

    from rich.table import Table

    from kinmerge.report.fmt import mean_se, paired_text

    digits = data.get("resolution", {}).get("digits", 2)

    def num(v: float | None, d: int = digits) -> str:
        return fmt_num(v, d)

    paired = partial(paired_text, digits=digits)
    gain = partial(mean_se, digits=digits)

    console = wide_console()
    gens = max(len(r["best_per_generation"]) for r in data["runs"])
    heldout = any(r.get("final_best_heldout") is not None for r in data["runs"])
    sketched = any(r.get("kinship_source") == "sketch" for r in data["runs"])  # estimates: show their bounds
    runs = Table(title="runs: best score of the pool after each generation"
                 + (" (selection part; held-out: the final best model on examples no choice saw)" if heldout else ""))
    for col in ("testbed", "run", "seed", *[f"gen {g}" for g in range(gens)], "merges", "stop", "final best",
                *(("held-out",) if heldout else ()), *(("top-k kinship", "re-checked") if sketched else ())):
        runs.add_column(col, justify="left" if col in ("testbed", "run", "stop") else "right")
    for r in data["runs"]:
        best = r["best_per_generation"] + [None] * (gens - len(r["best_per_generation"]))
        stop = r["stop_reason"] or "—"
        if not r.get("counted", True):  # shown, but not in any mean: its pool was cut short
            stop = f"{r['status']}: not counted"
        runs.add_row(r.get("testbed", ""), r["run_id"], "—" if r["seed"] is None else str(r["seed"]),
                     *[num(b) for b in best], str(r["merges_used"]), stop, num(r["final_best"]),
                     *((num(r.get("final_best_heldout")),) if heldout else ()),
                     *(_kinship_cells(r) if sketched else ()))
    tables = [runs]
    if any(s["runs"] > 1 for s in data["strategies"]):  # seeds of one strategy on one testbed: their spread
        summary = Table(title="across seeds: each strategy variant on each foundation set "
                              "(std: sample standard deviation)")
        for col in ("variant", "foundations", "runs", "final best mean", "std", "min – max", "merges mean",
                    "early stops"):
            summary.add_column(col, justify="left" if col in ("variant", "foundations") else "right")
        for s in data["strategies"]:
            fb, mu = s["final_best"], s["merges_used"]
            summary.add_row(s.get("variant", s["strategy"]), ", ".join(s["foundations"]), str(s["runs"]),
                            num(fb["mean"]), num(fb["std"]), f"{num(fb['min'])} – {num(fb['max'])}",
                            fmt_num(mu["mean"], 1), str(s["early_stops"]))
        tables.append(summary)
    budget = data.get("budget")
    if budget and budget["variants"]:
        tables.append(_budget_table(budget, num, paired, gain))
    early = data.get("early_stop")
    if early and early["runs"]:
        tables.append(_early_stop_table(early, num))
    print_tables(console, *tables)
    if data.get("note"):
        console.print(data["note"], highlight=False, markup=False)
    res = data.get("resolution", {})
    if res.get("examples_per_model"):
        console.print(f"scores move in steps of 1/{res['examples_per_model']} (examples per model, all tasks); "
                      f"gains are over each testbed's best foundation model; ± is one standard error; "
                      f"[lo, hi] a bootstrap 95% interval of the paired difference, then wins/ties/losses and a "
                      f"sign test", highlight=False, markup=False)


def _kinship_cells(run: dict) -> tuple[str, str]:
    """A run's final top-k kinship, `` ± bound`` when it is an estimate (``?``: bound not recorded),
    and how many decisions it re-checked exactly."""
    value = run.get("final_top_k_kinship")
    text = fmt_num(value, 4)
    if value is not None and run.get("final_top_k_kinship_estimate"):
        bound = run.get("final_top_k_kinship_bound")
        text += f" ± {fmt_num(bound, 4) if bound is not None else '?'}"
    return text, str(run.get("kinship_rechecks", 0)) if run.get("kinship_source") == "sketch" else "exact"


def _budget_table(budget: dict, num: Callable[..., str], paired: Callable[..., str], gain: Callable[..., str]) -> Any:
    from rich.table import Table

    ref = budget["reference"]
    table = Table(title=f"at equal budgets (merges made): gain over the best foundation model, and the paired "
                        f"difference from {ref} over {budget['testbeds']} testbed(s)")
    table.add_column("variant")
    table.add_column("runs", justify="right")
    for b in budget["budgets"]:
        table.add_column(f"{b} merges", justify="right")
        table.add_column(f"vs {ref} @{b}", justify="right")
    table.add_column(f"area (0-{budget['auc_budget']})", justify="right")
    table.add_column("merges used", justify="right")
    for v in budget["variants"]:
        cells = [v["variant"], str(v["runs"])]
        for b in budget["budgets"]:
            cells.append(gain(v["gain"][b]))
            cells.append(paired(v.get("vs_reference", {}).get(b)))
        cells.append(paired(v.get("auc_vs_reference")) if "auc_vs_reference" in v else num(v["auc"]["mean"]))
        cells.append(fmt_num(v["merges_used"]["mean"], 1))
        table.add_row(*cells)
    return table


def _early_stop_table(early: dict, num: Callable[..., str]) -> Any:
    from rich.table import Table

    table = Table(title=f"kinship early stop, replayed on {early['runs']} run(s) recorded without it "
                        f"({early['variant']})")
    for col in ("threshold", "fired", "merges saved (mean)", "share saved", "best lost (mean)", "max lost",
                "runs that lost"):
        table.add_column(col, justify="right")
    for row in early["rows"]:
        share = "—" if row["share_saved"] is None else f"{100 * row['share_saved']:.0f}%"
        table.add_row(f"{row['threshold']:g}", f"{row['fired']}/{row['runs']}",
                      fmt_num(row["merges_saved"]["mean"], 1), share, num(row["best_lost"]["mean"]),
                      num(row["best_lost"]["high"]), str(row["runs_that_lost"]))
    return table
