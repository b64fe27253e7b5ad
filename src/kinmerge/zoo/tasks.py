"""The zoo's character tokenizer and its synthetic tasks (prompt -> answer generators).

Every task is a pure function of a ``random.Random``: the same seed gives the same examples on
every machine, so a zoo's held-out data and its training stream are reproducible. Prompts end
in ``=`` and answers are short, so the builtin evaluator's exact match is cheap to compute.

Example:
    >>> make_examples("reverse", 2, seed=0)[0].prompt.startswith("rev ")
    True
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import Any

from kinmerge.errors import ConfigError
from kinmerge.evaluate.tasks import Example
from kinmerge.zoo.nl_tasks import NL_TASKS

__all__ = ["CHARACTERS", "CHAR_TASKS", "SPECIAL_TOKENS", "TASKS", "build_tokenizer", "make_examples"]

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
        >>> tok = build_tokenizer()
        >>> tok.decode(tok("add 2+3=").input_ids, skip_special_tokens=True)
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


#: The tiny zoos' character tasks: prompts end in "=", answers are short.
CHAR_TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": _add, "reverse": _reverse, "sort": _sort,
    "caesar": _caesar, "count": _count, "double": _double,
}

#: task name -> generator(rng) -> (prompt, answer): the character tasks and the real-model zoo's
#: natural-language ones (``kinmerge.zoo.nl_tasks``); a preset picks its own.
TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {**CHAR_TASKS, **NL_TASKS}


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
