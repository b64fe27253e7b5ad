"""The headroom zoo (issue 9 §1): its property on known curves, its preset, a reduced build,
and (slow) the property on the shipped zoo's recorded greedy runs plus a re-run of one set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kinmerge.errors import ConfigError
from kinmerge.zoo import PRESETS, SHIPPED, FineTune, ZooPreset, shipped_zoo
from kinmerge.zoo.headroom import (
    MIN_GAIN,
    gain_after_gen1,
    kinship_rises,
    set_result,
    verdict,
)

ROOT = Path(__file__).resolve().parents[1]
RECORD = "headroom.json"


# --------------------------------------------------------------------------- the property


def test_gain_after_generation_1_is_final_best_minus_generation_1():
    assert gain_after_gen1([0.4, 0.5, 0.5, 0.52, 0.52]) == pytest.approx(0.02)
    assert gain_after_gen1([0.4, 0.5]) == 0.0  # stopped after generation 1
    assert gain_after_gen1([0.4]) is None and gain_after_gen1([0.4, None, 0.6]) is None
    assert gain_after_gen1([0.4, 0.5, None, 0.53]) == pytest.approx(0.03)


def test_kinship_must_end_above_generation_0_and_1():
    assert kinship_rises([0.0, 0.4, 0.9])
    assert not kinship_rises([0.0, 0.9, 0.8])      # fell after generation 1
    assert not kinship_rises([0.5, 0.3, 0.4])      # ends below where it started
    assert not kinship_rises([0.0, 0.4])           # too short to rise after generation 1
    assert not kinship_rises([None, 0.4, 0.9])
    assert kinship_rises([0.0, 0.4, 0.95, None])   # a missing last value: the last known one


def test_a_set_holds_at_exactly_the_minimum_gain_and_not_a_step_below():
    at = set_result("s", [0.4, 0.5, 0.5 + MIN_GAIN], [0.1, 0.5, 0.9], merges=9)
    assert at["holds"] and at["merges"] == 9 and at["gain_after_gen1"] == pytest.approx(MIN_GAIN)
    below = set_result("s", [0.4, 0.5, 0.5 + MIN_GAIN - 1 / 600], [0.1, 0.5, 0.9])
    assert not below["holds"] and below["kinship_rises"]
    flat = set_result("s", [0.4, 0.5, 0.6], [0.1, 0.5, 0.5])
    assert not flat["holds"] and flat["gain_after_gen1"] == pytest.approx(0.1)


def test_verdict_needs_three_of_every_four_sets():
    rows = [{"holds": h} for h in (True, True, True, False)]
    assert verdict(rows) == {"sets": 4, "hold": 3, "property": True}
    assert not verdict(rows[1:])["property"]  # 2 of 3
    assert verdict([{"holds": True}] * 6 + [{"holds": False}] * 2)["property"]
    assert not verdict([{"holds": True}] * 5 + [{"holds": False}] * 3)["property"]
    assert not verdict([])["property"]


# --------------------------------------------------------------------------- the preset


def test_headroom_preset_is_registered_and_consistent():
    preset = PRESETS["headroom"]
    names = [ft.name for ft in preset.models()]
    assert len(names) == len(set(names)) >= 5
    assert preset.headroom_sets and len(preset.headroom_sets) >= 4
    assert all(set(s) <= set(names) and len(s) >= 3 for s in preset.headroom_sets)
    assert {t for ft in preset.models() for t in ft.mixture} <= set(preset.tasks)
    limit = preset.headroom_limit or preset.eval_size
    tasks = len(preset.tasks) if preset.headroom_tasks == "all" else min(map(len, preset.headroom_sets))
    assert limit * tasks >= 600 and limit <= preset.eval_size  # one example moves <= 1/600
    assert "headroom" in SHIPPED and "tiny" in SHIPPED


def test_cli_offers_every_registered_preset_and_shipped_zoo():
    from click.testing import CliRunner

    from kinmerge.cli import cli

    build = CliRunner().invoke(cli, ["zoo", "build", "--help"])
    assert build.exit_code == 0 and all(name in build.output for name in PRESETS)
    listed = CliRunner().invoke(cli, ["zoo", "list", "--help"])
    assert listed.exit_code == 0 and all(name in listed.output for name in SHIPPED)


def test_unknown_shipped_zoo_names_the_choices():
    with pytest.raises(ConfigError, match="no shipped zoo 'huge'; choose from tiny"):
        shipped_zoo("huge")


def test_fine_tune_main_task_and_default_models():
    assert FineTune("m", {"sort": 1, "reverse": 3, "add": 3}).task == "reverse"
    preset = ZooPreset(name="p", tasks=("add", "sort"), summary="", hidden_size=8, num_layers=1,
                       num_heads=1, intermediate_size=8)
    assert preset.models() == (FineTune("add", {"add": 1}), FineTune("sort", {"sort": 1}))


# --------------------------------------------------------------------------- reduced builds

SMALL = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, base_target=None,
             base_max_steps=4, specialist_steps=3, batch_size=16, specialist_batch_size=8,
             eval_size=8, check_size=8, workers=1, log=lambda line: None)


def test_reduced_headroom_build_is_deterministic_and_records_its_sets(tmp_path):
    pytest.importorskip("torch")
    from kinmerge.zoo import build_zoo

    a = build_zoo(tmp_path / "a", preset="headroom", seed=1, **SMALL)
    b = build_zoo(tmp_path / "b", preset="headroom", seed=1, **SMALL)
    preset = PRESETS["headroom"]
    assert a.manifest["preset"] == "headroom"
    assert list(a.specialists) == [ft.name for ft in preset.models()]
    assert a.manifest["headroom"] == {"sets": [list(s) for s in preset.headroom_sets],
                                      "tasks": preset.headroom_tasks,
                                      "limit": preset.headroom_limit or SMALL["eval_size"]}
    for folder in ["base", *(f"specialists/{n}" for n in a.specialists)]:
        assert (a.root / folder / "model.safetensors").read_bytes() == (
            b.root / folder / "model.safetensors").read_bytes(), folder


def test_mixture_fine_tunes_train_on_their_tasks_and_say_so(tmp_path):
    pytest.importorskip("torch")
    from kinmerge.zoo import build_zoo

    mixed = (FineTune("rs", {"reverse": 2, "sort": 1}), FineTune("sc", {"sort": 1, "caesar": 1}, lr=1e-2))
    zoo = build_zoo(tmp_path / "z", preset="micro", tasks=("reverse", "sort", "caesar"),
                    fine_tunes=mixed, headroom_sets=(("rs", "sc"),), **{**SMALL, "workers": 2})
    m = zoo.manifest
    assert m["specialists"]["rs"] == {"task": "reverse", "path": "specialists/rs",
                                      "mixture": {"reverse": 2, "sort": 1}}
    assert m["specialists"]["sc"]["lr"] == 1e-2 and m["specialists"]["sc"]["task"] == "sort"
    assert m["build_seconds"]["workers"] == 2 and set(m["scores"]) == {"base", "rs", "sc"}
    meta = json.loads((zoo.specialists["rs"] / "config.json").read_text())["kinmerge_zoo"]
    assert meta["mixture"] == {"reverse": 2, "sort": 1} and meta["role"] == "specialist"
    with pytest.raises(ConfigError, match="headroom set .* names no fine-tune"):
        build_zoo(tmp_path / "y", preset="micro", headroom_sets=(("add", "nope"),), **SMALL)
    with pytest.raises(ConfigError, match="fine-tune names repeat"):
        build_zoo(tmp_path / "y", preset="micro", fine_tunes=mixed + mixed[:1], **SMALL)


# --------------------------------------------------------------------------- the shipped zoo


@pytest.fixture(scope="module")
def headroom_zoo():
    return shipped_zoo("headroom")


def _dtypes(weights: Path) -> set[str]:
    """Tensor dtypes from a safetensors header (8-byte length, then JSON), without torch."""
    with weights.open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_shipped_headroom_zoo_is_small_fp16_and_lists_itself(headroom_zoo):
    from click.testing import CliRunner

    from kinmerge.cli import cli

    size = sum(p.stat().st_size for p in headroom_zoo.root.rglob("*") if p.is_file())
    assert size <= 40 * 2**20
    assert headroom_zoo.manifest["preset"] == "headroom"
    for folder in [headroom_zoo.base, *headroom_zoo.specialists.values()]:
        assert _dtypes(folder / "model.safetensors") == {"F16"}, folder
    assert headroom_zoo.manifest["build_seconds"]["total"] < 15 * 60
    result = CliRunner().invoke(cli, ["zoo", "list", "--preset", "headroom", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["root"] == str(headroom_zoo.root) and data["headroom"]["sets"]


def test_shipped_headroom_record_shows_the_property(headroom_zoo):
    record = json.loads((headroom_zoo.root / RECORD).read_text())
    recorded = headroom_zoo.manifest["headroom"]
    assert record["settings"]["k"] == 3 and record["settings"]["merge"] == {"method": "slerp"}
    assert record["settings"]["limit"] == recorded["limit"]
    assert [r["set"] for r in record["sets"]] == ["-".join(s) for s in recorded["sets"]]
    rows = [set_result(r["set"], r["best"], r["topk_kinship"]) for r in record["sets"]]
    assert verdict(rows) == record["verdict"] and verdict(rows)["property"]


@pytest.mark.slow
def test_a_rerun_of_one_recorded_set_matches_the_record(headroom_zoo, tmp_path):
    pytest.importorskip("mergekit")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from zoo_headroom import measure
    finally:
        sys.path.pop(0)
    record = json.loads((headroom_zoo.root / RECORD).read_text())
    first = record["sets"][0]
    fset = headroom_zoo.manifest["headroom"]["sets"][0]
    again = measure(headroom_zoo.root, tmp_path, sets=[fset], log=lambda line: None)
    (row,) = again["sets"]
    # Same machine: identical. Another CPU may round a merge differently and flip an example or
    # two (1/600 each), so the check allows two examples per generation, and the verdict must hold.
    assert len(row["best"]) == len(first["best"])
    assert row["best"] == pytest.approx(first["best"], abs=2 / 600 + 1e-9)
    assert row["topk_kinship"] == pytest.approx(first["topk_kinship"], abs=0.02)
    assert row["holds"] == first["holds"]
