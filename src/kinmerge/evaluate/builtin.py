"""The builtin evaluator: local JSONL tasks, exact-match generation and log-likelihood choice.

For each task folder file (``kinmerge.evaluate.tasks``):

- **generate** tasks (no ``choices``): greedy decoding, batched and left-padded with the KV
  cache, stopping at end of sequence or a newline; the score is exact match of the stripped
  output against ``answer``. ``max_new_tokens`` defaults to the longest answer (in tokens) + 1,
  so an answer that runs on is caught rather than cut off into a false match.
- **choice** tasks: the log-likelihood of each choice given the prompt, teacher-forced; the
  argmax is the prediction (lm-evaluation-harness ``acc``).

Before anything is scored, every example is checked against the model at hand
(``kinmerge.evaluate.checks.check_examples``): a line the tokenizer cannot represent, an answer
that tokenizes to nothing, choices that tokenize the same, or a prompt with its answer longer
than the model's positions would give a score that means nothing, so the run stops with the
file and line.

Every task also reports ``mean_loglik``: the mean over examples of log p(answer | prompt),
summed over the answer's tokens. Scores do not depend on ``batch_size`` beyond float rounding, so
it is not part of ``settings()``. On the CPU they are the same bits on AVX2 and AVX-512 and for
any thread count (``kinmerge.evaluate.fixed_order``); a GPU ``device`` is part of ``settings()``,
since its kernels round differently (docs/distributed.md).

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kinmerge._json import StrictInputError, number
from kinmerge.errors import ConfigError, EvaluationError
from kinmerge.evaluate import EvalResult
from kinmerge.evaluate.checks import check_examples, encode_pair, max_positions
from kinmerge.evaluate.checks import pad_id as pad_id_of
from kinmerge.evaluate.fixed_order import fixed_order_attention, log_softmax
from kinmerge.evaluate.tasks import Task, load_tasks, split_task
from kinmerge.progress import quiet_transformers

if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = ["BuiltinEvaluator", "adapter_base_folder", "evaluate_loaded", "load_model", "quiet_transformers"]

_DTYPES = ("float32", "bfloat16", "float16")
_SMALL_MODEL = 20_000_000  # parameters; below this, one CPU thread is fastest


class BuiltinEvaluator:
    """Score a local Hugging Face causal LM on a folder of JSONL tasks.

    Args:
        tasks_dir: folder of ``<task>.jsonl`` files (format: ``docs/tasks.md``).
        limit: use only the first ``limit`` examples of each task.
        batch_size: sequences per forward pass.
        max_new_tokens: cap on generated tokens; default: longest answer + 1 per task.
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        tasks: evaluate only these task names (default: every file in ``tasks_dir``).
        dtype: dtype the model is run in (``"float32"`` default; weights saved in 16 bits are
            upcast, which is both faster and more exact on CPU).
        threads: torch CPU threads while evaluating. Default: 1 for a model under 20M
            parameters on CPU (its small matrix products run fastest, and unaffected by other
            busy processes, on one core), torch's own setting otherwise.
        progress: show a progress bar on stderr.
        sample_seed: score a seeded random sample of each task's examples (``limit`` of them, or
            all in a seeded order) instead of the first ones: another held-out sample is another
            testbed, which is how a study's seeds vary a deterministic strategy (greedy).
        split: ``"all"`` (default), or one part of every task's seeded selection / held-out
            split (``"selection"``, ``"heldout"``; ``kinmerge.evaluate.tasks.split_task``): an
            evolution run chooses on one and reports the other. ``limit`` and ``sample_seed``
            apply within the part.
        heldout_fraction: the share of each task's examples held out (default 0.5).
        split_seed: seeds the split (independent of ``sample_seed``).

    Raises:
        EvaluationError: if the task folder or a task file is invalid (names file and line).
        ConfigError: if ``limit``, ``batch_size``, ``max_new_tokens`` or ``dtype`` is invalid.

    Example:
        >>> from kinmerge.sources import zoo_path
        >>> ev = BuiltinEvaluator(zoo_path("zoo:tasks"), tasks=["add"], limit=100)
        >>> ev.evaluate(zoo_path("zoo:add")).scores["add"]
        0.27
    """

    name = "builtin"

    def __init__(self, tasks_dir: str | os.PathLike[str], limit: int | None = None,
                 batch_size: int = 64, max_new_tokens: int | None = None, device: str = "cpu",
                 tasks: Sequence[str] | None = None, dtype: str = "float32",
                 threads: int | None = None, progress: bool = True, sample_seed: int | None = None,
                 split: str = "all", heldout_fraction: float = 0.5, split_seed: int = 0) -> None:
        # Checked here, at construction, so a config's --dry-run refuses what the real run would
        # crash on (``limit: 2.5``, ``batch_size: true``, ``tasks: []``).
        try:
            limit = None if limit is None else int(number(limit, "limit", integer=True, low=1))
            batch_size = int(number(batch_size, "batch_size", integer=True, low=1))
            if max_new_tokens is not None:
                max_new_tokens = int(number(max_new_tokens, "max_new_tokens", integer=True, low=1))
            if threads is not None:
                threads = int(number(threads, "threads", integer=True, low=1))
            if sample_seed is not None:
                sample_seed = int(number(sample_seed, "sample_seed", integer=True, low=0))
        except StrictInputError as exc:
            raise ConfigError(str(exc)) from None
        if tasks is not None and (isinstance(tasks, str) or not tasks):
            raise ConfigError(f"tasks must be a non-empty list of task names, got {tasks!r}; leave it out to "
                              "evaluate every task in tasks_dir")
        if dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.tasks_dir = Path(tasks_dir)
        self.tasks = load_tasks(self.tasks_dir, tasks)
        self.split, self.heldout_fraction, self.split_seed = split, heldout_fraction, split_seed
        self.tasks = {name: split_task(t, split, heldout_fraction, split_seed) for name, t in self.tasks.items()}
        self.sample_seed = sample_seed
        if sample_seed is not None:
            self.tasks = {name: _shuffled(t, sample_seed) for name, t in self.tasks.items()}
        self.limit, self.batch_size, self.max_new_tokens = limit, batch_size, max_new_tokens
        self.device, self.dtype, self.threads, self.progress = device, dtype, threads, progress

    def settings(self) -> dict[str, Any]:
        """Everything that changes the scores: task contents (sha256), limit, lengths, dtype."""
        return {
            "evaluator": self.name,
            "tasks": {name: t.sha256 for name, t in self.tasks.items()},
            "limit": self.limit,
            "max_new_tokens": self.max_new_tokens,
            "dtype": self.dtype,
            **({"sample_seed": self.sample_seed} if self.sample_seed is not None else {}),
            **({"split": self.split, "heldout_fraction": self.heldout_fraction, "split_seed": self.split_seed}
               if self.split != "all" else {}),
            # CPU scores are the same bits on every x86 CPU (fixed_order); a GPU's are not
            **({"device": str(self.device)} if not str(self.device).startswith("cpu") else {}),
        }

    #: examples ``[start, stop)`` of each task can be scored on their own (racing, see evolve.racing)
    supports_parts = True

    def evaluate(self, model_dir: Path, part: tuple[int, int] | None = None) -> EvalResult:
        """Load ``model_dir`` and score it on every task (``part``: only examples ``[start, stop)``
        of each task's evaluation set; scores are those the full set would give these examples).

        Raises:
            EvaluationError: if the folder is missing or transformers cannot load it.
        """
        model, tokenizer = load_model(model_dir, device=self.device, dtype=self.dtype)
        threads = self.threads
        on_cpu = str(self.device).startswith("cpu")
        if threads is None and on_cpu and sum(p.numel() for p in model.parameters()) < _SMALL_MODEL:
            threads = 1
        with _torch_threads(threads):
            return evaluate_loaded(model, tokenizer, self.tasks, limit=self.limit, part=part,
                                   batch_size=self.batch_size,
                                   max_new_tokens=self.max_new_tokens,
                                   progress=self.progress,
                                   label=Path(model_dir).name)


def _shuffled(task: Task, seed: int) -> Task:
    """The task with its examples in a seeded order (the same on every machine and Python)."""
    import random

    order = list(range(len(task.examples)))
    random.Random(f"{seed}:{task.name}").shuffle(order)
    return replace(task, examples=tuple(task.examples[i] for i in order))


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    import torch

    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_model(model_dir: str | os.PathLike[str], device: str = "cpu",
               dtype: str = "float32") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local folder, in eval mode.

    The weights are checked against ``config.json`` first (every tensor the config's model has
    must have the shape the config gives it), and a load that leaves any weight at its random
    initialisation is refused: either would score a model that is not the one in the folder.

    Raises:
        EvaluationError: if the folder is missing, a tensor's shape does not match the config,
            weights are missing, or the model/tokenizer cannot be loaded.
        CorruptFileError: ``config.json`` or a weights header is malformed.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if (adapter := adapter_folder(model_dir)) is not None:
        return _load_adapter(adapter, device, dtype)
    if not (model_dir / "config.json").is_file():
        raise EvaluationError(f"{model_dir}: not a model folder (no config.json); expected a "
                              f"local Hugging Face model saved with save_pretrained")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # transformers raises many types; the user needs one line
        raise EvaluationError(f"{model_dir}: cannot load tokenizer ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from None
    _check_weights_fit_config(model_dir)
    try:
        with quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                               output_loading_info=True)
    except Exception as exc:
        raise EvaluationError(f"{model_dir}: cannot load model ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise EvaluationError(
            f"{model_dir}: the weights lack {len(missing)} tensor(s) the model in config.json needs "
            f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); transformers would leave them "
            "random — re-save the model, or check that the config belongs to these weights")
    if str(device).startswith("cuda") and not torch.cuda.is_available():  # else torch's AssertionError
        given = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise EvaluationError(f"device {device} but torch sees no CUDA device on {os.uname().nodename} "
                              f"(CUDA_VISIBLE_DEVICES={given}, torch {torch.__version__}); use device: cpu or "
                              "install a CUDA build of torch")
    model.to(device)
    model.eval()
    return model, tokenizer


def adapter_folder(path: Path) -> Path | None:
    """``path`` (or the folder of its ``adapter_model.safetensors``) when it is a PEFT LoRA adapter."""
    from kinmerge.sources import ADAPTER_WEIGHTS, is_adapter_folder

    folder = path.parent if path.name == ADAPTER_WEIGHTS else path
    return folder if is_adapter_folder(folder) else None


def adapter_base_folder(adapter: Path) -> Path:
    """The local folder of the base a LoRA adapter names (``base_model_name_or_path``: a folder, a
    hub id, ``zoo:base``), checked to fit the adapter.

    Raises:
        EvaluationError: the adapter names no base, or one that cannot be found.
        SourceError, CorruptFileError, ShapeMismatchError, MissingTensorError: a damaged adapter,
            or a base it does not fit (named by tensor).
    """
    from kinmerge.errors import SourceError
    from kinmerge.sources import LoraSource, open_model, resolve_ref

    with open_model(adapter, adapters=True) as src:
        assert isinstance(src, LoraSource)
        named = src.base_ref
        if named is None:
            raise EvaluationError(f"{adapter}: a LoRA adapter whose adapter_config.json names no base "
                                  "(base_model_name_or_path is empty); set it to the base's folder or hub id")
        try:
            base = resolve_ref(named, want="folder").path
        except SourceError as exc:
            raise EvaluationError(f"{adapter}: the base it names ({named}) is not here: {exc} — fix "
                                  "base_model_name_or_path in its adapter_config.json") from None
        assert base is not None
        with open_model(base) as base_src:
            src.check_base(base_src, str(adapter), named)
    return base


def _load_adapter(adapter: Path, device: str, dtype: str) -> tuple[Any, Any]:
    """Base + LoRA adapter as one model: the base loaded (and checked) as any model, the adapter
    applied by peft and merged into it (``merge_and_unload``), so scoring runs at the base's speed."""
    base = adapter_base_folder(adapter)
    model, tokenizer = load_model(base, device=device, dtype=dtype)
    try:
        from peft import PeftModel

        with quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's deprecation notices name transformers internals
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except ImportError:
        from kinmerge.errors import install_hint

        raise EvaluationError(f"{adapter}: evaluating a LoRA adapter needs peft: {install_hint('merge')}") from None
    except Exception as exc:  # peft raises many types; the user needs one line
        raise EvaluationError(f"{adapter}: cannot apply the adapter to {base} ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from None
    if (adapter / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(adapter)
    model.eval()
    return model, tokenizer


def _check_weights_fit_config(model_dir: Path) -> None:
    """Every tensor in the folder's weights has the shape its ``config.json`` gives it.

    The model is built from the config on torch's ``meta`` device (no memory, milliseconds) and
    compared with the weight headers, so a folder whose weights come from another size of model
    gets one line naming the tensor, before transformers loads anything.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from kinmerge.errors import PickleNotAllowedError
    from kinmerge.sources import open_model, read_config

    config = read_config(model_dir)  # strict: a malformed config.json is named here
    try:
        with open_model(model_dir) as src:  # a damaged weights header is named here
            have = {name: info.shape for name, info in src.tensors.items()}
    except PickleNotAllowedError:  # pickled weights are not opened here: transformers checks them
        return
    try:
        with quiet_transformers(), torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    except Exception:  # transformers will say why when it loads the folder
        return
    for name, tensor in skeleton.state_dict().items():
        got = have.get(name)
        if got is not None and got != tuple(tensor.shape):
            sizes = ", ".join(f"{k} {config[k]}" for k in ("hidden_size", "intermediate_size", "vocab_size")
                              if k in config)
            raise EvaluationError(
                f"{model_dir}: tensor {name} is {list(got)} in the weights but {list(tensor.shape)} in the model "
                f"config.json describes ({sizes}); the weights and config.json are of different models")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def evaluate_loaded(model: Any, tokenizer: Any, tasks: dict[str, Task], *,
                    limit: int | None = None, part: tuple[int, int] | None = None, batch_size: int = 64,
                    max_new_tokens: int | None = None, progress: bool = False,
                    label: str = "model") -> EvalResult:
    """Score an already-loaded model and tokenizer on ``tasks`` (what ``evaluate`` runs).

    The zoo builder calls this on the model it is training, so its accuracy checks and the
    evaluator give the same numbers.
    """
    import torch

    torch.manual_seed(0)
    was_training = model.training
    model.eval()
    pad_id = pad_id_of(tokenizer)
    full = {name: list(task.examples[:limit] if limit else task.examples) for name, task in tasks.items()}
    plan = full if part is None else {name: exs[part[0]:part[1]] for name, exs in full.items()}
    plan = {name: exs for name, exs in plan.items() if exs}  # a part past a short task's end
    # A part is scored as the whole set would score it: generation length from the whole set.
    lengths = {name: max_new_tokens if max_new_tokens is not None or tasks[name].mode == "choice" or part is None
               else max(len(encode_pair(tokenizer, ex.prompt, ex.answer)[1]) for ex in full[name]) + 1
               for name in plan}
    for name, examples in plan.items():
        check_examples(model, tokenizer, tasks[name], examples, max_new_tokens=max_new_tokens, label=label)
    n_batches = 0
    for name, examples in plan.items():
        if tasks[name].mode == "choice":  # one log-likelihood pass over every choice
            n_batches += -(-sum(len(ex.choices) for ex in examples) // batch_size)
        else:  # one generation pass, one log-likelihood pass
            n_batches += 2 * -(-len(examples) // batch_size)
    scores: dict[str, float] = {}
    details: dict[str, dict[str, float]] = {}
    try:
        # fixed_order_attention: the same bits on AVX2 and AVX-512 CPUs (issue 18)
        with torch.inference_mode(), fixed_order_attention(model), \
                _progress(progress, n_batches, label) as advance:
            for name, examples in plan.items():
                advance(0, name)
                step = functools.partial(advance, 1, name)
                if tasks[name].mode == "choice":
                    acc, mean_ll = _score_choice(model, tokenizer, examples, pad_id, batch_size,
                                                 step)
                else:
                    acc, mean_ll = _score_generate(model, tokenizer, examples, pad_id,
                                                   batch_size, lengths[name], step)
                scores[name] = acc
                details[name] = {"accuracy": acc, "mean_loglik": mean_ll,
                                 "n": float(len(examples)), "of": float(len(full[name]))}
    finally:
        model.train(was_training)
    return EvalResult(scores=scores, details=details)


@contextmanager
def _progress(enabled: bool, total: int, label: str) -> Iterator[Callable[[int, str], None]]:
    if not enabled:
        yield lambda n, name: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        handle = bar.add_task(label, total=total)

        def advance(n: int, name: str) -> None:
            bar.update(handle, advance=n, description=f"{label}: {name}")

        yield advance


def _logliks(model: Any, pairs: list[tuple[list[int], list[int]]], pad_id: int,
             batch_size: int, step: Callable[[], None]) -> list[float]:
    """Sum of log p(continuation | context) for each (context ids, continuation ids) pair."""
    import torch

    limit = max_positions(model)
    seqs = []
    for ctx, cont in pairs:
        ids = ctx + cont
        if limit is not None and len(ids) > limit + 1:
            ids = ids[-(limit + 1):]  # keep the continuation, drop the oldest context
        seqs.append((ids, len(cont)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    out = [0.0] * len(seqs)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(seqs[i][0]) for i in idx) - 1
        inputs = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = seqs[i][0][:-1]
            inputs[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(idx):
            ids, n_cont = seqs[i]
            end = len(ids) - 1
            part = log_softmax(logits[row, end - n_cont:end].float())  # torch's differs by vector width
            target = torch.tensor(ids[-n_cont:], device=part.device)
            out[i] = float(part.gather(1, target[:, None]).sum())
        step()
    return out


def _score_choice(model: Any, tokenizer: Any, examples: list[Any], pad_id: int,
                  batch_size: int, step: Callable[[], None]) -> tuple[float, float]:
    pairs, owners = [], []
    for k, ex in enumerate(examples):
        for choice in ex.choices:
            pairs.append(encode_pair(tokenizer, ex.prompt, choice))
            owners.append(k)
    lls = _logliks(model, pairs, pad_id, batch_size, step)
    correct, answer_ll, pos = 0, 0.0, 0
    for ex in examples:
        chunk = lls[pos:pos + len(ex.choices)]
        pos += len(ex.choices)
        best = max(range(len(chunk)), key=lambda j: chunk[j])  # first wins a tie
        correct += ex.choices[best] == ex.answer
        answer_ll += chunk[ex.choices.index(ex.answer)]
    return correct / len(examples), answer_ll / len(examples)


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(s) for s in source)
    newline = tokenizer("\n", add_special_tokens=False).input_ids
    if len(newline) == 1 and newline[0] != tokenizer.unk_token_id:
        ids.add(int(newline[0]))
    return sorted(ids)


def _score_generate(model: Any, tokenizer: Any, examples: list[Any], pad_id: int,
                    batch_size: int, max_new_tokens: int | None,
                    step: Callable[[], None]) -> tuple[float, float]:
    import torch
    from transformers import GenerationConfig

    pairs = [encode_pair(tokenizer, ex.prompt, ex.answer) for ex in examples]
    if max_new_tokens is None:
        max_new_tokens = max(len(cont) for _, cont in pairs) + 1
    stop = _stop_ids(model, tokenizer)
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                              eos_token_id=stop or None, pad_token_id=pad_id)
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: -len(pairs[i][0]))
    outputs = [""] * len(examples)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(pairs[i][0]) for i in idx)
        inputs = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # left padding: every prompt ends at the last column
            ctx = pairs[i][0]
            inputs[row, width - len(ctx):] = torch.tensor(ctx)
            mask[row, width - len(ctx):] = 1
        generated = model.generate(input_ids=inputs.to(device), attention_mask=mask.to(device),
                                   generation_config=config)
        new = generated[:, width:].tolist()
        for row, i in enumerate(idx):
            tokens = new[row]
            for s in range(len(tokens)):
                if tokens[s] in stop:
                    tokens = tokens[:s]
                    break
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            outputs[i] = text.split("\n", 1)[0]
        step()
    correct = sum(out.strip() == ex.answer.strip() for out, ex in zip(outputs, examples))
    lls = _logliks(model, pairs, pad_id, batch_size, step)
    return correct / len(examples), sum(lls) / len(lls)
