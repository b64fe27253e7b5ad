"""The real-model study (docs/results.md, "On real fine-tunes"): kinship guidance on SmolLM2-135M.

The hypotheses (R1–R6), the design and the analysis were committed to docs/results.md before the
first run; this script runs exactly that design and nothing chosen after it:

- testbeds: the first ``SETS`` four-specialist foundation sets of the ``smol`` zoo's recorded list,
  scored on all six tasks; the loop selects on ``LIMIT`` examples per task of the selection part
  and scores every top-k entrant on the whole held-out part (``heldout: 0.5``);
- variants: greedy, kinship (0.9), kinship without early stop, random (2 seeds), predicted gain;
  k = 3, SLERP with the paper's gradient, ``GENERATIONS`` generations;
- every merged child the loop did not score held out (it scores top-k entrants only) is scored on
  the held-out part once its testbed's runs end, so every merge has a held-out gain (R5);
- the all-pairs test of ``suggest`` (R6) on the greedy runs of the first ``ALLPAIRS_SETS``
  testbeds: every pair of the pool after generation 1 merged and scored on held-out data.

It is a resumable background job that spans sessions: every run is a resumable kinmerge run,
the all-pairs results are saved pair by pair, and a testbed whose runs and all-pairs test are
done has its merge folders deleted (270 MB each; the store keeps every number), leaving a
``.study-done`` marker. Two testbeds run at once, one torch thread each. The held-out scorings
outside the runs go through kinmerge's evaluation cache (keyed by content id and evaluator
settings), so a child that several testbeds make (the same two specialists) is scored once.

    python benchmarks/study_real.py run --out study-real      # ~10 h on 2 CPU cores; rerun to resume
    python benchmarks/study_real.py status --out study-real   # what is done
    python benchmarks/study_real.py render --out study-real --write-doc docs/results.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

SETS = 8
GENERATIONS = 4
LIMIT = 40
ALLPAIRS_SETS = 3
DONE = ".study-done"


def _variants() -> tuple[Any, ...]:
    from kinmerge.demo import Variant

    return (Variant("greedy", "greedy"), Variant("kinship", "kinship", {"threshold": 0.9}),
            Variant("kinship-noes", "kinship", {"early_stop": False}), Variant("random-s0", "random", seed=0),
            Variant("random-s1", "random", seed=1), Variant("predicted", "predicted"))


def _zoo(zoo_dir: str | None) -> Any:
    from kinmerge.demo import resolve_zoo

    return resolve_zoo(zoo_dir or "smol")


def _testbeds(zoo: Any, sets: int) -> list[Any]:
    """The zoo's recorded foundation sets (the smol zoo's: every 4 of its 6), the first ``sets``;
    a zoo without recorded sets (smol-ci, for a trial of this script) gives its 4-subsets."""
    from kinmerge.demo import Testbed

    recorded = (zoo.manifest.get("headroom") or {}).get("sets") \
        or list(itertools.combinations(sorted(zoo.specialists), min(4, len(zoo.specialists))))
    return [Testbed(tuple(s), tuple(zoo.manifest["tasks"])) for s in recorded[:sets]]


def _settings(beds: list[Any], generations: int, limit: int) -> Any:
    from kinmerge.demo import DemoSettings

    return DemoSettings(testbeds=tuple(beds), variants=_variants(), k=3, generations=generations, limit=limit,
                        evaluator={"threads": 1, "batch_size": 32})


def heldout_evaluator(zoo: Any, tasks: list[str] | None = None) -> Any:
    """The runs' own held-out evaluator (same split, same key), built from the same config; with
    ``tasks``, the same split of just those tasks (the held-out part is scored whole: no limit)."""
    from kinmerge.evolve.evaluator_config import EvaluatorConfig

    config = EvaluatorConfig.model_validate({"name": "builtin", "tasks_dir": str(zoo.tasks_dir),
                                             "tasks": tasks or list(zoo.manifest["tasks"]), "limit": LIMIT,
                                             "threads": 1, "batch_size": 32})
    return config.build("heldout")


def all_pairs(run_dir: Path, zoo: Any, out: Path, log: Any) -> None:
    """R6: every pair of the greedy run's pool after generation 1, merged and scored held out."""
    import kinmerge
    from kinmerge._io import atomic_write
    from kinmerge.evaluate import EvalResult
    from kinmerge.evaluate.cache import evaluate_cached
    from kinmerge.store import RunStore

    with RunStore(run_dir, lock=False) as store:
        fp = store.get_run("greedy").fingerprint  # type: ignore[union-attr]
        pool = [m for m in store.pool("greedy", evaluator=fp.evaluator) if m.generation <= 1]
        known = store.get_scores(None, evaluator=fp.heldout)  # per model, per task: top-k entrants
    children = out.with_name("heldout-children.json")  # and the children the runs did not score held out
    if children.is_file():
        known.update({mid: v["scores"] for mid, v in json.loads(children.read_text())["children"].items()})
    tasks = set(zoo.manifest["tasks"])

    def heldout(model_id: str, path: str) -> EvalResult:
        """Scored already (same split, same key) or now, through the evaluation cache."""
        scores = known.get(model_id, {})
        return EvalResult(scores=dict(scores)) if set(scores) == tasks else evaluate_cached(evaluator, path)[0]

    done: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {"models": {}, "pairs": {}}
    done["models"].update({m.id: {**done["models"].get(m.id, {}), "path": m.path, "selection": m.score,
                                  "generation": m.generation, "parents": list(m.parents)} for m in pool})
    if "pcc" not in done:
        pcc = kinmerge.matrix([m.path for m in pool], base=str(zoo.base)).matrix("pcc")
        done["pcc"] = {f"{a.id}+{b.id}": float(pcc[i, j])
                       for (i, a), (j, b) in itertools.combinations(enumerate(pool), 2)}
        atomic_write(out, json.dumps(done, indent=1))
    evaluator = heldout_evaluator(zoo)
    for m in pool:  # the parents' held-out scores: the baseline of every held-out gain
        if "heldout" not in done["models"][m.id]:
            done["models"][m.id]["heldout"] = heldout(m.id, m.path).average
            atomic_write(out, json.dumps(done, indent=1))
    for a, b in itertools.combinations(pool, 2):
        key = f"{a.id}+{b.id}"
        if key in done["pairs"]:
            continue
        t0 = time.perf_counter()
        child = kinmerge.merge([a.path, b.path], "slerp", out=run_dir / "models", base=str(zoo.base))
        result = heldout(child.id, child.path)
        done["pairs"][key] = {"child": child.id, "heldout": result.average, "scores": result.scores,
                              "seconds": round(time.perf_counter() - t0, 1)}
        atomic_write(out, json.dumps(done, indent=1))
        log(f"{run_dir.name}: all-pairs {len(done['pairs'])}/{len(pool) * (len(pool) - 1) // 2}")


def heldout_pass(run_dir: Path, zoo: Any, out: Path, log: Any) -> None:
    """R5's data: every model of every run on the testbed scored on the held-out part.

    The loop scores held out only the models that enter the top-k, so a merge gain measured on
    held-out data would otherwise exist only for the children that did well on selection, and only
    for parents that did: a foundation that never entered the top-k (a random or exploration
    partner's) would leave its merges without a held-out gain. Here every other model, children
    and foundations, gets one, under the runs' own held-out evaluator (same split, same key),
    before the testbed's merge folders are deleted. Saved model by model (resumable); a model
    whose folder is gone (a finished testbed's pruned merges) is left as it is.
    """
    from kinmerge._io import atomic_write
    from kinmerge.evaluate.cache import evaluate_cached
    from kinmerge.store import RunStore

    with RunStore(run_dir, lock=False) as store:
        key = store.get_run("greedy").fingerprint.heldout  # type: ignore[union-attr]
        models: dict[str, str] = {}
        for run in store.runs():
            fp = run.fingerprint
            for m in store.pool(run.id, evaluator=fp.evaluator if fp else None):
                if m.path:
                    models.setdefault(m.id, m.path)
        have = {mid for mid, v in store.average_scores(list(models), evaluator=key).items() if v is not None}
    done: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {"key": key, "children": {}}
    todo = [mid for mid in sorted(models) if mid not in have and mid not in done["children"]
            and Path(models[mid]).exists()]
    evaluator = heldout_evaluator(zoo)
    for n, mid in enumerate(todo):
        t0 = time.perf_counter()
        result = evaluate_cached(evaluator, models[mid])[0]
        done["children"][mid] = {"heldout": result.average, "scores": result.scores,
                                 "seconds": round(time.perf_counter() - t0, 1)}
        atomic_write(out, json.dumps(done, indent=1))
        log(f"{run_dir.name}: held-out scores {n + 1}/{len(todo)}")


def log(line: str) -> None:
    print(f"[study-real] {line}", file=sys.stderr, flush=True)


def _testbed_job(configs: list[tuple[str, str]], index: int, zoo_dir: str | None) -> str:
    """One testbed in a worker: its runs in order, its all-pairs test, then its merges pruned."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from kinmerge.demo import run_configs

    run_dir = Path(configs[0][1])
    if (run_dir / DONE).is_file():
        return f"{run_dir.name}: done before"

    t0 = time.perf_counter()
    run_configs([(Path(c), Path(r)) for c, r in configs], workers=1, log=log)
    heldout_pass(run_dir, _zoo(zoo_dir), run_dir / "heldout-children.json", log)
    if index < ALLPAIRS_SETS:
        all_pairs(run_dir, _zoo(zoo_dir), run_dir / "allpairs.json", log)
    shutil.rmtree(run_dir / "models", ignore_errors=True)  # the store keeps every number
    (run_dir / DONE).write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1)}) + "\n")
    return f"{run_dir.name}: done in {time.perf_counter() - t0:.0f} s"


def run(out: Path, workers: int, zoo_dir: str | None, *, sets: int = SETS, generations: int = GENERATIONS,
        limit: int = LIMIT) -> None:
    from kinmerge.demo import write_configs

    zoo = _zoo(zoo_dir)
    beds = _testbeds(zoo, sets)
    configs = write_configs(out, _settings(beds, generations, limit), zoo, beds)
    by_bed: dict[str, list[tuple[str, str]]] = {}
    for config, run_dir in configs:
        by_bed.setdefault(str(run_dir), []).append((str(config), str(run_dir)))
    jobs = list(by_bed.values())
    for run_dir in by_bed:  # finished testbeds: any model added to the held-out pass since they finished
        if (Path(run_dir) / DONE).is_file():
            heldout_pass(Path(run_dir), zoo, Path(run_dir) / "heldout-children.json", log)
    log(f"{len(configs)} runs on {len(jobs)} testbeds, {workers} at a time")
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for line in pool.map(_testbed_job, jobs, range(len(jobs)), itertools.repeat(zoo_dir)):
            log(line)


def status(out: Path) -> None:
    for run_dir in sorted((out / "runs").glob("*")):
        pairs = run_dir / "allpairs.json"
        n = len(json.loads(pairs.read_text())["pairs"]) if pairs.is_file() else 0
        print(f"{run_dir.name}: {'done' if (run_dir / DONE).is_file() else 'in progress'}; all-pairs {n}")


BEGIN, END = "<!-- study-real:begin -->", "<!-- study-real:end -->"


def render(out: Path, write_doc: Path | None) -> None:
    """The results section (R1-R6, every run) from the finished testbeds' stores; with
    ``write_doc``, written into that page between the study markers, and every distinct merge
    into ``results-real-merges.csv`` beside it."""
    from kinmerge.report.merges import merge_records, records_csv

    sys.path.insert(0, str(Path(__file__).parent))
    from real_analysis import allpairs_csv, load, markdown
    from study import write_between

    runs, extra = load(out)
    text = markdown(out, runs, extra)
    if write_doc is None:
        print(text)
        return
    csv = write_doc.with_name("results-real-merges.csv")
    csv.write_text(records_csv(merge_records(runs, heldout=extra)), encoding="utf-8")
    pairs = write_doc.with_name("results-real-allpairs.csv")
    pairs.write_text(allpairs_csv(out), encoding="utf-8")
    text += (f"\nEvery distinct merge (parents, PCC, scores, gains, generation, runs): [{csv.name}]({csv.name}); "
             f"every pair of the all-pairs tests (R6): [{pairs.name}]({pairs.name}).\n")
    write_between(write_doc, BEGIN, END, text)
    print(f"wrote {write_doc}, {csv} and {pairs}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("run", "status", "render"))
    ap.add_argument("--out", type=Path, default=Path("study-real"))
    ap.add_argument("--zoo", default=None, help="the smol zoo's folder (default: the one built into the cache)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--write-doc", type=Path, default=None, help="render: the page to write the results into")
    ap.add_argument("--sets", type=int, default=SETS, help="(a trial of the script only: the design says 8)")
    ap.add_argument("--generations", type=int, default=GENERATIONS, help="(a trial only: the design says 4)")
    ap.add_argument("--limit", type=int, default=LIMIT, help="(a trial only: the design says 40)")
    args = ap.parse_args(argv)
    if args.command == "run":
        run(args.out, args.workers, args.zoo, sets=args.sets, generations=args.generations, limit=args.limit)
    elif args.command == "render":
        render(args.out, args.write_doc)
    else:
        status(args.out)


if __name__ == "__main__":
    main()
