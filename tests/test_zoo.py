"""The tiny model zoo: tokenizer, task generators, the micro zoo built per session, the shipped
tiny zoo's promises (specialists beat the base, deltas differ), and the full build (slow)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from kinmerge.cli import cli  # noqa: E402
from kinmerge.errors import ConfigError, SourceError  # noqa: E402
from kinmerge.evaluate.builtin import BuiltinEvaluator  # noqa: E402
from kinmerge.evaluate.tasks import load_tasks  # noqa: E402
from kinmerge.zoo import (  # noqa: E402
    CHAR_TASKS,
    CHARACTERS,
    PRESETS,
    TASKS,
    _Sampler,
    build_tokenizer,
    build_zoo,
    load_zoo,
    make_examples,
    shipped_zoo,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_saves_loads_with_autotokenizer_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    build_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = tok(CHARACTERS).input_ids
    assert ids[0] == tok.bos_token_id and len(ids) == len(CHARACTERS) + 1
    assert tok.decode(ids, skip_special_tokens=True) == CHARACTERS
    assert tok.decode(tok("add 23+45=").input_ids, skip_special_tokens=True) == "add 23+45="
    assert tok.padding_side == "left"
    assert tok.pad_token == "<pad>" and tok.eos_token == "<eos>" and tok.bos_token == "<bos>"
    batch = tok(["ab", "abcd"], padding=True).input_ids
    assert batch[0][:2] == [tok.pad_token_id] * 2 and batch[1][0] == tok.bos_token_id
    assert tok("A", add_special_tokens=False).input_ids == [tok.unk_token_id]


# --------------------------------------------------------------------------- tasks


def test_task_generators_are_correct():
    rng = random.Random(0)
    for _ in range(200):
        prompt, answer = TASKS["add"](rng)
        a, b = prompt[len("add "):-1].split("+")
        assert answer == str(int(a) + int(b))
        prompt, answer = TASKS["reverse"](rng)
        assert answer == prompt[4:-1][::-1]
        prompt, answer = TASKS["sort"](rng)
        assert answer == "".join(sorted(prompt[5:-1]))
        prompt, answer = TASKS["caesar"](rng)
        assert answer == "".join("a" if c == "z" else chr(ord(c) + 1) for c in prompt[4:-1])
        prompt, answer = TASKS["count"](rng)
        _, letter, text = prompt[:-1].split(" ")
        assert answer == str(text.count(letter))
        prompt, answer = TASKS["double"](rng)
        assert answer == "".join(c * 2 for c in prompt[4:-1])
        assert all(set(p) <= set(CHARACTERS) for p in (prompt, answer))


def test_make_examples_is_seeded_distinct_and_excludes():
    a = make_examples("reverse", 50, seed=1)
    assert a == make_examples("reverse", 50, seed=1)
    assert a != make_examples("reverse", 50, seed=2)
    assert len({ex.prompt for ex in a}) == 50
    b = make_examples("reverse", 50, seed=1, exclude={ex.prompt for ex in a[:10]})
    assert not {ex.prompt for ex in a[:10]} & {ex.prompt for ex in b}
    with pytest.raises(ConfigError, match="unknown zoo task"):
        make_examples("multiply", 1, seed=0)


def test_training_never_draws_a_held_out_prompt():
    held = {ex.prompt for ex in make_examples("add", 500, seed=0)}
    drawn = _Sampler(("add",), 0, held).draw(3000)
    assert not held & {p for p, _ in drawn}
    mixed = _Sampler(("add", "sort"), 0, set(), {"add": 3}).draw(400)
    assert sum(p.startswith("add") for p, _ in mixed) == 300


# --------------------------------------------------------------------------- micro zoo


def test_micro_zoo_layout_and_manifest(micro_zoo):
    root = micro_zoo.root
    preset = PRESETS["micro"]
    assert micro_zoo.base == root / "base"
    assert set(micro_zoo.specialists) == set(preset.tasks)
    assert sorted(p.name for p in micro_zoo.tasks_dir.iterdir()) == sorted(
        f"{t}.jsonl" for t in preset.tasks)
    manifest = json.loads((root / "zoo.json").read_text())
    assert manifest == micro_zoo.manifest
    assert manifest["preset"] == "micro" and manifest["seed"] == 0
    assert manifest["specialists"]["add"] == {"task": "add", "path": "specialists/add"}
    assert set(manifest["scores"]) == {"base", *preset.tasks}
    assert manifest["settings"]["hidden_size"] == 32
    assert manifest["build_seconds"]["total"] > 0
    tasks = load_tasks(micro_zoo.tasks_dir)
    assert all(len(t.examples) == preset.eval_size for t in tasks.values())
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_micro_zoo_models_load_and_share_dtype_and_shapes(micro_zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = _tensors(micro_zoo.base)
    assert "lm_head.weight" in base and "model.embed_tokens.weight" in base
    assert {t.dtype for t in base.values()} == {torch.float16}
    for folder in [micro_zoo.base, *micro_zoo.specialists.values()]:
        for name in ("config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"):
            assert (folder / name).is_file(), folder / name
        model = AutoModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert model.config.model_type == "llama" and not model.config.tie_word_embeddings
        assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
        assert tok.decode(tok("rot abc=").input_ids, skip_special_tokens=True) == "rot abc="
        tensors = _tensors(folder)
        assert {k: (v.shape, v.dtype) for k, v in tensors.items()} == {
            k: (v.shape, v.dtype) for k, v in base.items()}
        if folder != micro_zoo.base:
            assert any(not torch.equal(tensors[k], base[k]) for k in base)


def test_build_is_deterministic_and_atomic(tmp_path):
    small = dict(tasks=("caesar", "double"), base_max_steps=4, specialist_steps=3, eval_size=8,
                 check_size=8, log=lambda line: None)
    a = build_zoo(tmp_path / "a", preset="micro", seed=3, **small)
    b = build_zoo(tmp_path / "b", preset="micro", seed=3, **small)
    for name in ["base", "specialists/caesar", "specialists/double"]:
        assert (a.root / name / "model.safetensors").read_bytes() == (
            b.root / name / "model.safetensors").read_bytes()
    assert (a.tasks_dir / "caesar.jsonl").read_bytes() == (b.tasks_dir / "caesar.jsonl").read_bytes()

    with pytest.raises(ConfigError, match="already exists"):
        build_zoo(tmp_path / "a", preset="micro", **small)

    def boom(line: str) -> None:
        if line.startswith("specialist"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_zoo(tmp_path / "c", preset="micro", **{**small, "log": boom})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # nothing half-written

    c = build_zoo(tmp_path / "a", preset="micro", seed=4, overwrite=True, **small)
    assert c.manifest["seed"] == 4 and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


@pytest.mark.slow
def test_specialists_do_not_depend_on_the_number_of_workers(tmp_path):
    small = dict(tasks=("caesar", "add"), base_max_steps=4, specialist_steps=3, eval_size=8,
                 check_size=8, log=lambda line: None)
    a = build_zoo(tmp_path / "a", preset="micro", seed=5, workers=1, **small)
    b = build_zoo(tmp_path / "b", preset="micro", seed=5, workers=2, **small)
    assert b.manifest["build_seconds"]["workers"] == 2
    for name in ["base", "specialists/caesar", "specialists/add"]:
        assert (a.root / name / "model.safetensors").read_bytes() == (
            b.root / name / "model.safetensors").read_bytes()
    assert a.manifest["scores"] == b.manifest["scores"]


def test_build_rejects_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="unknown zoo preset"):
        build_zoo(tmp_path / "z", preset="huge")
    with pytest.raises(ConfigError, match="bad zoo setting"):
        build_zoo(tmp_path / "z", preset="micro", layers=9)
    with pytest.raises(ConfigError, match="unknown zoo task"):
        build_zoo(tmp_path / "z", preset="micro", tasks=("add", "divide"))
    with pytest.raises(SourceError, match="no zoo manifest"):
        load_zoo(tmp_path)


def test_cli_zoo_list_json_on_a_given_root(micro_zoo):
    result = CliRunner().invoke(cli, ["zoo", "list", "--root", str(micro_zoo.root), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["base"] == str(micro_zoo.base)
    assert data["specialists"] == {k: str(v) for k, v in micro_zoo.specialists.items()}
    assert data["tasks_dir"] == str(micro_zoo.tasks_dir) and data["preset"] == "micro"
    table = CliRunner().invoke(cli, ["zoo", "list", "--root", str(micro_zoo.root)])
    assert table.exit_code == 0 and "caesar" in table.stdout


def test_cli_zoo_build_micro(tmp_path):
    args = ["zoo", "build", str(tmp_path / "z"), "--preset", "micro", "--seed", "1", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["root"] == str(tmp_path / "z")
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_cli_zoo_commands_have_examples():
    for path in (["zoo"], ["zoo", "build"], ["zoo", "list"]):
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output


# --------------------------------------------------------------------------- shipped zoo


@pytest.fixture(scope="module")
def shipped():
    return shipped_zoo()


def test_shipped_zoo_is_complete(shipped):
    assert shipped.manifest["preset"] == "tiny"
    assert set(shipped.specialists) == set(CHAR_TASKS)
    assert shipped.manifest["build_seconds"]["total"] < 600
    result = CliRunner().invoke(cli, ["zoo", "list", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["root"] == str(shipped.root)
    dtypes = set()
    for folder in [shipped.base, *shipped.specialists.values()]:
        dtypes |= {t.dtype for t in _tensors(folder).values()}
    assert dtypes == {torch.float16}


def test_shipped_specialists_beat_the_base_on_their_own_task(shipped):
    base = BuiltinEvaluator(shipped.tasks_dir, progress=False).evaluate(shipped.base)
    assert 0.3 <= base.average <= 0.7
    for name, folder in shipped.specialists.items():
        task = shipped.task_of(name)
        own = BuiltinEvaluator(shipped.tasks_dir, tasks=[task], progress=False).evaluate(folder)
        assert own.scores[task] >= base.scores[task] + 0.1, (name, own.scores, base.scores)
        assert own.scores[task] == pytest.approx(shipped.manifest["scores"][name][task])


def test_shipped_specialist_deltas_have_low_kinship(shipped):
    import numpy as np

    base = _tensors(shipped.base)
    keys = sorted(base)
    flat_base = np.concatenate([base[k].double().numpy().ravel() for k in keys])
    deltas = {}
    for name, folder in shipped.specialists.items():
        t = _tensors(folder)
        deltas[name] = np.concatenate([t[k].double().numpy().ravel() for k in keys]) - flat_base
    names = sorted(deltas)
    pcc = np.corrcoef(np.stack([deltas[n] for n in names]))
    off_diagonal = pcc[~np.eye(len(names), dtype=bool)]
    assert off_diagonal.max() < 0.5, dict(zip(names, pcc.round(3).tolist()))


