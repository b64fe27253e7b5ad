"""Fine-tuning a causal LM on task examples: the training loop every zoo shares.

The tiny zoos pre-train and fine-tune with it (``kinmerge.zoo.train``), the real-model zoo
fine-tunes a pretrained base with it (``kinmerge.zoo.real``). AdamW on the answer tokens only,
deterministic for a seed (``torch.use_deterministic_algorithms`` and a fixed thread count).

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kinmerge.errors import ConfigError
from kinmerge.zoo.tasks import TASKS

__all__ = ["_Sampler", "_batch", "_save", "_torch_state", "_train"]


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
           log: Callable[[str], None] = lambda s: None, on_step: Callable[[], None] = lambda: None) -> int:
    """AdamW on the answer tokens; stops after ``max_steps`` or when ``check(step)`` is true.
    ``on_step`` is called after every step (a progress bar), ``log`` every ``check_every``.

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
        on_step()
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
