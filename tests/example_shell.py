"""Run documented ``kinmerge ...`` examples one after another in one Python process.

Why: a ``kinmerge`` process spends about 5 s importing torch, transformers and mergekit before
it does anything, and the documented examples are about 60 commands. Running them through the
click group in one process (the same code the console script calls, ``argv`` split as a shell
would, globs expanded) pays that once. An example that needs more of a shell than words and
globs, or that starts a Ray cluster (which outlives the command in its process), runs in bash.

Usage: ``python example_shell.py < commands.json`` with a JSON list of command lines; the
current folder and environment are the examples'. Prints one JSON line per command:
``{"cmd", "rc", "stderr", "seconds"}``, ``stderr`` holding a traceback where one escaped.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import shlex
import subprocess
import sys
import time
import traceback

SHELL_ONLY = set("|&;<>$`()")  # anything a list of words cannot say


def in_process(cmd: str) -> bool:
    return not (SHELL_ONLY & set(cmd)) and not any(w == "--ray" or w.startswith("--ray=") for w in cmd.split())


def argv(cmd: str) -> list[str]:
    """The command's arguments after ``kinmerge``, as bash would pass them (globs expanded;
    a glob that matches nothing stays as written)."""
    words = []
    for word in shlex.split(cmd)[1:]:
        words += (sorted(glob.glob(word)) or [word]) if glob.has_magic(word) else [word]
    return words


def run(cmd: str) -> tuple[int, str]:
    from kinmerge.cli import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(args=argv(cmd), prog_name="kinmerge", standalone_mode=True)
            rc = 0
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # what the console script would have printed
            traceback.print_exc()
            rc = 1
    return rc, err.getvalue()


def main() -> None:
    for cmd in json.load(sys.stdin):
        start = time.perf_counter()
        if in_process(cmd):
            rc, stderr = run(cmd)
        else:
            proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=900)
            rc, stderr = proc.returncode, proc.stderr
        print(json.dumps({"cmd": cmd, "rc": rc, "stderr": stderr[-2000:],
                          "seconds": round(time.perf_counter() - start, 2)}), flush=True)


if __name__ == "__main__":
    main()
