"""Task weights and a metric direction in real runs (issue 16, item 3): the pool ranks by them,
the fingerprint keeps them, a resume under other ones is refused, bad ones are one line.

Runs on the micro zoo with 24-example choice tasks and no held-out split, so every task score
has room to differ between models (``evolve_helpers`` says why choices).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from cli_checks import assert_one_line_error
from evolve_helpers import make_choice_tasks, run_config, write_config
from kinmerge.cli import cli
from kinmerge.errors import StoreError
from kinmerge.evolve import RunConfig, evolve
from kinmerge.fingerprint import RunFingerprint
from kinmerge.store import RunStore

WEIGHTS = {"reverse": 3.0}  # add and caesar weigh 1


def _weighted(task_scores: dict[str, float], weights: dict[str, float]) -> float:
    w = {t: weights.get(t, 1.0) for t in task_scores}
    return sum(w[t] * s for t, s in task_scores.items()) / sum(w.values())


def _cfg(zoo: Any, tasks: Path, run_id: str, **evaluator: Any) -> dict[str, Any]:
    return run_config(zoo, tasks, run_id=run_id, strategy={"name": "greedy", "k": 2, "max_generations": 2},
                      evaluator={"name": "builtin", "tasks_dir": str(tasks), "threads": 1, "batch_size": 32,
                                 "heldout": False, **evaluator})


@pytest.fixture(scope="module")
def runs(micro_zoo, tmp_path_factory):
    """A plain run, a weighted one and a ``direction: min`` one in one run directory."""
    root = tmp_path_factory.mktemp("fitness")
    tasks = make_choice_tasks(micro_zoo.tasks_dir, root / "tasks", n=24)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("KINMERGE_CACHE", str(tmp_path_factory.getbasetemp() / "kinmerge-cache"))
        paths = {name: write_config(root / f"{name}.yaml", _cfg(micro_zoo, tasks, name, **ev)) for name, ev in [
            ("plain", {}), ("weighted", {"task_weights": WEIGHTS}), ("lowest", {"direction": "min"})]}
        done = {name: evolve(path, root / "run", progress=False) for name, path in paths.items()}
    return SimpleNamespace(root=root, tasks=tasks, run_dir=root / "run", paths=paths, **done)


def test_a_weighted_run_ranks_by_the_weighted_mean(runs):
    weighted = runs.weighted
    for m in weighted.pool:  # status shows the weighted mean of the raw task scores
        assert m.score == pytest.approx(_weighted(m.task_scores, WEIGHTS))
    by_weight = max(weighted.pool, key=lambda m: (_weighted(m.task_scores, WEIGHTS), m.id))
    assert weighted.best is not None and weighted.best.id == by_weight.id
    assert weighted.top_k[0] == by_weight.id
    by_mean = max(weighted.pool, key=lambda m: (_weighted(m.task_scores, {}), m.id))
    assert by_mean.id != by_weight.id, "premise: the weights change which model is best"
    with RunStore(runs.run_dir, lock=False) as store:
        fp = store.get_run("weighted").fingerprint
        assert fp is not None and fp.to_dict()["fitness"] == {"task_weights": WEIGHTS}
        state = store.pool_state("weighted", evaluator=fp.evaluator, fitness=fp.fitness)
        assert {m.id: m.score for m in state.models} == pytest.approx(
            {m.id: _weighted(m.task_scores, WEIGHTS) for m in weighted.pool})
        assert "fitness" not in store.get_run("plain").config  # the plain mean is stored as before
    status = CliRunner().invoke(cli, ["status", str(runs.run_dir), "--run", "weighted", "--json"])
    assert status.exit_code == 0, status.output
    data = json.loads(status.output)
    assert data["best"] == by_weight.id and data["best_score"] == pytest.approx(by_weight.score)


def test_direction_min_ranks_lower_first(runs):
    lowest = runs.lowest
    # generation 2 of greedy merges the top-2 after generation 1: with `min`, the two lowest
    before = sorted((m for m in lowest.pool if m.generation <= 1), key=lambda m: (m.score, m.id))
    assert before[1].score < before[2].score, "premise: the two lowest are clear of the third"
    second = [set(m.parents) for m in lowest.pool if m.generation == 2]
    assert second == [{before[0].id, before[1].id}]
    assert second != [set(m.parents) for m in runs.plain.pool if m.generation == 2]
    low = min(lowest.pool, key=lambda m: (m.score, m.id))
    assert lowest.best is not None and lowest.best.id == low.id and lowest.best.score == low.score  # raw, not flipped
    assert all(m.score is not None and m.score >= 0 for m in lowest.pool)
    with RunStore(runs.run_dir, lock=False) as store:
        fp = store.get_run("lowest").fingerprint
        assert fp is not None and fp.fitness.direction == "min"
        state = store.pool_state("lowest", evaluator=fp.evaluator, fitness=fp.fitness)
        assert {m.id: m.score for m in state.models} == pytest.approx({m.id: -m.score for m in lowest.pool})
        events = [e.message for e in store.events("lowest", kind="generation")]
    assert events and all("best -" not in line for line in events)  # the progress line shows raw scores


@pytest.mark.parametrize(("change", "field"), [
    ({"task_weights": {"reverse": 1.0}}, "fitness.task_weights"),
    ({"task_weights": {}}, "fitness.task_weights"),
    ({"task_weights": WEIGHTS, "direction": "min"}, "fitness.direction"),
])
def test_a_resume_with_another_fitness_is_refused(runs, micro_zoo, change, field):
    other = RunConfig.from_dict(_cfg(micro_zoo, runs.tasks, "weighted", **change))
    with pytest.raises(StoreError, match=rf"started with other settings: {field}: .*; rerun with the same"):
        evolve(other, runs.run_dir, progress=False)
    again = evolve(runs.paths["weighted"], runs.run_dir, progress=False)  # the same weights resume
    assert again.made["merges"] == 0 and again.made["evaluations"] == 0


@pytest.mark.parametrize(("evaluator", "says"), [
    ({"task_weights": {"sort": 1.0}}, "task_weights name sort, not a task of this run (add, caesar, reverse)"),
    ({"task_weights": {"add": -1}}, "task_weights.add: a weight must be a number >= 0, got -1"),
    ({"task_weights": {"add": 0, "caesar": 0, "reverse": 0}}, "task_weights are all zero"),
    ({"direction": "lowest"}, "evaluator.direction: "),
])
def test_bad_weights_are_one_error_line(micro_zoo, choice_tasks, tmp_path, evaluator, says):
    cfg = write_config(tmp_path / "bad.yaml", _cfg(micro_zoo, choice_tasks, "bad", **evaluator))
    result = CliRunner().invoke(cli, ["evolve", str(cfg), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    line = assert_one_line_error(result, cfg)
    assert says in line
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_racing_with_weights_is_refused(micro_zoo, choice_tasks, tmp_path):
    data = {**_cfg(micro_zoo, choice_tasks, "race", task_weights=WEIGHTS), "racing": {"first": 4}}
    cfg = write_config(tmp_path / "race.yaml", data)
    result = CliRunner().invoke(cli, ["evolve", str(cfg), "--run-dir", str(tmp_path / "run")])
    assert "racing: a race bounds the plain mean" in assert_one_line_error(result, cfg)


def test_fingerprints_without_a_fitness_read_back_unchanged():
    a = RunFingerprint(("x", "y"), "b", "greedy", {"k": 3}, {"method": "slerp"}, "e")
    assert "fitness" not in a.to_dict() and RunFingerprint.from_dict(a.to_dict()) == a
    stored = {**a.to_dict(), "fitness": {"task_weights": {"t": 2}, "direction": "min"}}
    back = RunFingerprint.from_dict(stored)
    assert back is not None and back.to_dict() == {**stored, "fitness": {"task_weights": {"t": 2.0},
                                                                        "direction": "min"}}
    assert a.changes(back) == {"fitness.task_weights": ({}, {"t": 2.0}), "fitness.direction": ("max", "min")}
    assert math.isclose(back.fitness.value({"t": 1.0, "u": 4.0}), 2.0)
