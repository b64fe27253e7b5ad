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


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="kinmerge")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
