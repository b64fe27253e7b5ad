"""Messages name the command's own options and the likely cause (issue 17, item 7).

``--allow-missing`` is named only by the commands that have it (kinship, matrix), never by
``suggest``; a GGUF file against a Hugging Face folder says that their tensor names differ and
how to convert, instead of listing dozens of "missing" tensors. Real files: the shipped zoo, a
copy lacking one tensor, and a tiny GGUF written with the ``gguf`` package. Needs no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from cli_checks import assert_one_line_error
from kinmerge.cli import cli
from kinmerge.sources import zoo_path

CONVERT = "GGUF and Hugging Face folders name tensors differently: convert the GGUF with `kinmerge convert` first"


@pytest.fixture
def lacking(tmp_path: Path) -> Path:
    """zoo:add without one of its tensors."""
    src = zoo_path("zoo:add")
    out = tmp_path / "lacking"
    out.mkdir()
    tensors = load_file(str(src / "model.safetensors"))
    tensors.pop(sorted(tensors)[-1])
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text((src / "config.json").read_text())
    return out


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_up.weight", "output_norm.weight"):
        writer.add_tensor(name, np.ones((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _cli(*args: object) -> object:
    return CliRunner().invoke(cli, [*map(str, args), "--no-progress"])


def test_kinship_and_matrix_name_their_allow_missing_option(lacking: Path) -> None:
    for cmd in (["kinship", lacking, "zoo:sort"], ["matrix", lacking, "zoo:sort"]):
        assert "--allow-missing" in assert_one_line_error(_cli(*cmd, "--base", "zoo:base"), "lacks 1 tensor")


def test_suggest_names_no_option_it_does_not_have(lacking: Path) -> None:
    line = assert_one_line_error(_cli("suggest", lacking, "zoo:sort", "--base", "zoo:base"), "lacks 1 tensor")
    assert "--allow-missing" not in line


@pytest.mark.parametrize("cmd", ["kinship", "matrix", "suggest"])
def test_gguf_against_hugging_face_names_the_cause_and_the_way_out(tiny_gguf: Path, cmd: str) -> None:
    line = assert_one_line_error(_cli(cmd, tiny_gguf, "zoo:sort", "--base", "zoo:base"), CONVERT)
    assert "--allow-missing" not in line  # skipping would skip every tensor
