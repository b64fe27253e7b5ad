"""The tiny model zoo: a Llama-architecture family trained from scratch on CPU.

A zoo is one **base** model pre-trained on a mixture of small synthetic character tasks, and one
**specialist** per task fine-tuned from that base on its task alone, plus the held-out task
data in the builtin evaluator's format. It is a real Hugging Face family (``LlamaForCausalLM``,
a character-level ``PreTrainedTokenizerFast``, fp16 safetensors), so kinship, mergekit merges
and evaluation run on it exactly as on a hub model, in seconds.

Layout of a zoo folder::

    DIR/base/                 config.json, model.safetensors, tokenizer files
    DIR/specialists/<task>/   same, fine-tuned from base on <task>
    DIR/tasks/<task>.jsonl    held-out evaluation split (docs/tasks.md)
    DIR/zoo.json              manifest: models, tasks, build settings, scores, build time

Presets: ``"tiny"`` (hidden 128, 4 layers, ~1M parameters, six tasks; the base trains until
its held-out average exact match reaches ``base_target``) is the shipped demo zoo;
``"micro"`` (hidden 32, 2 layers, three tasks, fixed short schedule) builds in seconds for
tests. Both run the same code.

torch, transformers and tokenizers are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from kinmerge.errors import ConfigError, SourceError
from kinmerge.evaluate.tasks import Example, load_tasks, write_task

__all__ = ["PRESETS", "TASKS", "Zoo", "ZooPreset", "build_tokenizer", "build_zoo", "load_zoo",
           "make_examples", "shipped_zoo"]

MANIFEST = "zoo.json"
FORMAT_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Tokenizer: one token per character.

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
CHARACTERS = " " + string.digits + string.ascii_lowercase + "+-=:?,.>|*()"


def build_tokenizer(model_max_length: int = 64) -> Any:
    """The zoo's character-level tokenizer as a ``PreTrainedTokenizerFast``.

    Every character of :data:`CHARACTERS` is one token; ``<bos>`` is prepended on encode;
    padding is on the left (for batched generation). Unknown characters become ``<unk>``.

    Example:
        >>> tok = build_tokenizer()  # doctest: +SKIP
        >>> tok.decode(tok("add 2+3=").input_ids, skip_special_tokens=True)  # doctest: +SKIP
        'add 2+3='
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *CHARACTERS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", model_max_length=model_max_length, clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------------------------------------
# Synthetic tasks: each maps a random generator to one (prompt, answer) pair.

def _word(rng: random.Random, lo: int, hi: int, letters: str = string.ascii_lowercase) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(lo, hi)))


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"add {a}+{b}=", str(a + b)


def _reverse(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 3, 6)
    return f"rev {w}=", w[::-1]


def _sort(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 3, 6)
    return f"sort {w}=", "".join(sorted(w))


def _caesar(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 3, 6)
    shifted = "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in w)
    return f"rot {w}=", shifted


def _count(rng: random.Random) -> tuple[str, str]:
    s = _word(rng, 3, 8, "abcde")
    c = rng.choice("abcde")
    return f"cnt {c} {s}=", str(s.count(c))


def _double(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 2, 5)
    return f"dbl {w}=", "".join(c + c for c in w)


#: task name -> generator(rng) -> (prompt, answer). Prompts end in "=", answers are short.
TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": _add, "reverse": _reverse, "sort": _sort,
    "caesar": _caesar, "count": _count, "double": _double,
}


def make_examples(task: str, n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()
                  ) -> list[Example]:
    """``n`` distinct examples of ``task`` from a fixed seed, skipping prompts in ``exclude``.

    Raises:
        ConfigError: if ``task`` is not one of :data:`TASKS`.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown zoo task {task!r}; choose from {', '.join(TASKS)}")
    rng = random.Random(f"{task}:{seed}")
    seen: set[str] = set(exclude)
    out: list[Example] = []
    for _ in range(n * 1000):
        prompt, answer = TASKS[task](rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append(Example(prompt, answer))
        if len(out) == n:
            return out
    raise ConfigError(f"task {task!r} cannot supply {n} distinct examples")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Presets


@dataclass(frozen=True)
class ZooPreset:
    """Every setting of a zoo build; saved in ``zoo.json`` so a build can be reproduced."""

    name: str
    tasks: tuple[str, ...]
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int = 64
    batch_size: int = 64
    eval_size: int = 200          # held-out examples per task written to tasks/
    check_size: int = 64          # examples per task for the base's accuracy checks
    base_lr: float = 3e-3
    base_warmup: int = 50
    base_target: float | None = 0.40  # stop pre-training at this held-out average exact match
    base_mixture: dict[str, int] | None = None  # task -> share of pre-training (default 1 each)
    base_check_every: int = 50
    base_max_steps: int = 3000
    specialist_steps: int = 200
    specialist_lr: float = 3e-4
    specialist_warmup: int = 10
    weight_decay: float = 0.0
    dtype: str = "float16"        # base and specialists are saved in this same dtype
    threads: int | None = 1       # torch CPU threads (a ~1M model trains fastest on one core)
    workers: int | None = None    # processes fine-tuning specialists (None: one per CPU)


PRESETS: dict[str, ZooPreset] = {
    # Pre-training leans on the slow-to-learn tasks so the base is not all caesar/double; the
    # specialists' low learning rate keeps forgetting small, so 50/50 merges of two
    # specialists beat their parents' mean (checked by tests/test_zoo.py).
    "tiny": ZooPreset(name="tiny", tasks=tuple(TASKS), hidden_size=128, num_layers=4,
                      num_heads=4, intermediate_size=512,
                      base_mixture={"add": 3, "count": 2, "sort": 2}, specialist_lr=3e-4),
    "micro": ZooPreset(name="micro", tasks=("add", "reverse", "caesar"), hidden_size=32,
                       num_layers=2, num_heads=2, intermediate_size=64, batch_size=32,
                       eval_size=32, check_size=32, base_lr=1e-2, base_warmup=5,
                       base_target=None, base_max_steps=40, specialist_steps=20,
                       specialist_lr=3e-3, specialist_warmup=2, workers=1),
}


# ---------------------------------------------------------------------------------------------
# The zoo handle


@dataclass(frozen=True)
class Zoo:
    """Paths of a built zoo, read from its ``zoo.json``."""

    root: Path
    base: Path
    specialists: dict[str, Path]
    tasks_dir: Path
    manifest: dict[str, Any] = field(repr=False)

    def task_of(self, specialist: str) -> str:
        """The task the specialist was fine-tuned on."""
        return str(self.manifest["specialists"][specialist]["task"])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (absolute paths)."""
        return {"root": str(self.root), "base": str(self.base),
                "specialists": {k: str(v) for k, v in self.specialists.items()},
                "tasks_dir": str(self.tasks_dir), "tasks": list(self.manifest.get("tasks", [])),
                "preset": self.manifest.get("preset"), "scores": self.manifest.get("scores", {})}


def load_zoo(root: str | os.PathLike[str]) -> Zoo:
    """Open the zoo at ``root`` through its ``zoo.json`` manifest.

    Raises:
        SourceError: if ``root`` has no readable ``zoo.json`` or a listed folder is missing.

    Example:
        >>> zoo = load_zoo("my-zoo")  # doctest: +SKIP
        >>> sorted(zoo.specialists)  # doctest: +SKIP
        ['add', 'caesar', 'count', 'double', 'reverse', 'sort']
    """
    root = Path(root).resolve()
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{path}: no zoo manifest; build a zoo with "
                          f"`kinmerge zoo build {root}`") from None
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: unreadable zoo manifest ({exc})") from None
    base = root / manifest["base"]
    specialists = {name: root / spec["path"] for name, spec in manifest["specialists"].items()}
    tasks_dir = root / manifest["tasks_dir"]
    for p in (base, tasks_dir, *specialists.values()):
        if not p.is_dir():
            raise SourceError(f"{p}: listed in {path} but missing; rebuild the zoo")
    return Zoo(root=root, base=base, specialists=specialists, tasks_dir=tasks_dir,
               manifest=manifest)


def shipped_zoo() -> Zoo:
    """The tiny zoo shipped inside the package (``kinmerge/data/zoo``).

    Raises:
        SourceError: if the package was installed without its data files.

    Example:
        >>> zoo = shipped_zoo()
        >>> zoo.base.name
        'base'
    """
    root = Path(str(resources.files("kinmerge") / "data" / "zoo"))
    return load_zoo(root)


# ---------------------------------------------------------------------------------------------
# Training


@contextmanager
def _torch_state(threads: int | None) -> Iterator[None]:
    """Deterministic algorithms and a thread count for the build; restored afterwards."""
    import torch

    before_threads = torch.get_num_threads()
    before_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before_det)
        torch.set_num_threads(before_threads)


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


def _batch(tokenizer: Any, examples: list[tuple[str, str]]) -> dict[str, Any]:
    """Right-padded training batch; loss only on the answer and the closing ``<eos>``."""
    import torch

    rows = []
    for prompt, answer in examples:
        ctx = tokenizer(prompt).input_ids
        ans = [*tokenizer(answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        rows.append((ctx + ans, [-100] * len(ctx) + ans))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (seq, lab) in enumerate(rows):
        ids[r, : len(seq)] = torch.tensor(seq)
        labels[r, : len(lab)] = torch.tensor(lab)
        mask[r, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class _Sampler:
    """Endless training examples for a set of tasks, never a held-out prompt.

    ``weights`` (task -> whole number, default 1) sets each task's share of every batch.
    """

    def __init__(self, tasks: tuple[str, ...], seed: int, exclude: set[str],
                 weights: dict[str, int] | None = None) -> None:
        self.cycle = [t for t in tasks for _ in range((weights or {}).get(t, 1))]
        self.rng = random.Random(f"train:{seed}:{','.join(tasks)}")
        self.exclude = exclude

    def draw(self, n: int) -> list[tuple[str, str]]:
        out = []
        while len(out) < n:
            prompt, answer = TASKS[self.cycle[len(out) % len(self.cycle)]](self.rng)
            if prompt not in self.exclude:
                out.append((prompt, answer))
        self.rng.shuffle(out)
        return out


def _train(model: Any, tokenizer: Any, sampler: _Sampler, *, lr: float, warmup: int,
           max_steps: int, batch_size: int, weight_decay: float, decay: bool,
           check: Callable[[int], bool] | None = None, check_every: int = 50,
           log: Callable[[str], None] = lambda s: None) -> int:
    """AdamW on the answer tokens; stops after ``max_steps`` or when ``check(step)`` is true.

    With ``decay`` the learning rate falls linearly to zero at ``max_steps`` after warm-up;
    without, it stays flat (pre-training stops on an accuracy target, not a schedule).
    Returns the number of steps taken.
    """
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98),
                            weight_decay=weight_decay)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not decay:
            return 1.0
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    step = 0
    while step < max_steps:
        batch = _batch(tokenizer, sampler.draw(batch_size))
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        if step % check_every == 0:
            log(f"step {step}: loss {loss.item():.3f}")
            if check is not None and check(step):
                break
    model.eval()
    return step


def _save(model: Any, tokenizer: Any, out: Path, dtype: str, meta: dict[str, Any]) -> None:
    """Save in ``dtype`` (safetensors) with the tokenizer; the in-memory model is not changed."""
    import copy

    import torch

    from kinmerge.evaluate.builtin import quiet_transformers

    out.mkdir(parents=True)
    half = copy.deepcopy(model).to(getattr(torch, dtype))
    half.config.kinmerge_zoo = meta  # the build recipe travels with every checkpoint
    with quiet_transformers():
        half.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # transformers 5 writes its own backend class name; this one loads on 4.x and 5.x alike.
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text(encoding="utf-8"))
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    if not (out / "model.safetensors").is_file():  # pragma: no cover - transformers < 4.35
        raise ConfigError(f"{out}: transformers did not write model.safetensors")


# ---------------------------------------------------------------------------------------------
# Build


def _workers(preset: ZooPreset) -> int:
    if preset.workers is not None:
        return max(1, min(preset.workers, len(preset.tasks)))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, len(preset.tasks)))


def _specialist(tmp: str, preset: ZooPreset, task: str, index: int,
                seed: int) -> tuple[str, float, dict[str, float]]:
    """Fine-tune, save and score one specialist (in a worker process or inline)."""
    import torch

    from kinmerge.evaluate.builtin import evaluate_loaded, load_model

    started = time.perf_counter()
    root = Path(tmp)
    with _torch_state(preset.threads):
        tokenizer = build_tokenizer(preset.max_positions)
        tasks = load_tasks(root / "tasks")
        exclude = {ex.prompt for t in tasks.values() for ex in t.examples}
        model, _ = load_model(root / "base")  # the saved 16-bit weights, upcast to float32
        model.train()
        torch.manual_seed(seed * 1000 + index + 1)
        _train(model, tokenizer, _Sampler((task,), seed + index + 1, exclude),
               lr=preset.specialist_lr, warmup=preset.specialist_warmup,
               max_steps=preset.specialist_steps, batch_size=preset.batch_size,
               weight_decay=preset.weight_decay, decay=True)
        out = root / "specialists" / task
        _save(model, tokenizer, out, preset.dtype,
              {"preset": preset.name, "seed": seed, "role": "specialist", "task": task,
               "steps": preset.specialist_steps})
        seconds = time.perf_counter() - started
        saved, _ = load_model(out)
        scores = evaluate_loaded(saved, tokenizer, tasks).scores
    return task, seconds, scores


def build_zoo(root: str | os.PathLike[str], preset: str | ZooPreset = "tiny", seed: int = 0,
              overwrite: bool = False, log: Callable[[str], None] | None = None,
              **overrides: Any) -> Zoo:
    """Train a zoo from scratch into ``root`` (built in a temp folder, then renamed into place).

    Args:
        root: the zoo folder to create.
        preset: ``"tiny"`` (the demo zoo, ~1M parameters per model), ``"micro"`` (seconds, for
            tests) or a :class:`ZooPreset`.
        seed: seeds the data, the initial weights and every fine-tune.
        overwrite: replace an existing ``root``.
        log: called with one progress line at a time (default: print to stderr).
        **overrides: replace preset fields, e.g. ``specialist_steps=100``.

    Returns:
        The built zoo.

    Raises:
        ConfigError: if ``root`` exists and ``overwrite`` is false, the preset is unknown, or
            an override names no preset field.

    Example:
        >>> zoo = build_zoo("/tmp/micro-zoo", preset="micro", overwrite=True)  # doctest: +SKIP
        >>> sorted(zoo.specialists)  # doctest: +SKIP
        ['add', 'caesar', 'reverse']
    """
    import torch
    import transformers

    from kinmerge.evaluate.builtin import evaluate_loaded, load_model

    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ConfigError(f"unknown zoo preset {preset!r}; choose from {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    try:
        preset = replace(preset, **overrides)
    except TypeError as exc:
        raise ConfigError(f"bad zoo setting: {exc}") from None
    for task in preset.tasks:
        if task not in TASKS:
            raise ConfigError(f"unknown zoo task {task!r}; choose from {', '.join(TASKS)}")
    root = Path(root).resolve()
    if root.exists() and not overwrite:
        raise ConfigError(f"{root} already exists; choose a new folder or pass overwrite "
                          f"(--force on the command line)")
    if log is None:
        def log(line: str) -> None:
            print(f"[zoo] {line}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.building-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
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
            base_steps = _train(
                model, tokenizer, _Sampler(preset.tasks, seed, exclude, preset.base_mixture),
                lr=preset.base_lr,
                warmup=preset.base_warmup, max_steps=preset.base_max_steps,
                batch_size=preset.batch_size, weight_decay=preset.weight_decay, decay=False,
                check=reached if preset.base_target is not None else None,
                check_every=preset.base_check_every, log=log)
            base_seconds = time.perf_counter() - t0
            if preset.base_target is not None and (not history
                                                    or history[-1]["average"] < preset.base_target):
                log(f"base stopped at the step cap ({base_steps}) below target "
                    f"{preset.base_target}")
            _save(model, tokenizer, tmp / "base", preset.dtype,
                  {"preset": preset.name, "seed": seed, "role": "base", "steps": base_steps})
            # Scores of the saved (16-bit) checkpoints, as any user of the zoo will see them.
            base_model, _ = load_model(tmp / "base")
            scores = {"base": evaluate_loaded(base_model, tokenizer, tasks).scores}
            del base_model

        # Specialists are independent: one per worker process (one torch thread each). Each
        # starts from the base as saved, so a delta (specialist - base) is fine-tuning only,
        # and the result does not depend on the number of workers.
        t0 = time.perf_counter()
        jobs = [(str(tmp), preset, task, i, seed) for i, task in enumerate(preset.tasks)]
        workers = _workers(preset)
        spec_seconds: dict[str, float] = {}

        def done(task: str, seconds: float, task_scores: dict[str, float]) -> None:
            spec_seconds[task] = round(seconds, 2)
            scores[task] = task_scores
            log(f"specialist {task}: {preset.specialist_steps} steps in {seconds:.1f}s")

        if workers <= 1:
            for job in jobs:
                done(*_specialist(*job))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            log(f"fine-tuning {len(jobs)} specialists in {workers} worker processes")
            context = multiprocessing.get_context("spawn")  # fork would copy torch's threads
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                for future in as_completed([pool.submit(_specialist, *job) for job in jobs]):
                    done(*future.result())
        specialists_seconds = time.perf_counter() - t0
        scores = {name: scores[name] for name in ("base", *preset.tasks)}
        for name, s in scores.items():
            log(f"scores {name}: " + ", ".join(f"{t} {v:.2f}" for t, v in s.items()))

        manifest = {
            "format": FORMAT_VERSION,
            "preset": preset.name,
            "seed": seed,
            "base": "base",
            "specialists": {t: {"task": t, "path": f"specialists/{t}"} for t in preset.tasks},
            "tasks_dir": "tasks",
            "tasks": list(preset.tasks),
            "settings": asdict(preset),
            "parameters": n_params,
            "base_steps": base_steps,
            "base_history": history,
            "scores": {name: {**s, "average": sum(s.values()) / len(s)}
                       for name, s in scores.items()},
            "build_seconds": {"base": round(base_seconds, 2),
                              "specialists": round(specialists_seconds, 2),
                              "per_specialist": spec_seconds, "workers": workers,
                              "total": round(time.perf_counter() - started, 2)},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "host": {"cpus": os.cpu_count(), "torch_threads": preset.threads},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"built {root} in {manifest['build_seconds']['total']:.1f}s")
    return load_zoo(root)


def _move_into_place(tmp: Path, root: Path) -> None:
    """Rename ``tmp`` to ``root``; an old ``root`` is moved aside first and removed after."""
    old = None
    if root.exists():
        old = root.parent / f".{root.name}.old-{os.getpid()}"
        os.replace(root, old)
    os.replace(tmp, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
