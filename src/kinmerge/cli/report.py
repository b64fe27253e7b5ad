"""``kinmerge report`` and ``compare``: runs as a page, runs side by side."""

from __future__ import annotations

from pathlib import Path

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
      kinmerge report runs/kinship
      kinmerge report runs/greedy runs/kinship --out runs/report
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

    One row per run (every run of every store in RUN_DIRS), then the mean, sample std and
    min-max across the runs of each strategy on the same foundation models (e.g. several seeds).

    \b
    Example:
      kinmerge compare runs/greedy-s0 runs/greedy-s1 runs/kinship-s0 runs/kinship-s1
      kinmerge compare runs/* --json
    """
    from kinmerge.report.compare import compare_table

    data = compare_table(list(run_dirs), evaluator=evaluator)
    if as_json:
        echo_json(data)
        return
    print_compare(data)


def print_compare(data: dict) -> None:
    """The ``compare`` tables: one row per run, then the spread per strategy and foundation set."""
    from rich.table import Table

    num = fmt_num
    console = wide_console()
    gens = max(len(r["best_per_generation"]) for r in data["runs"])
    table = Table(title="runs: best score of the pool after each generation")
    for col in ("run", "strategy", "seed", *[f"gen {g}" for g in range(gens)], "merges", "early stop at", "final best"):
        table.add_column(col, justify="left" if col in ("run", "strategy") else "right")
    for r in data["runs"]:
        best = r["best_per_generation"] + [None] * (gens - len(r["best_per_generation"]))
        table.add_row(r["run_id"], r["strategy"], "—" if r["seed"] is None else str(r["seed"]),
                      *[num(b) for b in best], str(r["merges_used"]),
                      "—" if r["early_stop_generation"] is None else str(r["early_stop_generation"]),
                      num(r["final_best"]))
    summary = Table(title="by strategy and foundation set (std: sample standard deviation)")
    for col in ("strategy", "foundations", "runs", "final best mean", "std", "min – max", "merges mean", "min – max",
                "early stops"):
        summary.add_column(col, justify="left" if col in ("strategy", "foundations") else "right")
    for s in data["strategies"]:
        fb, mu = s["final_best"], s["merges_used"]
        summary.add_row(s["strategy"], ", ".join(s["foundations"]), str(s["runs"]), num(fb["mean"]), num(fb["std"]),
                        f"{num(fb['min'])} – {num(fb['max'])}", num(mu["mean"], 1),
                        f"{num(mu['min'], 0)} – {num(mu['max'], 0)}", str(s["early_stops"]))
    print_tables(console, table, summary)
