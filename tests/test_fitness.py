"""The pool's fitness (``kinmerge.evaluate.fitness``): weighted mean, direction, refusals."""

from __future__ import annotations

import math

import pytest

from kinmerge.errors import ConfigError
from kinmerge.evaluate.fitness import Fitness


def test_the_weighted_mean_ranks_and_the_plain_mean_is_the_default():
    scores = {"a": {"add": 1.0, "rev": 0.0}, "b": {"add": 0.0, "rev": 0.9}}
    plain = Fitness()
    assert plain.value(scores["a"]) == 0.5 and plain.value(scores["b"]) == pytest.approx(0.45)
    assert plain.to_dict() == {}  # fingerprints of runs before weights read back unchanged
    weighted = Fitness({"rev": 3.0})  # add weighs 1
    assert weighted.value(scores["a"]) == 0.25 and weighted.value(scores["b"]) == pytest.approx(0.675)
    best = max(scores, key=lambda m: weighted.key(weighted.value(scores[m])))
    assert best == "b" and max(scores, key=lambda m: plain.key(plain.value(scores[m]))) == "a"
    assert weighted.to_dict() == {"task_weights": {"rev": 3.0}}
    assert math.isnan(Fitness({"add": 0.0}).value({"add": 1.0}))


def test_min_ranks_lower_first():
    ppl = {"a": {"wiki": 12.0}, "b": {"wiki": 9.5}}
    f = Fitness(direction="min")
    assert sorted(ppl, key=lambda m: f.key(f.value(ppl[m])), reverse=True) == ["b", "a"]
    assert f.value(ppl["b"]) == 9.5  # reports show the raw metric
    assert f.to_dict() == {"direction": "min"}


def test_bad_weights_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^task_weights name sort, not a task of this run \(add, rev\)"):
        Fitness({"sort": 1.0}).check(["add", "rev"])
    with pytest.raises(ConfigError, match="^task_weights are all zero"):
        Fitness({"add": 0, "rev": 0.0}).check(["add", "rev"])
    with pytest.raises(ConfigError, match=r"^task_weights\.add: a weight must be a number >= 0, got -1"):
        Fitness({"add": -1})
    with pytest.raises(ConfigError, match="^direction must be one of max, min"):
        Fitness(direction="lowest")  # type: ignore[arg-type]
    Fitness({"add": 0.0}).check(["add", "rev"])  # rev still weighs 1
