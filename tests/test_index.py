"""The kinship index: estimates against exact scans, linearity, idempotent adds, bad input, the
CLI on the shipped zoo, family-tree recovery on a recorded run, and evolution scored from sketches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_checks import assert_one_line_error, kinmerge_subprocess
from kinmerge import Index
from kinmerge.cli import cli
from kinmerge.scan import scan_refs
from kinmerge.zoo import shipped_zoo
from st_family import LLAMA_SHAPES, load_stored, make_family, write_model


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


# == estimates: what the index says equals what a scan says, within the stated bound ============

@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), log2=st.integers(10, 13), shared=st.floats(0.0, 3.0))
def test_estimates_hold_against_exact_scans(tmp_path_factory, seed, log2, shared):
    root = tmp_path_factory.mktemp("fam")
    base, kids = make_family(root, 3, dtype="F32", seed=seed, shared=shared)
    with Index(root / "f.kmi", size=1 << log2) as idx:
        idx.add(kids, base=base)
        rows, values, bounds, _ = idx.matrix("pcc")
        near = idx.query(kids[0], top=None)
        _, cs, cs_bounds, _ = idx.matrix("cs")
    exact = scan_refs(base, kids).stats
    for i in range(3):
        for j in range(3):
            if i != j:
                # the stated 99% bound; 1.5x so that a 1-in-100 miss does not fail the property
                assert abs(values[i, j] - exact.value("pcc", i, j)) <= 1.5 * bounds[i, j]
                assert abs(cs[i, j] - exact.value("cs", i, j)) <= 1.5 * cs_bounds[i, j]
    by_label = {n.id: n for n in near}
    for j in (1, 2):  # query and matrix are one estimator
        n = by_label[rows[j].id]
        assert n.value == pytest.approx(values[0, j], abs=1e-9)
        assert n.bound == pytest.approx(bounds[0, j], abs=1e-9)


def test_sketch_is_linear_for_linear_merges(tmp_path):
    base, (a, b) = make_family(tmp_path, 2, dtype="F32", seed=3)
    sa, sb, s0 = load_stored(a), load_stored(b), load_stored(base)
    child = {k: (s0[k] + 0.3 * (sa[k] - s0[k]) + 0.7 * (sb[k] - s0[k])).astype(np.float32) for k in LLAMA_SHAPES}
    merged = write_model(tmp_path / "merge", child, "F32")
    with Index(tmp_path / "f.kmi", size=1 << 12) as idx:
        idx.add([a, b, merged], base=base)
        ida, idb, idm = (r.id for r in idx.models())
        predicted, made = idx.predict([ida, idb], [0.3, 0.7]), idx.sketch(idm)
        tree = idx.tree(use_time=False)
    scale = np.abs(made.values).max()
    assert np.allclose(predicted.values, made.values, atol=1e-5 * scale)
    assert predicted.sum == pytest.approx(made.sum, rel=1e-5, abs=1e-6)
    rel = tree.relation(idm)
    assert rel.kind == "merge" and set(rel.parents) == {ida, idb}
    assert sorted(rel.weights) == pytest.approx([0.3, 0.7], abs=0.01)


# == adding: idempotent, and nothing half-written on bad input ===================================

def test_add_is_idempotent_and_says_so(tmp_path):
    base, kids = make_family(tmp_path, 2, seed=1)
    index = tmp_path / "f.kmi"
    first = _run("index", "add", index, *kids, "--base", base, "--no-progress", "--json")
    assert first.exit_code == 0, first.output
    assert len(json.loads(first.output)["added"]) == 2
    before = _sha(index)
    again = _run("index", "add", index, kids[0], "--no-progress")
    assert again.exit_code == 0, again.output
    assert "added 0 model(s), 1 already indexed; 2 in" in again.output
    copy = tmp_path / "copy"  # same content elsewhere: the same content id
    copy.mkdir()
    for f in Path(kids[1]).iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    third = _run("index", "add", index, copy, "--no-progress", "--json")
    assert json.loads(third.output)["skipped"] and json.loads(third.output)["models"] == 2
    with Index(index) as idx:
        assert len(idx) == 2
    assert _sha(index) == before


def test_add_gives_the_exact_kinship_of_each_batch_from_the_same_read(tmp_path):
    """Sketching a batch also yields its exact matrix (one read): equal to a scan of the same models."""
    base, kids = make_family(tmp_path, 3, seed=2)
    with Index(tmp_path / "f.kmi") as idx:
        got = idx.add(kids, base=base, batch=2)
    assert [ids for ids, _ in got.exact] == [got.added[:2], got.added[2:]]
    first = got.exact[0][1]
    want = scan_refs(base, kids[:2])
    assert np.array_equal(first.stats.gram, want.stats.gram) and first.models == want.models
    assert got.bytes_read == sum(r.bytes_read for _, r in got.exact)  # no second read for the exact part


def test_model_of_another_base_is_refused_by_name(tmp_path):
    base, kids = make_family(tmp_path / "a", 2, seed=1)
    _, strangers = make_family(tmp_path / "b", 1, seed=2)  # same shapes, another base
    index = tmp_path / "f.kmi"
    assert _run("index", "add", index, *kids, "--base", base, "--no-progress").exit_code == 0
    before = _sha(index)
    res = kinmerge_subprocess("index", "add", index, strangers[0], "--no-progress")
    assert "not fine-tuned from this base" in assert_one_line_error(res, strangers[0])
    assert _sha(index) == before
    odd = write_model(tmp_path / "odd", {"x.weight": np.ones((4, 4), np.float32)})
    res = kinmerge_subprocess("index", "add", index, odd, "--no-progress")
    assert "--allow-missing" not in assert_one_line_error(res, "odd")
    assert _sha(index) == before
    fresh = tmp_path / "new.kmi"  # a failed first add leaves no file behind
    res = kinmerge_subprocess("index", "add", fresh, kids[0], odd, "--base", base, "--no-progress")
    assert_one_line_error(res, "odd")
    assert not fresh.exists()
    res = kinmerge_subprocess("index", "add", tmp_path / "none.kmi", kids[0], "--no-progress")
    assert_one_line_error(res, "--base")


def test_not_an_index_is_one_line(tmp_path):
    junk = tmp_path / "junk.kmi"
    junk.write_text("hello")
    assert_one_line_error(kinmerge_subprocess("index", "tree", junk), junk)


# == the CLI on the shipped zoo ==================================================================

@pytest.fixture(scope="module")
def zoo_index(tmp_path_factory) -> Path:
    zoo = shipped_zoo()
    index = tmp_path_factory.mktemp("zoo-index") / "zoo.kmi"
    res = _run("index", "add", index, *[p for _, p in sorted(zoo.specialists.items())], "--base", zoo.base,
               "--no-progress")
    assert res.exit_code == 0, res.output
    return index


def test_query_ranks_every_model_with_bounds(zoo_index):
    res = _run("index", "query", zoo_index, "zoo:add", "--top", "0", "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    found = json.loads(res.output)["neighbours"]
    assert len(found) == 5 and all(n["bound"] > 0 for n in found)
    values = [n["value"] for n in found]
    assert values == sorted(values, reverse=True)
    least = json.loads(_run("index", "query", zoo_index, "zoo:add", "--least", "--top", "2", "--json").output)
    assert [n["value"] for n in least["neighbours"]] == sorted(values)[:2]
    checked = json.loads(_run("index", "query", zoo_index, "zoo:add", "--top", "3", "--exact", "--json",
                              "--no-progress").output)["neighbours"]
    for n in checked:
        assert abs(n["exact"] - n["value"]) <= n["bound"]


def test_matrix_writes_csv_json_and_plot(zoo_index, tmp_path):
    csv, png = tmp_path / "k.csv", tmp_path / "k.png"
    res = _run("index", "matrix", zoo_index, "--metric", "pcc,ed", "--csv", csv, "--plot", png, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert len(data["models"]) == 6 and data["estimated"] is True
    pcc = np.array(data["kinship"]["pcc"])
    assert np.allclose(pcc, pcc.T) and np.allclose(np.diag(pcc), 1.0)
    assert csv.read_text().count("\n") > 6 and png.read_bytes()[:4] == b"\x89PNG"


def test_tree_of_specialists_is_all_roots(zoo_index, tmp_path):
    png = tmp_path / "tree.png"
    res = _run("index", "tree", zoo_index, "--json", "--plot", png)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [r["kind"] for r in data["relations"]] == ["root"] * 6
    assert png.read_bytes()[:4] == b"\x89PNG"
    text = _run("index", "tree", zoo_index)
    assert "(fine-tune of the base)" in text.output


def test_every_index_command_has_help_with_an_example():
    for name in ("add", "list", "query", "matrix", "tree"):
        res = _run("index", name, "--help")
        assert res.exit_code == 0 and "Example:" in res.output and f"kinmerge index {name}" in res.output


# == recorded runs: the tree recovers the parents; evolution scored from sketches ================

from evolve_helpers import run_config, write_config  # noqa: E402


def _evolve(tmp_path: Path, name: str, zoo, tasks: Path, **overrides) -> Path:
    run_dir = tmp_path / name
    cfg = run_config(zoo, tasks, strategy={"name": "kinship", "k": 3, "max_generations": 2, "early_stop": False},
                     out={"run_dir": str(run_dir)}, **overrides)
    res = kinmerge_subprocess("evolve", write_config(tmp_path / f"{name}.yaml", cfg))
    assert res.returncode == 0, res.stderr
    return run_dir


def _recorded(run_dir: Path) -> tuple[list[tuple[str, str]], dict[str, set[str]]]:
    import sqlite3

    conn = sqlite3.connect(run_dir / "kinmerge.db")
    models = [(mid, str(Path(p) if Path(p).is_absolute() else run_dir / p))
              for mid, p in conn.execute("SELECT id, path FROM models ORDER BY generation, created")]
    parents: dict[str, set[str]] = {}
    for child, parent in conn.execute("SELECT child, parent FROM parents"):
        parents.setdefault(child, set()).add(parent)
    conn.close()
    return models, parents


@pytest.mark.slow
def test_tree_recovers_the_parents_of_a_recorded_run_and_sketch_kinship_runs(micro_zoo, choice_tasks,
                                                                             tmp_path):
    exact = _evolve(tmp_path, "exact", micro_zoo, choice_tasks)
    models, parents = _recorded(exact)
    assert len(parents) >= 3
    index = tmp_path / "run.kmi"
    with Index(index) as idx:
        idx.add([p for _, p in models], base=micro_zoo.base, ids=[m for m, _ in models])
    res = _run("index", "tree", index, "--json")
    assert res.exit_code == 0, res.output
    found = {r["model"]: r for r in json.loads(res.output)["relations"]}
    recovered = [c for c, ps in parents.items() if found[c]["kind"] == "merge" and set(found[c]["parents"]) == ps]
    # measured on 23 recorded study runs: 96% (docs/index.md); a 6-merge run may miss one
    assert len(recovered) >= 0.8 * len(parents), (recovered, parents)
    assert all(found[m]["kind"] == "root" for m, _ in models if m not in parents)

    sketched = _evolve(tmp_path, "sketch", micro_zoo, choice_tasks, kinship_source="sketch")
    assert (sketched / "sketches.kmi").exists()
    import sqlite3

    conn = sqlite3.connect(sketched / "kinmerge.db")
    events = [json.loads(p) for (p,) in conn.execute("SELECT payload FROM events WHERE kind = 'kinship'")]
    config = json.loads(conn.execute("SELECT config FROM runs").fetchone()[0])
    conn.close()
    assert config["kinship_source"] == "sketch"
    # every model is read once: the models sketched over all kinship events are the pool, no more
    assert sum(e["sketched"] for e in events) == len(_recorded(sketched)[0])
    with Index(sketched / "sketches.kmi") as idx:
        assert len(idx) == len(_recorded(sketched)[0])
    # resuming under the other source is refused: one line naming the setting
    cfg = run_config(micro_zoo, choice_tasks, strategy={"name": "kinship", "k": 3, "max_generations": 2,
                                                       "early_stop": False}, out={"run_dir": str(sketched)})
    assert_one_line_error(kinmerge_subprocess("evolve", write_config(tmp_path / "switch.yaml", cfg)),
                          "kinship_source")
