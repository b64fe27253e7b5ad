"""`kinmerge demo`, the README's main job: every strategy on every foundation set, compared."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mergekit")


def _demo(*args: str, timeout: int = 900, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "kinmerge.cli", "demo", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)


@pytest.mark.slow
def test_demo_on_micro_zoo_compares_strategies_and_resumes(micro_zoo, tmp_path):
    out = tmp_path / "demo"
    first = _demo("--zoo", str(micro_zoo.root), "--out", str(out), "--generations", "2", "--limit", "10", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads(first.stdout)
    strategies = {r["strategy"] for r in data["compare"]["runs"]}
    assert strategies == {"greedy", "kinship", "random", "predicted"}
    assert {r["run_id"] for r in data["compare"]["runs"]} == {"greedy", "kinship", "random-s0", "random-s1",
                                                              "predicted"}
    assert {row["strategy"] for row in data["across_sets"]} == strategies
    # a line on stderr as each run ends: which run, how far it got, what it spent
    ended = [line for line in first.stderr.splitlines()
             if re.match(r"add-caesar-reverse--\S+: \w+ after generation", line)]
    assert len(ended) == 5, first.stderr[-2000:]
    assert all(re.search(r", \d+ merges, best 0\.\d{4}$", line) for line in ended), ended
    for run in data["compare"]["runs"]:
        assert len(run["best_per_generation"]) >= 2 and run["merges_used"] >= 3  # gen 1 = all 3 pairs
    assert (out / "report" / "index.html").exists()
    assert sorted(p.name for p in (out / "configs").iterdir()) == [
        "add-caesar-reverse--greedy.yaml", "add-caesar-reverse--kinship.yaml", "add-caesar-reverse--predicted.yaml",
        "add-caesar-reverse--random-s0.yaml", "add-caesar-reverse--random-s1.yaml"]
    # the configs it kept rerun with `kinmerge evolve` and find everything done
    again = subprocess.run([sys.executable, "-m", "kinmerge.cli", "evolve",
                            str(out / "configs" / "add-caesar-reverse--kinship.yaml"),
                            "--json", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    # rerunning the demo resumes: same comparison, no new merges
    merges_before = sorted((out / "runs" / "add-caesar-reverse" / "models").iterdir())
    second = _demo("--zoo", str(micro_zoo.root), "--out", str(out), "--generations", "2", "--limit", "10", "--json")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["compare"]["runs"] == data["compare"]["runs"]
    assert sorted((out / "runs" / "add-caesar-reverse" / "models").iterdir()) == merges_before
    # other settings in the same folder: one line naming the change and the way out
    third = _demo("--zoo", str(micro_zoo.root), "--out", str(out), "--generations", "2", "--limit", "5")
    assert third.returncode == 2
    error = [line for line in third.stderr.splitlines() if " after generation " not in line]  # a run that ended
    assert len(error) == 1 and "limit 10 -> 5" in error[0] and "another --out" in error[0]


#: `kinmerge demo --help`'s quick demo, run here as written (tests/test_examples.py leaves it to this test). Plain
#: `kinmerge demo` runs the same code at the default budget (6 generations, 100 examples a task):
#: about 8 CPU-minutes, too slow for the suite (test_examples.SHRUNK, docs/benchmarks.md).
QUICK = "kinmerge demo --out demo-quick --sets 2 --generations 2 --limit 20 --json"


@pytest.mark.slow
def test_demo_on_the_shipped_zoo(tmp_path):
    from kinmerge.zoo import shipped_zoo

    try:
        zoo = shipped_zoo("headroom")
    except Exception as exc:  # the shipped zoo is part of the repository; its absence is a failure
        pytest.fail(f"no shipped zoo: {exc}")
    args = QUICK.split()[2:]
    proc = _demo(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    # every variant on each of the first two foundation sets the zoo records (--sets 2)
    sets = ["-".join(s) for s in zoo.manifest["headroom"]["sets"][:2]]
    runs = data["compare"]["runs"]
    assert sorted({r["testbed"] for r in runs}) == sorted(sets)
    assert sorted(r["run_id"] for r in runs) == sorted(["greedy", "kinship", "random-s0", "random-s1",
                                                        "predicted"] * len(sets))
    assert all(len(r["best_per_generation"]) >= 2 for r in runs)
    assert {row["strategy"] for row in data["across_sets"]} == {"greedy", "kinship", "random", "predicted"}
    out = tmp_path / "demo-quick"
    assert (out / "report" / "index.html").exists()
    # The tables a user reads: the same command without --json resumes, no new merge.
    merges = sorted(p.name for p in out.glob("runs/*/models/*"))
    tables = _demo(*[a for a in args if a != "--json"], "--no-progress", cwd=tmp_path)
    assert tables.returncode == 0, tables.stderr[-3000:]
    assert "across foundation sets" in tables.stdout
    for strategy in ("greedy", "kinship", "random", "predicted"):
        assert strategy in tables.stdout
    assert sorted(p.name for p in out.glob("runs/*/models/*")) == merges
