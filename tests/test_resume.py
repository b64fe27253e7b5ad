"""Resuming, extending and repairing runs on the micro zoo (issues 8 and 10).

- a run whose settings changed says *which* setting; reordered foundations are no change; a larger
  generation budget continues the same run;
- SIGTERM and Ctrl-C leave a run ``interrupted`` (resumable), not ``failed``;
- the store checks itself: a lost score or model record is reported by ``status`` and redone by the
  next ``evolve``, which then ends with the same pool;
- a run directory copied elsewhere still works (paths inside it are stored relative to it);
- a merge folder deleted before a resume is merged again.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")

from click.testing import CliRunner

from evolve_helpers import run_config, write_config
from kinmerge.cli import cli
from kinmerge.errors import StoreError
from kinmerge.evolve import evolve, read_summary
from kinmerge.store import RunStore


def _cfg(tmp_path: Path, zoo, tasks, name: str = "evolve.yaml", **strategy) -> Path:
    settings = {"name": "kinship", "k": 3, "max_generations": 1, "early_stop": False, **strategy}
    return write_config(tmp_path / name, run_config(zoo, tasks, run_id="kin", strategy=settings))


def _pool(summary) -> list[tuple]:
    return [(m.id, m.generation, m.parents, m.score) for m in summary.pool]


def test_reordered_foundations_resume_and_a_larger_budget_continues(micro_zoo, choice_tasks, tmp_path):
    run_dir = tmp_path / "run"
    first = evolve(_cfg(tmp_path, micro_zoo, choice_tasks), run_dir, progress=False)
    assert first.stop == "generation budget" and first.generation == 1
    data = yaml.safe_load((tmp_path / "evolve.yaml").read_text())
    data["foundation"] = list(reversed(data["foundation"]))
    again = evolve(write_config(tmp_path / "reordered.yaml", data), run_dir, progress=False)
    assert again.made["merges"] == 0 and again.made["evaluations"] == 0 and _pool(again) == _pool(first)
    # --dry-run after the budget is raised plans what the real run then does (issue 17), and keeps nothing.
    dry = evolve(_cfg(tmp_path, micro_zoo, choice_tasks, "longer.yaml", max_generations=2), run_dir, progress=False,
                 dry_run=True)
    assert dry.next_plan is not None and dry.next_plan.stop is None and dry.next_plan.generation == 2
    with RunStore(run_dir, lock=False) as store:
        assert store.stop_reason("kin") == "generation budget" and not store.events("kin", kind="budget_raised")
    longer = evolve(_cfg(tmp_path, micro_zoo, choice_tasks, "longer.yaml", max_generations=2), run_dir, progress=False)
    assert longer.generation == 2 and longer.made["merges"] >= 1 and longer.stop == "generation budget"
    with RunStore(run_dir, lock=False) as store:
        assert store.get_plan("kin", 2) == dry.next_plan
    assert _pool(longer)[: len(first.pool)] == _pool(first)  # the same run, gone further
    with RunStore(run_dir, lock=False) as store:
        assert [e.message for e in store.events("kin", kind="budget_raised")] == ["max_generations 1 -> 2"]
    with pytest.raises(StoreError, match=r"strategy\.max_generations: 2 -> 1; rerun with the same settings"):
        evolve(_cfg(tmp_path, micro_zoo, choice_tasks, "shorter.yaml", max_generations=1), run_dir, progress=False)
    with pytest.raises(StoreError, match=r"other settings: strategy\.k: 3 -> 2"):
        evolve(_cfg(tmp_path, micro_zoo, choice_tasks, "k2.yaml", k=2, max_generations=2), run_dir, progress=False)
    data = yaml.safe_load((tmp_path / "longer.yaml").read_text())
    data["evaluator"]["limit"] = 3  # an evaluator setting is named too, not only its hash
    with pytest.raises(StoreError, match=r"other settings: evaluator\.limit: None -> 3;"):
        evolve(write_config(tmp_path / "limit.yaml", data), run_dir, progress=False)


def test_sigterm_leaves_the_run_interrupted_and_resumable(micro_zoo, choice_tasks, tmp_path):
    cfg = _cfg(tmp_path, micro_zoo, choice_tasks, max_generations=3)
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kinmerge.cli", "evolve", str(cfg), "--run-dir", str(run_dir),
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    db = run_dir / "kinmerge.db"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait until generation 1 is being made
        if db.exists():
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
                try:
                    if con.execute("SELECT 1 FROM events WHERE kind = 'merge_start'").fetchone():
                        break
                except sqlite3.OperationalError:
                    pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert read_summary(run_dir).status == "interrupted"
    done = evolve(cfg, run_dir, progress=False)
    assert done.status == "finished" and done.generation == 3


def test_a_lost_score_is_reported_and_redone(micro_zoo, choice_tasks, tmp_path):
    cfg = _cfg(tmp_path, micro_zoo, choice_tasks, max_generations=2)
    run_dir = tmp_path / "run"
    done = evolve(cfg, run_dir, progress=False)
    best = done.best
    assert best is not None and best.parents  # a merge is the best: losing it would change the answer
    with sqlite3.connect(run_dir / "kinmerge.db") as con:  # a hostile edit, foreign keys off as sqlite3 has them
        con.execute("DELETE FROM evaluations WHERE model_id = ?", (best.id,))
    status = CliRunner().invoke(cli, ["status", str(run_dir)])
    assert status.exit_code == 0 and f"merge {best.id[:8]}" in status.stderr and "has no score" in status.stderr
    assert read_summary(run_dir).problems
    repaired = evolve(cfg, run_dir, progress=False)
    assert repaired.best is not None and (repaired.best.id, repaired.best.score) == (best.id, best.score)
    assert repaired.made["evaluations"] == 1 and repaired.made["merges"] == 0
    assert _pool(repaired) == _pool(done) and not repaired.problems


def test_a_lost_model_record_is_redone(micro_zoo, choice_tasks, tmp_path):
    cfg = _cfg(tmp_path, micro_zoo, choice_tasks, max_generations=2)
    run_dir = tmp_path / "run"
    done = evolve(cfg, run_dir, progress=False)
    child = next(m for m in done.pool if m.generation == 1)
    with sqlite3.connect(run_dir / "kinmerge.db") as con:
        con.execute("DELETE FROM parents WHERE child = ?", (child.id,))
        con.execute("DELETE FROM pool WHERE model_id = ?", (child.id,))
    assert any("missing from the pool" in p for p in read_summary(run_dir).problems)
    repaired = evolve(cfg, run_dir, progress=False)
    assert _pool(repaired) == _pool(done) and repaired.made["merges_reused"] >= 1 and not repaired.problems


def test_a_copied_run_directory_still_works(micro_zoo, choice_tasks, tmp_path):
    cfg = _cfg(tmp_path, micro_zoo, choice_tasks)
    done = evolve(cfg, tmp_path / "run", progress=False)
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(tmp_path / "run", copy)
    shutil.rmtree(tmp_path / "run")
    moved = evolve(cfg, copy, progress=False)
    assert moved.made == {"merges": 0, "merges_reused": 0, "evaluations": 0, "heldout_evaluations": 0,
                          "kinship_pairs": 0, "kinship_scans": 0, "kinship_rechecks": 0}
    assert _pool(moved) == _pool(done)
    assert all(str(m.path).startswith(str(copy)) for m in moved.pool if m.parents)
    with sqlite3.connect(copy / "kinmerge.db") as con:
        stored = [r[0] for r in con.execute("SELECT path FROM models WHERE origin = 'merge'")]
    assert stored and all(p.startswith("./models/") for p in stored)


def test_a_deleted_merge_folder_is_merged_again(micro_zoo, choice_tasks, tmp_path):
    run_dir = tmp_path / "run"
    done = evolve(_cfg(tmp_path, micro_zoo, choice_tasks), run_dir, progress=False)
    best = max((m for m in done.pool if m.parents), key=lambda m: m.score or 0.0)
    shutil.rmtree(best.path)
    longer = evolve(_cfg(tmp_path, micro_zoo, choice_tasks, "longer.yaml", max_generations=2), run_dir,
                    progress=False)
    assert longer.generation == 2 and (Path(best.path) / "kinmerge.json").is_file()
    with RunStore(run_dir, lock=False) as store:
        assert [e.message for e in store.events("kin", kind="remerge")] == [f"rebuilt deleted merge {best.id}"]
