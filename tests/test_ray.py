"""The Ray executor and the sharded kinship matrix, on a real local Ray cluster (issue 11).

One cluster per module (``ray.init(num_cpus=2)`` in this process): in-process runs use it as is,
``kinmerge`` subprocesses connect to its address. Workers are found by their process title
(``ray::run_merge`` while a merge runs) and SIGKILLed from outside, as a lost machine would be.
Every evolution ends compared with the same run made by the local executor.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydantic")
pytest.importorskip("yaml")

from evolve_helpers import run_config, write_config
from kinmerge.errors import ClusterError, ConfigError, SourceError
from kinmerge.evolve.config import RunConfig
from kinmerge.evolve.executors import RayExecutor, get_executor
from kinmerge.scan import TensorPlan
from kinmerge.scan_ray import shard_plans


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


def test_ray_is_imported_only_when_used():
    import subprocess

    code = ("import sys, kinmerge, kinmerge.scan_ray, kinmerge.evolve.runner; "
            "from kinmerge.evolve.executors import get_executor; get_executor('ray', address='auto'); "
            "assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


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


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A 2-CPU local cluster; its workers see HF_HUB_OFFLINE and this session's kinmerge cache."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:  # the raylet, and so every worker, starts with this env
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("KINMERGE_CACHE", str(tmp_path_factory.getbasetemp() / "kinmerge-cache"))
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 << 20, logging_level=logging.ERROR,
                 log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _pids(title: str) -> list[int]:
    """Processes whose title starts with ``title`` (Ray names a busy worker ``ray::<task name>``)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(title.encode()):
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


class _Killer(threading.Thread):
    """SIGKILLs the first process seen with each title, in turn; records what it killed."""

    def __init__(self, *titles: str, delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.titles, self.delay, self.killed, self.stop = list(titles), delay, [], threading.Event()

    def run(self) -> None:
        for title in self.titles:
            while not self.stop.is_set():
                pids = _pids(title)
                if pids:
                    time.sleep(self.delay)
                    try:
                        os.kill(pids[0], signal.SIGKILL)
                        self.killed.append(title)
                    except ProcessLookupError:
                        continue  # finished meanwhile: wait for the next one
                    break
                time.sleep(0.005)


def test_ray_executor_contract(ray_cluster):
    import ray

    with RayExecutor() as ex:  # this process is connected: the executor uses that cluster
        assert ex.workers == 2
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
    infeasible = r"can run a merge step \(1 CPU, 1 GPU asked; nodes: \S+: 2 CPU, 0 GPU\); lower merge_cpus"
    with pytest.raises(ClusterError, match=infeasible):
        RayExecutor(merge_gpus=1).workers  # noqa: B018 - it would wait forever otherwise


def test_a_lost_worker_is_retried_then_fails_in_one_line(ray_cluster):
    killer = _Killer("ray::sleep", delay=0.3)
    killer.start()
    with RayExecutor(max_retries=1) as ex:
        assert ex.map(time.sleep, [2.0]) == [None]  # killed once, run again
    killer.join(5)
    assert killer.killed == ["ray::sleep"]
    killer = _Killer("ray::sleep", delay=0.3)
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
            with pytest.raises(ClusterError, match=rf"^/proc/self/fd/{private}: the Ray node \S+ cannot write"):
                ex.check_storage([str(micro_zoo.base)], f"/proc/self/fd/{private}")
        finally:
            os.close(private)
            os.close(fd)


# -- evolution runs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(micro_zoo, choice_tasks, tmp_path_factory):
    """The same run made by the local executor, in sequence."""
    from kinmerge.evolve import evolve

    root = tmp_path_factory.mktemp("ray-reference")
    data = run_config(micro_zoo, choice_tasks, run_id="g", strategy={"name": "greedy", "k": 3, "max_generations": 2})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("KINMERGE_CACHE", str(tmp_path_factory.getbasetemp() / "kinmerge-cache"))
        summary = evolve(write_config(root / "local.yaml", data), root / "run", progress=False)
    return data, summary, root / "run"


def _pool(summary) -> list[tuple]:
    return [(m.id, m.generation, m.parents, m.score, m.origin) for m in summary.pool]


def _events(run_dir: Path, generation: int) -> list[str]:
    from kinmerge.store import RunStore

    with RunStore(run_dir, lock=False) as store:
        return [e.kind for e in store.events("g") if e.generation == generation
                and e.kind in ("merge_start", "merge", "evaluate_start", "evaluate")]


def _ray_config(tmp_path: Path, data: dict, **executor) -> Path:
    return write_config(tmp_path / "ray.yaml", {**data, "executor": {"name": "ray", **executor}})


def test_local_sequential_runs_merge_then_evaluate_per_child(reference):
    _, summary, run_dir = reference
    assert summary.status == "finished" and summary.merges == 5
    assert _events(run_dir, 1) == ["merge_start", "merge", "evaluate_start", "evaluate"] * 3


def test_ray_run_equals_local_and_is_pipelined(ray_cluster, reference, tmp_path):
    from kinmerge.evolve import evolve

    data, local, _ = reference
    summary = evolve(_ray_config(tmp_path, data), tmp_path / "run", progress=False)
    assert _pool(summary) == _pool(local) and summary.stop == local.stop
    kinds = _events(tmp_path / "run", 1)
    # 3 merges, 2 slots: the first child's evaluation starts before the third merge does
    assert kinds.index("evaluate_start") < len(kinds) - 1 - kinds[::-1].index("merge_start")
    assert kinds.count("evaluate") == 3


def test_killed_workers_are_retried_and_the_pool_is_unchanged(ray_cluster, reference, tmp_path):
    from kinmerge.evolve import evolve

    data, local, _ = reference
    killer = _Killer("ray::run_merge", "ray::run_evaluation", delay=0.05)
    killer.start()
    try:
        summary = evolve(_ray_config(tmp_path, data, max_retries=2), tmp_path / "run", progress=False)
    finally:
        killer.stop.set()
        killer.join(5)
    assert killer.killed == ["ray::run_merge", "ray::run_evaluation"]
    assert _pool(summary) == _pool(local) and summary.status == "finished"
    models = tmp_path / "run" / "models"
    assert sorted(p.name for p in models.iterdir()) == sorted(m.id for m in summary.pool if m.origin == "merge")


@pytest.mark.slow
def test_a_killed_driver_resumes_on_the_cluster(ray_cluster, reference, tmp_path):
    from kinmerge.evolve import read_summary
    from test_runner import _mid_merge, _run_until

    data, local, _ = reference
    cfg = _ray_config(tmp_path, data, address=ray_cluster)
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "kinmerge.cli", "evolve", str(cfg), "--run-dir", str(run_dir)]
    log = tmp_path / "stderr.log"
    def evaluating_a_child(evs, elapsed, run_dir) -> bool:
        return any(kind == "evaluate_start" and (g or 0) >= 1 for _, kind, g in evs)

    # The timeout only guards against a hang: fresh Ray workers import torch and transformers, which
    # on a loaded 2-core machine took over 120 s before the first merge (a CI run of 2026-11-29).
    outcomes = [_run_until(cmd, env, run_dir, log, until, timeout=420) for until in (_mid_merge, evaluating_a_child)]
    assert outcomes == ["killed", "killed"]
    assert _run_until(cmd, env, run_dir, log, None, timeout=420) == "finished"
    resumed = read_summary(run_dir, "g")
    assert resumed.status == "finished" and _pool(resumed) == _pool(local)


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
    sharded = CliRunner().invoke(cli, [*args, f"--ray={ray_cluster}"])
    assert local.exit_code == 0 and sharded.exit_code == 0, sharded.output
    a, b = json.loads(local.output), json.loads(sharded.output)
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    missing = CliRunner().invoke(cli, [*args[:-2], "--ray", "--json", "--base", "/nonexistent/base"])
    assert missing.exit_code == 2 and missing.output.startswith("Error: ") and missing.output.count("\n") == 1
