"""A Ray cluster of several nodes (issue 20): placement, GPUs, lost nodes, a lost head, storage.

Every node is a real ``ray start`` raylet on this machine (``tests/ray_nodes.py``; the session's
cluster is ``ray_cluster`` in conftest.py: a head, ``a`` with a custom resource and a GPU that
is not there, ``b`` that does not see one folder). Each step's record says where it ran (the
node's id and ``CUDA_VISIBLE_DEVICES``; the run's events keep it), which is what the placement
tests read. Every evolution ends compared with the same run made by the local executor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pydantic")
pytest.importorskip("ray")

from cli_checks import assert_one_line_error
from evolve_helpers import pool_key, ray_config, step_events
from kinmerge.errors import ClusterError, EvaluationError, MergeError
from kinmerge.evolve.executors import RayExecutor
from ray_nodes import Killer, RayNodes


def _where(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    """Where each ``kind`` event's step ran (its payload's ``node``)."""
    from kinmerge.store import RunStore

    with RunStore(run_dir, lock=False) as store:
        return [(e.payload or {}).get("node", {}) for e in store.events("g") if e.kind == kind]


def test_steps_run_on_the_nodes_that_have_what_they_ask_for(ray_cluster, ray_reference, tmp_path):
    from kinmerge.evolve import evolve

    data, local, _ = ray_reference
    cfg = ray_config(tmp_path, data, workers=2, merge_gpus=1, eval_resources={"node_b": 1})
    summary = evolve(cfg, tmp_path / "run", progress=False)
    assert pool_key(summary) == pool_key(local) and summary.stop == local.stop
    kinds = step_events(tmp_path / "run", 1)
    # pipelined: 3 merges, one GPU: the first child's evaluation starts (on b) before the third merge
    assert kinds.index("evaluate_start") < len(kinds) - 1 - kinds[::-1].index("merge_start")
    assert kinds.count("evaluate") == 3
    merges, evaluations = _where(tmp_path / "run", "merge"), _where(tmp_path / "run", "evaluate")
    assert len(merges) == 5 and len(evaluations) == 3 + 5
    # node a holds the only GPU: every merge ran there, and Ray gave it that GPU
    assert {(m["id"], m.get("gpus")) for m in merges} == {(ray_cluster.ids["a"], "0")}
    assert {e["id"] for e in evaluations} == {ray_cluster.ids["b"]}


def test_a_kinship_shard_gives_the_same_statistics_on_every_node(ray_cluster, micro_zoo):
    """The sharded matrix's task, pinned to each node in turn: bit-equal per-tensor statistics."""
    import numpy as np

    from kinmerge._ray import RayCluster
    from kinmerge.scan import plan, scan_refs
    from kinmerge.scan_ray import ShardTask, scan_shard
    from kinmerge.sources import open_models

    models = [str(p) for _, p in sorted(micro_zoo.specialists.items())]
    local = scan_refs(micro_zoo.base, models)
    with open_models([micro_zoo.base, *models]) as opened:
        plans, _, _ = plan(opened[0], opened[1:])
        task = ShardTask(tuple(str(src.path) for src in opened), tuple(plans[: len(plans) // 2]), chunk=4096)
    with RayCluster() as cluster:
        for name, node in sorted(ray_cluster.ids.items()):
            if name not in ray_cluster.nodes.nodes:
                continue  # a node a test added and killed
            got = cluster.result(cluster.submit(scan_shard, task, name="kinmerge_scan_shard", node=node), name)
            assert got["node"]["id"] == node
            assert list(got["per_tensor"]) == [p.name for p in task.tensors]
            for tensor, st in got["per_tensor"].items():
                assert np.array_equal(st.gram, local.per_tensor[tensor].gram), (name, tensor)


def test_a_gpu_step_is_given_its_gpu_and_says_so_when_torch_cannot_use_it(ray_cluster, micro_zoo, tmp_path):
    """No GPU here: Ray hands out node a's declared one; a CUDA merge or evaluation fails in one
    line naming the device it was given (not torch's AssertionError)."""
    import torch

    from kinmerge.evolve.steps import EvaluateTask, MergeTask, run_evaluation, run_merge

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CUDA steps would run")
    parents = tuple(str(micro_zoo.specialists[t]) for t in ("add", "caesar"))
    with RayExecutor(merge_gpus=1, eval_gpus=1, max_retries=0) as ex:
        with pytest.raises(MergeError) as err:
            ex.map(run_merge, [MergeTask(parents, "slerp", {}, str(tmp_path / "models"), cuda=True)])
        assert "torch sees no CUDA device" in str(err.value) and "CUDA_VISIBLE_DEVICES=0," in str(err.value)
        assert "\n" not in str(err.value) and not (tmp_path / "models").exists()  # refused before any file
        task = EvaluateTask(parents[0], "builtin", {"tasks_dir": str(micro_zoo.tasks_dir), "limit": 1,
                                                   "device": "cuda"})
        no_cuda = r"device cuda but torch sees no CUDA device .*CUDA_VISIBLE_DEVICES=0,"
        with pytest.raises(EvaluationError, match=no_cuda):
            ex.map(run_evaluation, [task])


def test_a_lost_node_and_a_lost_worker_are_retried_and_the_pool_is_unchanged(ray_cluster, ray_reference, tmp_path):
    """Node c joins, runs one of the first two merges and is SIGKILLed whole (raylet, agents,
    workers) while it does; later a worker is SIGKILLed mid-evaluation. Ray runs both again."""
    from kinmerge.evolve import evolve

    data, local, _ = ray_reference
    ray_cluster.nodes.add("c", resources={"spare": 1})  # node a has the other "spare"
    cfg = ray_config(tmp_path, data, workers=2, max_retries=2, merge_resources={"spare": 1},
                     eval_resources={"spare": 1})
    killer = Killer("ray::run_merge@c", "ray::run_evaluation", delay=0.05, nodes=ray_cluster.nodes)
    killer.start()
    try:
        summary = evolve(cfg, tmp_path / "run", progress=False)
    finally:
        killer.stop.set()
        killer.join(5)
        if "c" in ray_cluster.nodes.nodes:
            ray_cluster.nodes.kill("c")
    assert killer.killed == ["ray::run_merge@c", "ray::run_evaluation"]
    assert pool_key(summary) == pool_key(local) and summary.status == "finished"
    merged_on = {m["id"] for m in _where(tmp_path / "run", "merge")}
    assert merged_on == {ray_cluster.ids["a"]}  # the merge node c had begun was made again, on a
    models = tmp_path / "run" / "models"  # the lost node's half-written merge is gone
    assert sorted(p.name for p in models.iterdir()) == sorted(m.id for m in summary.pool if m.origin == "merge")


def test_a_node_that_does_not_see_the_run_is_named_before_any_work(ray_cluster, ray_reference, micro_zoo):
    from click.testing import CliRunner

    from kinmerge.cli import cli

    hidden = ray_cluster.hidden
    if hidden is None:
        pytest.skip("no mount namespaces here: cannot give one node a different view of a folder")
    b = f"(id {ray_cluster.ids['b'][:8]})"
    with RayExecutor() as ex:
        with pytest.raises(ClusterError) as err:  # there, b has an empty folder of its own
            ex.check_storage([str(micro_zoo.base)], str(hidden / "run" / "models"))
        assert str(err.value).startswith(f"{hidden / 'run' / 'models'}: the Ray node ") and b in str(err.value)
        assert "cannot write into it (No such file or directory); put the models" in str(err.value)
        (hidden / "zoo").mkdir()
        (hidden / "zoo" / "config.json").write_text("{}")
        with pytest.raises(ClusterError, match=r"zoo: the Ray node \S+ \(id \w+\) cannot read it") as err:
            ex.check_storage([str(micro_zoo.base), str(hidden / "zoo")], None)
        assert b in str(err.value)
    data, _, _ = ray_reference
    cfg = ray_config(hidden.parent / "cfg", data)
    result = CliRunner().invoke(cli, ["evolve", str(cfg), "--run-dir", str(hidden / "run2"), "--no-progress"])
    assert_one_line_error(result, b, hidden / "run2")
    assert not (hidden / "run2").exists(), list((hidden / "run2").rglob("*"))  # nothing hashed, merged or stored


def _until_then(cmd: list[str], env: dict[str, str], run_dir: Path, until: Any, then: Any,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; once ``until(event kinds with generations)`` holds, call ``then(proc)``; its end."""
    from test_runner import _events, _last_event

    db = run_dir / "kinmerge.db"
    start = _last_event(db)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if until(_events(db, start), run_dir):
                then(proc)
                break
            time.sleep(0.02)
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_a_lost_driver_or_head_then_a_new_cluster_gives_the_same_pool(ray_cluster, ray_reference, tmp_path):
    """On a cluster of its own: the driver is SIGKILLed mid-merge; rerun, the head node is
    SIGKILLed mid-evaluation: the driver ends in one line. Rerun on another cluster (this
    process's): it resumes to the local executor's pool."""
    from kinmerge.evolve import evolve, read_summary
    from test_runner import _mid_merge

    data, local, _ = ray_reference
    run_dir = tmp_path / "run"
    own = RayNodes.start({"HF_HUB_OFFLINE": "1"})
    try:
        own.add("head", num_cpus=2)
        cfg = ray_config(tmp_path / "own", data, address=own.address)
        cmd = [sys.executable, "-m", "kinmerge.cli", "evolve", str(cfg), "--run-dir", str(run_dir), "--no-progress"]
        env = {**own.env, "PYTHONUNBUFFERED": "1"}

        def evaluating_a_child(evs, run_dir) -> bool:
            return any(kind == "evaluate_start" and (g or 0) >= 1 for _, kind, g in evs)

        killed = _until_then(cmd, env, run_dir, lambda evs, rd: _mid_merge(evs, 0, rd),
                             lambda proc: os.kill(proc.pid, signal.SIGKILL))
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        lost = _until_then(cmd, env, run_dir, evaluating_a_child, lambda proc: own.kill("head"))
    finally:
        own.stop()
    assert_one_line_error(lost, "the head node of the Ray cluster", "rerun the same command to resume")
    assert read_summary(run_dir, "g").status == "failed"
    summary = evolve(ray_config(tmp_path / "again", data), run_dir, progress=False)  # the session's cluster
    assert summary.status == "finished" and pool_key(summary) == pool_key(local)
