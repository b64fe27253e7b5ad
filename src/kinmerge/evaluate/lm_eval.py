"""An evaluator over lm-evaluation-harness (``lm_eval``): the paper's evaluation, as an adapter.

The paper scores every model on Winogrande (5-shot, ``acc``), GSM8K (5-shot, ``exact_match``)
and TruthfulQA MC2 (0-shot, ``acc``) with the harness; :class:`LmEvalEvaluator` with no
arguments does exactly that (:data:`PAPER_TASKS`). Any harness task name works, and so does a
path to a folder (or file) of task YAMLs: the folder goes to ``TaskManager(include_path=...)``
and every task defined in it is run. A local task can read a local file::

    task: my_task
    dataset_path: json
    dataset_kwargs: {data_files: {test: /abs/path/my_task.jsonl}}
    test_split: test
    output_type: multiple_choice
    ...

(``data_files`` paths are read by ``datasets`` relative to the working directory: prefer absolute.)

``split="selection"`` / ``"heldout"`` scores one part of every task, as an evolution run asks
(``kinmerge.evolve.heldout``): a task with a validation and a test split is scored on its
validation split (selection) or its test split (held-out), by setting the built task's
``test_split`` before ``simple_evaluate`` (the harness scores ``test_split`` when there is one).
A task with one split is split with :func:`kinmerge.evaluate.tasks.split_task`'s seeded rule
when ``heldout_fraction`` is given (the part's document positions go to the harness's
``samples``), and refused otherwise.

The model is loaded once with the harness's Hugging Face class (``HFLM``) and reused across
tasks; tasks are run in groups of equal ``num_fewshot``. ``import kinmerge.evaluate.lm_eval``
is light: lm_eval, torch and transformers load inside ``evaluate()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kinmerge.errors import ConfigError, EvaluationError, install_hint
from kinmerge.evaluate import EvalResult
from kinmerge.evaluate.tasks import SPLITS, split_positions

__all__ = ["PAPER_FEWSHOT", "PAPER_METRICS", "PAPER_TASKS", "LmEvalEvaluator"]

#: The paper's task set (Hu et al. 2025, §3): Winogrande, GSM8K, TruthfulQA MC2.
PAPER_TASKS: tuple[str, ...] = ("winogrande", "gsm8k", "truthfulqa_mc2")
#: Primary metric per task; a name matches the harness's ``name,<filter>`` keys.
PAPER_METRICS: dict[str, str] = {"winogrande": "acc", "gsm8k": "exact_match", "truthfulqa_mc2": "acc"}
#: Few-shot examples per task, as in the paper (and the old Open LLM Leaderboard).
PAPER_FEWSHOT: dict[str, int] = {"winogrande": 5, "gsm8k": 5, "truthfulqa_mc2": 0}
# Tried in order when a task has no metric configured.
_FALLBACK_METRICS = ("acc", "exact_match", "acc_norm", "mc2", "f1", "em")


class LmEvalEvaluator:
    """Score a local Hugging Face model folder with lm-evaluation-harness.

    Args:
        tasks: harness task names, or paths to folders/files of task YAMLs (every task
            defined there is run). Default: the paper's three tasks.
        metrics: task -> metric used as its score, e.g. ``{"gsm8k": "exact_match"}``. A bare
            name picks the ``none`` filter if there is one, else the harness's first filter
            (GSM8K: ``strict-match``); ``"exact_match,flexible-extract"`` names one exactly.
            Default: :data:`PAPER_METRICS`, then ``acc``, ``exact_match``, ... as available.
        num_fewshot: one number for every task, or task -> number. Default:
            :data:`PAPER_FEWSHOT` for the paper's tasks, the task YAML's own value otherwise.
            (The harness keeps 0 for tasks whose YAML fixes ``num_fewshot: 0``.)
        batch_size: sequences per forward pass, or ``"auto"`` (the harness probes GPU memory).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        limit: use only the first ``limit`` examples of each task (a float < 1: a fraction).
        dtype: dtype the model runs in; ``"auto"`` keeps the saved one (bf16 for merges).
        include_path: extra folders of task YAMLs, for tasks named in ``tasks``.
        seed: the harness's random, numpy, torch and few-shot sampling seed.
        apply_chat_template: format prompts with the tokenizer's chat template.
        bootstrap_iters: bootstrap resamples for standard errors (0: none, fastest).
        model_args: more keyword arguments for the harness's ``HFLM`` (e.g. ``max_length``,
            ``trust_remote_code``), as ``lm_eval --model_args``; part of the cache key.
        split: ``"all"`` (default), ``"selection"`` (validation split) or ``"heldout"`` (test
            split) of every task; see the module docstring for tasks with one split. ``limit``
            applies within the part.
        heldout_fraction: the share of a one-split task's documents held out; ``None`` (default):
            such a task cannot be split, and ``selection`` / ``heldout`` refuse it.
        split_seed: seeds the split of one-split tasks.

    Raises:
        ConfigError: a task path that does not exist or defines no task, or a bad option.

    Example:
        >>> # not run here: needs a GPU and lm-eval's harness tasks
        >>> ev = LmEvalEvaluator(device="cuda", batch_size="auto")            # doctest: +SKIP
        >>> ev.evaluate(Path("merges/3f9c0a1b2d4e5f60")).scores              # doctest: +SKIP
        {'winogrande': 0.781, 'gsm8k': 0.512, 'truthfulqa_mc2': 0.603}
    """

    name = "lm_eval"

    def __init__(
        self,
        tasks: Sequence[str | os.PathLike[str]] = PAPER_TASKS,
        metrics: Mapping[str, str] | None = None,
        num_fewshot: int | Mapping[str, int] | None = None,
        batch_size: int | str = 8,
        device: str = "cpu",
        limit: int | float | None = None,
        dtype: str = "auto",
        include_path: Sequence[str | os.PathLike[str]] | None = None,
        seed: int = 1234,
        apply_chat_template: bool = False,
        bootstrap_iters: int = 0,
        model_args: Mapping[str, Any] | None = None,
        split: str = "all",
        heldout_fraction: float | None = None,
        split_seed: int = 0,
    ) -> None:
        if isinstance(tasks, (str, os.PathLike)):
            tasks = [tasks]
        if not tasks:
            raise ConfigError("lm_eval evaluator: give at least one task (a harness name or a YAML folder)")
        if limit is not None and not (limit > 0):
            raise ConfigError(f"limit must be positive, got {limit}")
        if not (batch_size == "auto" or (isinstance(batch_size, int) and batch_size >= 1)):
            raise ConfigError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        if bootstrap_iters < 0:
            raise ConfigError(f"bootstrap_iters must be >= 0, got {bootstrap_iters}")
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if heldout_fraction is not None and not 0.0 < heldout_fraction < 1.0:
            raise ConfigError(f"heldout_fraction must be between 0 and 1 (exclusive), got {heldout_fraction}")
        self.split, self.heldout_fraction, self.split_seed = split, heldout_fraction, int(split_seed)

        self.include_path: list[Path] = []
        self.task_names: list[str] = []
        self._local: dict[str, Path] = {}  # task name -> its YAML file (for settings())
        for spec in tasks:
            self._add_task(spec)
        for folder in include_path or ():
            folder = Path(folder).expanduser().resolve()
            if not folder.is_dir():
                raise ConfigError(f"include_path {folder} is not a folder of task YAMLs")
            self.include_path.append(folder)
            self._local.update({k: v for k, v in _index(folder).items() if k in self.task_names})

        self.metrics: dict[str, str] = {**PAPER_METRICS, **(metrics or {})}
        if isinstance(num_fewshot, Mapping):
            self.num_fewshot: dict[str, int | None] = {**PAPER_FEWSHOT, **num_fewshot}
        elif num_fewshot is not None:
            if num_fewshot < 0:
                raise ConfigError(f"num_fewshot must be >= 0, got {num_fewshot}")
            self.num_fewshot = {t: int(num_fewshot) for t in self.task_names}
        else:
            self.num_fewshot = dict(PAPER_FEWSHOT)
        self.batch_size, self.device, self.limit, self.dtype = batch_size, device, limit, dtype
        self.seed, self.apply_chat_template, self.bootstrap_iters = seed, apply_chat_template, bootstrap_iters
        reserved = {"pretrained", "device", "batch_size", "dtype", "peft"} & set(model_args or {})
        if reserved:
            raise ConfigError(f"model_args {sorted(reserved)}: these have their own settings (device, batch_size, "
                              "dtype; the model is the folder evaluated, an adapter goes in as peft=)")
        self.model_args = dict(model_args or {})

    def _add_task(self, spec: str | os.PathLike[str]) -> None:
        text = os.fspath(spec)
        path = Path(text).expanduser()
        looks_like_path = isinstance(spec, os.PathLike) or os.sep in text or text.endswith((".yaml", ".yml"))
        if not path.exists():
            if looks_like_path:
                raise ConfigError(f"task path {text} does not exist (a folder or file of lm_eval task YAMLs)")
            if text not in self.task_names:
                self.task_names.append(text)
            return
        path = path.resolve()
        found = _index(path)
        if not found:
            raise ConfigError(f"{text}: no lm_eval task defined here (a task YAML needs a 'task:' name)")
        folder = path if path.is_dir() else path.parent
        if folder not in self.include_path:
            self.include_path.append(folder)
        for name, yaml_file in found.items():
            self._local[name] = yaml_file
            if name not in self.task_names:
                self.task_names.append(name)

    # -- Evaluator protocol ----------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """Everything that changes the scores: tasks (local ones by content hash), metrics,
        few-shot counts, limit, dtype, seed, chat template, lm_eval version. Device and batch
        size are left out: they change scores only by float rounding."""
        return {
            "evaluator": self.name,
            "lm_eval": _lm_eval_version(),
            "tasks": {t: (_task_digest(self._local[t]) if t in self._local else "lm_eval") for t in self.task_names},
            "metrics": {t: self._metric_for(t) for t in self.task_names},
            "num_fewshot": {t: self.num_fewshot.get(t) for t in self.task_names},
            "limit": self.limit,
            "dtype": self.dtype,
            "seed": self.seed,
            "apply_chat_template": self.apply_chat_template,
            **({"model_args": self.model_args} if self.model_args else {}),
            **({"split": self.split, "heldout_fraction": self.heldout_fraction, "split_seed": self.split_seed}
               if self.split != "all" else {}),
        }

    def evaluate(self, model_dir: Path) -> EvalResult:
        """Load ``model_dir`` once and score it on every task.

        The harness prints notes of its own (e.g. the batch size ``auto`` found) on stdout; they
        go to stderr here, so stdout carries only kinmerge's results (``--json`` stays parseable).

        Raises:
            EvaluationError: the folder is not a model, lm_eval is not installed, a task is
                unknown or its data cannot be loaded, or a task lacks the configured metric.
        """
        with contextlib.redirect_stdout(sys.stderr):
            return self._evaluate(Path(model_dir))

    def _evaluate(self, model_dir: Path) -> EvalResult:
        from kinmerge.evaluate.builtin import adapter_base_folder, adapter_folder

        adapter = adapter_folder(model_dir)
        if adapter is not None:  # the harness applies it: peft= with its base as pretrained (checked to fit)
            pretrained, peft_arg = adapter_base_folder(adapter), {"peft": str(adapter)}
        elif not (model_dir / "config.json").is_file():
            raise EvaluationError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
        else:
            pretrained, peft_arg = model_dir, {}
        try:
            import lm_eval
            from lm_eval.models.huggingface import HFLM
            from lm_eval.tasks import TaskManager
        except ImportError as exc:
            raise EvaluationError(f"the lm_eval evaluator needs lm-eval ({exc.name} missing): "
                                  + install_hint("eval")) from None

        # The harness's own ~200 task folders are indexed only when a task is not local.
        needs_defaults = any(t not in self._local for t in self.task_names)
        try:
            manager = TaskManager(include_path=[str(p) for p in self.include_path] or None,
                                  include_defaults=needs_defaults)
        except Exception as exc:
            raise EvaluationError(f"lm_eval could not index the task folders: {_one_line(exc)}") from None
        if unknown := [t for t in self.task_names if t not in manager.all_tasks]:
            raise EvaluationError(
                f"unknown lm_eval task {', '.join(unknown)}; give a harness task name "
                "(lm-eval ls tasks) or a path to a folder of task YAMLs"
            )

        try:
            lm = HFLM(pretrained=str(pretrained), device=self.device, batch_size=self.batch_size,
                      dtype=self.dtype, **{"trust_remote_code": False, **self.model_args, **peft_arg})
        except Exception as exc:
            raise EvaluationError(f"{model_dir}: lm_eval could not load the model: {_one_line(exc)}") from None

        scores: dict[str, float] = {}
        details: dict[str, dict[str, float]] = {}
        try:
            for shots, names in self._fewshot_groups():
                try:
                    specs, samples = self._part(manager, names)
                    out = lm_eval.simple_evaluate(
                        model=lm,
                        tasks=specs,
                        num_fewshot=shots,
                        task_manager=manager,
                        limit=self.limit if samples is None else None,
                        samples=samples,
                        bootstrap_iters=self.bootstrap_iters,
                        log_samples=False,
                        apply_chat_template=self.apply_chat_template,
                        random_seed=self.seed,
                        numpy_random_seed=self.seed,
                        torch_random_seed=self.seed,
                        fewshot_random_seed=self.seed,
                    )
                except EvaluationError:
                    raise
                except Exception as exc:  # the harness raises anything from KeyError to datasets errors
                    raise EvaluationError(f"lm_eval failed on {', '.join(names)}: {_one_line(exc)}") from None
                if out is None:  # non-zero rank in a distributed run
                    raise EvaluationError("lm_eval returned no results (not rank 0 of a distributed run?)")
                for name in names:
                    scores[name], details[name] = self._read(name, out)
        finally:
            del lm
            _free_gpu()
        return EvalResult(scores=scores, details=details)

    # -- helpers ------------------------------------------------------------------------------

    def _fewshot_groups(self) -> list[tuple[int | None, list[str]]]:
        groups: dict[int | None, list[str]] = {}
        for t in self.task_names:
            groups.setdefault(self.num_fewshot.get(t), []).append(t)
        return list(groups.items())

    def _part(self, manager: Any, names: list[str]) -> tuple[list[Any], dict[str, list[int]] | None]:
        """The task specs for ``simple_evaluate`` that score :attr:`split` of ``names``, and the
        document positions (the harness's ``samples``) where a one-split task is split here.

        ``"all"``: the names, as given. Otherwise the tasks are built (``TaskManager.load``) and
        each leaf task's ``test_split`` is pointed at its part with ``set_config``, the harness's
        own hook for config overrides; groups are passed whole, so their aggregates still come out.
        Since the harness takes ``limit`` or ``samples``, not both, ``limit`` becomes positions.
        """
        if self.split == "all":
            return list(names), None
        loaded = manager.load(list(names))
        positions: dict[str, list[int]] = {}
        for name, task in loaded["tasks"].items():
            validation, test = task.config.validation_split, task.config.test_split
            if validation is not None and test is not None:
                if self.split == "selection":
                    task.set_config("test_split", validation)
                positions[name] = []  # the whole part: filled in below only if positions are needed
                continue
            if self.heldout_fraction is None:
                raise EvaluationError(
                    f"lm_eval task {name} has only a {'test' if test is not None else 'validation'} split, so it "
                    f"cannot be split into selection and held-out parts; give it both a validation_split and a "
                    f"test_split, or set heldout_fraction to split its documents")
            n = len(task.eval_docs)
            if n < 2:
                raise EvaluationError(f"lm_eval task {name}: {n} document(s): too few to split into selection "
                                      "and held-out parts; add documents, or turn the split off (heldout: false)")
            positions[name] = split_positions(n, self.split, self.heldout_fraction, self.split_seed, name)
        specs = [loaded["groups"][n] if n in loaded["groups"] else loaded["tasks"][n] for n in names]
        if all(not p for p in positions.values()):  # every task has its two splits: `limit` still works
            return specs, None
        for name, p in positions.items():
            p = p or list(range(len(loaded["tasks"][name].eval_docs)))
            positions[name] = p[:_limit_count(len(p), self.limit)] if self.limit is not None else p
        return specs, positions

    def _metric_for(self, task: str) -> str | None:
        return self.metrics.get(task)

    def _read(self, task: str, out: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
        row = out.get("results", {}).get(task)
        if row is None:
            raise EvaluationError(f"lm_eval reported no results for task {task}")
        values = {k: float(v) for k, v in row.items()
                  if "," in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
        key = _pick_metric(task, values, self._metric_for(task))
        detail = {k.removesuffix(",none"): v for k, v in values.items()}
        if (n := out.get("n-samples", {}).get(task, {}).get("effective")) is not None:
            detail["n"] = float(n)
        if (shots := out.get("n-shot", {}).get(task)) is not None:
            detail["num_fewshot"] = float(shots)
        return values[key], detail


def _limit_count(n: int, limit: int | float) -> int:
    """How many of ``n`` documents the harness's ``limit`` keeps (its rule: a float < 1 is a share)."""
    return math.ceil(n * limit) if limit < 1.0 else int(limit)


def _pick_metric(task: str, values: Mapping[str, float], metric: str | None) -> str:
    """The key in ``values`` (``"name,filter"``) that holds ``task``'s score."""
    usable = [k for k in values if "_stderr," not in k]
    if metric is not None:
        if "," in metric:
            if metric in values:
                return metric
        else:
            if f"{metric},none" in values:
                return f"{metric},none"
            if matches := [k for k in usable if k.split(",", 1)[0] == metric]:
                return matches[0]
        raise EvaluationError(
            f"task {task} reports no metric {metric!r}; it reports {', '.join(usable) or 'nothing'} "
            f"— set metrics={{{task!r}: ...}}"
        )
    for name in _FALLBACK_METRICS:
        if (k := _pick_metric_or_none(values, name)) is not None:
            return k
    if usable:
        return usable[0]
    raise EvaluationError(f"task {task} reported no numeric metric")


def _pick_metric_or_none(values: Mapping[str, float], name: str) -> str | None:
    if f"{name},none" in values:
        return f"{name},none"
    return next((k for k in values if k.split(",", 1)[0] == name), None)


def _index(path: Path) -> dict[str, Path]:
    """Task name -> YAML file for the tasks defined at ``path`` (a folder or one YAML file)."""
    from lm_eval.tasks._index import Kind, TaskIndex

    if path.is_dir():
        entries = TaskIndex.build([path])
    else:
        entry = TaskIndex.entry_from_path(path)
        entries = {entry.name: entry} if entry else {}
    return {name: Path(e.yaml_path) for name, e in entries.items()
            if e.kind in (Kind.TASK, Kind.PY_TASK) and e.yaml_path is not None}


def _task_digest(yaml_file: Path) -> str:
    """SHA-256 of a task's YAML and of the local data files it names (so edits change the id)."""
    import yaml

    h = hashlib.sha256(yaml_file.read_bytes())
    try:
        cfg = yaml.load(yaml_file.read_text(encoding="utf-8"), Loader=_tolerant_loader()) or {}
    except yaml.YAMLError:
        cfg = {}
    data_files = (cfg.get("dataset_kwargs") or {}).get("data_files") if isinstance(cfg, dict) else None
    for f in sorted(_paths_in(data_files)):
        p = Path(f).expanduser()
        if not p.is_absolute():
            p = Path.cwd() / p
        if p.is_file():
            h.update(f.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _paths_in(x: Any) -> list[str]:
    if isinstance(x, str):
        return [x]
    if isinstance(x, Mapping):
        return [p for v in x.values() for p in _paths_in(v)]
    if isinstance(x, (list, tuple)):
        return [p for v in x for p in _paths_in(v)]
    return []


def _tolerant_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """Reads harness YAMLs without resolving ``!function`` tags."""

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return Loader


def _lm_eval_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None


def _free_gpu() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
