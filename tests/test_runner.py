"""The evolution runner end to end on the micro zoo: real merges, evaluations, kinship, store.

Fast tests share two runs made once per module (greedy, then kinship in the same run directory,
so the second reuses the first's merges and evaluations). The kill-and-resume test (slow) runs
``kinmerge evolve`` in a subprocess, SIGKILLs it at chosen moments and checks that rerunning
ends with exactly the pool of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")
pytest.importorskip("mergekit")
pytest.importorskip("pydantic")

from click.testing import CliRunner

from evolve_helpers import run_config, write_config
from kinmerge.cli import cli
from kinmerge.errors import ConfigError, StoreError
from kinmerge.evolve import PoolModel, PoolState, evolve, read_summary
from kinmerge.evolve.config import RunConfig, evaluator_key, load_config
from kinmerge.evolve.executors import LocalExecutor, get_executor
from kinmerge.evolve.runner import MODELS_DIR
from kinmerge.kinship import METRICS
from kinmerge.merge import is_temp_merge_folder
from kinmerge.pool import STOP_KINSHIP, STOP_REASONS, Plan, short_id
from kinmerge.store import RunStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KINMERGE_CACHE", str(tmp_path_factory.getbasetemp() / "kinmerge-cache"))


@pytest.fixture(scope="module")
def runs(micro_zoo, choice_tasks, tmp_path_factory):
    """A greedy run, then a kinship run in the same run directory (shared merges/evaluations)."""
    root = tmp_path_factory.mktemp("evolve")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("KINMERGE_CACHE", str(tmp_path_factory.getbasetemp() / "kinmerge-cache"))
        greedy_cfg = write_config(root / "greedy.yaml", run_config(
            micro_zoo, choice_tasks, run_id="greedy", strategy={"name": "greedy", "k": 3, "max_generations": 3}))
        kinship_cfg = write_config(root / "kinship.yaml", run_config(
            micro_zoo, choice_tasks, run_id="kinship",
            # Designed to use both of kinship's roles: on the micro zoo the top-3 PCC is 0.83 after
            # generation 1 (below 0.9: generation 2 runs, with an exploration merge) and 0.95 after
            # generation 2 (above: the early stop fires before generation 3).
            strategy={"name": "kinship", "k": 3, "max_generations": 3, "threshold": 0.9}))
        run_dir = root / "run"
        t0 = time.perf_counter()
        greedy = evolve(greedy_cfg, run_dir, progress=False)
        t1 = time.perf_counter()
        kinship = evolve(kinship_cfg, run_dir, progress=False)
        t2 = time.perf_counter()
    return SimpleNamespace(root=root, run_dir=run_dir, greedy_cfg=greedy_cfg, kinship_cfg=kinship_cfg,
                           greedy=greedy, kinship=kinship, seconds=(t1 - t0, t2 - t1))


def _plans(store: RunStore, run_id: str) -> list[Plan]:
    out, g = [], 1
    while (p := store.get_plan(run_id, g)) is not None:
        out.append(p)
        g += 1
    return out


def _pool_key(summary) -> list[tuple]:
    return [(e.id, e.generation, e.parents, e.score, e.origin) for e in summary.pool]


def _replay(run_dir: Path, cfg_path: Path, summary) -> list[Plan]:
    """Check every saved plan against the strategy on the pool as it stood, and the pool growth."""
    cfg = load_config(cfg_path)
    strategy = cfg.build_strategy()
    with RunStore(run_dir, lock=False) as store:
        plans = _plans(store, summary.run_id)
        kinship = store.get_kinship(cfg.metric)
    pool = summary.pool
    for g, plan in enumerate(plans, start=1):
        assert plan.generation == g
        models = tuple(PoolModel(e.id, e.generation, e.parents, e.score) for e in pool if e.generation <= g - 1)
        ids = {m.id for m in models}
        state = PoolState(
            models,
            kinship={p: v for p, v in kinship.items() if p <= ids},
            merged_pairs=frozenset(m.pair for p in plans[: g - 1] for m in p.merges),
            generation=g - 1,
            kinship_metric=cfg.metric,
        )
        assert strategy.plan(state) == plan, f"generation {g}"
        children = sorted(e.parents for e in pool if e.generation == g)
        assert children == sorted(m.parents for m in plan.merges), f"generation {g}"
    assert plans and plans[-1].stop in STOP_REASONS
    assert all(p.merges for p in plans[:-1])
    return plans


# -- runs on the micro zoo ---------------------------------------------------------------------


def test_greedy_pool_grows_as_the_strategy_says(runs):
    s = runs.greedy
    plans = _replay(runs.run_dir, runs.greedy_cfg, s)
    assert s.status == "finished" and s.stop == plans[-1].stop
    assert len(plans[0].merges) == 3  # generation 1: every pair of the three foundations
    assert len(s.pool) == 3 + sum(len(p.merges) for p in plans)
    assert s.merges == len(s.pool) - 3
    assert s.generation == len(plans) - 1
    assert len(s.top_k) == 3 and sum(e.id in s.top_k for e in s.pool) == 3
    assert all(m.reason == "greedy" for p in plans for m in p.merges)
    assert s.made["merges"] == s.merges and s.made["evaluations"] == len(s.pool)


def test_kinship_pool_grows_as_the_strategy_says(runs):
    s = runs.kinship
    plans = _replay(runs.run_dir, runs.kinship_cfg, s)
    assert s.status == "finished"
    for p in plans[1:]:
        if p.merges:  # from generation 2 on, the best model also meets its least related
            assert sum(m.reason == "exploration" for m in p.merges) <= 1
    assert sum(m.reason == "exploration" for p in plans for m in p.merges) >= 1
    assert s.stop == STOP_KINSHIP and plans[-1] == Plan(3, stop=STOP_KINSHIP)
    assert s.top_k_kinship is not None and s.top_k_kinship > 0.9
    # The kinship run reused what the greedy run had made in the same directory.
    assert s.made["merges_reused"] >= 3
    assert s.made["evaluations"] < len(s.pool)


def test_store_records_everything(runs):
    with RunStore(runs.run_dir, lock=False) as store:
        for s in (runs.greedy, runs.kinship):
            run = store.get_run(s.run_id)
            key = run.config["evaluator"]
            ids = [e.id for e in s.pool]
            assert all(v is not None for v in store.average_scores(ids, evaluator=key).values())
            # every merge's parents, and every pair of the final pool, in all three metrics
            for metric in METRICS:
                kin = store.get_kinship(metric, model_ids=ids)
                for e in s.pool:
                    if e.parents:
                        assert frozenset(e.parents) in kin
                assert len(kin) == len(ids) * (len(ids) - 1) // 2
            assert all(store.plan_status(s.run_id, p.generation) == "done" for p in _plans(store, s.run_id))
            kinds = {e.kind for e in store.events(s.run_id)}
            assert {"run_started", "plan", "merge_start", "merge", "evaluate_start", "evaluate",
                    "kinship", "generation", "run_finished"} <= kinds
            timed = [e for e in store.events(s.run_id) if e.kind in ("merge", "evaluate", "kinship")]
            assert timed and all(e.duration_s is not None and e.duration_s >= 0 for e in timed)
            for e in s.pool:
                if e.origin == "merge":
                    rec = store.get_model(e.id)
                    assert rec.recipe["method"] == "slerp" and rec.parents == e.parents
                    meta = json.loads((Path(rec.path) / "kinmerge.json").read_text())
                    assert set(meta["kinship"]) == set(METRICS)  # the model card knows its parents' kinship
    models = runs.run_dir / MODELS_DIR
    assert not [p for p in models.iterdir() if p.name.startswith(".")]
    assert all((p / "kinmerge.json").is_file() for p in models.iterdir())


def test_merge_cards_carry_scores_generation_and_run(runs):
    """After evaluating a merge the runner writes its scores into the card, as the hub reads them."""
    from huggingface_hub import ModelCard

    s = runs.greedy
    with RunStore(runs.run_dir, lock=False) as store:
        scores = store.get_scores([e.id for e in s.pool], evaluator=store.get_run("greedy").config["evaluator"])
    made_by_greedy = [e for e in s.pool if e.parents and e.generation == 1]
    for e in made_by_greedy:
        card = ModelCard.load(Path(e.path) / "README.md")
        results = {r.dataset_name: r.metric_value for r in card.data.eval_results}
        assert results == pytest.approx(scores[e.id]), e.id
        assert card.data.base_model_relation == "merge" and len(card.data.base_model) == 2
        assert not any(str(m).startswith("/") for m in card.data.base_model)  # no local paths on the hub
        assert f"generation {e.generation}" in card.text


def test_rerun_is_a_no_op(runs):
    with RunStore(runs.run_dir, lock=False) as store:
        before = (len(store.get_kinship("pcc")), store.evaluators(), _plans(store, "greedy"))
    again = evolve(runs.greedy_cfg, runs.run_dir, progress=False)
    assert again.made == {"merges": 0, "merges_reused": 0, "evaluations": 0, "heldout_evaluations": 0,
                          "kinship_pairs": 0, "kinship_scans": 0, "kinship_rechecks": 0}
    assert _pool_key(again) == _pool_key(runs.greedy)
    assert again.stop == runs.greedy.stop and again.status == "finished"
    with RunStore(runs.run_dir, lock=False) as store:
        assert (len(store.get_kinship("pcc")), store.evaluators(), _plans(store, "greedy")) == before


def test_changed_settings_are_refused_on_resume(runs, choice_tasks):
    other = RunConfig.from_dict({**yaml_of(runs.greedy_cfg), "strategy": {"name": "greedy", "k": 2,
                                                                          "max_generations": 3}})
    with pytest.raises(StoreError, match=r"started with other settings: strategy\.k: 3 -> 2; rerun with the same"):
        evolve(other, runs.run_dir, progress=False)


def yaml_of(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_dry_run_prints_the_next_plan_and_changes_nothing(runs, tmp_path):
    fresh = tmp_path / "fresh"
    s = evolve(runs.greedy_cfg, fresh, dry_run=True, progress=False)
    assert s.status == "dry-run" and s.next_plan is not None and len(s.next_plan.merges) == 3
    assert not fresh.exists()
    result = CliRunner().invoke(cli, ["evolve", str(runs.greedy_cfg), "--run-dir", str(fresh), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "next: generation 1, 3 merges" in result.output and not fresh.exists()
    assert f"in {fresh} (nothing" in result.output and "kinmerge-dry-run-" not in result.output  # not its scratch copy
    # On a finished run the next plan is the stop; the store is untouched.
    db = runs.run_dir / "kinmerge.db"
    events_before = _count(db, "events")
    done = evolve(runs.greedy_cfg, runs.run_dir, dry_run=True, progress=False)
    assert done.next_plan.stop == runs.greedy.stop
    assert _count(db, "events") == events_before


def _count(db: Path, table: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


def test_status_cli(runs):
    r = CliRunner().invoke(cli, ["status", str(runs.run_dir), "--run", "greedy", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["run_id"] == "greedy" and data["stop"] == runs.greedy.stop and data["status"] == "finished"
    assert [m["id"] for m in data["pool"]] == [e.id for e in runs.greedy.pool]
    assert sum(m["in_top_k"] for m in data["pool"]) == 3
    table = CliRunner().invoke(cli, ["status", str(runs.run_dir), "--run", "greedy"])
    assert table.exit_code == 0
    assert "*" in table.output and f"stopped: {runs.greedy.stop}" in table.output
    newest = runs.greedy.pool[-1].id  # one short form for people, the full id in --json
    assert short_id(newest) in table.output and newest not in table.output
    latest = CliRunner().invoke(cli, ["status", str(runs.run_dir), "--json"])
    assert json.loads(latest.output)["run_id"] == "kinship"  # default: the latest started
    missing = CliRunner().invoke(cli, ["status", str(runs.run_dir), "--run", "nope"])
    assert missing.exit_code == 2 and "no run 'nope'" in missing.output


def test_lineage_cli(runs):
    child = max(runs.kinship.pool, key=lambda e: e.generation)
    r = CliRunner().invoke(cli, ["lineage", child.id[:10], "--run", str(runs.run_dir)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith(short_id(child.id) + " ") and f"gen {child.generation}" in lines[0]
    assert any(line.startswith(("├── ", "└── ")) for line in lines)
    j = CliRunner().invoke(cli, ["lineage", child.id, "--run", str(runs.run_dir), "--json"])
    tree = json.loads(j.output)

    def leaves(node):
        return [node] if not node["parents"] else [x for p in node["parents"] for x in leaves(p)]

    assert tree["id"] == child.id and [p["id"] for p in tree["parents"]] == list(child.parents)
    assert all(leaf["origin"] == "foundation" and leaf["score"] is not None for leaf in leaves(tree))
    bad = CliRunner().invoke(cli, ["lineage", "zzzz", "--run", str(runs.run_dir)])
    assert bad.exit_code == 2 and "no model 'zzzz'" in bad.output


def test_a_second_concurrent_run_is_refused(runs, tmp_path):
    run_dir = tmp_path / "busy"
    with RunStore(run_dir):  # another process would hold exactly this lock
        with pytest.raises(StoreError, match=r"in use by pid \d+"):
            evolve(runs.greedy_cfg, run_dir, progress=False)
        r = CliRunner().invoke(cli, ["evolve", str(runs.greedy_cfg), "--run-dir", str(run_dir)])
        assert r.exit_code == 2
        assert r.output.count("\n") == 1 and "in use by pid" in r.output


def test_a_failed_step_marks_the_run_failed_and_a_rerun_resumes(micro_zoo, choice_tasks, tmp_path):
    zoo = tmp_path / "zoo"
    shutil.copytree(micro_zoo.root, zoo)
    broken = zoo / "specialists" / "add" / "config.json"
    saved = broken.read_text()
    broken.unlink()  # the weights are there (content id, kinship) but transformers cannot load it
    data = run_config(micro_zoo, choice_tasks, strategy={"name": "greedy", "k": 3, "max_generations": 1})
    data["foundation"] = [str(zoo / "specialists" / n) for n in ("add", "caesar", "reverse")]
    data["base"] = str(zoo / "base")
    cfg = write_config(tmp_path / "evolve.yaml", data)
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(cli, ["evolve", str(cfg), "--run-dir", str(run_dir), "--no-progress"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "config.json" in r.output, r.output
    failed = read_summary(run_dir)
    assert failed.status == "failed"
    with RunStore(run_dir, lock=False) as store:
        assert [e.kind for e in store.events(failed.run_id)][-1] == "run_failed"
    broken.write_text(saved)
    done = evolve(cfg, run_dir, progress=False)
    assert done.status == "finished" and done.stop == "generation budget" and done.merges == 3


# -- config validation -------------------------------------------------------------------------


@pytest.fixture
def base_cfg(micro_zoo, choice_tasks):
    return run_config(micro_zoo, choice_tasks)


def _error(tmp_path: Path, data: dict) -> str:
    path = write_config(tmp_path / "bad.yaml", data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text
    return text


@pytest.mark.parametrize("field", ["foundation", "base", "strategy", "evaluator"])
def test_config_missing_field(tmp_path, base_cfg, field):
    data = {k: v for k, v in base_cfg.items() if k != field}
    assert f"{field}: missing (required)" in _error(tmp_path, data)


def test_config_errors_name_the_field(tmp_path, base_cfg, micro_zoo):
    def err(**change):
        return _error(tmp_path, {**base_cfg, **change})

    assert "strategy: unknown strategy 'greed'" in err(strategy={"name": "greed"})
    assert "strategy.name: missing" in err(strategy={"k": 3})
    assert "strategy: kinship: k must be an integer >= 2" in err(strategy={"name": "kinship", "k": 1})
    assert "unknown setting(s) ['kk']" in err(strategy={"name": "greedy", "kk": 1})
    missing = str(micro_zoo.root / "specialists" / "nope")
    assert f"foundation[1]: no such model folder {missing}" in err(
        foundation=[base_cfg["foundation"][0], missing])
    assert "foundation: List should have at least 2 items" in err(foundation=base_cfg["foundation"][:1])
    assert "foundation[1]: " in err(foundation=[base_cfg["foundation"][0]] * 2)
    assert "base: no such model folder" in err(base="./no-base")
    assert "base: the base is also listed as a foundation" in err(base=base_cfg["foundation"][0])
    assert re.search(r"evaluator: \S*nope: task folder not found",
                     err(evaluator={"name": "builtin", "tasks_dir": "nope"}))
    assert "evaluator: unknown setting 'limitt'" in err(
        evaluator={"name": "builtin", "tasks_dir": base_cfg["evaluator"]["tasks_dir"], "limitt": 3})
    # a missing required setting reads as one line naming it, not Python's TypeError
    assert "evaluator: the builtin evaluator needs the setting(s) tasks_dir" in err(evaluator={"name": "builtin"})
    assert "evaluator: unknown evaluator 'bogus'" in err(evaluator={"name": "bogus"})
    assert "merge: recipe parameter t=3" in err(merge={"method": "slerp", "t": 3})
    assert "merge: unknown merge method 'slurp'" in err(merge={"method": "slurp"})
    assert "strateg: unknown field" in err(strateg={"name": "greedy"})
    assert "executor.workers: " in err(executor={"workers": 0})
    assert "executor: unknown executor 'slurm'; choose one of local, ray" in err(executor={"name": "slurm"})
    assert "executor: address is a setting of the ray executor, not of local" in err(executor={"address": "auto"})
    assert "executor.merge_gpus: " in err(executor={"name": "ray", "merge_gpus": -1})
    assert "executor.gpus: unknown field" in err(executor={"name": "ray", "gpus": 1})
    assert "kinship_metric: " in err(kinship_metric="cosine")
    assert "strategy: kinship: metric 'ed' is a distance" in err(
        kinship_metric="ed", strategy={"name": "kinship"})
    assert "kinship_metric: pcc differs from strategy.metric (cs)" in err(
        strategy={"name": "kinship", "metric": "cs"})


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("foundation: [a, b\nbase: x\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_config(bad)
    bad.write_text("")
    with pytest.raises(ConfigError, match="the config is empty"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)
    r = CliRunner().invoke(cli, ["evolve", str(bad)])
    assert r.exit_code == 2 and r.output.startswith("Error: ") and r.output.count("\n") == 1


def test_config_relative_paths_resolve_against_the_file(tmp_path, micro_zoo, choice_tasks):
    zoo = tmp_path / "zoo"
    shutil.copytree(micro_zoo.root, zoo)
    data = {
        "foundation": ["../zoo/specialists/add", "../zoo/specialists/reverse"],
        "base": "../zoo/base",
        "strategy": {"name": "random", "k": 2},
        "evaluator": {"name": "builtin", "tasks_dir": "../zoo/tasks", "limit": 2},
        "out": {"run_dir": "my-runs/r1"},
        "seed": 7,
    }
    cfg = load_config(write_config(tmp_path / "configs" / "evolve.yaml", data))
    assert cfg.foundation == [str((zoo / "specialists" / n).resolve()) for n in ("add", "reverse")]
    assert cfg.base == str((zoo / "base").resolve())
    assert cfg.evaluator.settings()["tasks_dir"] == str((zoo / "tasks").resolve())
    assert cfg.run_dir() == (tmp_path / "configs" / "my-runs" / "r1").resolve()
    assert cfg.run_dir(tmp_path / "x") == (tmp_path / "x").resolve()
    assert cfg.name == "random" and cfg.metric == "pcc"
    assert cfg.build_strategy().settings() == {"k": 2, "max_generations": 10, "seed": 7}  # the run's seed
    del data["out"]
    default = load_config(write_config(tmp_path / "configs" / "other.yaml", data))
    assert default.run_dir() == (tmp_path / "configs" / "runs" / "other").resolve()


def test_config_defaults_and_key(base_cfg):
    cfg = RunConfig.from_dict(base_cfg)
    assert cfg.merge.method == "slerp" and cfg.merge.recipe_kwargs(seed=0) == {}
    from kinmerge.merge import PAPER_MLP_T, PAPER_SELF_ATTN_T, get_recipe

    recipe = get_recipe(cfg.merge.method, **cfg.merge.recipe_kwargs())
    assert recipe.self_attn == PAPER_SELF_ATTN_T and recipe.mlp == PAPER_MLP_T and recipe.dtype == "bfloat16"
    assert cfg.executor.name == "local" and cfg.executor.workers == 1 and cfg.final_kinship_matrix
    ev = cfg.evaluator.build()
    key = evaluator_key(ev)
    assert key.startswith("builtin-") and key == evaluator_key(cfg.evaluator.build())
    limited = RunConfig.from_dict({**base_cfg, "evaluator": {**base_cfg["evaluator"], "limit": 2}})
    assert evaluator_key(limited.evaluator.build()) != key  # a setting that changes scores changes the key
    dare = RunConfig.from_dict({**base_cfg, "merge": {"method": "dare_ties"}, "seed": 5})
    assert dare.merge.recipe_kwargs(seed=dare.seed) == {"seed": 5}


def test_example_config_is_valid():
    example = REPO / "examples" / "evolve.yaml"
    assert example.is_file()
    zoo = REPO / "src" / "kinmerge" / "data" / "zoo" / "zoo.json"
    if not zoo.is_file():
        pytest.skip("the shipped zoo is not built in this checkout")
    cfg = load_config(example)
    assert len(cfg.foundation) == 3 and cfg.strategy.name == "kinship"


# -- executors ---------------------------------------------------------------------------------


def test_local_executor_sequential_and_lazy():
    pulled = []

    def items():
        for x in [-1, 2, -3]:
            pulled.append(x)
            yield x

    ex = LocalExecutor()
    it = ex.imap(abs, items())
    assert next(it) == (0, 1) and pulled == [-1]  # item 2 is not pulled before item 1 is done
    assert list(it) == [(1, 2), (2, 3)]
    assert ex.map(abs, []) == []
    with pytest.raises(ConfigError, match="workers must be an integer >= 1"):
        LocalExecutor(workers=0)
    with pytest.raises(ConfigError, match="unknown executor 'slurm'; choose one of local, ray"):
        get_executor("slurm")


def test_local_executor_process_pool():
    with get_executor("local", workers=2) as ex:
        assert ex.map(abs, [-1, 2, -3, -4]) == [1, 2, 3, 4]
        with pytest.raises(ValueError, match="invalid literal"):
            ex.map(int, ["1", "x", "3"])


# -- kill and resume (slow) ----------------------------------------------------------------------


def _events(db: Path, after: int) -> list[tuple[int, str, int | None]]:
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT id, kind, generation FROM events WHERE id > ? ORDER BY id", (after,)).fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError:  # the schema is being created
        return []


def _last_event(db: Path) -> int:
    evs = _events(db, 0)
    return evs[-1][0] if evs else 0


def _temp_dirs(run_dir: Path) -> list[str]:
    models = run_dir / MODELS_DIR
    return sorted(p.name for p in models.iterdir() if is_temp_merge_folder(p)) if models.is_dir() else []


Condition = Callable[[list[tuple[int, str, int | None]], float, Path], bool]


def _run_until(cmd: list[str], env: dict, run_dir: Path, log: Path, until: Condition | None,
               timeout: float = 120.0) -> str:
    """Run ``cmd``; SIGKILL it as soon as ``until(new events, seconds, run_dir)`` holds."""
    db = run_dir / "kinmerge.db"
    start_event = _last_event(db)
    with log.open("ab") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        t0 = time.monotonic()
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - t0
                if elapsed > timeout:
                    raise AssertionError(f"{cmd} ran over {timeout}s; see {log}")
                if until is not None and until(_events(db, start_event), elapsed, run_dir):
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return "killed"
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, f"exit {proc.returncode}: {log.read_text()[-2000:]}"
    return "finished"


def _mid_merge(evs, elapsed, run_dir) -> bool:
    # a merge folder is being written, or (if we polled too slowly) the first merge is done
    return bool(_temp_dirs(run_dir)) or any(k == "merge" for _, k, _ in evs)


def _mid_evaluation(evs, elapsed, run_dir) -> bool:
    return bool(evs) and evs[-1][1] == "evaluate_start" and (evs[-1][2] or 0) >= 1


def _after_plan(evs, elapsed, run_dir) -> bool:
    return any(k == "plan" and (g or 0) >= 2 for _, k, g in evs)


def _after(seconds: float) -> Condition:
    return lambda evs, elapsed, run_dir: elapsed >= seconds


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_pool(runs, micro_zoo, choice_tasks, tmp_path):
    run_dir = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "kinmerge.cli", "evolve", str(runs.kinship_cfg), "--run-dir", str(run_dir)]
    log = tmp_path / "stderr.log"
    outcomes = []
    for name, until in [("mid-merge", _mid_merge), ("mid-evaluation", _mid_evaluation),
                        ("right after a plan is saved", _after_plan), ("at 4s", _after(4.0)),
                        ("at 7s", _after(7.0))]:
        outcome = _run_until(cmd, env, run_dir, log, until)
        outcomes.append((name, outcome, _temp_dirs(run_dir)))
        if outcome == "finished":
            break
        if until is _after_plan:
            # A user deleted a merge folder that the saved plan needs as a parent: rebuilt on resume.
            with RunStore(run_dir, lock=False) as store:
                plan = store.pending_plan("kinship")
                merged = [p for m in plan.merges for p in m.parents if store.get_model(p).origin == "merge"]
            shutil.rmtree(run_dir / MODELS_DIR / merged[0])
    assert [o for _, o, _ in outcomes[:3]] == ["killed"] * 3, outcomes
    assert _run_until(cmd, env, run_dir, log, None) == "finished"

    resumed = read_summary(run_dir, "kinship")
    assert resumed.status == "finished" and resumed.stop == runs.kinship.stop
    assert _pool_key(resumed) == _pool_key(runs.kinship)
    with RunStore(run_dir, lock=False) as store, RunStore(runs.run_dir, lock=False) as ref:
        assert _plans(store, "kinship") == _plans(ref, "kinship")
        kinds = [e.kind for e in store.events("kinship")]
        assert kinds.count("run_resumed") >= 3 and "remerge" in kinds
    # no half-written model folders: every folder is a complete merge of the pool
    models = run_dir / MODELS_DIR
    assert _temp_dirs(run_dir) == []
    assert sorted(p.name for p in models.iterdir()) == sorted(e.id for e in resumed.pool if e.origin == "merge")
    assert all((p / "kinmerge.json").is_file() for p in models.iterdir())


@pytest.mark.slow
def test_parallel_workers_give_the_same_pool(runs, micro_zoo, choice_tasks, tmp_path):
    data = yaml_of(runs.greedy_cfg)
    data["executor"] = {"name": "local", "workers": 2}
    cfg = write_config(tmp_path / "parallel.yaml", data)
    s = evolve(cfg, tmp_path / "run", progress=False)
    assert _pool_key(s) == _pool_key(runs.greedy) and s.stop == runs.greedy.stop
