"""What "a bad input ends in one line" means, asserted in one place, and counted.

``assert_one_line_error`` checks a finished CLI run (click's ``CliRunner`` result or a
``subprocess.CompletedProcess``): exit code 2, no traceback anywhere, and stderr exactly one line
that starts with ``Error:`` and names what it must name (the file at fault).

Every call is a bad input tried. Set ``KINMERGE_FAULT_TALLY=<file>`` and each call appends one
JSON line ``{"test": ..., "one_line_exit_2": true|false}`` before asserting, so a session can
count how many bad inputs the tests try and how many end as promised (fuzz examples included:
one line per generated example that was a bad input).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

__all__ = ["assert_one_line_error", "kinmerge_subprocess", "streams"]


def streams(result: Any) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a ``CliRunner`` result or a ``CompletedProcess``."""
    if isinstance(result, subprocess.CompletedProcess):
        return result.returncode, result.stdout, result.stderr
    return result.exit_code, result.stdout, result.stderr


def _tally(ok: bool) -> None:
    path = os.environ.get("KINMERGE_FAULT_TALLY")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"test": test, "one_line_exit_2": ok}) + "\n")


def assert_one_line_error(result: Any, *names: object) -> str:
    """Exit 2, no traceback, stderr one ``Error:`` line naming every one of ``names``; the line."""
    code, out, err = streams(result)
    lines = [line for line in err.splitlines() if line.strip()]
    exc = getattr(result, "exception", None)
    ok = (code == 2 and "Traceback" not in out + err and len(lines) == 1 and lines[0].startswith("Error: ")
          and all(str(n) in lines[0] for n in names)
          and (exc is None or isinstance(exc, SystemExit)))
    _tally(ok)
    assert ok, f"exit {code}, expected 2 with one Error line naming {[str(n) for n in names]}:\n{err}\n{out}"
    return lines[0]


def kinmerge_subprocess(*args: object) -> subprocess.CompletedProcess:
    """``python -m kinmerge.cli ARGS`` in a real process (the environment, PYTHONPATH included, inherited)."""
    return subprocess.run([sys.executable, "-m", "kinmerge.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)
