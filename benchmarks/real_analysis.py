"""The analysis of the real-model study (docs/results.md, R1-R6), from its stores alone.

Every number comes from the run stores under ``OUT/runs`` plus two files per testbed that the
study writes beside its store: ``heldout-children.json`` (models the loop did not score held
out: children and foundations that never entered the top-k) and ``allpairs.json`` (R6).
``python benchmarks/study_real.py render`` calls :func:`render`; the functions below are reusable
on any study whose runs split their tasks (``study.py merges`` uses :func:`gain_kinship` on the
tiny zoos).

- R1, R2, R4: per testbed, the held-out score of the model each run would hand over after 3, 6, 9
  and 12 merges (``kinmerge.report.merges.handed_over``), minus the held-out score of the best
  foundation (budget 0); random's two seeds averaged; paired differences with bootstrap intervals
  over foundation sets, sign tests, Holm across the four final-budget comparisons.
- R3: kinship with early stop against the same loop without it: merges used, held-out lost.
- R5: gain vs PCC per distinct merge, Pearson and Spearman, and the partial correlation given the
  parents' mean score and the generation, with an interval that resamples foundation sets.
- R6: the all-pairs tests: Spearman of each ranking with the realised held-out gain, and the regret
  of each ranking's top pair (and of a pair drawn at random) against the best pair.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kinmerge.evolve.strategies.predicted import GainModel
from kinmerge.report.stats import mean_or_none

BUDGETS = (3, 6, 9, 12)
#: The prior ``suggest`` shipped when R6 was registered (headroom zoo): R6 tests this one, whatever
#: ``kinmerge.suggest.PRIOR`` becomes once refitted on the study's own merges.
TESTED_PRIOR = GainModel(a=0.0579, b=-0.0699, sd=0.0263, n=1483)
COMPARISONS = (("kinship", "greedy"), ("kinship", "random"), ("predicted", "greedy"), ("predicted", "random"))


def finished_testbeds(out: Path) -> list[Path]:
    """Testbed folders whose runs, held-out children and (where due) all-pairs test are done."""
    return sorted(p for p in (out / "runs").iterdir() if (p / ".study-done").is_file())


def load(out: Path) -> tuple[list[Any], dict[str, dict[str, float]]]:
    """The runs of every finished testbed and the extra held-out scores of their children."""
    from kinmerge.report.queries import load_runs

    beds = finished_testbeds(out)
    runs = load_runs(beds) if beds else []
    extra = {}
    for bed in beds:
        f = bed / "heldout-children.json"
        data = json.loads(f.read_text()) if f.is_file() else {"children": {}}
        extra[bed.name] = {mid: v["heldout"] for mid, v in data["children"].items()}
    return runs, extra


def _fmt(p: dict[str, Any]) -> str:
    if p.get("mean") is None:
        return "—"
    ci = p.get("ci95")
    return f"{p['mean']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else f"{p['mean']:+.4f}"


def handed_over_table(runs: list[Any], extra: dict[str, dict[str, float]]) -> dict[str, Any]:
    """R1, R2, R4: held-out gain over the best foundation at equal budgets, paired per testbed."""
    from kinmerge.report.merges import handed_over
    from kinmerge.report.stats import holm, paired

    by_bed: dict[str, dict[str, list[dict[int, float | None]]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        heldout = {**extra.get(Path(r.run_dir).name, {}), **r.heldout}
        pool = list(r.models.values())
        rank = _rank(r)
        start = handed_over(pool, r.merge_order, 0, heldout=heldout, rank=rank)
        gains = {b: (None if start is None or (v := handed_over(pool, r.merge_order, b, heldout=heldout, rank=rank))
                     is None else v - start) for b in (*BUDGETS, 10_000)}
        by_bed[Path(r.run_dir).name][r.variant].append(gains)
    value = {bed: {v: {b: mean_or_none([g[b] for g in gs]) for b in (*BUDGETS, 10_000)} for v, gs in variants.items()}
             for bed, variants in by_bed.items()}
    variants = sorted({v for per in value.values() for v in per})
    mean_gain = {v: {b: mean_or_none([value[bed][v][b] for bed in value if v in value[bed]]) for b in BUDGETS}
                 for v in variants}
    compared: dict[str, dict[int, dict[str, Any]]] = {}
    for a, ref in COMPARISONS:
        compared[f"{a} − {ref}"] = {}
        for b in BUDGETS:
            beds = [bed for bed in value if a in value[bed] and ref in value[bed]
                    and value[bed][a][b] is not None and value[bed][ref][b] is not None]
            compared[f"{a} − {ref}"][b] = paired([float(value[bed][a][b] or 0.0) for bed in beds],  # None: filtered
                                                 [float(value[bed][ref][b] or 0.0) for bed in beds]).to_dict()
    final = {name: rows[BUDGETS[-1]]["p_sign"] for name, rows in compared.items()}
    return {"testbeds": len(value), "mean_gain": mean_gain, "compared": compared, "holm": holm(final),
            "per_testbed": value}


def _rank(r: Any) -> Any:
    """The run's ranking key of a score (its fitness: higher is better whatever the direction)."""
    return r.fingerprint.fitness.key if r.fingerprint is not None else float


def early_stop_effect(runs: list[Any], extra: dict[str, dict[str, float]]) -> dict[str, Any]:
    """R3: per testbed, kinship (early stop) against kinship-noes: merges used and held-out lost
    by the model each hands over at its end."""
    from kinmerge.report.merges import handed_over
    from kinmerge.report.stats import paired

    end: dict[str, dict[str, tuple[int, float | None]]] = defaultdict(dict)
    for r in runs:
        if r.run.id in ("kinship", "kinship-noes"):
            heldout = {**extra.get(Path(r.run_dir).name, {}), **r.heldout}
            v = handed_over(list(r.models.values()), r.merge_order, 10_000, heldout=heldout, rank=_rank(r))
            end[Path(r.run_dir).name][r.run.id] = (r.merges_used, v)
    beds = [b for b, d in end.items() if len(d) == 2 and all(v is not None for _, v in d.values())]
    return {"testbeds": len(beds),
            "merges": {"kinship": [end[b]["kinship"][0] for b in beds],
                       "noes": [end[b]["kinship-noes"][0] for b in beds]},
            "heldout_diff": paired([float(end[b]["kinship"][1] or 0.0) for b in beds],  # None: filtered above
                                   [float(end[b]["kinship-noes"][1] or 0.0) for b in beds]).to_dict()}


def gain_kinship(records: list[Any], *, gain: str = "gain_heldout", parents: str = "parents_heldout") -> dict[str, Any]:
    """R5 on distinct merges: gain vs PCC, raw and controlled for parents' mean score and generation."""
    from kinmerge.evolve.strategies.predicted import fit_gain
    from kinmerge.report.plots import correlation
    from kinmerge.report.stats import cluster_bootstrap_ci, partial_correlation

    rows = [r for r in records if r.pcc is not None and getattr(r, gain) is not None
            and getattr(r, parents) is not None]
    x = [float(r.pcc) for r in rows]
    y = [float(getattr(r, gain)) for r in rows]
    controls = [[float(getattr(r, parents)) for r in rows], [float(r.generation) for r in rows]]

    def partial(idx: list[int]) -> float | None:
        return partial_correlation([x[i] for i in idx], [y[i] for i in idx], [[c[i] for i in idx] for c in controls])

    groups = [re.sub(r"-s\d+$", "", r.testbed) for r in rows]  # the foundation set (a seed varies the sample)
    c = correlation(x, y)
    return {"n": len(rows), "testbeds": len(set(groups)), "pearson": c.pearson_r, "pearson_p": c.pearson_p,
            "spearman": c.spearman_r, "spearman_p": c.spearman_p,
            "partial": partial(list(range(len(rows)))), "partial_ci95": cluster_bootstrap_ci(groups, partial),
            "fit": fit_gain(list(zip(x, y, strict=True))).__dict__}  # suggest's prior, refitted on these merges


def merge_kinds(records: list[Any]) -> dict[str, tuple[int, float | None, float | None]]:
    """The loop's distinct merges by kind (descriptive, for reading R5 beside R6): generation 1
    (two foundations), a child merged with one of its own parents, and the rest; each as
    (merges, mean PCC, mean held-out gain)."""
    parents = {r.child: {r.parent_a, r.parent_b} for r in records}

    def kind(r: Any) -> str:
        if r.generation == 1:
            return "generation 1"
        own = r.parent_a in parents.get(r.parent_b, ()) or r.parent_b in parents.get(r.parent_a, ())
        return "a child with its own parent" if own else "other"

    groups: dict[str, list[Any]] = defaultdict(list)
    for r in records:
        groups[kind(r)].append(r)
    return {k: (len(v), mean_or_none([r.pcc for r in v]), mean_or_none([r.gain_heldout for r in v]))
            for k, v in sorted(groups.items())}


def _allpairs_tests(out: Path) -> Iterator[tuple[str, dict[str, Any], list[tuple[str, str]], Callable[..., Any]]]:
    """Each complete all-pairs test: its name, its models, its merged pairs (sorted ids) and a
    lookup ``key(a, b, table)`` of a pair's entry in one of its tables (stored as ``a+b`` or ``b+a``)."""

    def key(a: str, b: str, table: dict[str, Any]) -> Any:
        return table.get(f"{a}+{b}", table.get(f"{b}+{a}"))

    for f in sorted((out / "runs").glob("*/allpairs.json")):
        data = json.loads(f.read_text())
        models = data["models"]
        ids = sorted(models)
        pairs = [(a, b) for a, b in itertools.combinations(ids, 2) if key(a, b, data["pairs"]) is not None]
        if pairs and all(models[m].get("heldout") is not None for m in ids):
            yield f.parent.name, data, pairs, key


def _heldout_gain(models: dict[str, Any], a: str, b: str, child: float) -> float:
    """A child's held-out gain: its held-out score minus its parents' mean held-out score."""
    return float(child - (models[a]["heldout"] + models[b]["heldout"]) / 2)


ALLPAIRS_COLUMNS = ("test", "child", "a", "b", "pcc", "a_generation", "b_generation", "a_selection", "b_selection",
                    "a_heldout", "b_heldout", "child_heldout", "gain_heldout")


def allpairs_csv(out: Path) -> str:
    """Every merged pair of the all-pairs tests, one row each (``ALLPAIRS_COLUMNS``): what R6 and
    the refitted prior are computed from, committed as docs/results-real-allpairs.csv."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(ALLPAIRS_COLUMNS)
    for test, data, pairs, key in _allpairs_tests(out):
        models = data["models"]
        for a, b in pairs:
            child = key(a, b, data["pairs"])
            gain = _heldout_gain(models, a, b, child["heldout"])
            writer.writerow([test, child["child"], a, b, repr(key(a, b, data["pcc"])),
                             models[a]["generation"], models[b]["generation"], repr(models[a]["selection"]),
                             repr(models[b]["selection"]), repr(models[a]["heldout"]), repr(models[b]["heldout"]),
                             repr(child["heldout"]), repr(gain)])
    return buf.getvalue()


def allpairs_points(text: str) -> list[tuple[str, float, float]]:
    """``(child, PCC, held-out gain)`` of each row of :func:`allpairs_csv`'s file."""
    import csv
    import io

    return [(r["child"], float(r["pcc"]), float(r["gain_heldout"])) for r in csv.DictReader(io.StringIO(text))]


def all_pairs(out: Path) -> list[dict[str, Any]]:
    """R6 per all-pairs test: Spearman of each ranking with held-out gain (bootstrap over pairs), regret."""
    import numpy as np

    from kinmerge.report.plots import correlation
    from kinmerge.report.stats import node_jackknife_ci, partial_correlation
    from kinmerge.suggest import rank_pairs

    results = []
    for test, data, pairs, key in _allpairs_tests(out):
        models = data["models"]
        ids = sorted(models)
        child = [key(a, b, data["pairs"])["heldout"] for a, b in pairs]
        gain = [_heldout_gain(models, a, b, c) for c, (a, b) in zip(child, pairs, strict=True)]
        pcc = [key(a, b, data["pcc"]) for a, b in pairs]
        parents = [(models[a]["selection"] + models[b]["selection"]) / 2 for a, b in pairs]
        matrix = np.eye(len(ids))
        for (a, b), v in zip(pairs, pcc, strict=True):
            matrix[ids.index(a), ids.index(b)] = matrix[ids.index(b), ids.index(a)] = v
        suggested = {frozenset((s.a, s.b)): s.predicted_score
                     for s in rank_pairs(ids, matrix, scores={m: models[m]["selection"] for m in ids},
                                         prior=TESTED_PRIOR)}
        predicted = [suggested[frozenset(p)] for p in pairs]
        rankings = {"−PCC alone": [-v for v in pcc], "parents' mean score alone": parents, "suggest": predicted}
        # Exploratory (not registered): does PCC rank the gain beyond what the parents' held-out
        # scores and their generations (0 foundation, 1 child) explain, as R5 asks of the runs?
        held = [(models[a]["heldout"] + models[b]["heldout"]) / 2 for a, b in pairs]
        gens = [float(models[a]["generation"] + models[b]["generation"]) for a, b in pairs]

        def partial(idx: list[int]) -> float | None:
            return partial_correlation([pcc[i] for i in idx], [gain[i] for i in idx],
                                       [[held[i] for i in idx], [gens[i] for i in idx]])

        # Exploratory: a foundation merged with a child, split by whether it is one of the child's
        # parents (redundant skill) or not (a third skill): (pairs, mean PCC, mean held-out gain).
        split: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for (a, b), v, g in zip(pairs, pcc, gain, strict=True):
            if models[a]["generation"] + models[b]["generation"] == 1:
                found, child_id = (a, b) if models[a]["generation"] == 0 else (b, a)
                split[found in models[child_id]["parents"]].append((v, g))
        redundancy = {("own parent" if k else "third specialist"):
                      (len(v), sum(x for x, _ in v) / len(v), sum(y for _, y in v) / len(v))
                      for k, v in split.items() if v}
        row: dict[str, Any] = {"test": test, "pool": len(ids), "pairs": len(pairs), "rankings": {},
                               "redundancy": redundancy,
                               "partial": partial(list(range(len(pairs)))),
                               "partial_ci95": node_jackknife_ci(pairs, partial),
                               "points": [(key(a, b, data["pairs"])["child"], v, g)  # (child, PCC, held-out gain)
                                          for (a, b), v, g in zip(pairs, pcc, gain, strict=True)],
                               "best_child": max(child),
                               "random_regret": max(child) - sum(child) / len(child)}  # a pair drawn at random
        for name, scores in rankings.items():
            def rho(idx: list[int], scores: list[float] = scores) -> float | None:
                return correlation([scores[i] for i in idx], [gain[i] for i in idx]).spearman_r
            top = min(range(len(pairs)), key=lambda i: -scores[i])  # ties: the first pair
            row["rankings"][name] = {"spearman": rho(list(range(len(pairs)))),
                                     "ci95": node_jackknife_ci(pairs, rho),
                                     "top_pair": list(pairs[top]), "regret": max(child) - child[top]}
        results.append(row)
    return results


RANKINGS = ("−PCC alone", "parents' mean score alone", "suggest")


def r6_means(tests: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """R6 over the all-pairs tests: each ranking's mean Spearman ρ and mean regret, and the mean
    best child and random regret (the table's last row and the verdict read the same numbers)."""
    means: dict[str, dict[str, float | None]] = {
        name: {f: mean_or_none([t["rankings"][name][f] for t in tests]) for f in ("spearman", "regret")}
        for name in RANKINGS}
    means["all"] = {f: mean_or_none([t[f] for t in tests]) for f in ("best_child", "random_regret")}
    return means


def _beats(compared: dict[str, Any], holm: dict[str, float], name: str) -> tuple[str, str]:
    """The registered reading of one comparison at the final budget: who is ahead, and the figures."""
    c = compared[name][BUDGETS[-1]]
    if c["mean"] is None:
        return "no data", ""
    figures = (f"{name} at {BUDGETS[-1]} merges = {_fmt(c)}, {c['wins']}/{c['ties']}/{c['losses']} "
               f"W/T/L over {c['n']} testbeds, Holm p = {holm[name]:.3f}")
    if holm[name] < 0.05:
        return ("ahead" if c["mean"] > 0 else "behind"), figures
    return "no detectable difference", figures


def verdicts(table: dict[str, Any], es: dict[str, Any], r5: dict[str, Any], tests: list[dict[str, Any]]) -> list[str]:
    """Each hypothesis read against the criterion registered for it, before the runs, in
    docs/results.md: the mechanical part of the verdict, so no reading is chosen after the data.
    A comparison counts when its Holm-adjusted sign test is below 0.05 (family of four)."""
    lines = []

    def comparison(r: str, names: list[str]) -> None:
        readings = [_beats(table["compared"], table["holm"], n) for n in names]
        ok = all(state == "ahead" for state, _ in readings)
        states = "; ".join(f"{state} ({figures})" for state, figures in readings)
        lines.append(f"- **{r}: {'supported' if ok else 'not supported'}.** {states[:1].upper()}{states[1:]}.")

    comparison("R1", ["kinship − greedy"])
    comparison("R2", ["kinship − random"])
    saved = [b - a for a, b in zip(es["merges"]["kinship"], es["merges"]["noes"], strict=True)]
    d = es["heldout_diff"]
    if saved and d["mean"] is not None:
        mean_saved = sum(saved) / len(saved)
        ok = mean_saved > 0 and d["mean"] >= -0.01
        rules_out = d["ci95"] is not None and d["ci95"][0] >= -0.01
        lines.append(f"- **R3: {'supported' if ok else 'not supported'}.** Early stop saved {mean_saved:.1f} merges "
                     f"per testbed on average (of {sum(es['merges']['noes']) / len(saved):.1f}); held-out score with "
                     f"minus without = {_fmt(d)}; the interval {'rules out' if rules_out else 'does not rule out'} "
                     "a loss above 0.01.")
    else:
        lines.append("- **R3: no data.**")
    comparison("R4", ["predicted − greedy", "predicted − random"])
    ci = r5["partial_ci95"]
    ok = r5["partial"] is not None and ci is not None and ci[1] < 0
    lines.append(f"- **R5: {'supported' if ok else 'not supported'}.** Partial r of held-out gain and PCC given the "
                 f"parents' mean held-out score and the generation = {_num(r5['partial'])}"
                 + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "") + f" over {r5['n']} distinct merges.")
    if tests:
        m = r6_means(tests)
        rho = {n: m[n]["spearman"] for n in RANKINGS}
        regret = {n: m[n]["regret"] for n in RANKINGS}
        others = RANKINGS[:2]
        ok = (all(rho[n] is not None for n in RANKINGS)
              and all(rho["suggest"] > rho[n] for n in others)  # type: ignore[operator]
              and all(regret["suggest"] < regret[n] for n in others))  # type: ignore[operator]
        lines.append(f"- **R6: {'supported' if ok else 'not supported'}.** Over {len(tests)} all-pairs tests, mean "
                     "Spearman ρ with held-out gain: " + ", ".join(f"{n} {_num(rho[n])}" for n in RANKINGS)
                     + "; mean regret of the top pair: " + ", ".join(f"{n} {regret[n]:.4f}" for n in RANKINGS) + ".")
    else:
        lines.append("- **R6: no data.**")
    return lines


def refit_prior(records: list[Any], pair_points: list[tuple[str, float, float]]) -> dict[str, Any]:
    """``suggest``'s prior refitted on this zoo: held-out gain on PCC (least squares) over every
    distinct child with both, the runs' merges (``records``) and the all-pairs children
    (``pair_points``: child, PCC, gain) together (a child both made counts once). The all-pairs
    children are the unselected pairs ``suggest`` is asked to rank; the runs' merges are the pairs
    a loop makes. Not used to score R6 (that would be circular): R6 tests the prior shipped before
    the study. ``kinmerge.suggest.PRIOR`` is this fit of the committed CSVs (tests/test_study.py)."""
    from kinmerge.evolve.strategies.predicted import fit_gain

    points = {r.child: (float(r.pcc), float(r.gain_heldout)) for r in records
              if r.pcc is not None and r.gain_heldout is not None}
    points.update({child: (pcc, gain) for child, pcc, gain in pair_points})
    return fit_gain(list(points.values())).__dict__


def compute_spent(out: Path) -> dict[str, dict[str, float]]:
    """Worker-seconds by step over the finished testbeds: the loop's timed steps from each store's
    event log, the held-out children and the all-pairs tests from their files (``count`` steps,
    ``seconds`` in all; ``untimed``: steps recorded before their files carried a time). Evaluation
    cache hits cost ~0 s and count as steps, so the per-step means are means over what ran."""
    from kinmerge.store import RunStore

    spent: dict[str, dict[str, float]] = defaultdict(lambda: {"count": 0, "seconds": 0.0, "untimed": 0})
    for bed in finished_testbeds(out):
        with RunStore(bed, lock=False) as store:
            for e in store.events():
                if e.duration_s is not None:
                    spent[e.kind]["count"] += 1
                    spent[e.kind]["seconds"] += e.duration_s
        for name, field in (("heldout-children.json", "children"), ("allpairs.json", "pairs")):
            f = bed / name
            for v in (json.loads(f.read_text())[field].values() if f.is_file() else ()):
                step = spent[name.removesuffix(".json")]
                step["count"] += 1
                if "seconds" in v:
                    step["seconds"] += v["seconds"]
                else:
                    step["untimed"] += 1
    return dict(spent)


def markdown(out: Path, runs: list[Any], extra: dict[str, dict[str, float]]) -> str:
    """The results section of docs/results.md for the real-model study."""
    from kinmerge.report.merges import merge_records, records_from_csv

    lines = [f"**Data:** {len({Path(r.run_dir).name for r in runs})} of 8 testbeds finished, {len(runs)} runs "
             f"(every run is listed below; unfinished testbeds are not in any table)."]
    table = handed_over_table(runs, extra)
    lines += ["", "**R1, R2, R4: held-out gain of the handed-over model over the best foundation** (mean over "
              "testbeds; differences paired per testbed, 95% bootstrap interval over foundation sets, "
              "sign test; Holm across the four comparisons at 12 merges)", "",
              "| variant | " + " | ".join(f"{b} merges" for b in BUDGETS) + " |",
              "|---|" + "--:|" * len(BUDGETS)]
    for v, gains in table["mean_gain"].items():
        lines.append(f"| {v} | " + " | ".join("—" if gains[b] is None else f"{gains[b]:+.4f}" for b in BUDGETS) + " |")
    lines += ["", "| comparison | " + " | ".join(f"{b} merges" for b in BUDGETS) + " | W/T/L at 12 | Holm p |",
              "|---|" + "--:|" * (len(BUDGETS) + 2)]
    for name, rows in table["compared"].items():
        last = rows[BUDGETS[-1]]
        lines.append(f"| {name} | " + " | ".join(_fmt(rows[b]) for b in BUDGETS)
                     + f" | {last['wins']}/{last['ties']}/{last['losses']} | {table['holm'][name]:.3f} |")
    es = early_stop_effect(runs, extra)
    lines += ["", f"**R3: early stop** ({es['testbeds']} testbeds): merges used with early stop "
              f"{es['merges']['kinship']}, without {es['merges']['noes']}; held-out score of the handed-over "
              f"model, with minus without: {_fmt(es['heldout_diff'])}."]
    records = merge_records(runs, heldout=extra)
    r5: dict[str, Any] = {}
    for label, gain, parents in (("held-out", "gain_heldout", "parents_heldout"),
                                 ("selection", "gain_selection", "parents_selection")):
        g = gain_kinship(records, gain=gain, parents=parents)
        r5 = g if label == "held-out" else r5
        ci = g["partial_ci95"]
        lines += ["", f"**R5 ({label} gain):** {g['n']} distinct merges on {g['testbeds']} testbeds: "
                  f"Pearson r = {_num(g['pearson'])} (p = {_p(g['pearson_p'])}), Spearman ρ = "
                  f"{_num(g['spearman'])}; partial r given parents' mean {label} score and generation = "
                  f"{_num(g['partial'])}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
                  + f"; least squares: gain ≈ {g['fit']['a']:+.4f} {g['fit']['b']:+.4f} × PCC "
                  f"(residual sd {g['fit']['sd']:.4f})."]
    kinds = merge_kinds(records)
    lines += ["", "*The loop's merges by kind* (descriptive): " + "; ".join(
        f"{k} {n} merges, PCC {_num(x, 2)}, held-out gain {'—' if y is None else f'{y:+.3f}'}"
        for k, (n, x, y) in kinds.items()) + "."]
    lines += ["", "**Three zoos side by side** (selection gain, as the tiny-zoo studies recorded it; distinct "
              "merges; partial r given parents' mean score and generation, interval over foundation sets):", "",
              "| zoo | foundation sets | merges | Pearson r | Spearman ρ | partial r [95% CI] |",
              "|---|--:|--:|--:|--:|--:|"]
    zoos = [("smol (real, this study)", records)]
    for name in ("headroom", "tiny"):
        f = Path(__file__).parents[1] / "docs" / f"results-{name}-merges.csv"
        zoos.append((name, records_from_csv(f.read_text()) if f.is_file() else []))
    for name, recs in zoos:
        if not recs:
            how = "no testbed finished yet" if name.startswith("smol") else \
                "not recomputed yet: `python benchmarks/study.py run` then `merges`"
            lines.append(f"| {name} | — | — | {how} | | |")
            continue
        g = gain_kinship(recs, gain="gain_selection", parents="parents_selection")
        ci = g["partial_ci95"]
        lines.append(f"| {name} | {g['testbeds']} | {g['n']} | {_num(g['pearson'])} | {_num(g['spearman'])} "
                     f"| {_num(g['partial'])}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "") + " |")
    tests = all_pairs(out)
    names = RANKINGS
    lines += ["", "**R6: all-pairs tests** (every pair of the pool after generation 1 merged and scored held out; "
              "Spearman ρ of each ranking with the held-out gain, 95% interval from the node-deleting jackknife: "
              "the pairs share models, so they are not resampled as if independent)", "",
              "| test | pool | pairs | −PCC alone | parents' mean score | suggest | *partial r (PCC, gain)* |",
              "|---|--:|--:|--:|--:|--:|--:|"]
    for t in tests:
        cells = [_num(r["spearman"]) + (f" [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]" if r["ci95"] else "")
                 for r in (t["rankings"][name] for name in names)]
        ci = t["partial_ci95"]
        cells.append(_num(t["partial"]) + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""))
        lines.append(f"| {t['test']} | {t['pool']} | {t['pairs']} | " + " | ".join(cells) + " |")
    lines += ["", "*Partial r* (exploratory, added before the third test finished): Pearson r of PCC and held-out "
              "gain within the test, given the parents' mean held-out score and their generations (R5's controls "
              "on these pairs); a negative value is kinship telling something the parents' scores do not. Its "
              "interval is the node jackknife's, as for ρ."]
    lines += ["", "*Foundation × child pairs* (exploratory): the foundation merged back into a child it is a parent "
              "of, against a child of two other specialists (pairs, mean PCC, mean held-out gain):", ""]
    for t in tests:
        lines.append(f"- {t['test']}: " + "; ".join(f"{name} {n} pairs, PCC {x:.2f}, gain {y:+.3f}"
                                                    for name, (n, x, y) in t["redundancy"].items()))
    lines += ["", "Regret of each ranking's top pair: the best pair's held-out child score minus the top pair's "
              "(0 = it picked the best child; \"random\" = the mean over all pairs, a pair drawn at random; each "
              "child scored on 600 held-out answers, so a score moves in steps of 0.0017 and its 95% sampling "
              "error is ±0.04 near 0.5)", "",
              "| test | best child | −PCC alone | parents' mean score | suggest | random |",
              "|---|--:|--:|--:|--:|--:|"]
    for t in tests:
        lines.append(f"| {t['test']} | {t['best_child']:.4f} | "
                     + " | ".join(f"{t['rankings'][name]['regret']:.4f}" for name in names)
                     + f" | {t['random_regret']:.4f} |")
    if len(tests) > 1:
        m = r6_means(tests)
        lines.append(f"| mean of {len(tests)} | {m['all']['best_child']:.4f} | "
                     + " | ".join(f"{m[name]['regret']:.4f}" for name in RANKINGS)
                     + f" | {m['all']['random_regret']:.4f} |")
    from kinmerge.suggest import PRIOR

    prior = refit_prior(records, [p for t in tests for p in t["points"]])
    lines += ["", f"**suggest's prior refitted on this zoo** (held-out gain on PCC, least squares over {prior['n']} "
              "distinct children: the runs' merges and the all-pairs children): gain ≈ "
              f"{prior['a']:+.4f} {prior['b']:+.4f} × PCC (residual sd {prior['sd']:.4f}); `kinmerge.suggest.PRIOR` "
              f"now: gain ≈ {PRIOR.a:+.4f} {PRIOR.b:+.4f} × PCC over {PRIOR.n} merges (R6 tested the prior shipped "
              f"before the study, gain ≈ {TESTED_PRIOR.a:+.4f} {TESTED_PRIOR.b:+.4f} × PCC, "
              "fitted on the headroom zoo)."]
    lines += ["", "**Interference:** which specialist pairs lose part of both skills when merged, on held-out "
              "data, is measured directly on all 15 pairs by `benchmarks/interference.py` (docs/zoo.md)."]
    lines += ["", "**The registered criteria, read mechanically** (docs/results.md's hypotheses; the prose verdict "
              "beside them is written by hand from these):", "", *verdicts(table, es, r5, tests)]
    spent = compute_spent(out)
    total = sum(v["seconds"] for v in spent.values())
    lines += ["", f"**Compute spent** on the finished testbeds: {total / 3600:.1f} worker-hours (two workers of one "
              "thread each ran at once, on a machine shared with other work, so the wall time is roughly half; "
              "docs/benchmarks.md has the quiet per-step costs):", "",
              "| step | steps | worker-hours | seconds per step |", "|---|--:|--:|--:|"]
    for kind, v in sorted(spent.items(), key=lambda kv: -kv[1]["seconds"]):
        timed = v["count"] - v["untimed"]
        lines.append(f"| {kind} | {v['count']:.0f}" + (f" ({v['untimed']:.0f} untimed)" if v["untimed"] else "")
                     + f" | {v['seconds'] / 3600:.2f} | " + (f"{v['seconds'] / timed:.1f} |" if timed else "— |"))
    lines += ["", "**Every run:**", "", "| testbed | run | status | stop | merges | best foundation (sel.) | "
              "final best (sel.) | final best held-out |", "|---|---|---|---|--:|--:|--:|--:|"]
    for r in runs:
        lines.append(f"| {Path(r.run_dir).name} | {r.run.id} | {r.run.status} | {r.stop_reason or ''} | "
                     f"{r.merges_used} | {_num(r.foundation_best, 4)} | {_num(r.final_best, 4)} | "
                     f"{_num(r.final_best_heldout, 4)} |")
    return "\n".join(lines) + "\n"


def _p(v: float | None) -> str:
    return "—" if v is None else f"{v:.2g}"


def _num(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:+.{digits}f}" if digits == 3 else f"{v:.{digits}f}"
