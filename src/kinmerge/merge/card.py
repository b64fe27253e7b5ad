"""A merge's lineage (``kinmerge.json``) and its model card (``README.md``) that fits the hub.

``kinmerge.json`` is the lineage as data, for kinmerge: the parents (as given, their local path,
content id and hub id), the base, the recipe, the exact mergekit config, the parents' kinship,
versions. It holds this machine's paths, which the card never shows.

The card is a view of that record for people and for the Hugging Face hub:

- ``base_model`` names each parent by its hub id when it came from the hub, or, for a parent
  that is itself a kinmerge merge, the models *it* descends from; any other parent by its folder
  name, and the body says which names are local folder names rather than hub ids;
- ``base_model_relation: merge``, and the parents' kinship (PCC, CS, ED) in the body;
- after evaluation (:func:`write_card`), the scores as ``model-index`` entries, one per task
  (the hub's format for evaluation results), and the generation and run that produced it.

Example:
    >>> kin = check_kinship({"pcc": 0.41, "ed": 1.5})
    >>> kin
    {'pcc': 0.41, 'ed': 1.5}
    >>> check_kinship({"pcc": 1.7})
    Traceback (most recent call last):
    ...
    kinmerge.errors.MergeError: kinship pcc=1.7 must be a number in [-1, 1]
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kinmerge._io import atomic_write
from kinmerge.errors import MergeError
from kinmerge.kinship import METRIC_NAMES, METRICS
from kinmerge.merge._yaml import dump_yaml
from kinmerge.sources import hub_id_of_cache_path

__all__ = [
    "METADATA_FILE",
    "METADATA_FORMAT",
    "base_model_names",
    "check_kinship",
    "model_card",
    "read_metadata",
    "replace_strings",
    "write_card",
]

METADATA_FILE = "kinmerge.json"
#: 2 adds each parent's ``hub_id`` and ``descends_from``; format 1 records are still read.
METADATA_FORMAT = 2
_MAX_DEPTH = 32  # generations followed back through parents' kinmerge.json (guards a cycle)


def read_metadata(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``kinmerge.json`` of a merge folder; None when there is none (or it is unreadable, or
    its ``parents`` are not records of the shape kinmerge writes: the folder is then not taken
    for a merge, rather than failing a later merge with a traceback)."""
    try:
        data = json.loads((Path(folder) / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and _parents_well_formed(data.get("parents")) else None


def _parents_well_formed(parents: Any) -> bool:
    def text(v: Any) -> bool:
        return v is None or isinstance(v, str)

    return parents is None or (isinstance(parents, list) and all(
        isinstance(p, dict) and all(text(p.get(k)) for k in ("path", "ref", "hub_id"))
        and (p.get("descends_from") is None or (isinstance(p["descends_from"], list)
                                                and all(isinstance(n, str) for n in p["descends_from"])))
        for p in parents))


def base_model_names(meta: Mapping[str, Any], _depth: int = 0) -> list[str]:
    """What a card's ``base_model`` lists for a merge: per parent, its hub id; for a parent that
    is a merge, the names of what it descends from; else its folder name. In order, each once."""
    names: list[str] = []
    for p in meta.get("parents") or []:
        for name in _parent_names(p, _depth):
            if name not in names:
                names.append(name)
    return names


def _parent_names(p: Mapping[str, Any], depth: int) -> list[str]:
    path = str(p.get("path") or p.get("ref") or "")
    hub = p.get("hub_id") or hub_id_of_cache_path(path)
    if hub:
        return [hub.partition("@")[0]]
    if p.get("descends_from"):
        return [str(n) for n in p["descends_from"]]
    if "descends_from" not in p and depth < _MAX_DEPTH and (meta := read_metadata(path)) is not None:
        return base_model_names(meta, depth + 1)  # a format-1 record: follow the parent's own
    return [Path(path).name]


def check_kinship(kinship: Mapping[str, Any]) -> dict[str, float | None]:
    """Validate the parents' kinship before it is recorded and shown: ``{metric: value}``.

    Metrics are ``pcc``, ``cs``, ``ed``; a value is a finite number (``pcc``/``cs`` in [-1, 1],
    ``ed`` >= 0) or None for "undefined" (e.g. a zero delta). Returned in that metric order.

    Raises:
        MergeError: not a mapping, an unknown metric, or a value out of range.
    """
    if not isinstance(kinship, Mapping):
        raise MergeError(f"kinship must be a mapping like {{'pcc': 0.41}}, got {type(kinship).__name__}")
    if unknown := sorted(str(k) for k in kinship if k not in METRICS):
        raise MergeError(f"kinship: unknown metric(s) {', '.join(unknown)}; use {', '.join(METRICS)}")
    out: dict[str, float | None] = {}
    for metric in METRICS:
        if metric not in kinship:
            continue
        value = kinship[metric]
        if value is None:
            out[metric] = None
            continue
        x = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
        lo, hi = (-1.0, 1.0) if metric in ("pcc", "cs") else (0.0, math.inf)
        if not (math.isfinite(x) and lo <= x <= hi):
            bounds = "[-1, 1]" if metric != "ed" else ">= 0"
            raise MergeError(f"kinship {metric}={value!r} must be a number {'in ' if metric != 'ed' else ''}{bounds}")
        out[metric] = x
    return out


def _check_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for task, value in scores.items():
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
        if not ok or not str(task):
            raise MergeError(f"score of task {task!r} must be a finite number, got {value!r}")
        out[str(task)] = float(value)
    return out


def replace_strings(x: Any, mapping: Mapping[str, str]) -> Any:
    """``x`` (plain JSON-like data) with every string that is a key of ``mapping`` replaced."""
    if isinstance(x, str):
        return mapping.get(x, x)
    if isinstance(x, dict):
        return {k: replace_strings(v, mapping) for k, v in x.items()}
    if isinstance(x, list):
        return [replace_strings(v, mapping) for v in x]
    return x


def model_card(
    meta: Mapping[str, Any],
    *,
    scores: Mapping[str, float] | None = None,
    generation: int | None = None,
    run: str | None = None,
) -> str:
    """The README.md of a merge from its ``kinmerge.json`` record (see the module docstring).

    Args:
        meta: the merge's metadata.
        scores: task -> accuracy (0..1), shown as ``model-index`` entries and a table.
        generation: the generation of an evolution run that made this merge.
        run: that run's id.

    Raises:
        MergeError: a score that is not a finite number.
    """
    parents = list(meta.get("parents") or [])
    checked = _check_scores(scores) if scores else {}
    adapter = bool(meta.get("adapter"))  # a LoRA adapter made by peft, not a model made by mergekit
    tool = ("peft", "https://github.com/huggingface/peft") if adapter else ("mergekit",
                                                                           "https://github.com/arcee-ai/mergekit")
    front: dict[str, Any] = {
        "base_model": base_model_names(meta),
        "base_model_relation": "merge",
        "tags": ["merge", tool[0], "kinmerge", *(["lora"] if adapter else [])],
        "library_name": "peft" if adapter else "transformers",
    }
    if checked:
        front["model-index"] = [{"name": meta["id"], "results": [
            {"task": {"type": "text-generation", "name": "Text Generation"},
             "dataset": {"name": task, "type": task},
             "metrics": [{"type": "accuracy", "value": value, "name": "accuracy"}]}
            for task, value in checked.items()
        ]}]
    recipe = meta["recipe"]
    context = ([f"generation {int(generation)}"] if generation is not None else []) + ([f"run `{run}`"] if run else [])
    made = f" Made in {' of '.join(context)}." if context else ""
    lines = [
        "---", dump_yaml(front).rstrip(), "---", "",
        f"# Merge {meta['id']}", "",
        f"A merge of {len(parents)} {'LoRA adapters into a LoRA adapter' if adapter else 'models'} with the "
        f"`{recipe['method']}` recipe, made by [kinmerge](https://arxiv.org/abs/2410.12613) using "
        f"[{tool[0]}]({tool[1]})." + made, "",
        "## Parents", "",
        "| # | model | from | content id |",
        "|---|---|---|---|",
    ]
    rows = [(chr(ord("A") + i), p) for i, p in enumerate(parents)]
    if meta.get("base"):
        rows.append(("base", meta["base"]))
    local = False
    for label, p in rows:
        name, origin, is_local = _describe(p)
        local = local or is_local
        lines.append(f"| {label} | `{name}` | {origin} | `{p.get('content_id', '')}` |")
    lines.append("")
    if local:
        lines += [
            "`base_model` lists the hub id of each parent that came from the Hugging Face hub (for a "
            "parent that is itself a merge: the models it descends from); the others are named by "
            "their local folder name, which is not a hub id: replace those names before pushing "
            "this card to the hub.", "",
        ]
    lines += ["## Kinship of the parents", ""]
    if kinship := meta.get("kinship"):
        lines += ["| metric | value |", "|---|---|"]
        for k, v in kinship.items():
            label = f"{k.upper()} ({METRIC_NAMES[k]})" if k in METRIC_NAMES else k
            lines.append(f"| {label} | {'undefined' if v is None else f'{v:.4g}'} |")
        if len(parents) > 2:
            lines += ["", "For more than two parents: the mean over every pair (n-model kinship)."]
    else:
        lines.append("Not computed (run `kinmerge kinship` on the parents, or merge with `--base`).")
    if checked:
        avg = sum(checked.values()) / len(checked)
        lines += ["", "## Scores", "", "| task | accuracy |", "|---|---|"]
        lines += [f"| {t} | {v:.4f} |" for t, v in checked.items()] + [f"| **average** | {avg:.4f} |"]
    names = {str(p.get("path")): _describe(p)[0] for _, p in rows}
    lines += ["", "## Recipe", "", "```yaml", dump_yaml(recipe).rstrip(), "```", ""]
    lines += [f"{tool[0]} {'call' if adapter else 'configuration'} (models by name):", "", "```yaml",
              dump_yaml(replace_strings(meta["mergekit_config"], names)).rstrip(), "```", ""]
    versions = ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items() if v)
    lines += [f"Made {meta.get('created', '')} with {versions}.", ""]
    return "\n".join(lines)


def _describe(p: Mapping[str, Any]) -> tuple[str, str, bool]:
    """(name, where it came from, whether the name is a local folder name) for one model."""
    path = str(p.get("path") or p.get("ref") or "")
    hub = p.get("hub_id") or hub_id_of_cache_path(path)
    if hub:
        return hub, "Hugging Face hub", False
    names = _parent_names(p, 0)
    if names != [Path(path).name]:
        return Path(path).name, "kinmerge merge of " + ", ".join(f"`{n}`" for n in names), False
    return Path(path).name, "local folder (not on the hub)", True


def write_card(
    folder: str | os.PathLike[str],
    *,
    scores: Mapping[str, float] | None = None,
    generation: int | None = None,
    run: str | None = None,
) -> Path:
    """Rewrite a merge's README.md from its ``kinmerge.json`` plus scores, generation and run.

    The evolution runner calls it after evaluating a merge. The card is replaced atomically;
    ``kinmerge.json`` is left as it is (a merge shared by several runs has one record).

    Args:
        folder: the merge's folder (``out_root/<id>``).
        scores: task -> accuracy (0..1), e.g. ``EvalResult.scores``.
        generation: the generation that made the merge.
        run: the run's id.

    Returns:
        The path of the card.

    Raises:
        MergeError: ``folder`` has no ``kinmerge.json``, or a score is not a finite number.

    Example:
        >>> # not run here: needs a merge folder in a run (tests/test_merge.py)
        >>> write_card("runs/r/models/3f9c0a1b2d4e5f60", scores={"add": 0.8}, generation=2, run="kin")  # doctest: +SKIP
        PosixPath('runs/r/models/3f9c0a1b2d4e5f60/README.md')
    """
    meta = read_metadata(folder)
    if meta is None:
        raise MergeError(f"{folder}: no readable {METADATA_FILE}; only merges made by kinmerge have a card to rewrite")
    return atomic_write(Path(folder) / "README.md", model_card(meta, scores=scores, generation=generation, run=run))
