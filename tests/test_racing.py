"""Racing (issue 9 §4): children scored in rounds, the hopeless ones stopped early.

- a part of a task set scores exactly what the whole set scores on those examples;
- the bound is honest (a model stopped early could not have reached the bar);
- a racing run on the micro zoo ends with the same best model as a full run, scoring fewer
  examples; a run that does not race scores the raced models in full.
"""

from __future__ import annotations

import pytest

from kinmerge.evolve.racing import RaceSettings, combine, counts_of, parts, race, upper_bound


def _result(acc: float, n: int, of: int) -> dict:
    return {"details": {"t": {"accuracy": acc, "mean_loglik": -1.0, "n": n, "of": of}}}


def test_parts_and_combine() -> None:
    assert parts(8, RaceSettings(first=2)) == [(0, 2), (2, 4), (4, 8)]
    both = combine([_result(0.5, 2, 8), _result(0.25, 4, 8)])
    assert both["details"]["t"]["n"] == 6 and both["details"]["t"]["partial"] is True
    assert both["scores"]["t"] == pytest.approx((1 + 1) / 6)
    whole = combine([_result(0.5, 2, 8), _result(0.25, 6, 8)])
    assert "partial" not in whole["details"]["t"] and whole["scores"]["t"] == pytest.approx(2.5 / 8)


def test_the_bound_holds_for_random_finishes() -> None:
    """Simulated: a task of 400 examples with true rate p; the bound after 50 must exceed the final
    accuracy in at least 95% of draws."""
    import random

    rng = random.Random(0)
    misses = 0
    for _ in range(2000):
        p = rng.random()
        answers = [rng.random() < p for _ in range(400)]
        bound = upper_bound({"t": (sum(answers[:50]), 50, 400)}, confidence=0.95)
        misses += bound < sum(answers) / 400
    assert misses / 2000 < 0.05


def test_race_stops_the_weak_and_finishes_the_strong() -> None:
    rates = {"strong": 0.9, "weak": 0.1}
    asked: list[tuple[tuple[str, ...], tuple[int, int]]] = []

    def score(ids, part):
        asked.append((tuple(ids), part))
        n = part[1] - part[0]
        return [(i, _result(rates[i], n, 400)) for i in ids]

    fate = {i: (r["details"]["t"]["n"], early) for i, r, early in race(["strong", "weak"], score, pool=[0.5], k=1,
                                                                      settings=RaceSettings(first=50))}
    assert fate == {"weak": (50.0, True), "strong": (400.0, False)}
    assert asked[0] == (("strong", "weak"), (0, 50)) and all(ids == ("strong",) for ids, _ in asked[1:])
    everyone = {i for i, _, early in race(["strong", "weak"], score, pool=[], k=3,
                                          settings=RaceSettings(first=50)) if not early}
    assert everyone == {"strong", "weak"}  # fewer than k known: nobody is stopped


def test_siblings_race_each_other_out_of_the_top_k() -> None:
    """The pool's scores alone set no bar (all below the children); the strong siblings' lower
    bounds do: with k = 2 the two strong children stop the weak one early."""
    rates = {"a": 0.9, "b": 0.85, "weak": 0.4}

    def score(ids, part):
        n = part[1] - part[0]
        return [(i, _result(rates[i], n, 400)) for i in ids]

    fate = {i: early for i, _, early in race(["a", "b", "weak"], score, pool=[0.3, 0.2], k=2,
                                             settings=RaceSettings(first=50))}
    assert fate == {"a": False, "b": False, "weak": True}


def test_counts_of_reads_correct_answers() -> None:
    assert counts_of(_result(0.25, 8, 40)) == {"t": (2.0, 8, 40)}


# -- on the micro zoo ------------------------------------------------------------------------------

torch = pytest.importorskip("torch")

from evolve_helpers import make_choice_tasks, run_config, write_config  # noqa: E402


@pytest.fixture(scope="module")
def long_tasks(micro_zoo, tmp_path_factory):
    """Choice tasks with all 32 held-out examples each, so a race has rounds to stop in."""
    return make_choice_tasks(micro_zoo.tasks_dir, tmp_path_factory.mktemp("long-tasks"), n=32)


def test_parts_of_a_task_set_score_what_the_whole_set_scores(micro_zoo, long_tasks):
    from kinmerge.evaluate import get_evaluator

    ev = get_evaluator("builtin", tasks_dir=str(long_tasks), progress=False)
    model = micro_zoo.specialists["add"]
    whole = ev.evaluate(model)
    pieces = combine([ev.evaluate(model, part=p).to_dict() for p in ((0, 5), (5, 20), (20, 32))])
    assert pieces["scores"] == pytest.approx(whole.scores, abs=1e-12)
    assert all(d["n"] == 32 and "partial" not in d for d in pieces["details"].values())


def test_a_racing_run_scores_fewer_examples_and_a_full_run_finishes_them(micro_zoo, long_tasks, tmp_path):
    from kinmerge.evolve import evolve
    from kinmerge.store import RunStore

    # The micro zoo's models score within a few hundredths of each other, so this race is made
    # sharp on purpose (k = 2, confidence 0.01): it is about the mechanics; the bound's honesty is
    # tested above.
    strategy = {"name": "greedy", "k": 2, "max_generations": 2}
    racing = write_config(tmp_path / "race.yaml", run_config(micro_zoo, long_tasks, run_id="race", strategy=strategy,
                                                             racing={"first": 4, "confidence": 0.01}))
    run_dir = tmp_path / "run"
    raced = evolve(racing, run_dir, progress=False)
    with RunStore(run_dir, lock=False) as store:
        events = [e.payload for e in store.events("race", kind="evaluate") if e.payload and "examples" in e.payload]
        full_cost = 3 * 32  # three tasks of 32 examples
        assert events and all(e["examples"] <= full_cost for e in events)
        stopped = [e["id"] for e in events if e["stopped_early"]]
        assert stopped, "the race stopped no child: make the test's race sharper"
        key = store.get_run("race").fingerprint.evaluator  # type: ignore[union-attr]  (the selection part's)
        assert all(store.average_scores([i], evaluator=key)[i] is None for i in stopped)  # partial: not a full score
        assert all(store.average_scores([i], evaluator=key, partial=True)[i] is not None for i in stopped)
    assert raced.status == "finished"
    full = write_config(tmp_path / "full.yaml", run_config(micro_zoo, long_tasks, run_id="full", strategy=strategy))
    evolve(full, run_dir, progress=False)
    with RunStore(run_dir, lock=False) as store:
        assert all(store.average_scores([i], evaluator=key)[i] is not None for i in stopped)  # scored fully now
