"""``compare`` and ``report`` count each run once and leave unfinished runs out of their means
(issue 17, item 6). Real stores: the 0.1.0 store shipped in tests/data (a greedy and a kinship
run, both finished), copied, and one of its runs marked interrupted in real SQLite, as a killed
``evolve`` leaves it. Needs no torch (the report case needs matplotlib).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from kinmerge.cli import cli


def _compare(*args: object) -> dict:
    result = CliRunner().invoke(cli, ["compare", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_run_directory_given_twice_counts_once(old_run: Path, tmp_path: Path) -> None:
    run = old_run
    once = _compare(run)
    twice = _compare(run, f"{run}/", tmp_path / "." / "run")
    assert [r["run_id"] for r in twice["runs"]] == [r["run_id"] for r in once["runs"]] == ["greedy", "kinship"]
    assert [s["runs"] for s in twice["strategies"]] == [s["runs"] for s in once["strategies"]] == [1, 1]
    assert twice["note"] is None and twice["left_out"] == []


def test_an_interrupted_run_is_shown_flagged_and_left_out_of_the_means(old_run: Path) -> None:
    run = old_run
    _compare(run)  # upgrades the 0.1.0 store first (the migration allows 'interrupted')
    with sqlite3.connect(run / "kinmerge.db") as db:
        db.execute("UPDATE runs SET status = 'interrupted' WHERE id = 'kinship'")
    data = _compare(run)
    assert [(r["run_id"], r["counted"]) for r in data["runs"]] == [("greedy", True), ("kinship", False)]
    assert [s["strategy"] for s in data["strategies"]] == ["greedy"]  # kinship's cut-short pool: no mean
    assert data["left_out"] == [{"run_dir": str(run), "run_id": "kinship", "status": "interrupted"}]
    assert "kinship" in data["note"] and "interrupted" in data["note"]
    table = CliRunner().invoke(cli, ["compare", str(run)])
    assert table.exit_code == 0, table.output
    assert "interrupted: not counted" in table.stdout
    assert [line for line in table.stdout.splitlines() if line.startswith("left out of the means")]


def test_the_report_counts_each_run_once_and_flags_the_unfinished(old_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    run = old_run
    _compare(run)
    with sqlite3.connect(run / "kinmerge.db") as db:
        db.execute("UPDATE runs SET status = 'interrupted' WHERE id = 'kinship'")
    result = CliRunner().invoke(cli, ["report", str(run), str(run), "--out", str(tmp_path / "page")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "page" / "index.html").read_text(encoding="utf-8")
    assert "2 run(s) on 1 testbed(s)" in page  # not 4
    assert "left out of the means across runs, not finished: kinship in" in page
