"""Hostile index files and names (issue 17, items 2, 3, 7 and 8): each case ends in the right
answer or one ``Error:`` line with exit 2.

Real index files of the shipped zoo's models (copied into tmp_path so they can move, change or
collide with names), tampered with plain SQL where the case is a damaged file; a full disk is a
real ``kinmerge`` process whose file size limit (``RLIMIT_FSIZE``) the index outgrows. Runs
without torch (the light CI job).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_checks import assert_one_line_error
from kinmerge import Index
from kinmerge.cli.app import cli
from kinmerge.index.api import IndexMismatchError
from kinmerge.index.file import IndexFileError
from kinmerge.sources import content_id
from kinmerge.zoo import shipped_zoo

SIZE = "4096"  # small sketches: the cases are about the file, not the estimates


@pytest.fixture
def family(tmp_path: Path) -> Path:
    """``base``, ``add``, ``sort``, ``reverse``: copies of the shipped zoo under tmp_path/models."""
    zoo = shipped_zoo()
    models = tmp_path / "models"
    shutil.copytree(zoo.base, models / "base")
    for name in ("add", "sort", "reverse"):
        shutil.copytree(zoo.specialists[name], models / name)
    return models


def _cli(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _index(tmp_path: Path, family: Path, *names: str) -> Path:
    index = tmp_path / "family.kmi"
    result = _cli("index", "add", index, *[family / n for n in names], "--base", family / "base", "--size", SIZE,
                  "--no-progress")
    assert result.exit_code == 0, result.output
    return index


def _tamper(index: Path, sql: str, *params: object) -> None:
    conn = sqlite3.connect(index)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


# -- a moved base ------------------------------------------------------------------------------


def test_an_index_is_re_pointed_at_its_moved_base(tmp_path: Path, family: Path) -> None:
    index = _index(tmp_path, family, "add", "sort")
    moved = tmp_path / "elsewhere"
    (family / "base").rename(moved)
    # Gone: one line saying how to re-point, from add and from an --exact query alike.
    line = assert_one_line_error(_cli("index", "add", index, family / "reverse", "--no-progress"), "gone", "--base")
    assert str(family / "base") in line
    assert_one_line_error(_cli("index", "query", index, "add", "--exact", "--no-progress"), "gone")
    # Another model's weights at the "new place": refused, nothing re-pointed.
    assert_one_line_error(_cli("index", "add", index, "--base", family / "sort"), "is not this index's base")
    # The same weights: re-pointed, and the index works again.
    assert _cli("index", "add", index, "--base", moved).exit_code == 0
    with Index(index) as idx:
        assert idx.meta["base"]["ref"] == str(moved)
    result = _cli("index", "query", index, "add", "--exact", "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    assert _cli("index", "add", index, family / "reverse", "--no-progress").exit_code == 0


def test_add_without_models_or_base_is_a_usage_error(tmp_path: Path, family: Path) -> None:
    index = _index(tmp_path, family, "add", "sort")
    result = _cli("index", "add", index)
    assert result.exit_code == 2 and "--base NEW_PLACE" in result.output


# -- --exact on a model that changed, names that are also paths ---------------------------------


def test_exact_says_the_model_changed_since_it_was_indexed(tmp_path: Path, family: Path) -> None:
    index = _index(tmp_path, family, "add", "sort")
    for f in (family / "reverse").iterdir():  # other weights at the indexed path now
        shutil.copy(f, family / "sort" / f.name)
    line = assert_one_line_error(_cli("index", "query", index, "add", "--exact", "--no-progress"),
                                 "changed since it was indexed")
    assert str(family / "sort") in line
    assert _cli("index", "query", index, "add", "--no-progress").exit_code == 0  # the estimate needs no file


def test_a_label_that_is_also_a_folder_of_other_weights_is_ambiguous(tmp_path: Path, family: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    index = _index(tmp_path, family, "add", "sort")
    with Index(index) as idx:
        labels = {r.label for r in idx.models()}
    assert "add" in labels
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    shutil.copytree(family / "add", here / "add")  # the same weights: one meaning, no ambiguity
    assert _cli("index", "query", index, "add", "--no-progress").exit_code == 0
    shutil.rmtree(here / "add")
    shutil.copytree(family / "reverse", here / "add")  # other weights under the label's name
    assert_one_line_error(_cli("index", "query", index, "add", "--no-progress"), "'add'", "./add", "content id")
    result = _cli("index", "query", index, "./add", "--json", "--no-progress")  # the path, said as a path
    assert result.exit_code == 0, result.output


# -- damaged files, missing folders, full disks ------------------------------------------------


DAMAGE = [
    ("UPDATE models SET sumsq = -1 WHERE label = 'sort'", "sumsq"),
    ("UPDATE models SET sum = 1e6 WHERE label = 'sort'", "cannot both be right"),
    ("UPDATE models SET n = 0 WHERE label = 'sort'", "positive count"),
    ("UPDATE models SET sumsq = 'many' WHERE label = 'sort'", "not a finite number"),
    ("UPDATE models SET sketch = substr(sketch, 1, 100) WHERE label = 'sort'", "truncated"),
    ("UPDATE models SET coarse = substr(coarse, 1, 10) WHERE label = 'sort'", "truncated"),  # read by queries
    ("UPDATE meta SET value = '{broken' WHERE key = 'base'", "not valid JSON"),
]


@pytest.mark.parametrize(("sql", "problem"), DAMAGE, ids=[d[1] for d in DAMAGE])
def test_a_damaged_value_is_damage_not_a_constant_delta(tmp_path: Path, family: Path, sql: str, problem: str) -> None:
    index = _index(tmp_path, family, "add", "sort")
    _tamper(index, sql)
    for args in (("query", index, "add", "--no-progress"), ("matrix", index))[:1 if "coarse" in sql else 2]:
        line = assert_one_line_error(_cli("index", *args), index, problem)
        assert "constant" not in line


def test_an_index_in_a_missing_folder_is_one_line_before_any_model_is_read(tmp_path: Path, family: Path) -> None:
    result = _cli("index", "add", tmp_path / "no" / "such" / "f.kmi", family / "add", "--base", family / "base",
                  "--no-progress")
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "no").exists()


def _small_files() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_a_full_disk_in_index_add_is_one_line_and_leaves_no_file(tmp_path: Path, family: Path) -> None:
    index = tmp_path / "full.kmi"
    result = subprocess.run(
        [sys.executable, "-m", "kinmerge.cli", "index", "add", str(index), str(family / "add"), "--base",
         str(family / "base"), "--no-progress"],
        capture_output=True, text=True, env=dict(os.environ), timeout=300, preexec_fn=_small_files)
    assert_one_line_error(result, index, "cannot write the index")
    assert not index.exists()


def test_a_full_disk_keeps_the_models_added_before(tmp_path: Path, family: Path) -> None:
    index = _index(tmp_path, family, "add")
    result = subprocess.run(
        [sys.executable, "-m", "kinmerge.cli", "index", "add", str(index), str(family / "sort"), "--no-progress"],
        capture_output=True, text=True, env=dict(os.environ), timeout=300,
        preexec_fn=lambda: (signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
                            resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))))
    assert_one_line_error(result, index)
    with Index(index) as idx:
        assert [r.label for r in idx.models()] == ["add"]


# -- kinship_source: sketch refuses an index of another base ------------------------------------


def test_a_run_refuses_a_sketch_index_made_from_another_base(tmp_path: Path, family: Path) -> None:
    from kinmerge.evolve.sketch_kinship import INDEX_FILE, SketchKinship

    run = tmp_path / "run"
    run.mkdir()
    with Index(run / INDEX_FILE) as idx:  # sketches of another base (add as the "base")
        idx.add([family / "sort", family / "reverse"], base=family / "add", max_delta=None)
    source = SketchKinship(str(family / "base"), run)
    ids = {content_id(family / n): str(family / n) for n in ("sort", "reverse")}
    with pytest.raises(IndexMismatchError, match="another base") as err:
        source.values(list(ids), ids.__getitem__, base_id=content_id(family / "base"))
    assert "\n" not in str(err.value)
    # Its own base: the same call answers.
    (run / INDEX_FILE).unlink()
    got = source.values(list(ids), ids.__getitem__, base_id=content_id(family / "base"))
    assert len(got["values"]["pcc"]) == 1


# -- Hypothesis: any value in any column of a model row reads back or is one line of damage -----

_columns = st.sampled_from(["n", "sum", "sumsq", "coarse", "sketch", "label", "ref"])
_values = st.one_of(st.none(), st.text(max_size=20), st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(min_value=-10**9, max_value=10**9), st.binary(max_size=64))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    zoo = shipped_zoo()
    where = tmp_path_factory.mktemp("pristine")
    with Index(where / "family.kmi", size=4096) as idx:
        idx.add([zoo.specialists["add"], zoo.specialists["sort"], zoo.specialists["reverse"]], base=zoo.base)
    return where / "family.kmi"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=_columns, value=_values)
def test_any_tampered_model_value_reads_or_is_damage(pristine: Path, tmp_path_factory: pytest.TempPathFactory,
                                                     column: str, value: object) -> None:
    index = tmp_path_factory.mktemp("fuzz") / "family.kmi"
    shutil.copy(pristine, index)
    try:
        _tamper(index, f"UPDATE models SET {column} = ? WHERE seq = 2", value)
    except sqlite3.IntegrityError:  # NOT NULL / UNIQUE keep the value out: nothing to read
        return
    try:
        with Index(index) as idx:
            idx.query(idx.models()[0].id, top=None)
            idx.matrix()
    except IndexFileError as exc:
        assert "\n" not in str(exc) and str(index) in str(exc)
