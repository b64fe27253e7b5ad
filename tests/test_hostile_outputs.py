"""Nothing of the user's is deleted (issue 17, item 1): every command that writes a folder.

Each writer is run for real (click's CliRunner, a subprocess where a resource limit is needed) on
a folder holding the user's files; it must refuse in one ``Error:`` line with exit 2 and leave
every file as it was, or write beside them. Folders kinmerge wrote keep being replaced (rebuilds).
The refusals happen before any model is read, so this file needs no torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli_checks import assert_one_line_error
from kinmerge._io import OWNER_MARKER, atomic_dir, check_output_folder
from kinmerge.cli import cli
from kinmerge.errors import OutputFolderError


def _users_folder(root: Path) -> dict[str, bytes]:
    """A folder of the user's: a GGUF-looking file and notes; returns what must survive."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.gguf").write_bytes(b"GGUF not really")
    (root / "notes.txt").write_text("keep\n")
    return _snapshot(root)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(args: list[str], cwd: Path | None = None) -> object:
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return CliRunner().invoke(cli, args, catch_exceptions=True)
    finally:
        os.chdir(old)


# -- convert ---------------------------------------------------------------------------------------

def test_convert_into_the_folder_holding_the_gguf_is_refused_and_deletes_nothing(tmp_path: Path) -> None:
    d = tmp_path / "d"
    before = _users_folder(d)
    line = assert_one_line_error(_run(["convert", str(d / "model.gguf"), "--out", str(d)]), d, "--out")
    assert "holds the input" in line
    assert _snapshot(d) == before


def test_convert_out_dot_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    d = tmp_path / "d"
    before = _users_folder(d)
    assert_one_line_error(_run(["convert", "model.gguf", "--out", "."], cwd=d), "--out")
    assert _snapshot(d) == before


def test_convert_into_a_folder_of_other_files_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "in" / "model.gguf"
    src.parent.mkdir()
    src.write_bytes(b"GGUF not really")
    models = tmp_path / "models"
    models.mkdir()
    (models / "notes.txt").write_text("keep\n")
    line = assert_one_line_error(_run(["convert", str(src), "--out", str(models)]), models, "notes.txt")
    assert "did not write" in line and "choose a new or empty folder" in line
    assert (models / "notes.txt").read_text() == "keep\n"


# -- merge --out -----------------------------------------------------------------------------------

def test_merge_never_deletes_a_users_folder_under_the_merge_id(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("mergekit")
    out = tmp_path / "merges"
    first = _run(["merge", "zoo:add", "zoo:sort", "--t", "0.5", "--out", str(out), "--json"])
    assert first.exit_code == 0, first.output
    made = next(p for p in out.iterdir() if not p.name.startswith("."))
    assert (made / OWNER_MARKER).is_file() and (made / "kinmerge.json").is_file()
    shutil.rmtree(made)
    made.mkdir()
    (made / "notes.txt").write_text("mine\n")  # the user's folder, by chance under the merge's id
    assert_one_line_error(_run(["merge", "zoo:add", "zoo:sort", "--t", "0.5", "--out", str(out)]), made)
    assert (made / "notes.txt").read_text() == "mine\n"


# -- report ----------------------------------------------------------------------------------------

def test_report_refuses_a_users_report_folder_and_the_run_directory(old_run: Path, tmp_path: Path) -> None:
    mine = old_run / "report"
    mine.mkdir()
    (mine / "draft.md").write_text("my notes\n")
    assert_one_line_error(_run(["report", str(old_run)]), mine, "--out")  # the default RUN/report
    assert (mine / "draft.md").read_text() == "my notes\n"
    line = assert_one_line_error(_run(["report", str(old_run), "--out", str(tmp_path)]), tmp_path)
    assert "holds the input" in line
    assert (old_run / "kinmerge.db").is_file()


def test_report_rewrites_its_own_folder(old_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "page"
    for _ in range(2):  # the second run replaces the first report whole
        result = _run(["report", str(old_run), "--out", str(out)])
        assert result.exit_code == 0, result.output
    assert (out / "index.html").is_file() and (out / OWNER_MARKER).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_names_the_report_folder_and_leaves_nothing_half_written(old_run: Path,
                                                                             tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "page"
    assert _run(["compare", str(old_run), "--json"]).exit_code == 0  # upgrades the 0.1.0 store in place first
    # A file-size limit makes the first large write fail as a full disk does: an OSError naming no file.
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
        from kinmerge.cli import cli
        sys.argv = ["kinmerge", "report", {str(old_run)!r}, "--out", {str(out)!r}]
        cli()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MPLBACKEND="Agg"))
    assert_one_line_error(proc, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp folder left either


# -- zoo build, demo -------------------------------------------------------------------------------

def test_zoo_build_force_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    d = tmp_path / "d"
    before = _users_folder(d)
    assert_one_line_error(_run(["zoo", "build", str(d), "--preset", "micro", "--force"]), d, "DIRECTORY")
    assert _snapshot(d) == before


def test_demo_refuses_a_folder_of_other_files(tmp_path: Path) -> None:
    pytest.importorskip("yaml")  # the demo writes YAML configs
    d = tmp_path / "d"
    before = _users_folder(d)
    assert_one_line_error(_run(["demo", "--out", str(d), "--no-progress"]), d, "--out")
    assert _snapshot(d) == before


# -- the shared mechanism --------------------------------------------------------------------------

def test_a_folder_kinmerge_wrote_is_replaced_and_one_it_did_not_is_not(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target, replace=True) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_dir(target, replace=True) as tmp:  # ours: replaced whole
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [OWNER_MARKER, "b.txt"]
    (target / OWNER_MARKER).unlink()  # now it is just a folder of files
    with pytest.raises(OutputFolderError, match="did not write"), atomic_dir(target, replace=True) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    with pytest.raises(OutputFolderError, match="root"):
        check_output_folder("/")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        check_output_folder(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output_folder(empty) == empty  # an empty folder holds nothing to lose


def test_evolve_writes_beside_the_users_files_in_its_run_directory(tmp_path: Path) -> None:
    """A run directory that already holds the user's files: the run writes its store and merges
    beside them, and a rerun (resume) and a failed start leave them as they were."""
    pytest.importorskip("torch")
    yaml = pytest.importorskip("yaml")
    run_dir = tmp_path / "runs"
    mine = _users_folder(run_dir)
    config = {"foundation": ["zoo:add", "zoo:sort"], "base": "zoo:base",
              "strategy": {"name": "greedy", "k": 2, "max_generations": 1}, "merge": {"method": "linear"},
              "evaluator": {"name": "builtin", "tasks_dir": "zoo:tasks", "tasks": ["add"], "limit": 4},
              "out": {"run_dir": str(run_dir)}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    for _ in range(2):  # the run, then a resume of the finished run
        result = CliRunner().invoke(cli, ["evolve", str(tmp_path / "run.yaml"), "--no-progress"])
        assert result.exit_code == 0, result.output
        assert {k: v for k, v in _snapshot(run_dir).items() if k in mine} == mine
    assert (run_dir / "kinmerge.db").is_file() and any((run_dir / "models").iterdir())
    config["out"] = {"run_dir": str(tmp_path / "other")}
    config["executor"] = {"name": "ray", "address": "127.0.0.1:1", "connect_timeout_s": 2}
    other = tmp_path / "other"
    theirs = _users_folder(other)
    (tmp_path / "ray.yaml").write_text(yaml.safe_dump(config))
    assert_one_line_error(CliRunner().invoke(cli, ["evolve", str(tmp_path / "ray.yaml")]))
    assert _snapshot(other) == theirs  # nothing half-made left beside them, nothing of theirs gone
