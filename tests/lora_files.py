"""PEFT LoRA adapter folders written by hand (no torch): the exact layout ``save_pretrained`` leaves.

``write_adapter`` is what tests use to make adapters with any shapes, ranks and config fields
(including broken ones); ``tests/test_lora.py`` also makes adapters with peft itself, and checks
that both layouts read the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kinmerge.sources import save_safetensors

PREFIX = "base_model.model."


def adapter_config(r: int = 4, lora_alpha: float = 8, **fields: Any) -> dict[str, Any]:
    """An ``adapter_config.json`` as PEFT 0.21 writes it for a LoRA adapter (the fields kinship reads)."""
    cfg: dict[str, Any] = {
        "peft_type": "LORA", "r": r, "lora_alpha": lora_alpha, "use_rslora": False, "fan_in_fan_out": False,
        "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False, "lora_bias": False, "modules_to_save": None,
        "base_model_name_or_path": None, "target_modules": [], "task_type": "CAUSAL_LM",
    }
    cfg.update(fields)
    return cfg


def write_adapter(folder: Path, factors: dict[str, tuple[np.ndarray, np.ndarray]], config: dict[str, Any],
                  dense: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``folder`` with ``factors`` (module name -> (lora_A r×in, lora_B out×r)) and ``dense``
    (base tensor name -> whole tensor, like ``modules_to_save``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    for mod, (a, b) in factors.items():
        tensors[f"{PREFIX}{mod}.lora_A.weight"] = a
        tensors[f"{PREFIX}{mod}.lora_B.weight"] = b
    for name, arr in (dense or {}).items():
        tensors[f"{PREFIX}{name}"] = arr
    save_safetensors(folder / "adapter_model.safetensors", tensors)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder
