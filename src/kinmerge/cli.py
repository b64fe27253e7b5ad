"""The ``kinmerge`` command line: thin click commands that parse, call the library, and print.

Results go to stdout (a table, or ``--json``); progress goes to stderr. Every error a user can
cause is a ``KinmergeError``, printed as one line with exit code 2 and no traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from kinmerge import __version__
from kinmerge.errors import KinmergeError


class _Group(click.Group):
    """A click group that turns every ``KinmergeError`` into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KinmergeError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)


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


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="kinmerge")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
