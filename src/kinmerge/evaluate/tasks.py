"""The builtin task format: a folder of ``<task>.jsonl`` files (see ``docs/tasks.md``).

Each non-blank line is one example::

    {"prompt": "add 23+45=", "answer": "68"}
    {"prompt": "capital of france:", "answer": " paris", "choices": [" paris", " rome"]}

Without ``choices`` the model must generate ``answer`` exactly (greedy, up to a newline or end
of sequence); with ``choices`` the choice with the highest log-likelihood given the prompt wins.
A task is one mode or the other, never a mix. Keys other than these three are ignored; a key
given twice on one line is an error (JSON readers disagree on which one counts). Whether a line
makes sense for a given model (its tokenizer, its length limit) is checked by the evaluator
before it scores anything (``kinmerge.evaluate.builtin.check_examples``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from kinmerge._io import atomic_file
from kinmerge._json import StrictJSONError, json_lines, loads_strict
from kinmerge.errors import EvaluationError

__all__ = ["SPLITS", "Example", "Task", "load_task", "load_tasks", "split_positions", "split_task", "write_task"]

_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Example:
    """One prompt with its reference answer and, for choice tasks, the candidates.

    ``line`` is where it was read (1-based; 0 for examples made in code), for error messages.
    """

    prompt: str
    answer: str
    choices: tuple[str, ...] | None = None
    line: int = field(default=0, compare=False)

    def to_json(self) -> str:
        """The example as one JSONL line (no trailing newline)."""
        record: dict[str, object] = {"prompt": self.prompt, "answer": self.answer}
        if self.choices is not None:
            record["choices"] = list(self.choices)
        return json.dumps(record, ensure_ascii=False)


@dataclass(frozen=True)
class Task:
    """A named list of examples read from ``<name>.jsonl``; ``sha256`` is of the file's bytes."""

    name: str
    path: Path
    examples: tuple[Example, ...]
    sha256: str

    @property
    def mode(self) -> str:
        """``"choice"`` (log-likelihood over ``choices``) or ``"generate"`` (exact match)."""
        return "choice" if self.examples[0].choices is not None else "generate"


def _parse_line(path: Path, lineno: int, line: str) -> Example:
    where = f"{path}:{lineno}"
    try:
        record = loads_strict(line)
    except StrictJSONError as exc:
        raise EvaluationError(f"{where}: {exc}; each line must be one "
                              f'JSON object like {{"prompt": "...", "answer": "..."}}') from None
    if not isinstance(record, dict):
        raise EvaluationError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("prompt", "answer"):
        if key not in record:
            raise EvaluationError(f"{where}: missing required key {key!r}")
        if not isinstance(record[key], str):
            raise EvaluationError(f"{where}: {key!r} must be a string, "
                                  f"got {type(record[key]).__name__}")
    prompt, answer = record["prompt"], record["answer"]
    if not answer.strip():
        raise EvaluationError(f"{where}: 'answer' is empty")
    choices = record.get("choices")
    if choices is None:
        return Example(prompt, answer, line=lineno)
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise EvaluationError(f"{where}: 'choices' must be a list of strings")
    if len(choices) < 2:
        raise EvaluationError(f"{where}: 'choices' needs at least 2 entries, got {len(choices)}")
    if len(set(choices)) != len(choices):
        raise EvaluationError(f"{where}: 'choices' has duplicate entries")
    if answer not in choices:
        raise EvaluationError(f"{where}: 'answer' {answer!r} is not one of 'choices'")
    return Example(prompt, answer, tuple(choices), line=lineno)


def load_task(path: str | os.PathLike[str]) -> Task:
    """Read and validate one ``<task>.jsonl`` file.

    Args:
        path: the JSONL file; the task is named after its stem.

    Returns:
        The task with its examples in file order.

    Raises:
        EvaluationError: if the file is missing, unreadable, empty, or a line is not a valid
            example, or the file mixes choice and generation examples. The message names the
            file and line.

    Example:
        >>> from kinmerge.sources import zoo_path
        >>> load_task(zoo_path("zoo:tasks") / "add.jsonl").examples[0]
        Example(prompt='add 39+62=', answer='101', choices=None, line=1)
    """
    path = Path(path)
    if not _TASK_NAME.match(path.stem):
        raise EvaluationError(f"{path}: task names may use letters, digits, '_', '.', '-' only")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot read task file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvaluationError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    examples: list[Example] = []
    first_mode_line = 0
    for lineno, line in json_lines(text):  # on \n only: U+2028 inside a JSON string is no line end
        example = _parse_line(path, lineno, line)
        if examples and (example.choices is None) != (examples[0].choices is None):
            raise EvaluationError(
                f"{path}:{lineno}: mixes choice and generation examples (line {first_mode_line} "
                f"{'has' if examples[0].choices is not None else 'has no'} 'choices'); "
                f"split them into two task files")
        if not examples:
            first_mode_line = lineno
        examples.append(example)
    if not examples:
        raise EvaluationError(f"{path}: no examples (the file is empty)")
    return Task(path.stem, path, tuple(examples), hashlib.sha256(raw).hexdigest())


def load_tasks(tasks_dir: str | os.PathLike[str],
               names: Sequence[str] | None = None) -> dict[str, Task]:
    """Read every ``*.jsonl`` task in ``tasks_dir`` (or only ``names``), sorted by name.

    Raises:
        EvaluationError: if the folder does not exist, holds no ``.jsonl`` files, a named task
            is missing, or any task file is invalid.
    """
    tasks_dir = Path(tasks_dir)
    if not tasks_dir.is_dir():
        raise EvaluationError(f"{tasks_dir}: task folder not found; expected a folder of "
                              f"<task>.jsonl files (see docs/tasks.md)")
    if names is None:
        paths = sorted(tasks_dir.glob("*.jsonl"))
        if not paths:
            raise EvaluationError(f"{tasks_dir}: no <task>.jsonl files in the task folder")
    else:
        paths = []
        for name in names:
            p = tasks_dir / f"{name}.jsonl"
            if not p.is_file():
                raise EvaluationError(f"{p}: task {name!r} not found in {tasks_dir}")
            paths.append(p)
    tasks = [load_task(p) for p in paths]
    return {t.name: t for t in sorted(tasks, key=lambda t: t.name)}


def write_task(path: str | os.PathLike[str], examples: Iterable[Example]) -> Path:
    """Write ``examples`` as a task file, atomically (temp file, then rename)."""
    with atomic_file(path, "w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(ex.to_json() + "\n")
    return Path(path)


#: The parts a task's examples split into: ``selection`` (what a loop may choose with), ``heldout``
#: (what it never sees: the score a chosen model reports) and ``all`` (no split).
SPLITS = ("all", "selection", "heldout")


def split_task(task: Task, part: str, heldout_fraction: float = 0.5, seed: int = 0) -> Task:
    """The examples of ``task`` in one part of a seeded selection / held-out split.

    The split is a seeded permutation of the examples' positions (by task name and ``seed``, the
    same on every machine): its first ``round(n × heldout_fraction)`` positions (at least 1, at
    most n − 1) are held out, the rest are the selection part; both keep file order. The two parts
    are disjoint and cover the task, so a model chosen on ``selection`` is scored on examples the
    choice never saw. Evolutionary merging over-fits its fitness set (docs/evolve.md), which is
    why every run splits by default.

    Raises:
        EvaluationError: ``part`` is unknown, the fraction is outside (0, 1), or the task has fewer
            than 2 examples (nothing to hold out).

    Example:
        >>> t = Task("t", Path("t.jsonl"), tuple(Example(str(i), "a") for i in range(10)), "x")
        >>> sel, held = split_task(t, "selection"), split_task(t, "heldout")
        >>> len(sel.examples), len(held.examples), set(sel.examples) & set(held.examples)
        (5, 5, set())
    """
    if part not in SPLITS:
        raise EvaluationError(f"unknown split {part!r}; choose one of {', '.join(SPLITS)}")
    if part == "all":
        return task
    if not 0.0 < heldout_fraction < 1.0:
        raise EvaluationError(f"heldout_fraction must be between 0 and 1 (exclusive), got {heldout_fraction}")
    n = len(task.examples)
    if n < 2:
        raise EvaluationError(f"{task.path}: {n} example(s): too few to split into selection and held-out "
                              f"parts; add examples, or turn the split off (heldout: false)")
    keep = split_positions(n, part, heldout_fraction, seed, task.name)
    return replace(task, examples=tuple(task.examples[i] for i in keep))


def split_positions(n: int, part: str, heldout_fraction: float, seed: int, name: str) -> list[int]:
    """The positions (ascending) of one part of ``n`` examples under :func:`split_task`'s rule.

    The rule alone, so an evaluator that reads examples its own way (the lm_eval adapter, on a
    harness task with one split) holds out exactly the examples the builtin evaluator would.
    ``n`` must be at least 2 and ``part`` ``"selection"`` or ``"heldout"``.

    Example:
        >>> split_positions(4, "heldout", 0.5, 0, "t") + split_positions(4, "selection", 0.5, 0, "t")
        [2, 3, 0, 1]
    """
    import random

    order = list(range(n))
    random.Random(f"split:{seed}:{name}").shuffle(order)
    n_held = min(n - 1, max(1, round(n * heldout_fraction)))
    held = set(order[:n_held])
    return [i for i in range(n) if (i in held) == (part == "heldout")]
