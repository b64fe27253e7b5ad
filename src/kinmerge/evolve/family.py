"""The check before a run scores anything: every foundation fits the base, full model or LoRA adapter.

A full fine-tune must match the base tensor for tensor (``kinmerge.scan.plan``); a PEFT LoRA
adapter must change only tensors the base has, in their shapes (``LoraSource.check_base``). A
model of another size or family fails here, naming it, not after minutes of scoring.

Example:
    >>> check_family("zoo:base", ["zoo:add", "zoo:sort"])
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from kinmerge.errors import ConfigError

__all__ = ["check_family"]


def check_family(base: str | os.PathLike[str], models: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse, in one line, a model (or adapter) that does not fit ``base``, or a base that is an adapter."""
    from kinmerge.scan import plan
    from kinmerge.sources import LoraSource, open_models

    with open_models([base, *models], adapters=True) as (base_src, *sources):
        if isinstance(base_src, LoraSource):
            raise ConfigError(f"base: {base} is a LoRA adapter; the base is the model the adapters were trained on")
        for src in sources:
            if isinstance(src, LoraSource):
                src.check_base(base_src, src.display_name, str(base))
        full = [src for src in sources if not isinstance(src, LoraSource)]
        if full:
            plan(base_src, full)
