"""The ``kinmerge`` command line: thin click commands that parse, call the library, and print.

One module per family of commands; :mod:`kinmerge.cli.app` holds the group and what they share
(one-line errors, ``--json``, tables).
"""

from __future__ import annotations

from kinmerge.cli import evolve, index, kinship, merge, report, zoo  # noqa: F401  (register the commands)
from kinmerge.cli.app import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="kinmerge")
