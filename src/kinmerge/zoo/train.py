"""Building a zoo: pre-train the base, fine-tune the specialists, score, write the manifest.

Deterministic for a seed (fixed seeds, ``torch.use_deterministic_algorithms``, one torch thread
per process); specialists are fine-tuned in spawned worker processes, and their weights do not
depend on the number of workers because each starts from the base as saved.

torch and transformers are imported inside the functions that need them.

Example:
    >>> # not run here: trains a zoo (a minute or more; tests/test_zoo.py builds one)
    >>> zoo = build_zoo("/tmp/micro-zoo", preset="micro", overwrite=True)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from kinmerge._io import atomic_dir
from kinmerge.errors import ConfigError
from kinmerge.evaluate.tasks import load_tasks, write_task
from kinmerge.zoo.finetune import _Sampler, _save, _torch_state, _train
from kinmerge.zoo.handle import MANIFEST, Zoo, load_zoo
from kinmerge.zoo.presets import PRESETS, FineTune, ZooPreset
from kinmerge.zoo.tasks import TASKS, build_tokenizer, make_examples

__all__ = ["build_zoo"]

FORMAT_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Training


# ---------------------------------------------------------------------------------------------
# Build


def _new_model(preset: ZooPreset, tokenizer: Any, seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size, num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads, num_key_value_heads=preset.num_heads,
        max_position_embeddings=preset.max_positions, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, use_cache=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _workers(preset: ZooPreset) -> int:
    jobs = len(preset.models())
    if preset.workers is not None:
        return max(1, min(preset.workers, jobs))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, jobs))


def _fine_tune(tmp: str, preset: ZooPreset, ft: FineTune, index: int,
               seed: int) -> tuple[str, float, dict[str, float]]:
    """Fine-tune, save and score one model from the saved base (in a worker process or inline)."""
    import torch

    from kinmerge.evaluate.builtin import evaluate_loaded, load_model

    started = time.perf_counter()
    root = Path(tmp)
    steps = ft.steps if ft.steps is not None else preset.specialist_steps
    lr = ft.lr if ft.lr is not None else preset.specialist_lr
    with _torch_state(preset.threads):
        tokenizer = build_tokenizer(preset.max_positions)
        tasks = load_tasks(root / "tasks")
        exclude = {ex.prompt for t in tasks.values() for ex in t.examples}
        model, _ = load_model(root / "base")  # the saved 16-bit weights, upcast to float32
        model.train()
        torch.manual_seed(seed * 1000 + index + 1)
        _train(model, tokenizer, _Sampler(tuple(ft.mixture), seed + index + 1, exclude, ft.mixture),
               lr=lr, warmup=preset.specialist_warmup, max_steps=steps,
               batch_size=preset.specialist_batch_size or preset.batch_size,
               weight_decay=preset.weight_decay, decay=True)
        out = root / "specialists" / ft.name
        _save(model, tokenizer, out, preset.dtype,
              {"preset": preset.name, "seed": seed, "role": "specialist", "task": ft.task,
               "steps": steps, **_recipe(ft, lr, preset)})
        seconds = time.perf_counter() - started
        saved, _ = load_model(out)
        scores = evaluate_loaded(saved, tokenizer, tasks).scores
    return ft.name, seconds, scores


def _recipe(ft: FineTune, lr: float, preset: ZooPreset) -> dict[str, Any]:
    """What a fine-tune adds to its manifest entry beyond ``task``: only what a one-task
    specialist at the preset's learning rate would not say (tiny's manifest stays as it was)."""
    extra: dict[str, Any] = {}
    if ft.mixture != {ft.task: 1}:
        extra["mixture"] = dict(ft.mixture)
    if lr != preset.specialist_lr:
        extra["lr"] = lr
    return extra


def _resolve(preset: str | ZooPreset, overrides: dict[str, Any]) -> ZooPreset:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ConfigError(f"unknown zoo preset {preset!r}; choose from {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    try:
        preset = replace(preset, **overrides)
    except TypeError as exc:
        raise ConfigError(f"bad zoo setting: {exc}") from None
    models = preset.models()
    for task in {t for ft in models for t in ft.mixture} | set(preset.tasks):
        if task not in TASKS:
            raise ConfigError(f"unknown zoo task {task!r}; choose from {', '.join(TASKS)}")
    names = [ft.name for ft in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"zoo preset {preset.name!r}: fine-tune names repeat: {names}")
    for fset in preset.headroom_sets or ():
        unknown = set(fset) - set(names)
        if unknown:
            raise ConfigError(f"zoo preset {preset.name!r}: headroom set {list(fset)} names "
                              f"no fine-tune {sorted(unknown)}; choose from {names}")
    return preset


def build_zoo(root: str | os.PathLike[str], preset: str | ZooPreset = "tiny", seed: int = 0,
              overwrite: bool = False, log: Callable[[str], None] | None = None,
              device: str = "cpu", **overrides: Any) -> Zoo:
    """Train a zoo from scratch into ``root`` (built in a temp folder, then renamed into place).

    Args:
        root: the zoo folder to create.
        preset: a name from :data:`PRESETS` (``"tiny"``: the demo zoo, ~1M parameters per
            model; ``"micro"``: seconds, for tests) or a :class:`ZooPreset`.
        seed: seeds the data, the initial weights and every fine-tune.
        overwrite: replace an existing ``root`` that kinmerge wrote (a zoo) or that is empty; a
            folder holding other files is refused before training (``OutputFolderError``).
        log: called with one progress line at a time (default: print to stderr).
        device: where a real-model zoo (``base_source`` set, e.g. ``"smol"``) fine-tunes:
            ``"cpu"`` or ``"cuda"``; the tiny zoos always train on CPU.
        **overrides: replace preset fields, e.g. ``specialist_steps=100``.

    Returns:
        The built zoo.

    Raises:
        ConfigError: if ``root`` exists and ``overwrite`` is false, the preset is unknown, or
            an override names no preset field.

    Example:
        >>> # not run here: trains a zoo (a minute or more; tests/test_zoo.py builds one)
        >>> zoo = build_zoo("/tmp/micro-zoo", preset="micro", overwrite=True)  # doctest: +SKIP
        >>> sorted(zoo.specialists)  # doctest: +SKIP
        ['add', 'caesar', 'reverse']
    """
    preset = _resolve(preset, overrides)
    if preset.base_source is not None:  # a pretrained base: resumable, in place (kinmerge.zoo.real)
        from kinmerge.zoo.real import build_real_zoo

        return build_real_zoo(root, preset, seed, overwrite=overwrite, device=device, log=log)
    root = Path(root).resolve()
    if root.exists() and not overwrite:
        raise ConfigError(f"{root} already exists; choose a new folder or pass overwrite "
                          f"(--force on the command line)")
    if log is None:
        def log(line: str) -> None:
            print(f"[zoo] {line}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    with atomic_dir(root, replace=overwrite, legacy=lambda f: (f / MANIFEST).is_file(), option="DIRECTORY") as tmp:
        base = _build_base(tmp, preset, seed, log)
        scores, seconds = _build_fine_tunes(tmp, preset, seed, log)
        for name, s in {"base": base["scores"], **scores}.items():
            log(f"scores {name}: " + ", ".join(f"{t} {v:.2f}" for t, v in s.items()))
        manifest = _manifest(preset, seed, base, {"base": base.pop("scores"), **scores}, seconds)
        manifest["build_seconds"]["total"] = round(time.perf_counter() - started, 2)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log(f"built {root} in {manifest['build_seconds']['total']:.1f}s")
    return load_zoo(root)


def _build_base(tmp: Path, preset: ZooPreset, seed: int,
                log: Callable[[str], None]) -> dict[str, Any]:
    """Write the held-out tasks, pre-train and save the base; return its facts and scores."""
    from kinmerge.evaluate.builtin import evaluate_loaded, load_model

    with _torch_state(preset.threads):
        tokenizer = build_tokenizer(preset.max_positions)
        # Held-out data first, so training can exclude every evaluation prompt.
        held_out = {t: make_examples(t, preset.eval_size, seed) for t in preset.tasks}
        exclude = {ex.prompt for exs in held_out.values() for ex in exs}
        for task, examples in held_out.items():
            write_task(tmp / "tasks" / f"{task}.jsonl", examples)
        tasks = load_tasks(tmp / "tasks")
        check_tasks = {name: replace(t, examples=t.examples[: preset.check_size])
                       for name, t in tasks.items()}

        model = _new_model(preset, tokenizer, seed)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"preset {preset.name}: {n_params:,} parameters, tasks {', '.join(preset.tasks)}")
        history: list[dict[str, float]] = []

        def reached(step: int) -> bool:
            result = evaluate_loaded(model, tokenizer, check_tasks)
            model.train()
            history.append({"step": step, "average": result.average})
            log(f"base step {step}: held-out average {result.average:.3f} ("
                + ", ".join(f"{t} {v:.2f}" for t, v in result.scores.items()) + ")")
            return preset.base_target is not None and result.average >= preset.base_target

        t0 = time.perf_counter()
        steps = _train(
            model, tokenizer, _Sampler(preset.tasks, seed, exclude, preset.base_mixture),
            lr=preset.base_lr, warmup=preset.base_warmup, max_steps=preset.base_max_steps,
            batch_size=preset.batch_size, weight_decay=preset.weight_decay, decay=False,
            check=reached if preset.base_target is not None else None,
            check_every=preset.base_check_every, log=log)
        seconds = time.perf_counter() - t0
        if preset.base_target is not None and (not history
                                                or history[-1]["average"] < preset.base_target):
            log(f"base stopped at the step cap ({steps}) below target {preset.base_target}")
        _save(model, tokenizer, tmp / "base", preset.dtype,
              {"preset": preset.name, "seed": seed, "role": "base", "steps": steps})
        # Scores of the saved (16-bit) checkpoint, as any user of the zoo will see them.
        saved, _ = load_model(tmp / "base")
        scores = evaluate_loaded(saved, tokenizer, tasks).scores
    return {"parameters": n_params, "steps": steps, "history": history,
            "seconds": round(seconds, 2), "scores": scores}


def _build_fine_tunes(tmp: Path, preset: ZooPreset, seed: int, log: Callable[[str], None]
                      ) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Fine-tune every model from the saved base; return their scores and timings.

    The fine-tunes are independent: one per worker process (one torch thread each). Each starts
    from the base as saved, so a delta (model - base) is fine-tuning only, and the result does
    not depend on the number of workers.
    """
    t0 = time.perf_counter()
    models = preset.models()
    jobs = [(str(tmp), preset, ft, i, seed) for i, ft in enumerate(models)]
    workers = _workers(preset)
    per_model: dict[str, float] = {}
    scores: dict[str, dict[str, float]] = {}

    def done(name: str, seconds: float, model_scores: dict[str, float]) -> None:
        per_model[name] = round(seconds, 2)
        scores[name] = model_scores
        log(f"specialist {name}: fine-tuned in {seconds:.1f}s")

    if workers <= 1:
        for job in jobs:
            done(*_fine_tune(*job))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        log(f"fine-tuning {len(jobs)} models in {workers} worker processes")
        context = multiprocessing.get_context("spawn")  # fork would copy torch's threads
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for future in as_completed([pool.submit(_fine_tune, *job) for job in jobs]):
                done(*future.result())
    timing = {"specialists": round(time.perf_counter() - t0, 2),
              "per_specialist": {ft.name: per_model[ft.name] for ft in models}, "workers": workers}
    return {ft.name: scores[ft.name] for ft in models}, timing


def _manifest(preset: ZooPreset, seed: int, base: dict[str, Any],
              scores: dict[str, dict[str, float]], seconds: dict[str, Any]) -> dict[str, Any]:
    """The zoo.json of a build: models, tasks, every setting, scores, timings, versions."""
    import torch
    import transformers

    lr_default = preset.specialist_lr
    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "preset": preset.name,
        "seed": seed,
        "base": "base",
        "specialists": {
            ft.name: {"task": ft.task, "path": f"specialists/{ft.name}",
                      **_recipe(ft, ft.lr if ft.lr is not None else lr_default, preset)}
            for ft in preset.models()},
        "tasks_dir": "tasks",
        "tasks": list(preset.tasks),
        "settings": asdict(preset),
        "parameters": base["parameters"],
        "base_steps": base["steps"],
        "base_history": base["history"],
        "scores": {name: {**s, "average": sum(s.values()) / len(s)} for name, s in scores.items()},
        "build_seconds": {"base": base["seconds"], **seconds},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "host": {"cpus": os.cpu_count(), "torch_threads": preset.threads},
    }
    if preset.headroom_sets:
        manifest["headroom"] = {"sets": [list(s) for s in preset.headroom_sets],
                                "tasks": preset.headroom_tasks,
                                "limit": preset.headroom_limit or preset.eval_size}
    return manifest
