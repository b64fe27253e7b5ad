"""Nothing half-written: atomic writes, and what a killed writer leaves is swept by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kinmerge._io import atomic_dir, atomic_write, remove_dead_temps, temp_name


def test_a_dead_writers_temp_folder_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    left = tmp_path / f".zoo.{dead_pid}-0a1b2c3d.tmp"
    left.mkdir()
    (left / "half.bin").write_bytes(b"x")
    live = temp_name(tmp_path / "zoo")  # this process: a writer at work
    live.mkdir()
    other = tmp_path / f".other.{dead_pid}-0a1b2c3d.tmp"  # another destination's temp: not ours to judge
    other.mkdir()
    with atomic_dir(tmp_path / "zoo") as tmp:
        atomic_write(tmp / "a.txt", "done")
    assert not left.exists() and live.exists() and other.exists()
    assert (tmp_path / "zoo" / "a.txt").read_text() == "done"
    assert remove_dead_temps(tmp_path / "zoo") == []


@pytest.mark.slow
def test_a_killed_zoo_build_leaves_nothing_the_next_build_keeps(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    target = tmp_path / "zoo"
    cmd = [sys.executable, "-m", "kinmerge.cli", "zoo", "build", str(target), "--preset", "micro"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".zoo.") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the build never started writing"
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists() and any(p.name.startswith(".zoo.") for p in tmp_path.iterdir())
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]
