"""``kinmerge evolve``, ``status``, ``lineage`` and ``demo``: evolution runs and where they stand."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from kinmerge.cli.app import (
    cli,
    echo_json,
    fmt_num,
    json_option,
    print_tables,
    wide_console,
)
from kinmerge.cli.report import print_compare
from kinmerge.pool import short_id


@cli.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Keep the runs, the configs and the report here (rerunning resumes).")
@click.option("--generations", type=click.IntRange(1, 20), default=6, show_default=True, help="Generation budget.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True,
              help="Examples per task the loop selects on (a held-out part it never sees scores the top-k).")
@click.option("--sets", type=click.IntRange(1), default=None, help="Use only the first N foundation sets.")
@click.option("--zoo", "zoo", default="headroom", show_default=True,
              help="A shipped zoo (headroom, tiny), smol (the real-model zoo, once built into the cache) "
                   "or a folder built with `kinmerge zoo build`.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Foundation sets run in parallel processes  [default: up to 2]")
@click.option("--no-progress", is_flag=True, help="No progress lines on stderr.")
@json_option
def demo_cmd(out_dir: str, generations: int, limit: int, sets: int | None, zoo: str, workers: int | None,
             no_progress: bool, as_json: bool) -> None:
    """Greedy vs kinship-guided vs a random control vs predicted-gain merging, budget-matched.

    Runs top-k greedy merging (paper §3), the paper's kinship-guided variant (exploration + early
    stop, §4), a random-partner control (two seeds) and predicted-gain merging (the study's
    best new strategy, docs/results.md) on four foundation sets of the shipped headroom zoo
    (docs/zoo.md), then prints the comparison at equal budgets with 95% intervals and the
    early-stop trade-off, and writes an HTML report. A few
    minutes on 2 cores; rerunning with the same --out resumes instead of starting over, and a
    larger --generations continues it. Other settings go to another --out (the second example).

    \b
    Example:
      kinmerge demo
      kinmerge demo --out demo-quick --sets 2 --generations 2 --limit 20 --json
    """
    from kinmerge.demo import DemoSettings, run_demo, summary_lines

    settings = DemoSettings(generations=generations, limit=limit)
    result = run_demo(out_dir, settings, zoo=zoo, max_sets=sets, workers=workers, progress=not no_progress,
                      log=None if no_progress else (lambda line: click.echo(line, err=True)))
    if as_json:
        echo_json({"compare": result.compare, "across_sets": result.across_sets,
                   "report": str(result.report) if result.report else None, "seconds": round(result.seconds, 1)})
        return
    print_compare(result.compare)
    from rich.table import Table

    held = any(row.get("heldout_gain_mean") is not None for row in result.across_sets)
    table = Table(title="across foundation sets: gain of the final best over the best foundation model"
                  + (" (selection part, and held-out: examples no choice saw)" if held else ""))
    for col in ("strategy", "runs", "gain mean", "std", "min – max", *(("held-out gain", "std") if held else ()),
                "merges mean", "early stops"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for row in result.across_sets:
        table.add_row(row["strategy"], str(row["runs"]), fmt_num(row["gain_mean"], 3), fmt_num(row["gain_std"], 3),
                      f"{fmt_num(row['gain_min'], 3)} – {fmt_num(row['gain_max'], 3)}",
                      *((fmt_num(row.get("heldout_gain_mean"), 3), fmt_num(row.get("heldout_gain_std"), 3))
                        if held else ()),
                      fmt_num(row["merges_mean"], 1), str(row["early_stops"]))
    console = wide_console()
    print_tables(console, table)
    for line in summary_lines(result):
        console.print(line)


@cli.command("evolve")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Run directory (store + merges)  [default: out.run_dir, else runs/<config name> by the config]")
@click.option("--dry-run", is_flag=True, help="Print the next plan; merge, evaluate and record nothing.")
@click.option("--no-progress", is_flag=True, help="No progress lines on stderr.")
@click.option("--track", type=click.Choice(["wandb", "mlflow", "tensorboard", "none"]), default=None,
              help="Watch the run live in this tracker (its settings from the config's tracking: section, if "
                   "it names the same one; none: no tracker)  [default: the config's tracking:, else none]")
@json_option
def evolve_cmd(config: str, run_dir: str | None, dry_run: bool, no_progress: bool, track: str | None,
               as_json: bool) -> None:
    """Evolve a pool of merges from CONFIG (top-k greedy merging, with or without kinship).

    Each generation is planned by the config's strategy, saved, then executed: merges into
    RUN_DIR/models/<id>, evaluations, kinship, all recorded in RUN_DIR/kinmerge.db. Killed or
    crashed? Run the same command again: it resumes where it stopped and ends with the same pool.
    The config format is in docs/evolve.md; --track (or the config's tracking:) logs every score,
    each generation and the final summary to W&B, MLflow or TensorBoard while the run goes.
    With "schedule: steady" (and optionally "max_in_flight: N") in the config, generations have no
    barrier: each finished child joins the pool and the strategy plans from it while other
    children still run (docs/evolve.md, "Steady-state evolution").

    \b
    Example:
      kinmerge evolve examples/evolve.yaml --dry-run
      kinmerge evolve examples/evolve.yaml
      kinmerge evolve examples/greedy.yaml --run-dir runs/evolve-greedy --track tensorboard
    """
    from kinmerge.evolve.config import load_config
    from kinmerge.evolve.runner import evolve
    from kinmerge.evolve.tracking import with_tracker

    cfg = with_tracker(load_config(config), track)
    summary = evolve(cfg, run_dir, progress=not no_progress and not as_json, dry_run=dry_run)
    if as_json:
        echo_json(summary.to_dict())
        return
    if dry_run:
        _print_next_plan(summary)
        return
    best = summary.best
    click.echo(f"run {summary.run_id}: {summary.status}, stopped after generation {summary.generation} "
               f"({summary.stop})" if summary.stop else f"run {summary.run_id}: {summary.status}")
    if best is not None:
        click.echo(f"best: {short_id(best.id)} score {best.score:.4f} ({best.path})")
    made = summary.made
    click.echo(f"merges in the pool: {summary.merges}; this call: {made.get('merges', 0)} merged, "
               f"{made.get('merges_reused', 0)} reused, {made.get('evaluations', 0)} evaluated, "
               f"{made.get('kinship_pairs', 0)} kinship pairs"
               + (f", {made.get('kinship_rechecks', 0)} decisions re-checked exactly"
                  if summary.kinship_source == "sketch" else ""))
    click.echo(f"details: kinmerge status {summary.run_dir}")


def _print_next_plan(summary: Any) -> None:
    plan = summary.next_plan
    paths = {m.id: m.path for m in summary.pool}
    click.echo(f"dry run of run {summary.run_id!r} in {summary.run_dir} (nothing merged, scored or written)")
    if plan is None:
        click.echo("nothing to plan")
        return
    if plan.stop is not None:
        click.echo(f"next: stop before generation {plan.generation} ({plan.stop})")
        return
    click.echo(f"next: generation {plan.generation}, {len(plan.merges)} merges")
    for m in plan.merges:
        a, b = m.parents
        click.echo(f"  {m.reason:<11} {short_id(a)} ({paths.get(a) or '?'}) + {short_id(b)} ({paths.get(b) or '?'})")
    if any(e.score is None for e in summary.pool if e.origin == "foundation"):
        click.echo("note: the foundation models are not evaluated yet; the run evaluates them first "
                   "and orders each pair best-scored first")


@cli.command("status")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--run", "run_id", default=None, help="Which run of the store  [default: the latest started]")
@json_option
def status_cmd(run_dir: str, run_id: str | None, as_json: bool) -> None:
    """The pool of an evolution run: every model, its parents and score, the top-k (*).

    Reads the store without locking, so it works while the run is going.

    \b
    Example:
      kinmerge status runs/evolve-kinship
      kinmerge status runs/evolve-kinship --run kinship --json
    """
    from kinmerge.evolve import read_summary
    from kinmerge.evolve.summary import format_bound

    summary = read_summary(run_dir, run_id)
    if as_json:
        echo_json(summary.to_dict())
        return
    from rich.console import Console
    from rich.table import Table

    def num(x: float | None, fmt: str = ".4f") -> str:
        return "-" if x is None else format(x, fmt)

    from rich import box

    table = Table(title=f"run {summary.run_id} in {summary.run_dir}", box=box.SIMPLE_HEAD)
    scores = (("selection", "right"), ("held-out", "right")) if summary.heldout else (("score", "right"),)
    for col, justify in (("top", "center"), ("id", "left"), ("gen", "right"), ("origin", "left"),
                         ("parents", "left"), *scores, ("gain", "right"),
                         (f"kinship ({summary.metric})", "right"), ("reason / model", "left")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for e in summary.pool:
        what = (e.reason or "") if e.origin == "merge" else Path(e.path or "").name
        cells = (num(e.score), num(e.heldout_score)) if summary.heldout else (num(e.score),)
        table.add_row("*" if e.id in summary.top_k else "", short_id(e.id), str(e.generation), e.origin,
                      "+".join(short_id(p) for p in e.parents), *cells, num(e.merge_gain, "+.4f"),
                      num(e.kinship) + format_bound(e.kinship_bound), what)
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=140)
    console.print(table)
    stop = f"stopped: {summary.stop}" if summary.stop else "not stopped"
    pending = f"; generation {summary.pending} planned, not finished" if summary.pending else ""
    console.print(f"status: {summary.status}; {stop}; last completed generation {summary.generation}{pending}",
                  highlight=False)
    console.print(f"merges: {summary.merges}; top-{summary.k} {summary.metric} kinship: "
                  f"{num(summary.top_k_kinship)}{format_bound(summary.top_k_kinship_bound)}", highlight=False)
    if summary.kinship_source == "sketch":
        console.print(f"kinship: estimates from sketches, ± their 99% bound (exact where re-checked); "
                      f"{summary.kinship_rechecks} decision(s) an estimate could flip re-checked exactly",
                      highlight=False)
    if summary.examples_per_task and summary.tasks:
        n, t = summary.examples_per_task, summary.tasks
        line = (f"scores: the average of {t} task(s); selection on {n} examples per task "
                f"(one example: {1 / (n * t):.4f})")
        if summary.heldout_examples_per_task:
            m = summary.heldout_examples_per_task
            line += f", held-out on {m} (one example: {1 / (m * t):.4f})"
        console.print(line, highlight=False)
    best = summary.best
    if summary.heldout and best is not None:
        console.print(f"best by selection score: {short_id(best.id)}, held-out {num(best.heldout_score)} "
                      f"(selection {num(best.score)}; gains are on the selection part)", highlight=False)
    if summary.status == "interrupted":
        console.print("the run was interrupted; rerun `kinmerge evolve CONFIG` with the same run dir to resume",
                      highlight=False)
    for problem in summary.problems:
        click.echo(f"warning: {problem} (the store lost it; rerun `kinmerge evolve CONFIG` to redo it)", err=True)


@cli.command("lineage")
@click.argument("model_id")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The run directory holding the model.")
@json_option
def lineage_cmd(model_id: str, run_dir: str, as_json: bool) -> None:
    """The family tree of MODEL_ID (an id, a unique prefix, or ``best``: the run's best-scored
    model): parents, theirs, ... down to the foundations.

    \b
    Example:
      kinmerge lineage best --run runs/evolve-kinship
      kinmerge lineage best --run runs/evolve-kinship --json
    """
    from kinmerge.errors import StoreError
    from kinmerge.evolve.summary import read_summary
    from kinmerge.store import RunStore

    if model_id == "best":
        best = read_summary(run_dir).best
        if best is None:
            raise StoreError(f"{run_dir}: no model of the run is scored yet, so there is no best")
        model_id = best.id
    with RunStore(run_dir, lock=False) as store:
        mid = store.find_model(model_id)
        node = store.lineage(mid)
        run = store.pick_run()
        fp = run.fingerprint
        keys = store.evaluators()
        key = fp.evaluator if fp and fp.evaluator in keys else (keys[0] if len(keys) == 1 else None)
        scores = store.average_scores({mid} | node.ancestors(), evaluator=key) if key else {}
        metric = fp.metric if fp else "pcc"
        values, bounds = store.kinship_of_run(run.id, metric, model_ids={mid} | node.ancestors())
    kinship = _parents_kinship(node, values, bounds)
    if as_json:

        def with_scores(d: dict[str, Any]) -> dict[str, Any]:
            value, bound = kinship.get(d["id"], (None, None))
            return {**d, "score": scores.get(d["id"]), "kinship_metric": metric, "kinship": value,
                    "kinship_estimate": bound is not None,
                    "kinship_bound": bound if bound is not None and math.isfinite(bound) else None,
                    "parents": [with_scores(p) for p in d["parents"]]}

        echo_json(with_scores(node.to_dict()))
        return
    for line in lineage_lines(node, scores, kinship=kinship, metric=metric):
        click.echo(line)


def _parents_kinship(node: Any, values: dict[frozenset[str], float], bounds: dict[frozenset[str], float]
                     ) -> dict[str, tuple[float, float | None]]:
    """``{merge id: (its parents' kinship, its bound or None when exact)}`` over a family tree."""
    out: dict[str, tuple[float, float | None]] = {}

    def walk(n: Any) -> None:
        key = frozenset(p.id for p in n.parents)
        if len(key) == 2 and key in values:
            out[n.id] = (values[key], bounds.get(key))
        for p in n.parents:
            walk(p)

    walk(node)
    return out


def lineage_lines(node: Any, scores: dict[str, float | None], *,
                  kinship: dict[str, tuple[float, float | None]] | None = None, metric: str = "pcc") -> list[str]:
    """A family tree (``RunStore.lineage``) as indented text lines, the model first; a merge shows
    its parents' kinship, with `` ± bound`` when that is an estimate from sketches.

    Example output::

        0ab0718c  gen 2  merge  score 0.5417  pcc 0.1203 ± 0.0108  slerp
        ├── 2458350c  gen 0  foundation  score 0.4100  specialists/caesar
        └── 9e9acbc8  gen 1  merge  score 0.5000  pcc -0.0412  slerp
    """
    from kinmerge.evolve.summary import format_bound

    kinship = kinship or {}

    def label(n: Any) -> str:
        score = scores.get(n.id)
        parts = Path(n.path or "").parts
        where = "/".join(parts[-2:]) if n.path else ""
        what = (n.recipe or {}).get("method", "") if n.origin == "merge" else where
        text = f"{short_id(n.id)}  gen {n.generation}  {n.origin}"
        text += f"  score {score:.4f}" if score is not None else "  score -"
        if n.id in kinship:
            value, bound = kinship[n.id]
            text += f"  {metric} {value:.4f}{format_bound(bound)}"
        return f"{text}  {what}".rstrip()

    lines = [label(node)]

    def walk(n: Any, prefix: str) -> None:
        for i, p in enumerate(n.parents):
            last = i == len(n.parents) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{label(p)}")
            walk(p, prefix + ("    " if last else "│   "))

    walk(node, "")
    return lines
