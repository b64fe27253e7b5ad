"""The ``kinmerge`` command group and what every command shares: errors, output, tables.

Results go to stdout (a table, or ``--json``); progress goes to stderr. Every error a user can
cause is a ``KinmergeError``, printed as one line with exit code 2 and no traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from kinmerge._version import __version__
from kinmerge.errors import KinmergeError

__all__ = ["cli", "echo_json", "fmt_num", "json_option", "print_tables", "wide_console"]

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """A click group that turns every ``KinmergeError``, and every bad option or argument of its
    commands, into one line on stderr and exit code 2 (click's own usage errors print the usage
    and a hint first: four lines for one problem)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            click.echo(f"Error: {exc.format_message()} (see '{where} -h')", err=True)
            ctx.exit(exc.exit_code)
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
      kinmerge kinship zoo:add zoo:sort --base zoo:base --metric pcc,cs,ed
    """


def json_option(fn: F) -> F:
    """The shared ``--json`` flag (passed as ``as_json``): JSON on stdout instead of tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")(fn)  # type: ignore[return-value]


def echo_json(payload: Any) -> None:
    """Print ``payload`` as indented JSON on stdout (the ``--json`` output of every command)."""
    click.echo(json.dumps(payload, indent=2, sort_keys=False, default=str))


def fmt_num(v: float | None, digits: int = 2) -> str:
    """A number for a table cell; ``—`` when unknown."""
    return "—" if v is None else f"{v:.{digits}f}"


def wide_console() -> Any:
    """A rich console on stdout; piped output gets 200 columns (whole numbers, not 80 columns)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


def print_tables(console: Any, *tables: Any) -> None:
    """Print tables so that a narrow terminal folds a value onto two lines, never cuts it."""
    for t in tables:
        for column in t.columns:
            column.overflow = "fold"
        console.print(t)
