"""Runs watched live in W&B, MLflow and TensorBoard (issue 20, item 4), with the real libraries, offline.

Each test runs a short evolution on the micro zoo and reads back what the tracker recorded: W&B's
offline ``.wandb`` files (decoded below: the library no longer ships a reader), an MLflow file
store, TensorBoard event files through tensorboard's own ``EventAccumulator``. A resumed run —
its budget raised from 1 to 2 generations — must continue the *same* tracked run, and that run
must hold every generation. A missing package is one ``Error:`` line, before anything is written.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner

from evolve_helpers import run_config, write_config
from kinmerge.cli import cli
from kinmerge.errors import ConfigError
from kinmerge.evolve import evolve
from kinmerge.evolve.config import RunConfig
from kinmerge.evolve.tracking import event_metrics
from kinmerge.store import RunStore


def _config(tmp_path: Path, zoo: Any, tasks: Path, name: str, generations: int, **extra: Any) -> Path:
    strategy = {"name": "greedy", "k": 3, "max_generations": generations}
    data = run_config(zoo, tasks, run_id="tracked", strategy=strategy, **extra)
    data["evaluator"]["limit"] = 6
    return write_config(tmp_path / name, data)


def _facts(run_dir: Path) -> dict[str, Any]:
    """What the store says the tracker should have: scored models, generations, plans, the best."""
    with RunStore(run_dir, lock=False) as store:
        evals = store.events("tracked", kind="evaluate")
        heldout = store.events("tracked", kind="evaluate_heldout")
        gens = store.events("tracked", kind="generation")
        plans = store.events("tracked", kind="plan")
    return {"scores": sorted(round(e.payload["average"], 6) for e in evals),
            "heldout": sorted(round(e.payload["average"], 6) for e in heldout),
            "generations": sorted({e.generation for e in gens}),
            "best": {e.generation: e.payload["best"] for e in gens},
            "stops": {e.generation: e.payload["stop"] for e in plans}}


def test_event_metrics_cover_scores_generations_and_the_stop_decision() -> None:
    assert event_metrics("evaluate_heldout", 1, {"average": 0.25}) == {"model/heldout_score": 0.25, "generation": 1.0}
    assert event_metrics("generation", 2, {"best": 0.5, "top_k_kinship": None, "merges": 3}) == {
        "gen/best": 0.5, "gen/merges": 3.0, "generation": 2.0}
    assert event_metrics("plan", 3, {"generation": 3, "merges": [], "stop": "top-k unchanged",
                                     "kinship_requests": []}) == {
        "gen/early_stop": 1.0, "gen/planned_merges": 0.0, "generation": 3.0}
    assert event_metrics("merge", 1, {"kinship": {"pcc": 0.1, "ed": 2.0}}) == {
        "merge/parents_ed": 2.0, "merge/parents_pcc": 0.1, "generation": 1.0}
    assert event_metrics("evaluate", 1, {"average": 0.5, "scores": {"a:b": 0.5}})["model/task/a_b"] == 0.5
    assert event_metrics("kinship", 1, {"pairs": 3}) == {}


def test_a_setting_of_another_tracker_is_refused_naming_it(micro_zoo, choice_tasks, tmp_path) -> None:
    data = run_config(micro_zoo, choice_tasks, tracking={"name": "mlflow", "log_dir": "tb"})
    with pytest.raises(ConfigError, match=r"^run config: tracking: log_dir is a setting of the tensorboard "
                                          r"tracker, not of mlflow$"):
        RunConfig.from_dict(data)
    cfg = RunConfig.from_dict(run_config(micro_zoo, choice_tasks, tracking={"name": "tensorboard", "log_dir": "tb"}),
                              root=tmp_path)
    assert cfg.tracking is not None and cfg.tracking.log_dir == (tmp_path / "tb").resolve()


def test_tensorboard_gets_a_run_resumed_with_tracking_switched_on(micro_zoo, choice_tasks, tmp_path) -> None:
    """Generation 1 untracked, then ``--track tensorboard`` with the budget raised: the event
    files hold the whole run, generation 0 included, read back by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    evolve(_config(tmp_path, micro_zoo, choice_tasks, "one.yaml", 1), run_dir, progress=False)
    assert not (run_dir / "tensorboard").exists()
    res = CliRunner().invoke(cli, ["evolve", str(_config(tmp_path, micro_zoo, choice_tasks, "two.yaml", 2)),
                                   "--run-dir", str(run_dir), "--track", "tensorboard", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)  # stdout is still pure JSON
    facts = _facts(run_dir)
    assert facts["generations"] == [0, 1, 2]
    acc = EventAccumulator(str(run_dir / "tensorboard" / "tracked"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert sorted(round(e.value, 6) for e in acc.Scalars("model/score")) == pytest.approx(facts["scores"], abs=1e-6)
    assert facts["heldout"]  # the run splits its tasks: the top-k's held-out scores are tracked too
    assert sorted(round(e.value, 6) for e in acc.Scalars("model/heldout_score")) == pytest.approx(facts["heldout"])
    gen_at = {e.step: int(e.value) for e in acc.Scalars("generation")}
    best = {gen_at[e.step]: e.value for e in acc.Scalars("gen/best")}
    assert best == pytest.approx(facts["best"], abs=1e-6) and set(best) == {0, 1, 2}
    # plan 1, stop before 2 (budget 1); the raised budget reopens it: plan 2, stop before 3
    assert [e.value for e in acc.Scalars("gen/early_stop")] == [0.0, 1.0, 0.0, 1.0]
    assert acc.Scalars("final/best_score")[-1].value == pytest.approx(summary["best_score"], abs=1e-6)
    text = acc.Tensors("summary/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert summary["best"] in text and "generation budget" in text
    state = json.loads((run_dir / "tracking" / "tracked.tensorboard.json").read_text())
    assert state["tracker"] == "tensorboard" and state["sent"] > 0


def test_mlflow_keeps_one_run_across_a_resume(micro_zoo, choice_tasks, tmp_path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores behind this switch
    uri = f"file:{tmp_path / 'mlruns'}"
    tracking = {"name": "mlflow", "tracking_uri": uri, "experiment": "study"}
    run_dir = tmp_path / "run"
    evolve(_config(tmp_path, micro_zoo, choice_tasks, "one.yaml", 1, tracking=tracking), run_dir, progress=False)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("study")
    (first,) = client.search_runs([exp.experiment_id])
    assert first.info.status == "FINISHED" and first.data.params["strategy.name"] == "greedy"
    last = evolve(_config(tmp_path, micro_zoo, choice_tasks, "two.yaml", 2, tracking=tracking), run_dir,
                  progress=False)
    (run,) = client.search_runs([exp.experiment_id])  # still one run: the resume continued it
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    facts = _facts(run_dir)
    gen_at = {m.step: int(m.value) for m in client.get_metric_history(run.info.run_id, "generation")}
    best = {gen_at[m.step]: m.value for m in client.get_metric_history(run.info.run_id, "gen/best")}
    assert best == pytest.approx(facts["best"], abs=1e-9) and set(best) == {0, 1, 2}
    scores = client.get_metric_history(run.info.run_id, "model/score")
    assert sorted(round(m.value, 6) for m in scores) == facts["scores"]
    heldout = client.get_metric_history(run.info.run_id, "model/heldout_score")
    assert sorted(round(m.value, 6) for m in heldout) == facts["heldout"] != []
    stops = client.get_metric_history(run.info.run_id, "gen/early_stop")
    # generation 1 planned, stop before 2 (budget 1), then the raised budget reopens it: 2 planned, stop before 3
    assert [m.value for m in sorted(stops, key=lambda m: m.step)] == [0.0, 1.0, 0.0, 1.0]
    assert run.data.metrics["final/best_score"] == pytest.approx(last.best.score)
    assert run.data.tags["kinmerge.best_id"] == last.best.id and run.data.tags["kinmerge.stop"] == last.stop


def _wandb_records(path: Path) -> list[Any]:
    """The records of an offline ``.wandb`` file (W&B's LevelDB-style log: 32 KiB blocks, 7-byte
    record headers: crc32, length, type; a protobuf ``Record`` per full record)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, out, pos, buf = path.read_bytes(), [], 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or the last piece of a record split across blocks
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _name(item: Any) -> str:
    return item.key or "/".join(item.nested_key)  # "model/score" is stored as a nested key


def test_wandb_offline_resume_continues_the_same_run(micro_zoo, choice_tasks, tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracking = {"name": "wandb", "mode": "offline", "project": "kinmerge-test"}
    run_dir = tmp_path / "run"
    for name, generations in (("one.yaml", 1), ("two.yaml", 2)):
        evolve(_config(tmp_path, micro_zoo, choice_tasks, name, generations, tracking=tracking), run_dir,
               progress=False)
    files = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # one per process, the same run id: `wandb sync` makes them one run
    ids, history, summary = set(), [], {}
    for f in files:
        for rec in _wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                ids.add(rec.run.run_id)
            elif kind == "history":
                history.append({_name(i): json.loads(i.value_json) for i in rec.history.item})
            elif kind == "summary":
                summary.update({_name(i): json.loads(i.value_json) for i in rec.summary.update})
    state = json.loads((run_dir / "tracking" / "tracked.wandb.json").read_text())
    assert ids == {state["id"]}
    facts = _facts(run_dir)
    steps = [h["_step"] for h in history]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # W&B needs steps that only grow
    assert sorted({h["generation"] for h in history if "gen/best" in h}) == facts["generations"]
    assert sorted(round(h["model/score"], 6) for h in history if "model/score" in h) == facts["scores"]
    assert summary["stop"] == "generation budget" and summary["last_generation"] == 2 and summary["best_id"]


def test_a_missing_tracker_package_is_one_line_and_writes_nothing(micro_zoo, choice_tasks, tmp_path) -> None:
    cfg = _config(tmp_path, micro_zoo, choice_tasks, "cfg.yaml", 1)
    run_dir = tmp_path / "run"
    code = "import sys; sys.modules['wandb'] = None; from kinmerge.cli import main; main()"  # as if not installed
    res = subprocess.run([sys.executable, "-c", code, "evolve", str(cfg), "--run-dir", str(run_dir),
                          "--track", "wandb"], capture_output=True, text=True, env={**os.environ}, timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: tracking: wandb needs the wandb package") and "kinmerge[track]" in lines[0]
    assert not run_dir.exists()


def test_an_mlflow_file_store_without_its_switch_is_named(micro_zoo, choice_tasks, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    tracking = {"name": "mlflow", "tracking_uri": f"file:{tmp_path / 'mlruns'}"}
    cfg = _config(tmp_path, micro_zoo, choice_tasks, "cfg.yaml", 1, tracking=tracking)
    res = CliRunner().invoke(cli, ["evolve", str(cfg), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 2
    assert "tracking: mlflow could not start the run at file:" in res.output
    assert "MLFLOW_ALLOW_FILE_STORE=true" in res.output
