"""Hostile run stores (issue 17, items 2 and 8): every stored number keyed by what it depends on,
and a store whose fields are not what its schema says read as "damaged" in one line.

Each case is a real store (``RunStore`` on a real SQLite file) tampered with plain SQL, as a
hand edit or a damaged copy would, and read by the real CLI: exactly one ``Error:`` line naming
the table and the row, exit 2, no traceback. Runs without torch (the light CI job).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_checks import assert_one_line_error
from kinmerge.cli.app import cli
from kinmerge.pool import Plan, PlannedMerge
from kinmerge.store import DB_NAME, RunStore
from kinmerge.store.checks import DamagedStoreError

EVAL = "builtin-test"
BASE = "b" * 32
OTHER_BASE = "c" * 32


def _config(base: str = BASE, **extra: object) -> dict[str, object]:
    return {"base": base, "evaluator": EVAL, "strategy": {"name": "greedy", "k": 2}, "foundation": ["ma", "mc"],
            "metric": "pcc", **extra}


def _make_run(run_dir: Path) -> Path:
    """A finished run of two scored foundations, their kinship and a stop plan."""
    with RunStore(run_dir) as s:
        s.start_run("r1", strategy="greedy", config=_config(), seed=0)
        for m, score in (("ma", 0.5), ("mc", 0.25)):
            s.add_model(m, origin="foundation", generation=0, path=f"/m/{m}", run_id="r1")
            s.record_evaluations(m, EVAL, {"t1": score}, details={"t1": {"accuracy": score, "n": 4.0}})
        s.record_kinship("ma", "mc", "pcc", 0.3)
        s.save_plan("r1", Plan(generation=1, merges=(PlannedMerge(("ma", "mc"), "greedy"),)))
        s.mark_plan_done("r1", 1)
        s.save_plan("r1", Plan(generation=2, stop="top-k unchanged"))
        s.finish_run("r1")
    return run_dir


def _tamper(run_dir: Path, sql: str, *params: object) -> None:
    conn = sqlite3.connect(run_dir / DB_NAME)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return _make_run(tmp_path / "run")


def test_the_untampered_store_reads(run: Path) -> None:
    result = CliRunner().invoke(cli, ["status", str(run)])
    assert result.exit_code == 0, result.output
    assert "0.3000" in result.output


TAMPERED = [
    ("UPDATE evaluations SET score = 'abc' WHERE model_id = 'ma'", "evaluations", "score 'abc' is not a number"),
    ("UPDATE evaluations SET score = 46 WHERE model_id = 'ma'", "evaluations", "outside [0, 1]"),
    ("UPDATE evaluations SET details = '{\"accuracy\": ' WHERE model_id = 'ma'", "evaluations", "details"),
    ("UPDATE kinship SET value = 'x'", "kinship", "value 'x' is not a number"),
    ("UPDATE kinship SET value = 7", "kinship", "outside [-1, 1]"),
    ("UPDATE runs SET config = '{broken'", "runs", "config is not valid JSON"),
    ("UPDATE runs SET config = '[1, 2]'", "runs", "config is a JSON list"),
    ("UPDATE runs SET config = '{\"strategy\": {\"name\": \"greedy\"}, \"evaluator\": \"e\", \"foundation\": 5}'",
     "runs", "config is not a run's settings"),
    ("UPDATE plans SET plan = '[1' WHERE generation = 1", "plans", "plan is not valid JSON"),
    ("UPDATE plans SET plan = '{\"merges\": []}' WHERE generation = 1", "plans", "plan is not a saved plan"),
    ("UPDATE plans SET plan = '{\"generation\": 1, \"merges\": [{\"parents\": 3}]}' WHERE generation = 1", "plans",
     "plan is not a saved plan"),
]


@pytest.mark.parametrize(("sql", "table", "problem"), TAMPERED, ids=[t[2][:24] for t in TAMPERED])
def test_status_says_the_store_is_damaged_in_one_line(run: Path, sql: str, table: str, problem: str) -> None:
    _tamper(run, sql)
    result = CliRunner().invoke(cli, ["status", str(run)])
    line = assert_one_line_error(result, run / DB_NAME, f"table {table}", problem)
    assert "restore the file from a copy" in line


def test_lineage_reads_a_corrupt_recipe_as_damage(run: Path) -> None:
    with RunStore(run) as s:
        s.add_model("kid", origin="merge", generation=1, parents=("ma", "mc"), recipe={"method": "slerp"},
                    run_id="r1")
    _tamper(run, "UPDATE models SET recipe = 'nope' WHERE id = 'kid'")
    result = CliRunner().invoke(cli, ["lineage", "kid", "--run", str(run)])
    assert_one_line_error(result, "table models", "recipe is not valid JSON")


def test_the_report_says_the_store_is_damaged_in_one_line(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _tamper(run, "UPDATE evaluations SET score = 'abc' WHERE model_id = 'ma'")
    result = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "page")])
    assert_one_line_error(result, "table evaluations", "is not a number")


# -- kinship keyed by base and source ----------------------------------------------------------


def test_kinship_of_another_base_is_another_number(tmp_path: Path) -> None:
    with RunStore(tmp_path / "r") as s:
        for m in ("ma", "mc"):
            s.add_model(m, origin="foundation", generation=0, path=f"/m/{m}")
        s.record_kinship("ma", "mc", "pcc", 0.3, base=BASE)
        s.record_kinship("ma", "mc", "pcc", -0.1, base=OTHER_BASE)
        s.record_kinship("ma", "mc", "pcc", 0.5, base=BASE, source="sketch")
        pair = frozenset(("ma", "mc"))
        assert s.get_kinship("pcc", base=BASE, source="exact") == {pair: 0.3}
        assert s.get_kinship("pcc", base=OTHER_BASE, source="exact") == {pair: -0.1}
        assert s.get_kinship("pcc", base=BASE, source="sketch") == {pair: 0.5}
        with pytest.raises(ValueError, match="source"):
            s.get_kinship("pcc", base=BASE, source="guess")


def test_a_store_refuses_a_second_base(run: Path) -> None:
    with RunStore(run) as s, pytest.raises(Exception, match="needs its own run directory") as err:
        s.start_run("r2", strategy="greedy", config=_config(OTHER_BASE), seed=0)
    assert "\n" not in str(err.value) and BASE[:12] in str(err.value)
    with RunStore(run) as s:  # the same base: runs share the store as before
        s.start_run("r2", strategy="greedy", config=_config(BASE, seed_note=1), seed=1)
        assert s.base_id() == BASE


def test_a_pool_reads_the_kinship_of_its_own_base_and_source(tmp_path: Path) -> None:
    with RunStore(tmp_path / "r") as s:
        s.start_run("sk", strategy="greedy", config=_config(kinship_source="sketch"), seed=0)
        s.start_run("ex", strategy="greedy", config=_config(), seed=0)
        for run_id in ("sk", "ex"):
            for m in ("ma", "mc"):
                s.add_model(m, origin="foundation", generation=0, path=f"/m/{m}", run_id=run_id)
        s.record_kinship("ma", "mc", "pcc", 0.9, base=BASE, source="sketch")
        assert s.pool_state("sk").kinship == {frozenset(("ma", "mc")): 0.9}
        assert s.pool_state("ex").kinship == {}  # an exact run never plans on an estimate


# -- Hypothesis: any value in any checked field reads back as itself or as damage ---------------

_fields = st.sampled_from([
    ("evaluations", "score"), ("evaluations", "details"), ("kinship", "value"), ("runs", "config"),
    ("plans", "plan"), ("models", "recipe"), ("events", "payload"),
])
_values = st.one_of(st.none(), st.text(max_size=30), st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(min_value=-10**6, max_value=10**6), st.binary(max_size=8))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=_fields, value=_values)
def test_any_tampered_field_reads_back_or_is_reported_as_damage(tmp_path_factory: pytest.TempPathFactory,
                                                                 field: tuple[str, str], value: object) -> None:
    run = _make_run(tmp_path_factory.mktemp("fuzz") / "run")
    with RunStore(run) as s:
        s.log_event("r1", "note", "a step", payload={"x": 1})
    table, column = field
    try:
        _tamper(run, f"UPDATE {table} SET {column} = ?", value)
    except sqlite3.IntegrityError:  # NOT NULL / CHECK constraints keep some values out: nothing to read
        return
    try:
        with RunStore(run, lock=False) as s:
            s.runs()
            s.pool_state("r1")
            s.plans("r1")
            s.events("r1")
            s.lineage("ma")
            s.examples_scored()
    except DamagedStoreError as exc:
        assert str(exc).count("\n") == 0 and f"table {table}" in str(exc)


# -- evolve on such a store ------------------------------------------------------------------


def _evolve_config(tmp_path: Path, run: Path, run_id: str) -> Path:
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("pydantic")
    config = {"foundation": ["zoo:add", "zoo:reverse"], "base": "zoo:base", "run_id": run_id,
              "strategy": {"name": "greedy", "k": 2, "max_generations": 1},
              "evaluator": {"name": "builtin", "tasks_dir": "zoo:tasks", "tasks": ["add"], "limit": 2},
              "out": {"run_dir": str(run)}}
    path = tmp_path / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_evolve_on_a_damaged_store_is_one_line(run: Path, tmp_path: Path) -> None:
    config = _evolve_config(tmp_path, run, "r1")
    _tamper(run, "UPDATE runs SET config = '{broken'")
    assert_one_line_error(CliRunner().invoke(cli, ["evolve", str(config), "--no-progress"]), "table runs")


def test_evolve_refuses_a_second_base_in_one_run_directory(run: Path, tmp_path: Path) -> None:
    config = _evolve_config(tmp_path, run, "r2")  # zoo:base is not the store's base
    line = assert_one_line_error(CliRunner().invoke(cli, ["evolve", str(config), "--no-progress"]),
                                 "needs its own run directory")
    assert BASE[:12] in line
    with RunStore(run, lock=False) as s:
        assert [r.id for r in s.runs()] == ["r1"]


def test_a_store_of_several_bases_from_before_still_resumes_each_run(tmp_path: Path) -> None:
    run = tmp_path / "old"
    with RunStore(run) as s:
        s.start_run("r1", strategy="greedy", config=_config(BASE), seed=0)
    _tamper(run, "INSERT INTO runs (id, strategy, config, seed, status, started) "
                 "VALUES ('r2', 'greedy', ?, 0, 'finished', '2026-01-01T00:00:00+00:00')",
            '{"base": "' + OTHER_BASE + '"}')  # what an older kinmerge let two runs do
    with RunStore(run) as s:
        assert s.start_run("r1", strategy="greedy", config=_config(BASE), seed=0).status == "running"
        assert s.base_id() is None  # no single base: kinship is read by each run's own key
        with pytest.raises(Exception, match="needs its own run directory"):
            s.start_run("r3", strategy="greedy", config=_config(BASE), seed=0)


def test_an_sqlite_file_of_another_program_is_named_not_migrated(tmp_path: Path) -> None:
    """A kinmerge.db made by something else (its own ``runs`` table): one line, the file untouched."""
    run = tmp_path / "run"
    run.mkdir()
    conn = sqlite3.connect(run / DB_NAME)
    conn.execute("CREATE TABLE runs (id TEXT, notes TEXT)")
    conn.commit()
    conn.close()
    before = (run / DB_NAME).read_bytes()
    result = CliRunner().invoke(cli, ["status", str(run)])
    line = assert_one_line_error(result)
    assert "not a kinmerge store" in line and str(run / DB_NAME) in line
    assert (run / DB_NAME).read_bytes() == before
