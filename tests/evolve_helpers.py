"""Shared helpers for evolution-run tests: a choice-task folder on the micro zoo, config files.

The fixtures (``micro_zoo``, ``choice_tasks``) live in ``conftest.py``; these are the plain helpers.

Why choice tasks: the micro zoo's 24k-parameter models get (almost) no exact-match answer
right, so every score would be 0 and ranking would fall back to ids. Log-likelihood choice
between the right answer and a corrupted one gives scores that differ between merges, so the
strategies make real decisions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def _corrupt(answer: str) -> str:
    wrong = answer[::-1]
    if wrong == answer:
        wrong = answer[1:] + answer[:1] if len(answer) > 1 else answer + answer
    if wrong == answer:
        wrong = answer + "x"
    return wrong


def make_choice_tasks(tasks_dir: Path, out: Path, n: int = 8) -> Path:
    """Each zoo task's first ``n`` held-out examples as 2-way choices: the answer vs a corruption."""
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(tasks_dir).glob("*.jsonl")):
        lines = []
        for line in f.read_text().splitlines()[:n]:
            ex = json.loads(line)
            choices = [ex["answer"], _corrupt(ex["answer"])]
            lines.append(json.dumps({"prompt": ex["prompt"], "answer": ex["answer"], "choices": choices}))
        (out / f.name).write_text("\n".join(lines) + "\n")
    return out


def run_config(zoo: Any, tasks_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A run config (plain data) over the zoo: base + its three specialists, builtin evaluator."""
    cfg: dict[str, Any] = {
        "foundation": [str(p) for _, p in sorted(zoo.specialists.items())],
        "base": str(zoo.base),
        "strategy": {"name": "greedy", "k": 3, "max_generations": 2},
        "merge": {"method": "slerp"},
        "evaluator": {"name": "builtin", "tasks_dir": str(tasks_dir), "threads": 1, "batch_size": 32},
        "kinship_metric": "pcc",
        "seed": 0,
    }
    cfg.update(overrides)
    return cfg


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as YAML to ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ray_config(tmp_path: Path, data: dict[str, Any], **executor: Any) -> Path:
    """``data`` with the Ray executor and ``executor`` settings, written to ``tmp_path/ray.yaml``."""
    return write_config(tmp_path / "ray.yaml", {**data, "executor": {"name": "ray", **executor}})


def pool_key(summary: Any) -> list[tuple[Any, ...]]:
    """What two runs must agree on: each pool member's id, generation, parents, score, origin."""
    return [(m.id, m.generation, m.parents, m.score, m.origin) for m in summary.pool]


def step_events(run_dir: Path, generation: int, run_id: str = "g") -> list[str]:
    """The kinds of a generation's merge and evaluation events, in the order they were logged."""
    from kinmerge.store import RunStore

    with RunStore(run_dir, lock=False) as store:
        return [e.kind for e in store.events(run_id) if e.generation == generation
                and e.kind in ("merge_start", "merge", "evaluate_start", "evaluate")]
