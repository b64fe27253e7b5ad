"""Hostile Ray addresses (issue 17, item 5): a remote that does not answer is an error in seconds.

Ray itself retries an address where nothing listens for minutes, printing its own connection
lines. Here each case ends in one ``Error:`` line naming the address, within seconds, and an
evolution run leaves no store or run directory behind. Nothing listens on 127.0.0.1:1; a
listener whose accept queue is full stands in for a host that does not answer.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")

from cli_checks import assert_one_line_error, kinmerge_subprocess
from kinmerge._ray import RayCluster
from kinmerge.errors import ClusterError, ConfigError

UNREACHABLE = "127.0.0.1:1"


def test_matrix_on_an_unreachable_cluster_is_one_line_in_seconds() -> None:
    start = time.monotonic()
    result = kinmerge_subprocess("matrix", "zoo:add", "zoo:sort", "--base", "zoo:base", f"--ray={UNREACHABLE}")
    assert time.monotonic() - start < 40
    assert_one_line_error(result, UNREACHABLE)
    assert "rpc_client" not in result.stderr + result.stdout  # none of Ray's own retry lines


def test_evolve_on_an_unreachable_cluster_leaves_nothing_behind(tmp_path: Path) -> None:
    pytest.importorskip("pydantic")
    config = {
        "foundation": ["zoo:add", "zoo:reverse", "zoo:sort"], "base": "zoo:base",
        "strategy": {"name": "greedy", "k": 3, "max_generations": 1},
        "evaluator": {"name": "builtin", "tasks_dir": "zoo:tasks", "tasks": ["add"], "limit": 2},
        "executor": {"name": "ray", "address": UNREACHABLE},
        "out": {"run_dir": "runs/r"},
    }
    (tmp_path / "ray.yaml").write_text(yaml.safe_dump(config))
    start = time.monotonic()
    result = kinmerge_subprocess("evolve", tmp_path / "ray.yaml")
    assert time.monotonic() - start < 40
    assert_one_line_error(result, UNREACHABLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ray.yaml"]  # no empty store, no run dir


def test_an_existing_run_directory_keeps_its_files_when_the_cluster_is_unreachable(tmp_path: Path) -> None:
    pytest.importorskip("pydantic")
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("keep")
    config = {
        "foundation": ["zoo:add", "zoo:reverse"], "base": "zoo:base",
        "strategy": {"name": "greedy", "k": 2, "max_generations": 1},
        "evaluator": {"name": "builtin", "tasks_dir": "zoo:tasks", "tasks": ["add"], "limit": 2},
        "executor": {"name": "ray", "address": f"ray://{UNREACHABLE}", "connect_timeout_s": 5},
    }
    (tmp_path / "ray.yaml").write_text(yaml.safe_dump(config))
    result = kinmerge_subprocess("evolve", tmp_path / "ray.yaml", "--run-dir", run)
    assert_one_line_error(result, f"ray://{UNREACHABLE}")
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_a_host_that_does_not_answer_times_out_as_configured() -> None:
    # A listener that never accepts, its queue full: the next connection waits for an answer.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue (its length varies by kernel)
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        start = time.monotonic()
        with pytest.raises(ClusterError) as err:
            RayCluster(f"127.0.0.1:{port}", connect_timeout_s=1.5).connect()
        took = time.monotonic() - start
    finally:
        for c in fillers:
            c.close()
        server.close()
    assert f"127.0.0.1:{port}" in str(err.value) and "within 1.5 s" in str(err.value) and "\n" not in str(err.value)
    assert took < 20


def test_the_timeout_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="timeout"):
        RayCluster(UNREACHABLE, connect_timeout_s=0)
    monkeypatch.setenv("KINMERGE_RAY_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="KINMERGE_RAY_CONNECT_TIMEOUT"):
        RayCluster(UNREACHABLE).connect()


# Loaded by every Python process of the run through PYTHONPATH: Ray's dashboard agent exits at once,
# so the raylet that waits for it ends too and Ray's start-up times out (Ray waits 30 s for it).
_AGENT_DIES = """
import os, sys
if sys.argv and sys.argv[0].endswith(os.path.join("dashboard", "agent.py")):
    os._exit(1)
"""


def test_a_local_cluster_that_does_not_start_is_one_line_and_leaves_no_store(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pydantic")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_AGENT_DIES)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = {
        "foundation": ["zoo:add", "zoo:reverse"], "base": "zoo:base",
        "strategy": {"name": "greedy", "k": 2, "max_generations": 1},
        "evaluator": {"name": "builtin", "tasks_dir": "zoo:tasks", "tasks": ["add"], "limit": 2},
        "executor": {"name": "ray", "num_cpus": 1},  # a cluster of the run's own
        "out": {"run_dir": "runs/r"},
    }
    (tmp_path / "ray.yaml").write_text(yaml.safe_dump(config))
    result = kinmerge_subprocess("evolve", tmp_path / "ray.yaml", "--no-progress")
    assert_one_line_error(result, "could not start a local Ray cluster", "timed out during startup", "ray start --head")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ray.yaml", "site"]  # no store, no run dir
