"""The builtin evaluator on real tiny Llamas (the micro zoo): every number is checked against a
naive one-sequence-at-a-time reference (no padding, no KV cache), so batching, left padding and
the cache are what is under test."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from kinmerge.cli import cli  # noqa: E402
from kinmerge.errors import ConfigError, EvaluationError  # noqa: E402
from kinmerge.evaluate import EVALUATORS, EvalResult, Evaluator, get_evaluator  # noqa: E402
from kinmerge.evaluate.builtin import BuiltinEvaluator, evaluate_loaded  # noqa: E402
from kinmerge.evaluate.tasks import Example, load_task, load_tasks, write_task  # noqa: E402

MAX_NEW = 6
MARGIN = 1e-3  # far above the float noise left padding adds; keeps greedy paths unambiguous


def _naive_greedy(model, tok, prompt: str, n: int) -> tuple[str, float]:
    ids = list(tok(prompt).input_ids)
    out, margin = [], float("inf")
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1]
            top = logits.topk(2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            nxt = int(top.indices[0])
            if nxt == tok.eos_token_id:
                break
            ids.append(nxt)
            out.append(nxt)
    return tok.decode(out, skip_special_tokens=True), margin


def _naive_loglik(model, tok, prompt: str, cont: str) -> float:
    ctx = list(tok(prompt).input_ids)
    c = list(tok(cont, add_special_tokens=False).input_ids)
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([ctx + c])).logits[0].float(), dim=-1)
    return float(sum(logp[len(ctx) - 1 + j, t] for j, t in enumerate(c)))


def _prompts(zoo, per_task: int = 15) -> list[str]:
    return [ex.prompt for t in load_tasks(zoo.tasks_dir).values() for ex in t.examples[:per_task]]


@pytest.fixture(scope="module")
def greedy_cases(micro_zoo, micro_model):
    """(prompt, naive greedy output) for prompts whose greedy path has a clear margin."""
    model, tok = micro_model
    cases = []
    for prompt in _prompts(micro_zoo):
        text, margin = _naive_greedy(model, tok, prompt, MAX_NEW)
        if margin > MARGIN and text.strip():
            cases.append((prompt, text))
    assert len(cases) >= 15, "too few unambiguous greedy paths to test with"
    return cases


# --------------------------------------------------------------------------- generation mode


def test_exact_match_is_one_on_the_models_own_greedy_answers(tmp_path, micro_zoo, micro_model,
                                                             greedy_cases):
    write_task(tmp_path / "own.jsonl", [Example(p, a) for p, a in greedy_cases])
    write_task(tmp_path / "wrong.jsonl", [Example(p, a + "q") for p, a in greedy_cases])
    ev = BuiltinEvaluator(tmp_path, batch_size=7, max_new_tokens=MAX_NEW, progress=False)
    result = ev.evaluate(micro_zoo.specialists["caesar"])
    assert result.scores == {"own": 1.0, "wrong": 0.0}
    assert result.average == 0.5
    assert result.details["own"]["n"] == len(greedy_cases)


def test_generation_mean_loglik_matches_a_naive_teacher_forced_sum(tmp_path, micro_zoo,
                                                                  micro_model):
    model, tok = micro_model
    examples = load_task(micro_zoo.tasks_dir / "add.jsonl").examples[:20]
    write_task(tmp_path / "add.jsonl", examples)
    result = evaluate_loaded(model, tok, load_tasks(tmp_path), batch_size=6)
    expected = sum(_naive_loglik(model, tok, ex.prompt, ex.answer) for ex in examples) / 20
    assert result.details["add"]["mean_loglik"] == pytest.approx(expected, abs=1e-4)
    assert result.details["add"]["mean_loglik"] < 0


# --------------------------------------------------------------------------- choice mode


def test_choice_mode_picks_the_most_likely_choice(tmp_path, micro_zoo, micro_model):
    model, tok = micro_model
    letters = list("abcdefgh")
    best, worst, best_ll = [], [], []
    for prompt in _prompts(micro_zoo):
        lls = [_naive_loglik(model, tok, prompt, c) for c in letters]
        ranked = sorted(range(len(letters)), key=lambda i: -lls[i])
        if lls[ranked[0]] - lls[ranked[1]] < MARGIN or lls[ranked[-2]] - lls[ranked[-1]] < MARGIN:
            continue
        best.append(Example(prompt, letters[ranked[0]], tuple(letters)))
        worst.append(Example(prompt, letters[ranked[-1]], tuple(letters)))
        best_ll.append(lls[ranked[0]])
    assert len(best) >= 15
    write_task(tmp_path / "best.jsonl", best)
    write_task(tmp_path / "worst.jsonl", worst)
    result = BuiltinEvaluator(tmp_path, batch_size=5, progress=False).evaluate(
        micro_zoo.specialists["caesar"])
    assert result.scores == {"best": 1.0, "worst": 0.0}
    assert result.details["best"]["mean_loglik"] == pytest.approx(sum(best_ll) / len(best_ll),
                                                                  abs=1e-4)


def test_choice_mode_with_multi_token_choices(tmp_path, micro_zoo, micro_model):
    # The correct caesar shift against garbage of the same length, every token of each scored.
    model, tok = micro_model
    task = load_task(micro_zoo.tasks_dir / "caesar.jsonl")
    examples, expected = [], []
    for ex in task.examples[:30]:
        garbage = "q" * len(ex.answer)
        diff = (_naive_loglik(model, tok, ex.prompt, ex.answer)
                - _naive_loglik(model, tok, ex.prompt, garbage))
        if abs(diff) > MARGIN:
            examples.append(Example(ex.prompt, ex.answer, (ex.answer, garbage)))
            expected.append(diff > 0)
    write_task(tmp_path / "forced.jsonl", examples)
    result = evaluate_loaded(model, tok, load_tasks(tmp_path), batch_size=8)
    assert result.scores["forced"] == pytest.approx(sum(expected) / len(expected))


# --------------------------------------------------------------------------- behaviour


def test_two_runs_are_identical_and_batch_size_does_not_change_scores(micro_zoo):
    ev = BuiltinEvaluator(micro_zoo.tasks_dir, limit=16, progress=False)
    first = ev.evaluate(micro_zoo.base)
    assert ev.evaluate(micro_zoo.base) == first
    small = BuiltinEvaluator(micro_zoo.tasks_dir, limit=16, batch_size=3, progress=False)
    other = small.evaluate(micro_zoo.base)
    assert other.scores == first.scores
    for task, detail in first.details.items():
        assert other.details[task]["mean_loglik"] == pytest.approx(detail["mean_loglik"], abs=1e-4)


def test_limit_and_task_selection(micro_zoo):
    ev = BuiltinEvaluator(micro_zoo.tasks_dir, limit=5, tasks=["add"], progress=False)
    result = ev.evaluate(micro_zoo.base)
    assert list(result.scores) == ["add"]
    assert result.details["add"]["n"] == 5


def test_a_sample_seed_draws_another_held_out_sample(micro_zoo):
    first = BuiltinEvaluator(micro_zoo.tasks_dir, limit=6, progress=False)
    seeded = [BuiltinEvaluator(micro_zoo.tasks_dir, limit=6, sample_seed=s, progress=False) for s in (1, 1, 2)]
    prompts = [[e.prompt for e in ev.tasks["add"].examples[:6]] for ev in (first, *seeded)]
    assert prompts[1] == prompts[2] and prompts[1] != prompts[0] and prompts[1] != prompts[3]
    assert sorted(e.prompt for e in seeded[0].tasks["add"].examples) == sorted(
        e.prompt for e in first.tasks["add"].examples)  # a reordering of the same held-out set
    assert seeded[0].settings()["sample_seed"] == 1 and "sample_seed" not in first.settings()
    # all examples in another order: the same scores
    whole = BuiltinEvaluator(micro_zoo.tasks_dir, tasks=["add"], progress=False).evaluate(micro_zoo.base)
    mixed = BuiltinEvaluator(micro_zoo.tasks_dir, tasks=["add"], sample_seed=3, progress=False).evaluate(micro_zoo.base)
    assert mixed.scores == whole.scores


def test_settings_change_with_task_content(tmp_path):
    write_task(tmp_path / "t.jsonl", [Example("a=", "b")])
    before = BuiltinEvaluator(tmp_path, progress=False).settings()
    assert before["evaluator"] == "builtin" and set(before["tasks"]) == {"t"}
    assert BuiltinEvaluator(tmp_path, batch_size=1, progress=False).settings() == before
    write_task(tmp_path / "t.jsonl", [Example("a=", "c")])
    assert BuiltinEvaluator(tmp_path, progress=False).settings() != before
    assert BuiltinEvaluator(tmp_path, limit=3, progress=False).settings()["limit"] == 3


def test_registry_and_protocol(tmp_path):
    write_task(tmp_path / "t.jsonl", [Example("a=", "b")])
    ev = get_evaluator("builtin", tasks_dir=tmp_path)
    assert isinstance(ev, Evaluator) and ev.name == "builtin"
    assert "builtin" in EVALUATORS
    with pytest.raises(ConfigError, match="unknown evaluator 'nope'"):
        get_evaluator("nope")
    with pytest.raises(ConfigError, match="batch_size"):
        BuiltinEvaluator(tmp_path, batch_size=0)
    assert EvalResult(scores={"a": 1.0, "b": 0.5}).average == 0.75


def test_missing_model_folder_is_an_evaluation_error(tmp_path, micro_zoo):
    ev = BuiltinEvaluator(micro_zoo.tasks_dir, progress=False)
    with pytest.raises(EvaluationError, match="not a model folder"):
        ev.evaluate(tmp_path)


# --------------------------------------------------------------------------- task files


@pytest.mark.parametrize("lines, line_no, message", [
    (['{"prompt": "a", "answer": "b"}', "{not json"], 2, "not valid JSON"),
    (['{"prompt": "a"}'], 1, "missing required key 'answer'"),
    (['{"prompt": 3, "answer": "b"}'], 1, "'prompt' must be a string"),
    (['{"prompt": "a", "answer": "  "}'], 1, "'answer' is empty"),
    (['["a", "b"]'], 1, "expected a JSON object"),
    (['{"prompt": "a", "answer": "b", "choices": ["c", "d"]}'], 1, "is not one of 'choices'"),
    (['{"prompt": "a", "answer": "b", "choices": ["b"]}'], 1, "at least 2"),
    (['{"prompt": "a", "answer": "b", "choices": ["b", "b"]}'], 1, "duplicate"),
    (['{"prompt": "a", "answer": "b", "choices": "bc"}'], 1, "list of strings"),
    (['{"prompt": "a", "answer": "b"}', "", '{"prompt": "a", "answer": "b", "choices": ["b", "c"]}'],
     3, "mixes choice and generation"),
])
def test_bad_task_lines_name_file_and_line(tmp_path, lines, line_no, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(EvaluationError) as info:
        load_task(path)
    assert str(info.value).startswith(f"{path}:{line_no}: ")
    assert message in str(info.value)


def test_bad_task_folders(tmp_path):
    with pytest.raises(EvaluationError, match="task folder not found"):
        load_tasks(tmp_path / "missing")
    with pytest.raises(EvaluationError, match="no <task>.jsonl files"):
        load_tasks(tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match="empty.jsonl: no examples"):
        load_tasks(tmp_path)
    with pytest.raises(EvaluationError, match="task 'other' not found"):
        load_tasks(tmp_path, ["other"])


def test_task_round_trip_and_blank_lines(tmp_path):
    examples = [Example("add 1+2=", "3"), Example("q: é?", "ü")]
    write_task(tmp_path / "t.jsonl", examples)
    text = (tmp_path / "t.jsonl").read_text(encoding="utf-8")
    (tmp_path / "t.jsonl").write_text("\n" + text + "\n\n", encoding="utf-8")
    task = load_task(tmp_path / "t.jsonl")
    assert task.examples == tuple(examples) and task.mode == "generate" and task.name == "t"
    write_task(tmp_path / "c.jsonl", [Example("x", "a", ("a", "b"))])
    assert load_task(tmp_path / "c.jsonl").mode == "choice"


# --------------------------------------------------------------------------- CLI


def test_cli_eval_json(micro_zoo):
    args = ["eval", str(micro_zoo.base), "--tasks", str(micro_zoo.tasks_dir), "--limit", "4",
            "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    expected = BuiltinEvaluator(micro_zoo.tasks_dir, limit=4, progress=False).evaluate(
        micro_zoo.base)
    assert data["scores"] == expected.scores
    assert data["average"] == pytest.approx(expected.average)
    assert set(data["details"]["add"]) == {"accuracy", "mean_loglik", "n", "of"}  # n scored of the set's "of"


def test_cli_eval_table_and_errors(micro_zoo, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", str(micro_zoo.base), "--tasks", str(micro_zoo.tasks_dir),
                                 "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert "average" in result.stdout and "caesar" in result.stdout
    bad = runner.invoke(cli, ["eval", str(micro_zoo.base), "--tasks", str(tmp_path / "none")])
    assert bad.exit_code == 2
    assert bad.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'none'}: task folder not found; expected a folder of <task>.jsonl "
        f"files (see docs/tasks.md)"]
    (tmp_path / "t.jsonl").write_text('{"prompt": "a"}\n', encoding="utf-8")
    bad = runner.invoke(cli, ["eval", str(micro_zoo.base), "--tasks", str(tmp_path)])
    assert bad.exit_code == 2 and f"{tmp_path / 't.jsonl'}:1:" in bad.stderr
    bad = runner.invoke(cli, ["eval", str(tmp_path), "--tasks", str(micro_zoo.tasks_dir)])
    assert bad.exit_code == 2 and "point at a Hugging Face model folder" in bad.stderr


def test_cli_eval_help_has_an_example():
    result = CliRunner().invoke(cli, ["eval", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output


def test_eval_results_are_cached_by_content_and_settings(micro_zoo, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("KINMERGE_CACHE", str(tmp_path / "cache"))
    model = micro_zoo.specialists["add"]
    args = ["eval", str(model), "--tasks", str(micro_zoo.tasks_dir), "--limit", "5", "--json"]
    first = json.loads(CliRunner().invoke(cli, args).stdout)
    assert first["cached"] is False
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)  # same content, other path: same cache entry
    second = json.loads(CliRunner().invoke(cli, [*args[:1], str(copy), *args[2:]]).stdout)
    assert second["cached"] is True and second["scores"] == first["scores"]
    other = json.loads(CliRunner().invoke(cli, [*args[:5], "3", "--json"]).stdout)  # other settings
    assert other["cached"] is False
    fresh = json.loads(CliRunner().invoke(cli, [*args, "--no-cache"]).stdout)
    assert fresh["cached"] is False and fresh["scores"] == first["scores"]


def test_a_copy_with_another_config_never_shares_cached_scores(micro_zoo, tmp_path):
    """Issue 8: identity covers config.json. A copy with ``rms_norm_eps: 10`` is another model:
    it is scored afresh, and scoring it never overwrites the original's cached result."""
    import shutil

    model = micro_zoo.specialists["add"]
    args = ["--tasks", str(micro_zoo.tasks_dir), "--limit", "5", "--json"]
    original = json.loads(CliRunner().invoke(cli, ["eval", str(model), *args]).stdout)
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 10.0
    (copy / "config.json").write_text(json.dumps(config))
    changed = json.loads(CliRunner().invoke(cli, ["eval", str(copy), *args]).stdout)
    assert changed["cached"] is False
    again = json.loads(CliRunner().invoke(cli, ["eval", str(copy), *args, "--no-cache"]).stdout)
    assert again["scores"] == changed["scores"]
    back = json.loads(CliRunner().invoke(cli, ["eval", str(model), *args]).stdout)
    assert back["cached"] is True and back["scores"] == original["scores"]
