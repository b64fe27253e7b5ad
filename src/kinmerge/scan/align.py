"""Aligned tensors: which tensors of a base and N models one pass compares, and under which names.

``plan`` checks that the models line up with the base (same tensors, same shapes, or a
vocabulary that only differs in its number of rows) and lists the tensors in the order the
base stores them: every consumer of the pass (``kinmerge.scan.stream``) sees the same positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kinmerge.errors import DuplicateModelError, MissingTensorError, ShapeMismatchError, UnsupportedDtypeError
from kinmerge.sources import RAW_DTYPES, ModelSource, is_vocab_tensor, naming_mismatch


@dataclass(frozen=True)
class TensorPlan:
    """One tensor to compare: how many leading elements (fewer when vocabularies differ)."""

    name: str
    numel: int
    shape: tuple[int, ...]



def plan(base: ModelSource, models: Sequence[ModelSource], *,
         allow_missing: bool = False) -> tuple[list[TensorPlan], list[str], list[str]]:
    """Check that ``models`` line up with ``base``; return (tensors to compare, notes, skipped).

    Raises:
        DuplicateModelError: the same model (path) appears twice, or a model is the base itself.
        MissingTensorError: a tensor is absent from some model and ``allow_missing`` is False.
        ShapeMismatchError: shapes differ other than in the vocabulary rows of an embedding/head.
    """
    _check_distinct([base, *models])
    everyone = [base, *models]
    labels = display_labels(everyone)
    names_all = set(base.tensors)
    for m in models:
        names_all |= set(m.tensors)
    missing = {label: sorted(names_all - set(src.tensors)) for src, label in zip(everyone, labels, strict=True)}
    missing = {k: v for k, v in missing.items() if v}
    skipped: list[str] = []
    notes: list[str] = []
    if missing:
        if not allow_missing:
            cause = naming_mismatch(everyone)  # no option named: only commands that have one add it
            raise MissingTensorError(_missing_message(everyone, labels) + (f"; {cause}" if cause else ""),
                                     format_mismatch=cause is not None)
        skipped = sorted(set().union(*missing.values()))
        notes.append(f"skipped {len(skipped)} tensor(s) missing from some model: " + _short_list(skipped))
    common = [n for n in base.tensors if n not in set(skipped)]  # base's file order
    plans: list[TensorPlan] = []
    trimmed: list[str] = []
    rows_seen: dict[str, int] = {}
    for name in common:
        shapes = [src.tensors[name].shape for src in everyone]
        if all(s == shapes[0] for s in shapes):
            plans.append(TensorPlan(name, base.tensors[name].numel, shapes[0]))
            continue
        if is_vocab_tensor(name, shapes, [src.vocab_size for src in everyone]):
            rows = min(s[0] for s in shapes)
            per_row = int(np.prod(shapes[0][1:], dtype=np.int64))
            plans.append(TensorPlan(name, rows * per_row, (rows, *shapes[0][1:])))
            trimmed.append(name)
            for label, s in zip(labels, shapes, strict=True):
                rows_seen[label] = s[0]
            continue
        for label, s in zip(labels[1:], shapes[1:], strict=True):
            if s != shapes[0]:
                raise ShapeMismatchError(
                    f"{label}: tensor '{name}' has shape {list(s)} but the base has "
                    f"{list(shapes[0])}; kinship needs models fine-tuned from this base"
                )
    if trimmed:
        sizes = ", ".join(f"{k} {v}" for k, v in rows_seen.items())
        rows = min(rows_seen.values())
        notes.append(
            f"vocabulary sizes differ ({sizes}): compared the {rows} rows common to all in "
            + ", ".join(trimmed)
        )
    for name in common:
        for src, label in zip(everyone, labels, strict=True):
            if src.tensors[name].dtype not in RAW_DTYPES:
                raise UnsupportedDtypeError(
                    f"{label}: tensor '{name}' has dtype {src.tensors[name].dtype}; kinship "
                    f"reads only {', '.join(RAW_DTYPES)} — dequantise or convert the model first"
                )
    return plans, notes, skipped


def _missing_message(everyone: Sequence[ModelSource], labels: Sequence[str]) -> str:
    """Which model differs from the base (``everyone[0]``), and how: it lacks tensors, or has extra ones."""
    have = set(everyone[0].tensors)
    problems = []
    for m, label in zip(everyone[1:], labels[1:], strict=True):
        if lacks := sorted(have - set(m.tensors)):
            problems.append(f"{label} lacks {len(lacks)} tensor(s) the base has: {_short_list(lacks, 4)}")
        if extra := sorted(set(m.tensors) - have):
            problems.append(f"{label} has {len(extra)} tensor(s) the base ({labels[0]}) lacks: {_short_list(extra, 4)}")
    more = f" (and {len(problems) - 1} more difference(s))" if len(problems) > 1 else ""
    return problems[0] + more


def display_labels(sources: Sequence[ModelSource]) -> list[str]:
    """Each source's ``display_name``, lengthened by parent folders where two would read the same.

    Tables, JSON keys, CSV headers and plot labels need one distinct name per model: the
    shortest path suffix that tells them apart.

    Example:
        >>> from kinmerge.sources import ArraySource
        >>> srcs = [ArraySource(p, Path(p), [], {}) for p in ("/r/a/ckpt-500", "/r/b/ckpt-500", "/r/base")]
        >>> display_labels(srcs)
        ['a/ckpt-500', 'b/ckpt-500', 'base']
    """
    labels = [src.display_name for src in sources]
    depth = [1] * len(labels)
    while True:
        seen: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            seen.setdefault(label, []).append(i)
        grew = False
        for clash in (ix for ix in seen.values() if len(ix) > 1):
            for i in clash:
                longer = _path_suffix(sources[i], depth[i] + 1)
                if longer is not None and longer != labels[i]:
                    depth[i] += 1
                    labels[i] = longer
                    grew = True
        if not grew:  # all distinct, or nothing left to tell them apart
            return labels


def _path_suffix(src: ModelSource, k: int) -> str | None:
    """The last ``k`` components of a local model's path (a weights file without its suffix)."""
    if src.hub_id is not None:
        return None
    p = Path(src.path).absolute()
    if p.suffix in (".safetensors", ".gguf"):
        parts = [*p.parent.parts[1:], p.stem]
    else:
        parts = list(p.parts[1:])
    return "/".join(parts[-k:]) if k <= len(parts) else None


def _check_distinct(sources: list[ModelSource]) -> None:
    seen: dict[tuple[str, ...], str] = {}
    for i, src in enumerate(sources):
        key = tuple(sorted(str(Path(f).resolve()) for f in src.files))
        if key in seen:
            what = "the base" if seen[key] == "base" else seen[key]
            raise DuplicateModelError(
                f"{src.ref} is the same model as {what} (same weight files); give each model once"
            )
        seen[key] = "base" if i == 0 else src.ref


def _short_list(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


