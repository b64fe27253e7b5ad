"""``kinmerge index add | list | query | matrix | tree``: kinship of many models from their sketches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kinmerge.cli.app import cli, echo_json, json_option, print_tables, wide_console


@cli.group("index", cls=type(cli))
def index_group() -> None:
    """An index of model sketches: estimated kinship of thousands of models, each read once.

    Every model's delta from the base is sketched (1 MB, one streaming pass) into one file;
    kinship between any two indexed models is then *estimated*, with an error bound, without
    reading either again (docs/index.md).

    \b
    Example:
      kinmerge index add family.kmi zoo:add zoo:sort zoo:count zoo:reverse --base zoo:base
      kinmerge index query family.kmi zoo:add --top 3
      kinmerge index tree family.kmi
    """


def _fmt(value: float | None, bound: float | None = None) -> str:
    if value is None:
        return "undefined"
    return f"{value:.4f}" if bound is None else f"{value:.4f} ± {bound:.4f}"


@index_group.command("add")
@click.argument("index", type=click.Path(dir_okay=False))
@click.argument("models", nargs=-1)
@click.option("--base", default=None, help="The base model (required for a new index; checked otherwise; a base "
                                           "that moved: its new place, checked by content id).")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Models sketched per pass over the base (memory: ~3 MB each).")
@click.option("--size", type=click.IntRange(min=256), default=None,
              help="Buckets per sketch of a new index (a power of two; default 131072).")
@click.option("--no-groups", is_flag=True, help="A new index without layer-group sketches (half the size; no tree).")
@click.option("--max-delta", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Refuse a model whose delta is this large relative to the base's weights (another base?).")
@click.option("--allow-pickle", is_flag=True, help="Accept pickled pytorch_model*.bin (weights_only load).")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@json_option
def add_cmd(index: str, models: tuple[str, ...], base: str | None, batch: int, size: int | None, no_groups: bool,
            max_delta: float, allow_pickle: bool, no_progress: bool, as_json: bool) -> None:
    """Sketch MODELS (folders, files, hub ids, zoo:NAME) into INDEX; each is read once.

    Models already in the index (same content id) are skipped, so adding again is harmless.
    Each batch is one transaction: Ctrl-C keeps the finished batches and nothing half-written.
    The base folder moved? ``--base NEW_PLACE`` (with or without models) re-points the index
    once the new place holds the same weights (content id).

    \b
    Example:
      kinmerge index add family.kmi zoo:add zoo:sort zoo:count --base zoo:base
      kinmerge index add family.kmi runs/evolve-kinship/models/*
    """
    if not models and base is None:
        raise click.UsageError("give MODELS to add, or --base NEW_PLACE to re-point the index at its moved base")
    from kinmerge.index import Index
    from kinmerge.sketch import DEFAULT_SIZE, check_size

    try:
        check_size(size or DEFAULT_SIZE)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--size") from None
    with Index(index, size=size or DEFAULT_SIZE, groups=not no_groups) as idx:
        res = idx.add(list(models), base=base, batch=batch, progress=not no_progress, allow_pickle=allow_pickle,
                      max_delta=max_delta)
        total = len(idx)
    if as_json:
        echo_json({"index": index, "added": res.added, "skipped": res.skipped, "models": total,
                   "bytes_read": res.bytes_read, "seconds": round(res.seconds, 3), "notes": res.notes})
        return
    click.echo(f"added {len(res.added)} model(s), {len(res.skipped)} already indexed; {total} in {index} "
               f"({res.bytes_read / 1e9:.2f} GB read in {res.seconds:.1f} s)")
    for note in res.notes:
        click.echo(f"note: {note}")


@index_group.command("list")
@click.argument("index", type=click.Path(exists=True, dir_okay=False))
@json_option
def list_cmd(index: str, as_json: bool) -> None:
    """The models in INDEX, its base and sketch settings.

    \b
    Example:
      kinmerge index list family.kmi --json
    """
    from kinmerge.index import Index

    with Index(index) as idx:
        meta, rows = idx.meta, idx.models()
    if not meta:
        raise click.BadParameter(f"{index} is empty; add models with `kinmerge index add`", param_hint="INDEX")
    if as_json:
        echo_json({"base": meta["base"], "size": meta["size"], "seed": meta["seed"], "groups": meta["groups"],
                   "models": [{"id": r.id, "label": r.label, "ref": r.ref, "added": r.added} for r in rows]})
        return
    from rich.table import Table

    table = Table(title=f"{index}: {len(rows)} models, base {meta['base']['label']}, sketches of {meta['size']:,} "
                        f"buckets, {len(meta['groups'])} layer groups")
    for col in ("id", "label", "reference", "added"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.id[:16], r.label, r.ref, r.added)
    print_tables(wide_console(), table)


@index_group.command("query")
@click.argument("index", type=click.Path(exists=True, dir_okay=False))
@click.argument("model")
@click.option("--metric", type=click.Choice(["pcc", "cs", "ed"]), default="pcc", show_default=True)
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True,
              help="Models to show (0: all).")
@click.option("--least", is_flag=True, help="Least related first.")
@click.option("--exact", is_flag=True, help="Re-check the models shown with one exact scan.")
@click.option("--confidence", type=click.FloatRange(0.5, 0.9999), default=0.99, show_default=True,
              help="Confidence of the error bounds.")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@json_option
def query_cmd(index: str, model: str, metric: str, top: int, least: bool, exact: bool, confidence: float,
              no_progress: bool, as_json: bool) -> None:
    """Estimated kinship of MODEL to every model in INDEX, nearest first.

    MODEL is an indexed model (content id, label or reference: nothing is read) or any model
    fine-tuned from the index's base (sketched once, not added).

    \b
    Example:
      kinmerge index query family.kmi zoo:add --top 5
      kinmerge index query family.kmi zoo:add --least --metric cs --exact
    """
    from kinmerge.index import Index

    with Index(index) as idx:
        found = idx.query(model, metric=metric, top=top or None, least=least, exact=exact, confidence=confidence,
                          progress=not no_progress)
    if as_json:
        echo_json({"query": model, "metric": metric, "confidence": confidence, "least": least,
                   "neighbours": [n.to_dict() for n in found]})
        return
    from rich.table import Table

    table = Table(title=f"{metric} kinship to {model} ({'least related' if least else 'nearest'} first; "
                        f"bounds at {confidence:.0%})")
    notes = any(n.reason for n in found)  # a column for why an estimate is missing, only if one is
    columns = ("#", "model", "estimate ± bound", *(["exact", "within"] if exact else []), *(["note"] if notes else []))
    for col in columns:
        table.add_column(col, justify="right" if col in ("#", "exact") else "left")
    for i, n in enumerate(found, 1):
        extra = [] if not exact else [_fmt(n.exact), "" if n.exact is None or n.value is None else
                                      ("yes" if abs(n.exact - n.value) <= n.bound else "no")]
        table.add_row(str(i), n.label, _fmt(n.value, n.bound), *extra, *([n.reason or ""] if notes else []))
    print_tables(wide_console(), table)


@index_group.command("matrix")
@click.argument("index", type=click.Path(exists=True, dir_okay=False))
@click.option("--metric", "metrics", multiple=True, default=("pcc",), show_default=True,
              help="Kinship metrics: pcc, cs, ed; separated by commas or spaces, or repeated.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Write the estimates to a CSV file (and the bounds as metric_bound rows).")
@json_option
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a clustered heatmap (PNG) of the first metric.")
def matrix_cmd(index: str, metrics: tuple[str, ...], csv_path: str | None, as_json: bool,
               plot_path: str | None) -> None:
    """Estimated kinship of every pair of models in INDEX (no model is read).

    \b
    Example:
      kinmerge index matrix family.kmi --metric pcc,ed --csv kinship.csv --plot kinship.png
    """
    from kinmerge.cli.kinship import _parse_metric_option, _write_matrix_csv
    from kinmerge.index import Index

    chosen = _parse_metric_option(metrics)
    with Index(index) as idx:
        results = {m: idx.matrix(m) for m in chosen}
    rows = results[chosen[0]][0]
    names = [r.label for r in rows]

    def cells(a: Any, why: list[list[str | None]]) -> list[list[float | None]]:
        return [[None if why[i][j] else float(a[i, j]) for j in range(len(rows))] for i in range(len(rows))]

    data = {"models": names, "ids": [r.id for r in rows],
            "kinship": {m: cells(v, w) for m, (_, v, _, w) in results.items()},
            "bound": {m: cells(b, w) for m, (_, _, b, w) in results.items()}, "estimated": True}
    if csv_path:
        _write_matrix_csv(Path(csv_path), names, [*chosen, *[f"{m}_bound" for m in chosen]],
                          {**data["kinship"], **{f"{m}_bound": data["bound"][m] for m in chosen}})
    if plot_path:
        from kinmerge.report.heatmap import plot_kinship_heatmap

        plot_kinship_heatmap(results[chosen[0]][1], names, chosen[0], plot_path,
                             title=f"estimated {chosen[0]} kinship ({index})")
    if as_json:
        echo_json(data)
        return
    from rich.table import Table

    tables = []
    for m in chosen:
        table = Table(title=f"estimated {m} kinship (± its 99% bound) from {index}")
        table.add_column("")
        for name in names:
            table.add_column(name, justify="right")
        for name, vrow, brow in zip(names, data["kinship"][m], data["bound"][m], strict=True):
            table.add_row(name, *[_fmt(v, b) for v, b in zip(vrow, brow, strict=True)])
        tables.append(table)
    console = wide_console()
    print_tables(console, *tables)
    for path, what in ((csv_path, "CSV"), (plot_path, "heatmap")):
        if path:
            console.print(f"wrote {what}: {path}")


@index_group.command("tree")
@click.argument("index", type=click.Path(exists=True, dir_okay=False))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the tree as a picture (PNG).")
@click.option("--no-time", is_flag=True, help="Ignore the models' file times (a parent is older than its child).")
@json_option
def tree_cmd(index: str, plot_path: str | None, no_time: bool, as_json: bool) -> None:
    """The inferred family tree of INDEX: which models are merges of which, which are fine-tunes.

    A merge's delta is a combination of its parents' deltas per layer group (one weight per
    layer and kind, as in a SLERP layer gradient); a fine-tune's delta is its parent's plus an
    unrelated update. Where file times are known, a parent must be older than its child.

    \b
    Example:
      kinmerge index tree family.kmi --plot tree.png
      kinmerge index tree family.kmi --json
    """
    from kinmerge.index import Index

    with Index(index) as idx:
        tree = idx.tree(use_time=not no_time)
        rows, meta = idx.models(), idx.meta
    labels = {r.id: r.label for r in rows}
    if plot_path:
        from kinmerge.report.tree import TreeNode, plot_family_tree

        depth = tree.depth()
        plot_family_tree([TreeNode(r.model, labels[r.model], depth[r.model], r.parents) for r in tree.relations],
                         plot_path, title=f"inferred family tree of {index}")
    if as_json:
        echo_json({"base": meta["base"], "labels": labels, **tree.to_dict()})
        return
    click.echo(tree.render(labels, base=f"{meta['base']['label']} (base)"))
    if plot_path:
        click.echo(f"wrote tree: {plot_path}")
