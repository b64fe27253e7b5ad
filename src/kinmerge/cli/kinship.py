"""``kinmerge kinship``, ``matrix`` and ``convert``: kinship of models read straight from their files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from kinmerge.cli.app import (
    cli,
    echo_json,
    json_option,
)
from kinmerge.merge import DTYPES


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
            click.option("--base", default=None,
                         help="The shared base model the deltas are taken from (LoRA adapters: default their "
                              "base_model_name_or_path)."),
            click.option("--allow-missing", is_flag=True, help="Skip tensors absent from some model (reported)."),
            click.option("--allow-pickle", is_flag=True, help="Accept pickled pytorch_model*.bin (weights_only load)."),
            click.option("--chunk", type=click.IntRange(min=1), default=None,
                         help="Elements per read (memory ~ 2 x chunk x models)."),
            click.option("--no-progress", is_flag=True, help="No progress bar on stderr."),
        ]
    ):
        fn = opt(fn)
    return fn


def _run_scan(base: str | None, models: list[str], allow_missing: bool, allow_pickle: bool, chunk: int | None,
              no_progress: bool) -> Any:
    from kinmerge.scan import scan_refs

    with _allow_missing_hint():
        return scan_refs(base, models, chunk=chunk, allow_missing=allow_missing, allow_pickle=allow_pickle,
                         progress=not no_progress)


@contextlib.contextmanager
def _allow_missing_hint() -> Iterator[None]:
    """Name ``--allow-missing`` in a missing-tensor error: these commands have the option (the
    scan names none, since suggest and index have none), unless the cause is GGUF vs Hugging
    Face names, where skipping would skip every tensor."""
    from kinmerge.errors import MissingTensorError

    try:
        yield
    except MissingTensorError as exc:
        if exc.format_mismatch:
            raise
        raise MissingTensorError(f"{exc}; pass --allow-missing to skip them and report what was skipped") from None


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
@json_option
def kinship_cmd(model_a: str, model_b: str, base: str | None, metrics: tuple[str, ...], per_layer: bool,
                per_tensor: bool, as_json: bool, allow_missing: bool, allow_pickle: bool, chunk: int | None,
                no_progress: bool) -> None:
    """Kinship of two models: similarity of their weight deltas from BASE.

    PCC (Pearson) and CS (signed cosine) grow with kinship; ED (Euclidean distance) shrinks.
    Computed exactly, in one streaming pass, over the whole flattened delta.

    \b
    Example:
      kinmerge kinship zoo:add zoo:sort --base zoo:base --metric pcc,cs,ed
      kinmerge kinship zoo:add zoo:reverse --base zoo:base --per-layer --json
      kinmerge kinship someorg/math-lora someorg/code-lora     # LoRA adapters: base from their config

    MODEL_A and MODEL_B may be PEFT LoRA adapters (docs/adapters.md): kinship is then computed
    exactly from their low-rank factors, and --base defaults to their base_model_name_or_path.
    """
    from kinmerge.scan import pair_dict

    chosen = _parse_metric_option(metrics)
    result = _run_scan(base, [model_a, model_b], allow_missing, allow_pickle, chunk, no_progress)
    breakdown = "layer" if per_layer else "tensor" if per_tensor else None
    data = pair_dict(result, chosen, breakdown=breakdown)
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
    console.print(f"{result.stats.n:,} delta elements compared, "
                  f"{result.bytes_read / 1e9:.2f} GB read in {result.seconds:.2f} s")
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
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Write the matrices to a CSV file.")
@json_option
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a clustered heatmap with dendrogram (PNG) of the first metric.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Scan on a Ray cluster in tensor shards (same numbers): at ADDRESS (auto, HOST:PORT, "
                   "ray://HOST:10001, local), else RAY_ADDRESS, this machine's `ray start` cluster or a new local "
                   "one. Give it after the models or as --ray=ADDRESS.")
def matrix_cmd(models: tuple[str, ...], base: str | None, metrics: tuple[str, ...], csv_path: str | None, as_json: bool,
               plot_path: str | None, allow_missing: bool, allow_pickle: bool, chunk: int | None,
               no_progress: bool, ray_address: str | None) -> None:
    """Kinship of every pair of MODELS, reading each file once.

    Also prints the n-model kinship (mean pairwise) of the whole set.

    \b
    Example:
      kinmerge matrix zoo:add zoo:reverse zoo:sort zoo:count --base zoo:base --metric pcc,ed --plot kinship.png
      kinmerge matrix zoo:add zoo:reverse zoo:sort --base zoo:base --csv kinship.csv --json
      kinmerge matrix zoo:add zoo:reverse zoo:sort --base zoo:base --ray      # on this machine's Ray cluster
    """
    from kinmerge.scan import result_dict

    if len(models) < 2:
        raise click.BadParameter("give at least two models", param_hint="MODELS")
    chosen = _parse_metric_option(metrics)
    if ray_address is not None:
        from kinmerge.scan.shards import scan_ray

        if base is None:
            raise click.BadParameter("--ray needs --base (adapters are read on this machine only)", param_hint="--base")
        with _allow_missing_hint():
            result = scan_ray(base, list(models), address=ray_address or None, chunk=chunk,
                              allow_missing=allow_missing, allow_pickle=allow_pickle, progress=not no_progress)
    else:
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
    console.print(f"{result.stats.n:,} delta elements per model, "
                  f"{result.bytes_read / 1e9:.2f} GB read in {result.seconds:.2f} s")
    _print_notes(console, result)
    for path, what in ((csv_path, "CSV"), (plot_path, "heatmap")):
        if path:
            console.print(f"wrote {what}: {path}")


def _write_matrix_csv(path: Path, names: list[str], metrics: list[str], matrices: dict) -> None:
    """One block per metric: ``metric,model,<model 1>,...``; empty cells where undefined."""
    import csv
    import io

    from kinmerge._io import atomic_write

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["metric", "model", *names])
    for m in metrics:
        for name, row in zip(names, matrices[m], strict=True):
            writer.writerow([m, name, *["" if v is None else repr(v) for v in row]])
    atomic_write(path, buf.getvalue())


@cli.command("convert")
@click.argument("gguf_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write: new, empty, or one kinmerge wrote (then replaced); never one holding "
                   "other files.")
@click.option("--dtype", type=click.Choice(DTYPES), default="bfloat16", show_default=True)
def convert_cmd(gguf_file: str, out_dir: str, dtype: str) -> None:
    """Convert a GGUF file (llama.cpp export) into a Hugging Face model folder.

    Kinship reads GGUF directly; merging (mergekit) and evaluation need the converted folder.

    \b
    Example:
      kinmerge convert SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2
    """
    from kinmerge.sources.gguf import gguf_to_hf

    click.echo(str(gguf_to_hf(gguf_file, out_dir, dtype=dtype)))
