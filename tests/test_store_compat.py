"""A store written by kinmerge 0.1.0 (before the middle-layer redesign) opens and reads the same.

``tests/data/store-0.1.0`` holds the ``kinmerge.db`` of a real greedy run and a real kinship run
(early-stopped) on the micro zoo, made with the 0.1.0 code, and what that code's
``read_summary`` and ``compare_table`` returned for it (``expected.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kinmerge.evolve import read_summary
from kinmerge.report.compare import compare_table
from kinmerge.store import RunStore
from kinmerge.store.db import _dumps

DATA = Path(__file__).parent / "data" / "store-0.1.0"



def test_status_and_compare_read_what_0_1_0_read(old_run: Path) -> None:
    expected = json.loads((DATA / "expected.json").read_text())
    for run_id in ("greedy", "kinship"):
        got = read_summary(old_run, run_id).to_dict()
        got.pop("seconds"), got.pop("run_dir")
        assert got.pop("problems") == []  # the store checks itself (new in 0.2): nothing lost here
        # Held-out scores (new in 0.3): a 0.1.0 run did not split its tasks, so it has none.
        assert (got.pop("heldout"), got.pop("best_heldout_score")) == (False, None)
        assert [m.pop("heldout_score") for m in got["pool"]] == [None] * len(got["pool"])
        # New in 0.3: the examples behind each task score (the 0.1.0 run scored every task on all of them).
        assert got.pop("heldout_examples_per_task") is None and got.pop("tasks") >= 1
        assert got.pop("examples_per_task") >= 1
        # New in 0.3 (kinship estimates carry their bounds): an exact run says so, nothing more.
        assert (got.pop("kinship_source"), got.pop("top_k_kinship_bound"), got.pop("kinship_rechecks")) \
            == ("exact", None, 0)
        for m in got["pool"]:
            assert (m.pop("kinship_estimate"), m.pop("kinship_bound")) == (False, None)
        want = expected[run_id]
        # 0.1.0 reported a run left marked running with no process as "interrupted" too; both finished here.
        assert got == want, run_id
    compare = compare_table([old_run])
    for row in compare["runs"]:
        row.pop("run_dir")
    # Compared key by key: what 0.1.0 reported must read the same; newer tables come on top.
    assert [{k: row[k] for k in want} for row, want in zip(compare["strategies"], expected["compare"]["strategies"],
                                                           strict=True)] == expected["compare"]["strategies"]
    assert [{k: row[k] for k in want} for row, want in zip(compare["runs"], expected["compare"]["runs"], strict=True)] \
        == expected["compare"]["runs"]
    assert {"budget", "early_stop", "resolution"} <= set(compare)


def test_fingerprints_read_back_typed_and_write_the_same_text(old_run: Path) -> None:
    with RunStore(old_run) as store:  # with the lock: a resume would open it this way
        assert store.applied_migrations() == ["0001_initial", "0002_interrupted_runs",
                                              "0003_kinship_keyed_by_base",
                                              "0004_kinship_bounds", "0005_steady_completions"]  # upgraded in place
        for run in store.runs():
            fp = run.fingerprint
            assert fp is not None and fp.strategy == run.strategy and fp.k == 3 and len(fp.foundation) == 3
            # A resume compares the stored JSON text with the new fingerprint's: equal settings
            # must give equal text, or every old run would be refused as "changed".
            assert _dumps(fp.to_dict()) == _dumps(run.config)
        kin = store.get_run("kinship")
        assert kin is not None and kin.fingerprint is not None and kin.fingerprint.threshold == 0.5


def test_the_report_renders_an_old_store(old_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from kinmerge.report.html import write_report

    page = write_report([old_run], tmp_path / "report").read_text(encoding="utf-8")
    assert "kinship early stop" in page and "generation budget" in page


def test_old_kinship_rows_are_keyed_by_the_base_of_the_store_runs(old_run: Path) -> None:
    """0003 keys kinship by base and source; the old rows take the base all its runs share, so a
    resumed 0.1.0 run reads its kinship back instead of scanning again."""
    import sqlite3

    before = sqlite3.connect(old_run / "kinmerge.db").execute("SELECT count(*) FROM kinship").fetchone()[0]
    with RunStore(old_run) as store:
        run = store.get_run("greedy")
        assert run is not None
        base = run.config["base"]
        assert store.base_id() == base
        keyed = store.get_kinship("pcc", base=base, source="exact")
        assert keyed and keyed == store.get_kinship("pcc")
        assert store.get_kinship("pcc", base="another-base", source="exact") == {}
        assert store.get_kinship("pcc", base=base, source="sketch") == {}
    rows = sqlite3.connect(old_run / "kinmerge.db").execute(
        "SELECT DISTINCT base, source FROM kinship").fetchall()
    assert rows == [(base, "exact")]
    assert sqlite3.connect(old_run / "kinmerge.db").execute("SELECT count(*) FROM kinship").fetchone()[0] == before
