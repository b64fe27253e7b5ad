"""The Ray executor and the sharded kinship matrix, on a real Ray cluster (issue 11).

The session's cluster (``ray_cluster`` in conftest.py: three ``ray start`` nodes on this machine,
this process connected as the driver) runs every test here; ``kinmerge`` subprocesses connect to
its address. Workers are found by their process title (``ray::run_merge`` while a merge runs) and
SIGKILLed from outside, as a lost machine would be. Every evolution ends compared with the same
run made by the local executor. Placement, GPUs, storage across nodes and a lost head node:
``test_ray_nodes.py``.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

pytest.importorskip("pydantic")
pytest.importorskip("yaml")

from evolve_helpers import run_config, step_events
from kinmerge.errors import ClusterError, ConfigError, SourceError
from kinmerge.evolve.config import RunConfig
from kinmerge.evolve.executors import RayExecutor, get_executor
from kinmerge.scan import TensorPlan
from kinmerge.scan_ray import shard_plans
from ray_nodes import Killer


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KINMERGE_CACHE", str(tmp_path_factory.getbasetemp() / "kinmerge-cache"))


# -- without a cluster -------------------------------------------------------------------------


def test_shards_are_contiguous_byte_balanced_and_fixed():
    rng = np.random.default_rng(0)
    sizes = [int(x) for x in rng.integers(1, 1000, size=40)]
    plans = [TensorPlan(f"t{i}", s, (s,)) for i, s in enumerate(sizes)]
    for n in (1, 2, 3, 7, 40, 100):
        shards = shard_plans(plans, sizes, n)
        assert [p for s in shards for p in s] == plans  # contiguous, in order, every tensor once
        assert len(shards) <= min(n, len(plans)) and all(shards)
        size = {p.name: s for p, s in zip(plans, sizes)}
        loads = [sum(size[p.name] for p in s) for s in shards]
        assert max(loads) <= sum(sizes) / n + max(sizes)  # within one tensor of the even share
        assert shard_plans(plans, sizes, n) == shards
    with pytest.raises(ValueError):
        shard_plans(plans, sizes, 0)


def test_ray_executor_config(micro_zoo, choice_tasks):
    data = run_config(micro_zoo, choice_tasks, executor={
        "name": "ray", "address": "auto", "merge_gpus": 1, "eval_gpus": 0.5, "max_retries": 2,
        "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}}})
    cfg = RunConfig.from_dict(data)
    settings = cfg.executor.settings()
    assert settings == {"address": "auto", "merge_gpus": 1, "eval_gpus": 0.5, "max_retries": 2,
                        "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}}}
    ex = get_executor(cfg.executor.name, **settings)  # nothing connects before the first step
    assert isinstance(ex, RayExecutor) and ex.requests["merge"] == {"CPU": 1.0, "GPU": 1}
    assert RunConfig.from_dict(run_config(micro_zoo, choice_tasks)).executor.settings() == {"workers": 1}
    with pytest.raises(ConfigError, match="max_retries must be an integer >= 0"):
        RayExecutor(max_retries=-1)
    with pytest.raises(ConfigError, match="merge GPU request must be a number >= 0"):
        RayExecutor(merge_gpus=float("nan"))


# -- a real cluster ----------------------------------------------------------------------------


def test_ray_executor_contract(ray_cluster):
    import ray

    with RayExecutor() as ex:  # this process is connected: the executor uses that cluster
        assert ex.workers == 3  # 3 nodes of 1 CPU; a step asks for 1
        assert ex.map(abs, [-1, 2, -3]) == [1, 2, 3]
        got = list(ex.chain(abs, str, [-1, 2, -3], lambda i, r: None if r == 2 else r * 10))
        assert sorted(got) == [(0, 0, 1), (0, 1, "10"), (1, 0, 2), (2, 0, 3), (2, 1, "30")]
        with pytest.raises(ValueError, match="invalid literal") as info:
            ex.map(int, ["1", "x", "3"])
        assert not isinstance(info.value, ray.exceptions.RayError)  # the step's own error, not Ray's
        from kinmerge.evolve.steps import hash_model

        with pytest.raises(SourceError) as err:  # a kinmerge error from a worker arrives as itself
            ex.map(hash_model, ["/nonexistent/model"])
        assert "/nonexistent/model" in str(err.value) and "\n" not in str(err.value)
    assert ray.is_initialized()  # not ours to shut down
    with pytest.raises(ClusterError, match=r"can run a merge step \(1 CPU, 2 GPU asked; nodes: \S+: 1 CPU, ") as err:
        RayExecutor(merge_gpus=2).workers  # noqa: B018 - it would wait forever otherwise
    text = str(err.value)
    assert text.count("1 CPU, 1 GPU") == 1 and text.count("1 CPU, 0 GPU") == 2
    assert "lower merge_cpus/merge_gpus/merge_resources or add a node" in text
    with pytest.raises(ClusterError, match=r"evaluate step \(1 CPU, 1 node_z asked; nodes: ") as err:
        RayExecutor(eval_resources={"node_z": 1}).workers  # noqa: B018
    assert str(err.value).count("0 node_z") == 3  # every node named (in no fixed order), none has it
    with pytest.raises(ConfigError, match="merge_resources: 'GPU' is not a custom resource"):
        RayExecutor(merge_resources={"GPU": 1})


def test_a_lost_worker_is_retried_then_fails_in_one_line(ray_cluster):
    killer = Killer("ray::sleep", delay=0.3, nodes=ray_cluster.nodes)
    killer.start()
    with RayExecutor(max_retries=1) as ex:
        assert ex.map(time.sleep, [2.0]) == [None]  # killed once, run again
    killer.join(5)
    assert killer.killed == ["ray::sleep"]
    killer = Killer("ray::sleep", delay=0.3, nodes=ray_cluster.nodes)
    killer.start()
    with RayExecutor(max_retries=0) as ex, pytest.raises(ClusterError) as err:
        ex.map(time.sleep, [30.0])
    killer.join(5)
    text = str(err.value)
    assert text.startswith("30.0: the Ray worker running it was lost (WorkerCrashedError; no retries allowed)")
    assert "\n" not in text


def test_storage_check(ray_cluster, micro_zoo, tmp_path):
    models = tmp_path / "run" / "models"
    with RayExecutor() as ex:
        ex.check_storage([str(micro_zoo.base), str(micro_zoo.tasks_dir)], str(models))
        assert models.is_dir() and list(models.iterdir()) == []  # the probe files are gone
        # /proc/self/fd/N is a folder here and nothing in a worker: a path this process sees and a
        # node does not, as a disk mounted on the driver's machine only.
        fd = os.open(micro_zoo.base, os.O_RDONLY)
        private = 987
        os.dup2(fd, private)
        try:
            with pytest.raises(ClusterError) as err:
                ex.check_storage([str(micro_zoo.base), f"/proc/self/fd/{private}"], None)
            assert str(err.value).startswith(f"/proc/self/fd/{private}: the Ray node ")
            assert "cannot read it" in str(err.value) and "same path" in str(err.value)
            cannot_write = rf"^/proc/self/fd/{private}: the Ray node \S+ \(id \w+\) cannot write"
            with pytest.raises(ClusterError, match=cannot_write):
                ex.check_storage([str(micro_zoo.base)], f"/proc/self/fd/{private}")
        finally:
            os.close(private)
            os.close(fd)


# -- evolution runs ----------------------------------------------------------------------------


def test_local_sequential_runs_merge_then_evaluate_per_child(ray_reference):
    _, summary, run_dir = ray_reference
    assert summary.status == "finished" and summary.merges == 5
    assert step_events(run_dir, 1) == ["merge_start", "merge", "evaluate_start", "evaluate"] * 3


# An evolution on the Ray executor ends with the local pool, pipelined, in
# test_ray_nodes.test_steps_run_on_the_nodes_that_have_what_they_ask_for (the same run, placed).


# -- the sharded kinship matrix ----------------------------------------------------------------


def test_sharded_matrix_equals_the_local_scan(ray_cluster, micro_zoo):
    from kinmerge.scan import scan_refs
    from kinmerge.scan_ray import scan_ray

    models = [str(p) for _, p in sorted(micro_zoo.specialists.items())]
    local = scan_refs(micro_zoo.base, models)
    for shards in (1, 2, 3):
        first = scan_ray(micro_zoo.base, models, shards=shards, chunk=4096)
        again = scan_ray(micro_zoo.base, models, shards=shards, chunk=4096)
        assert np.array_equal(first.stats.gram, again.stats.gram) and np.array_equal(first.stats.sums,
                                                                                    again.stats.sums)
        for metric in ("pcc", "cs", "ed"):
            ref, got = local.matrix(metric), first.matrix(metric)
            assert np.allclose(got, ref, rtol=1e-12, atol=0), (shards, metric)
        assert first.stats.n == local.stats.n and first.bytes_read == local.bytes_read
        assert list(first.per_tensor) == list(local.per_tensor) and first.models == local.models
        for name, st in local.per_tensor.items():
            assert np.allclose(first.per_tensor[name].gram, st.gram, rtol=1e-12, atol=0)


def test_matrix_cli_with_ray(ray_cluster, micro_zoo):
    from click.testing import CliRunner

    from kinmerge.cli import cli

    models = [str(p) for _, p in sorted(micro_zoo.specialists.items())]
    args = ["matrix", *models, "--base", str(micro_zoo.base), "--metric", "pcc,ed", "--json", "--no-progress"]
    local = CliRunner().invoke(cli, args)
    sharded = CliRunner().invoke(cli, [*args, f"--ray={ray_cluster.address}"])
    assert local.exit_code == 0 and sharded.exit_code == 0, sharded.output
    a, b = json.loads(local.output), json.loads(sharded.output)
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    missing = CliRunner().invoke(cli, [*args[:-2], "--ray", "--json", "--base", "/nonexistent/base"])
    assert missing.exit_code == 2 and missing.output.startswith("Error: ") and missing.output.count("\n") == 1
