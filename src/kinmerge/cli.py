"""The ``kinmerge`` command line: thin click commands that parse, call the library, and print.

Results go to stdout (a table, or ``--json``); progress goes to stderr. Every error a user can
cause is a ``KinmergeError``, printed as one line with exit code 2 and no traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from kinmerge import __version__
from kinmerge.errors import KinmergeError
from kinmerge.zoo.handle import SHIPPED as SHIPPED_ZOOS
from kinmerge.zoo.presets import PRESETS as ZOO_PRESETS


class _Group(click.Group):
    """A click group that turns every ``KinmergeError`` into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KinmergeError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:  # disk full, permission denied, ...: the user's to fix, in one line
            click.echo(f"Error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kinmerge")
def cli() -> None:
    """kinmerge: kinship-guided model merging.

    \b
    Example:
      kinmerge kinship org/model-a org/model-b --base org/base --metric pcc,cs,ed
    """


def echo_json(payload: Any) -> None:
    """Print ``payload`` as indented JSON on stdout (the ``--json`` output of every command)."""
    click.echo(json.dumps(payload, indent=2, sort_keys=False, default=str))


# -- kinship ---------------------------------------------------------------------------------


def _metrics_option(default: str) -> Any:
    return click.option(
        "--metric",
        "metrics",
        multiple=True,
        default=(default,),
        show_default=True,
        help="Kinship metrics: pcc, cs, ed; separated by commas or spaces, or repeated.",
    )


def _scan_options(fn: Any) -> Any:
    for opt in reversed(
        [
            click.option("--base", required=True, help="The shared base model the deltas are taken from."),
            click.option("--allow-missing", is_flag=True, help="Skip tensors absent from some model (reported)."),
            click.option("--allow-pickle", is_flag=True, help="Accept pickled pytorch_model*.bin (weights_only load)."),
            click.option("--chunk", type=int, default=None, help="Elements per read (memory ~ 2 x chunk x models)."),
            click.option("--no-progress", is_flag=True, help="No progress bar on stderr."),
        ]
    ):
        fn = opt(fn)
    return fn


def _run_scan(base: str, models: list[str], allow_missing: bool, allow_pickle: bool, chunk: int | None, no_progress: bool) -> Any:
    from kinmerge.progress import progress_bar
    from kinmerge.scan import DEFAULT_CHUNK, scan
    from kinmerge.sources import open_models

    with open_models([base, *models], allow_pickle=allow_pickle) as opened:
        total = sum(info.nbytes for src in opened for info in src.tensors.values())
        with progress_bar(total, "reading", unit="bytes", enabled=not no_progress) as advance:
            return scan(opened[0], opened[1:], chunk=chunk or DEFAULT_CHUNK, allow_missing=allow_missing, progress=advance)


def _parse_metric_option(metrics: tuple[str, ...]) -> list[str]:
    from kinmerge.kinship import parse_metrics

    try:
        return parse_metrics(list(metrics))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--metric") from None


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.6f}"


def _print_notes(console: Any, result: Any) -> None:
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")


@cli.command("kinship")
@click.argument("model_a")
@click.argument("model_b")
@_scan_options
@_metrics_option("pcc,cs,ed")
@click.option("--per-layer", is_flag=True, help="Also show a per-layer breakdown (the headline stays global).")
@click.option("--per-tensor", is_flag=True, help="Also show a per-tensor breakdown.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def kinship_cmd(model_a: str, model_b: str, base: str, metrics: tuple[str, ...], per_layer: bool, per_tensor: bool,
                as_json: bool, allow_missing: bool, allow_pickle: bool, chunk: int | None, no_progress: bool) -> None:
    """Kinship of two models: similarity of their weight deltas from BASE.

    PCC (Pearson) and CS (signed cosine) grow with kinship; ED (Euclidean distance) shrinks.
    Computed exactly, in one streaming pass, over the whole flattened delta.

    \b
    Example:
      kinmerge kinship org/model-a org/model-b --base org/base --metric pcc,cs,ed
      kinmerge kinship ./a ./b --base ./base --per-layer --json
    """
    from kinmerge.scan import result_dict

    chosen = _parse_metric_option(metrics)
    result = _run_scan(base, [model_a, model_b], allow_missing, allow_pickle, chunk, no_progress)
    breakdown = "layer" if per_layer else "tensor" if per_tensor else None
    data = result_dict(result, chosen, breakdown=breakdown)
    # A pair is one number per metric, not a 2x2 matrix.
    data["kinship"] = {m: rows[0][1] for m, rows in data["kinship"].items()}
    data["undefined"] = {m: next(iter(r.values())) for m, r in data["undefined"].items()}
    if breakdown:
        for part in data[f"per_{breakdown}"].values():
            for m in chosen:
                part[m] = part[m][0][1]
    if as_json:
        echo_json(data)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"kinship of {result.models[0]} and {result.models[1]} (base {result.base})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("")
    from kinmerge.kinship import METRIC_NAMES

    for m in chosen:
        table.add_row(f"{m} ({METRIC_NAMES[m]})", _fmt(data["kinship"][m]), data["undefined"].get(m, ""))
    console.print(table)
    console.print(f"{result.stats.n:,} delta elements compared, {result.bytes_read / 1e9:.2f} GB read in {result.seconds:.2f} s")
    _print_notes(console, result)
    if breakdown:
        sub = Table(title=f"breakdown per {breakdown} (not the headline: kinship is global)")
        sub.add_column(breakdown)
        for m in chosen:
            sub.add_column(m, justify="right")
        sub.add_column("elements", justify="right")
        for key, part in data[f"per_{breakdown}"].items():
            sub.add_row(key, *[_fmt(part[m]) for m in chosen], f"{part['elements']:,}")
        console.print(sub)


@cli.command("matrix")
@click.argument("models", nargs=-1, required=True)
@_scan_options
@_metrics_option("pcc")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Write the matrices to a CSV file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a clustered heatmap with dendrogram (PNG) of the first metric.")
def matrix_cmd(models: tuple[str, ...], base: str, metrics: tuple[str, ...], csv_path: str | None, as_json: bool,
               plot_path: str | None, allow_missing: bool, allow_pickle: bool, chunk: int | None, no_progress: bool) -> None:
    """Kinship of every pair of MODELS, reading each file once.

    Also prints the n-model kinship (mean pairwise) of the whole set.

    \b
    Example:
      kinmerge matrix m1 m2 m3 m4 --base base --metric pcc,ed --csv kinship.csv --plot kinship.png
    """
    from kinmerge.scan import result_dict

    if len(models) < 2:
        raise click.BadParameter("give at least two models", param_hint="MODELS")
    chosen = _parse_metric_option(metrics)
    result = _run_scan(base, list(models), allow_missing, allow_pickle, chunk, no_progress)
    data = result_dict(result, chosen)
    if csv_path:
        _write_matrix_csv(Path(csv_path), result.models, chosen, data["kinship"])
    if plot_path:
        from kinmerge.report.heatmap import plot_kinship_heatmap

        plot_kinship_heatmap(result.stats.matrix(chosen[0]), result.models, chosen[0], plot_path)
    if as_json:
        echo_json(data)
        return
    from rich.console import Console
    from rich.table import Table

    from kinmerge.kinship import METRIC_NAMES

    console = Console()
    for m in chosen:
        table = Table(title=f"{METRIC_NAMES[m]} ({m}) of deltas from {result.base}")
        table.add_column("")
        for name in result.models:
            table.add_column(name, justify="right")
        for name, row in zip(result.models, data["kinship"][m], strict=True):
            table.add_row(name, *[_fmt(v) for v in row])
        console.print(table)
        mean = data.get("mean_pairwise", {}).get(m)
        if mean is not None:
            console.print(f"n-model kinship ({m}, mean pairwise): {mean:.6f}")
        for pair, why in data["undefined"].get(m, {}).items():
            console.print(f"[yellow]{m} undefined[/] for {pair}: {why}")
    console.print(f"{result.stats.n:,} delta elements per model, {result.bytes_read / 1e9:.2f} GB read in {result.seconds:.2f} s")
    _print_notes(console, result)
    for path, what in ((csv_path, "CSV"), (plot_path, "heatmap")):
        if path:
            console.print(f"wrote {what}: {path}")


def _write_matrix_csv(path: Path, names: list[str], metrics: list[str], matrices: dict) -> None:
    """One block per metric: ``metric,model,<model 1>,...``; empty cells where undefined."""
    import csv
    import io
    import os

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["metric", "model", *names])
    for m in metrics:
        for name, row in zip(names, matrices[m], strict=True):
            writer.writerow([m, name, *["" if v is None else repr(v) for v in row]])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


@cli.command("convert")
@click.argument("gguf_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write (replaced if present).")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default="bfloat16", show_default=True)
def convert_cmd(gguf_file: str, out_dir: str, dtype: str) -> None:
    """Convert a GGUF file (llama.cpp export) into a Hugging Face model folder.

    Kinship reads GGUF directly; merging (mergekit) and evaluation need the converted folder.

    \b
    Example:
      kinmerge convert SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2
    """
    from kinmerge.gguf_source import gguf_to_hf

    click.echo(str(gguf_to_hf(gguf_file, out_dir, dtype=dtype)))


@cli.command("merge")
@click.argument("parents", nargs=-1, required=True)
@click.option("--method", type=click.Choice(["slerp", "linear", "task_arithmetic", "ties", "dare_ties", "raw"]),
              default=None, help="Merge recipe  [default: slerp; raw with --config]")
@click.option("--t", "t", type=float, default=None,
              help="slerp: one constant t in [0,1] (0 = parent A, 1 = B)  [default: the paper's layer gradient]")
@click.option("--weight", multiple=True,
              help="linear/task_arithmetic/ties/dare_ties: one weight, or one per parent (repeat or comma-separate)")
@click.option("--density", type=float, default=None, help="ties/dare_ties: fraction of each delta kept  [default: 0.5]")
@click.option("--base", default=None,
              help="The parents' shared base model (needed by task_arithmetic, ties, dare_ties)")
@click.option("--seed", type=int, default=None, help="dare_ties/raw: random seed  [default: 0 for dare_ties]")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default=None,
              help="Merge and output dtype  [default: bfloat16]")
@click.option("--config", "raw_config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A mergekit YAML with ${parent_a}, ${parent_b}, ... and ${base} placeholders (method raw)")
@click.option("--out", "out_root", required=True, type=click.Path(file_okay=False),
              help="Folder of merges; the merge goes to OUT/<id>")
@click.option("--name", default=None,
              help="Also make OUT/NAME a symlink to OUT/<id> (a readable name; the id folder stays)")
@click.option("--cuda", is_flag=True, help="Do the arithmetic on the GPU")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON")
def merge_cmd(
    parents: tuple[str, ...],
    method: str | None,
    t: float | None,
    weight: tuple[str, ...],
    density: float | None,
    base: str | None,
    seed: int | None,
    dtype: str | None,
    raw_config: str | None,
    out_root: str,
    name: str | None,
    cuda: bool,
    as_json: bool,
) -> None:
    """Merge PARENTS (local folders or hub ids) with mergekit into OUT/<id>.

    The id is a hash of the parents' weights and the recipe, so the same merge asked twice is
    made once: the second call returns the existing folder. The folder is a Hugging Face model
    (tokenizer from the first parent) plus kinmerge.json (lineage) and a README.md model card.
    The default recipe is the paper's: SLERP with a layer gradient, parent A as base, bf16.

    \b
    Example:
      kinmerge merge zoo/math zoo/code --out merges
      kinmerge merge zoo/math zoo/code --method slerp --t 0.3 --out merges --json
      kinmerge merge zoo/math zoo/code --method ties --base zoo/base --density 0.5 --weight 0.5 --out merges
      kinmerge merge zoo/math zoo/code --config nuslerp.yaml --out merges --name math-code
    """
    from kinmerge.errors import MergeError
    from kinmerge.merge import RECIPES, Raw, get_recipe, merge

    method = method or ("raw" if raw_config else "slerp")
    if method == "raw":
        if not raw_config:
            raise MergeError("--method raw needs --config RAW.yaml (a mergekit YAML with ${parent_a}, ${parent_b})")
    elif raw_config:
        raise MergeError(f"--config is the raw recipe; drop --method {method} or --config")
    weights = [float(w) for item in weight for w in item.split(",") if w.strip()] if weight else []
    given = {"t": t, "weight": tuple(weights) or None, "density": density, "seed": seed, "dtype": dtype}
    fields_of = set(RECIPES[method].__dataclass_fields__)
    for key, value in given.items():
        if value is not None and key not in fields_of:
            raise MergeError(f"--{key} does not apply to --method {method}")
    if method == "raw":
        recipe = Raw.from_file(raw_config, seed=seed)  # type: ignore[arg-type]
    else:
        recipe = get_recipe(method, **given)
    result = merge(list(parents), recipe, out_root, base=base, cuda=cuda, quiet=as_json)
    if name:
        _link_name(result.path, name)
    if as_json:
        echo_json(result.to_dict() | ({"name": name} if name else {}))
    else:
        click.echo(f"id: {result.id}")
        click.echo(f"path: {result.path}")
        click.echo(f"reused: {'yes' if result.reused else 'no (merged now)'}")


def _link_name(target: Any, name: str) -> None:
    """Point ``target.parent/name`` at ``target`` (atomically replacing an older link)."""
    import os
    from pathlib import Path

    from kinmerge.errors import MergeError

    if not name or "/" in name or name.startswith("."):
        raise MergeError(f"--name {name!r} must be a plain folder name (no '/', not starting with '.')")
    link = Path(target).parent / name
    if link.exists() and not link.is_symlink():
        raise MergeError(f"{link} exists and is not a kinmerge link; pick another --name")
    tmp = link.with_name(f".{name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(target).name, target_is_directory=True)
    os.replace(tmp, link)


def _evaluator_settings(evaluator: str, tasks: str, limit: int | None, batch_size: int | None,
                        progress: bool) -> dict[str, Any]:
    """Map ``kinmerge eval``'s options onto the chosen evaluator's constructor."""
    settings: dict[str, Any] = {"limit": limit}
    if batch_size is not None:
        settings["batch_size"] = batch_size
    if evaluator == "builtin":
        settings.update(tasks_dir=tasks, progress=progress)
    else:
        settings["tasks"] = [tasks]
    return settings


@cli.command("eval")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.option("--tasks", "tasks", required=True,
              help="Folder of <task>.jsonl files (format: docs/tasks.md).")
@click.option("--evaluator", default="builtin", show_default=True,
              help="Evaluator name (see kinmerge.evaluate.EVALUATORS).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N examples of each task.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Sequences per forward pass  [default: the evaluator's, 64 for builtin]")
@click.option("--no-cache", is_flag=True, help="Recompute even if a cached result exists.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def eval_cmd(model: str, tasks: str, evaluator: str, limit: int | None, batch_size: int | None,
             as_json: bool, no_cache: bool) -> None:
    """Score MODEL (a local Hugging Face folder) on a task set.

    Prints each task's accuracy and mean answer log-likelihood, and the average accuracy over
    the tasks (the paper's P̄). Results are cached by (model content id, evaluator, settings
    incl. the task set's content) under ~/.cache/kinmerge/evaluations; --no-cache recomputes.

    \b
    Example:
      kinmerge eval src/kinmerge/data/zoo/specialists/add --tasks src/kinmerge/data/zoo/tasks
      kinmerge eval ./merged --tasks ./my-tasks --limit 50 --json
    """
    from kinmerge.evaluate import get_evaluator
    from kinmerge.evaluate.cache import evaluate_cached

    settings = _evaluator_settings(evaluator, tasks, limit, batch_size, progress=True)
    result, cached = evaluate_cached(get_evaluator(evaluator, **settings), model, refresh=no_cache)
    if as_json:
        echo_json({"model": model, "evaluator": evaluator, "cached": cached, **result.to_dict()})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model} ({evaluator})")
    table.add_column("task")
    table.add_column("accuracy", justify="right")
    table.add_column("mean loglik", justify="right")
    table.add_column("n", justify="right")
    for task, score in result.scores.items():
        detail = result.details.get(task, {})
        loglik = detail.get("mean_loglik")
        n = detail.get("n")
        table.add_row(task, f"{score:.3f}", "" if loglik is None else f"{loglik:.3f}",
                      "" if n is None else f"{int(n)}")
    table.add_section()
    table.add_row("[bold]average[/]", f"[bold]{result.average:.3f}[/]", "", "")
    Console().print(table)
    if cached:
        click.echo("(from the evaluation cache; --no-cache recomputes)", err=True)


@cli.group("zoo", cls=_Group)
def zoo_group() -> None:
    """The tiny model zoo: a Llama base and task specialists for demos and tests.

    \b
    Example:
      kinmerge zoo list
      kinmerge zoo build ./my-zoo --preset micro
    """


@zoo_group.command("build")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(list(ZOO_PRESETS)), default="tiny", show_default=True,
              help="; ".join(f"{name}: {p.summary}" for name, p in ZOO_PRESETS.items()) + ".")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the data, the initial weights and every fine-tune.")
@click.option("--force", is_flag=True, help="Replace DIRECTORY if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the built zoo as JSON.")
def zoo_build_cmd(directory: str, preset: str, seed: int, force: bool, as_json: bool) -> None:
    """Train a zoo from scratch into DIRECTORY (on CPU; written atomically).

    A base model is pre-trained on a mixture of synthetic character tasks, then one
    specialist per task is fine-tuned from it. Progress goes to stderr.

    \b
    Example:
      kinmerge zoo build ./my-zoo --preset tiny --seed 0
      kinmerge eval ./my-zoo/base --tasks ./my-zoo/tasks
    """
    from kinmerge.zoo import build_zoo

    zoo = build_zoo(directory, preset=preset, seed=seed, overwrite=force)
    _print_zoo(zoo, as_json)


@zoo_group.command("list")
@click.option("--root", type=click.Path(exists=True, file_okay=False), default=None,
              help="A zoo folder to show instead of a shipped one.")
@click.option("--preset", "shipped", type=click.Choice(list(SHIPPED_ZOOS)), default="tiny",
              show_default=True, help="Which shipped zoo to show (when no --root is given).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def zoo_list_cmd(root: str | None, shipped: str, as_json: bool) -> None:
    """Show a zoo's base, specialists, task folder and held-out scores (default: shipped tiny zoo).

    \b
    Example:
      kinmerge zoo list
      kinmerge zoo list --preset headroom --json
    """
    from kinmerge.zoo import load_zoo, shipped_zoo

    _print_zoo(shipped_zoo(shipped) if root is None else load_zoo(root), as_json)


def _print_zoo(zoo: Any, as_json: bool) -> None:
    if as_json:
        echo_json(zoo.to_dict())
        return
    from rich.console import Console
    from rich.table import Table

    scores = zoo.manifest.get("scores", {})
    tasks = list(zoo.manifest.get("tasks", []))
    table = Table(title=f"zoo {zoo.root} (preset {zoo.manifest.get('preset')})")
    table.add_column("model")
    table.add_column("task")
    for task in tasks:
        table.add_column(task, justify="right")
    table.add_column("avg", justify="right")
    rows = [("base", "mix", zoo.base)] + [
        (name, zoo.task_of(name), path) for name, path in zoo.specialists.items()]
    for name, task, _ in rows:
        s = scores.get(name, {})
        cells = [f"{s[t]:.2f}" if t in s else "" for t in tasks]
        avg = f"{s['average']:.2f}" if "average" in s else ""
        table.add_row(name, task, *cells, avg)
    console = Console()
    console.print(table)
    console.print("held-out exact-match accuracy per task (rows: models, columns: tasks)")
    for name, _, path in rows:
        console.print(f"{name}: {path}", soft_wrap=True)
    console.print(f"tasks: {zoo.tasks_dir}", soft_wrap=True)


# -- report / compare --------------------------------------------------------------------------


@cli.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for index.html and the PNGs  [default: FIRST_RUN_DIR/report]")
@click.option("--evaluator", default=None, help="Whose scores to use when a store holds several evaluators.")
@click.option("--metric", type=click.Choice(["pcc", "cs", "ed"]), default=None,
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def compare_cmd(run_dirs: tuple[str, ...], evaluator: str | None, as_json: bool) -> None:
    """Compare runs: best score per generation, merges used, early stop, final best.

    One row per run (every run of every store in RUN_DIRS), then the mean, sample std and
    min-max across the runs of each strategy on the same foundation models (e.g. several seeds).

    \b
    Example:
      kinmerge compare runs/greedy-s0 runs/greedy-s1 runs/kinship-s0 runs/kinship-s1
      kinmerge compare runs/* --json
    """
    from kinmerge.report.html import compare_table

    data = compare_table(list(run_dirs), evaluator=evaluator)
    if as_json:
        echo_json(data)
        return
    _print_compare(data)


def _num(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _wide_console() -> Any:
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)  # piped: whole numbers, not 80 columns


def _print_tables(console: Any, *tables: Any) -> None:
    for t in tables:
        for column in t.columns:
            column.overflow = "fold"  # a narrow terminal folds a value onto two lines, never cuts it
        console.print(t)


def _print_compare(data: dict) -> None:
    """The ``compare`` tables: one row per run, then the spread per strategy and foundation set."""
    from rich.table import Table

    num = _num
    console = _wide_console()
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
    _print_tables(console, table, summary)


@cli.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Keep the runs, the configs and the report here (rerunning resumes).")
@click.option("--generations", type=click.IntRange(1, 20), default=5, show_default=True, help="Generation budget.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True, help="Held-out examples per task.")
@click.option("--sets", type=click.IntRange(1), default=None, help="Use only the first N foundation sets.")
@click.option("--zoo", "zoo_root", type=click.Path(exists=True, file_okay=False), default=None,
              help="A zoo built with `kinmerge zoo build` instead of the shipped one.")
@click.option("--no-progress", is_flag=True, help="No progress lines on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def demo_cmd(out_dir: str, generations: int, limit: int, sets: int | None, zoo_root: str | None, no_progress: bool,
             as_json: bool) -> None:
    """Greedy vs kinship-guided vs random-control merging on the shipped tiny zoo.

    Runs top-k greedy merging (paper §3), the kinship-guided variant (exploration + early stop,
    §4) and a random-partner control on several triples of specialists (the random control with
    two seeds), then prints the comparison and writes an HTML report. A few minutes on 2 cores;
    rerunning with the same --out resumes instead of starting over.

    \b
    Example:
      kinmerge demo
      kinmerge demo --out demo-out --generations 4 --json
    """
    from kinmerge.demo import DemoSettings, run_demo, summary_lines

    settings = DemoSettings(generations=generations, limit=limit)
    result = run_demo(out_dir, settings, zoo_root=zoo_root, max_sets=sets, progress=not no_progress,
                      log=None if no_progress else (lambda line: click.echo(line, err=True)))
    if as_json:
        echo_json({"compare": result.compare, "across_sets": result.across_sets,
                   "report": str(result.report) if result.report else None, "seconds": round(result.seconds, 1)})
        return
    _print_compare(result.compare)
    from rich.table import Table

    table = Table(title="across foundation sets: gain of the final best over the best foundation model")
    for col in ("strategy", "runs", "gain mean", "std", "min – max", "merges mean", "early stops"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for row in result.across_sets:
        table.add_row(row["strategy"], str(row["runs"]), _num(row["gain_mean"], 3), _num(row["gain_std"], 3),
                      f"{_num(row['gain_min'], 3)} – {_num(row['gain_max'], 3)}", _num(row["merges_mean"], 1),
                      str(row["early_stops"]))
    console = _wide_console()
    _print_tables(console, table)
    for line in summary_lines(result):
        console.print(line)


# -- evolve, status, lineage ------------------------------------------------------------------


@cli.command("evolve")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Run directory (store + merges)  [default: out.run_dir, else runs/<config name> by the config]")
@click.option("--dry-run", is_flag=True, help="Print the next plan; merge, evaluate and record nothing.")
@click.option("--no-progress", is_flag=True, help="No progress lines on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def evolve_cmd(config: str, run_dir: str | None, dry_run: bool, no_progress: bool, as_json: bool) -> None:
    """Evolve a pool of merges from CONFIG (top-k greedy merging, with or without kinship).

    Each generation is planned by the config's strategy, saved, then executed: merges into
    RUN_DIR/models/<id>, evaluations, kinship, all recorded in RUN_DIR/kinmerge.db. Killed or
    crashed? Run the same command again: it resumes where it stopped and ends with the same pool.
    The config format is in docs/evolve.md.

    \b
    Example:
      kinmerge evolve examples/evolve.yaml
      kinmerge evolve examples/evolve.yaml --run-dir runs/kinship-seed1
      kinmerge evolve examples/evolve.yaml --dry-run
    """
    from kinmerge.evolve.runner import evolve

    summary = evolve(config, run_dir, progress=not no_progress and not as_json, dry_run=dry_run)
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
        click.echo(f"best: {best.id} score {best.score:.4f} ({best.path})")
    made = summary.made
    click.echo(f"merges in the pool: {summary.merges}; this call: {made.get('merges', 0)} merged, "
               f"{made.get('merges_reused', 0)} reused, {made.get('evaluations', 0)} evaluated, "
               f"{made.get('kinship_pairs', 0)} kinship pairs")
    click.echo(f"details: kinmerge status {summary.run_dir}")


def _print_next_plan(summary: Any) -> None:
    plan = summary.next_plan
    paths = {m.id: m.path for m in summary.pool}
    if plan is None:
        click.echo("nothing to plan")
        return
    if plan.stop is not None:
        click.echo(f"next: stop before generation {plan.generation} ({plan.stop})")
        return
    click.echo(f"next: generation {plan.generation}, {len(plan.merges)} merges")
    for m in plan.merges:
        a, b = m.parents
        click.echo(f"  {m.reason:<11} {a[:16]} ({paths.get(a) or '?'}) + {b[:16]} ({paths.get(b) or '?'})")
    if any(e.score is None for e in summary.pool if e.origin == "foundation"):
        click.echo("note: the foundation models are not evaluated yet; the run evaluates them first "
                   "and orders each pair best-scored first")


@cli.command("status")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--run", "run_id", default=None, help="Which run of the store  [default: the latest started]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status_cmd(run_dir: str, run_id: str | None, as_json: bool) -> None:
    """The pool of an evolution run: every model, its parents and score, the top-k (*).

    Reads the store without locking, so it works while the run is going.

    \b
    Example:
      kinmerge status runs/evolve
      kinmerge status runs/evolve --run greedy --json
    """
    from kinmerge.evolve.runner import read_summary

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
    for col, justify in (("top", "center"), ("id", "left"), ("gen", "right"), ("origin", "left"),
                         ("parents", "left"), ("score", "right"), ("gain", "right"),
                         (f"kinship ({summary.metric})", "right"), ("reason / model", "left")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for e in summary.pool:
        what = (e.reason or "") if e.origin == "merge" else Path(e.path or "").name
        table.add_row("*" if e.in_top_k else "", e.id[:16], str(e.generation), e.origin,
                      "+".join(p[:8] for p in e.parents), num(e.score), num(e.merge_gain, "+.4f"),
                      num(e.kinship), what)
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=140)
    console.print(table)
    stop = f"stopped: {summary.stop}" if summary.stop else "not stopped"
    pending = f"; generation {summary.pending} planned, not finished" if summary.pending else ""
    console.print(f"status: {summary.status}; {stop}; last completed generation {summary.generation}{pending}",
                  highlight=False)
    console.print(f"merges: {summary.merges}; top-{summary.k} {summary.metric} kinship: "
                  f"{num(summary.top_k_kinship)}", highlight=False)
    if summary.status == "interrupted":
        console.print("the run was interrupted; rerun `kinmerge evolve CONFIG` with the same run dir to resume",
                      highlight=False)


@cli.command("lineage")
@click.argument("model_id")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The run directory holding the model.")
@click.option("--json", "as_json", is_flag=True, help="Print the tree as nested JSON.")
def lineage_cmd(model_id: str, run_dir: str, as_json: bool) -> None:
    """The family tree of MODEL_ID (an id or a unique prefix): parents, theirs, ... to foundations.

    \b
    Example:
      kinmerge lineage 0ab0718c --run runs/evolve
      kinmerge lineage 0ab0718cc0970b8b --run runs/evolve --json
    """
    from kinmerge.evolve.runner import lineage_lines, resolve_model_id
    from kinmerge.store import RunStore

    with RunStore(run_dir, lock=False) as store:
        mid = resolve_model_id(store, model_id)
        node = store.lineage(mid)
        ids = {mid} | node.ancestors()
        keys = store.evaluators()
        runs = store.runs()
        key = runs[-1].config.get("evaluator") if runs else None
        key = key if key in keys else (keys[0] if len(keys) == 1 else None)
        scores = store.average_scores(ids, evaluator=key) if key else {}
    if as_json:

        def with_scores(d: dict[str, Any]) -> dict[str, Any]:
            return {**d, "score": scores.get(d["id"]), "parents": [with_scores(p) for p in d["parents"]]}

        echo_json(with_scores(node.to_dict()))
        return
    for line in lineage_lines(node, scores):
        click.echo(line)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="kinmerge")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
