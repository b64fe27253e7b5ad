"""The kinship and matrix commands through click, and bad input through a real subprocess."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from kinmerge.cli import cli
from st_family import load_stored, make_family, write_model


@pytest.fixture
def family(tmp_path):
    return make_family(tmp_path, 3)


def _run(*args):
    result = CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)
    return result


@pytest.mark.parametrize("metric", ["cs,pcc,ed", "cs pcc ed", "pcc, cs ,ed"])
def test_kinship_json_all_metric_spellings(family, metric):
    base, (a, b, _) = family
    res = _run("kinship", a, b, "--base", base, "--metric", metric, "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert set(data["kinship"]) == {"pcc", "cs", "ed"}
    assert -1 <= data["kinship"]["pcc"] <= 1 and data["kinship"]["ed"] > 0
    assert data["models"] == ["child0", "child1"] and data["base"] == "base"
    assert data["elements_compared"] == sum(v.size for v in load_stored(base).values())


def test_kinship_table_and_per_layer_breakdown_is_labelled(family):
    base, (a, b, _) = family
    res = _run("kinship", a, b, "--base", base, "--per-layer", "--no-progress")
    assert res.exit_code == 0
    assert "pcc (Pearson correlation)" in res.output
    assert "breakdown per layer (not the headline" in res.output
    data = json.loads(_run("kinship", a, b, "--base", base, "--per-layer", "--json", "--no-progress").output)
    assert "layer 0" in data["per_layer"] and "global" in data["breakdown_note"]


def test_unknown_metric_exit_2(family):
    base, (a, b, _) = family
    res = _run("kinship", a, b, "--base", base, "--metric", "pcc,foo")
    assert res.exit_code == 2 and "unknown kinship metric 'foo'" in res.output


def test_matrix_json_csv_and_heatmap(family, tmp_path):
    base, kids = family
    out_csv = tmp_path / "k.csv"
    res = _run("matrix", *kids, "--base", base, "--metric", "pcc,ed", "--csv", out_csv, "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    pcc = np.array(data["kinship"]["pcc"], dtype=float)
    assert pcc.shape == (3, 3) and np.allclose(pcc, pcc.T) and np.allclose(np.diag(pcc), 1)
    assert data["mean_pairwise"]["pcc"] == pytest.approx(np.mean([pcc[0, 1], pcc[0, 2], pcc[1, 2]]))
    with out_csv.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["metric", "model", "child0", "child1", "child2"]
    assert [r[0] for r in rows[1:]] == ["pcc"] * 3 + ["ed"] * 3
    assert float(rows[1][3]) == pytest.approx(pcc[0, 1])


def test_matrix_heatmap_or_the_extra_it_needs(family, tmp_path):
    """With the plot extra: a PNG. In a light install (no matplotlib): one line naming the extra."""
    import importlib.util

    base, kids = family
    out_png = tmp_path / "k.png"
    res = _run("matrix", *kids, "--base", base, "--plot", out_png, "--no-progress")
    if importlib.util.find_spec("matplotlib") and importlib.util.find_spec("scipy"):
        assert res.exit_code == 0, res.output
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert res.exit_code == 2 and "kinmerge[plot]" in res.output and not out_png.exists()
        # an install line that works: the packages themselves (kinmerge is not on an index)
        assert "'matplotlib>=" in res.output and "pip install -e '.[plot]'" in res.output


def test_install_hints_name_the_packages_of_an_extra():
    from kinmerge.errors import install_hint

    hint = install_hint("merge", "gguf")
    for package in ("mergekit", "torch", "transformers", "gguf"):
        assert f"'{package}" in hint, hint
    assert "pip install 'kinmerge[" not in hint and "pip install -e '.[merge,gguf]'" in hint


def test_matrix_undefined_pair_reported(family, tmp_path):
    base, (a, _, _) = family
    same = write_model(tmp_path / "copy", load_stored(base), "F32")
    data = json.loads(_run("matrix", a, same, "--base", base, "--json", "--no-progress").output)
    assert data["kinship"]["pcc"][0][1] is None
    assert "identical to the base" in data["undefined"]["pcc"]["child0 ~ copy"]


def _subprocess(*args):
    return subprocess.run([sys.executable, "-m", "kinmerge.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ}, timeout=300)


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_bad_input_one_line_errors(tmp_path):
    base, (a, b) = make_family(tmp_path, 2, dtype="F32")
    _assert_one_line_error(_subprocess("kinship", a, a, "--base", base, "--no-progress"), "same model")
    vals = load_stored(b)
    vals["lm_head.weight"][0, 0] = np.nan
    nan_model = write_model(tmp_path / "nanny", vals, "F32")
    _assert_one_line_error(_subprocess("kinship", a, nan_model, "--base", base, "--no-progress"), "nanny",
                           "lm_head.weight", "NaN")
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes()[:-10])
    _assert_one_line_error(_subprocess("kinship", a, trunc, "--base", base, "--no-progress"), "truncated")
    _assert_one_line_error(_subprocess("matrix", a, tmp_path / "nowhere", "--base", base), "no such file or folder")


def test_every_command_has_help_with_an_example():
    def walk(group, prefix=()):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from walk(cmd, (*prefix, name))
            else:
                yield (*prefix, name), cmd

    commands = list(walk(cli))
    assert {("kinship",), ("matrix",)} <= {p for p, _ in commands}
    for path, _ in commands:
        res = CliRunner().invoke(cli, [*path, "--help"])
        assert res.exit_code == 0, path
        assert "Example" in res.output, f"kinmerge {' '.join(path)} --help has no example"
