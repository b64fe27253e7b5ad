"""LoRA adapters trained with peft on a zoo's base: real adapters for examples and tests.

An adapter here is what people publish for a popular base: a few thousand parameters of
``lora_A`` / ``lora_B`` on the attention projections, trained on one task with the zoo's own
training loop (``kinmerge.zoo.finetune``), saved with ``save_pretrained``. Its
``base_model_name_or_path`` is the base as given (``zoo:base`` stays ``zoo:base``), so a shipped
adapter finds its base on any machine.

Example:
    >>> # not run here: a minute of training (examples/adapters was made so)
    >>> train_adapter("adapters/add", "add")                        # doctest: +SKIP
    PosixPath('adapters/add')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from kinmerge.zoo.finetune import _Sampler, _torch_state, _train

__all__ = ["train_adapter"]


def train_adapter(out: str | os.PathLike[str], task: str, *, base: str = "zoo:base", r: int = 4,
                  lora_alpha: int = 8, steps: int = 60, seed: int = 0,
                  target_modules: Sequence[str] = ("q_proj", "v_proj")) -> Path:
    """Train a LoRA adapter of ``base`` on the zoo task ``task`` and save it into ``out``.

    Deterministic for a seed (the zoo's training state). ``lora_B`` starts at zero as peft makes
    it, so the adapter's delta is what training put there.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kinmerge.sources import resolve_ref

    folder = resolve_ref(base, want="folder").path
    assert folder is not None
    with _torch_state(1):
        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=0.0,
                                                      target_modules=list(target_modules), task_type="CAUSAL_LM"))
        _train(peft_model, tokenizer, _Sampler((task,), seed, set()), lr=3e-3, warmup=5, max_steps=steps,
               batch_size=16, weight_decay=0.0, decay=True)
    peft_model.peft_config["default"].base_model_name_or_path = base
    peft_model.save_pretrained(str(out))
    return Path(out)
