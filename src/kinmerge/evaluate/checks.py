"""What must hold before a task line is scored on a model: the line fits the model's tokenizer
and positions. Plus the tokenization both the check and the builtin evaluator's scoring use, so
the check sees exactly the tokens that will be scored.

A score over a line the model cannot read means nothing, yet it would be computed without a
sound: characters the tokenizer maps to its unknown token all read as one symbol, an answer that
tokenizes to nothing has no probability to measure, two choices with the same tokens always tie,
and a prompt that runs past ``max_position_embeddings`` is cut (or fed positions the model never
saw). :func:`check_examples` refuses these with the task file and line.

Example:
    >>> # not run here: needs a loaded model and tokenizer (BuiltinEvaluator.evaluate calls it on every task)
    >>> check_examples(model, tok, task, task.examples, label="add")   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kinmerge.errors import EvaluationError
from kinmerge.evaluate.tasks import Example, Task

__all__ = ["check_examples", "encode_pair", "max_positions", "pad_id"]


def pad_id(tokenizer: Any) -> int:
    """The id to pad batches with: the tokenizer's pad token, else its end of sequence, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0  # pragma: no cover


def encode_pair(tokenizer: Any, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the continuation as it is tokenized after the prompt."""
    ctx = list(tokenizer(prompt).input_ids)
    whole = list(tokenizer(prompt + continuation).input_ids)
    if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
        cont = whole[len(ctx):]
    else:  # the tokenizer merged across the boundary or appended specials: encode separately
        cont = list(tokenizer(continuation, add_special_tokens=False).input_ids)
    if not ctx:  # condition on something: the model needs one position to predict from
        ctx = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None
               else pad_id(tokenizer)]
    return ctx, cont


def check_examples(model: Any, tokenizer: Any, task: Task, examples: Sequence[Example], *,
                   max_new_tokens: int | None = None, label: str = "the model") -> None:
    """Refuse examples whose score would mean nothing for this model and tokenizer.

    A prompt, answer or choice with characters the tokenizer maps to its unknown token (they all
    read as one symbol), an answer or choice that tokenizes to nothing (nothing to predict),
    two choices that tokenize the same (neither can win), or a prompt whose answer (or
    generation) runs past the model's ``max_position_embeddings``.

    Raises:
        EvaluationError: naming the task file and line (``path:line``) and what is wrong.

    Example:
        >>> # not run here: needs a loaded model and tokenizer (BuiltinEvaluator.evaluate calls it on every task)
        >>> task = load_task("tasks/add.jsonl")                             # doctest: +SKIP
        >>> check_examples(model, tok, task, task.examples, label="add")    # doctest: +SKIP
    """
    limit = max_positions(model)
    unk_id, unk = tokenizer.unk_token_id, tokenizer.unk_token
    encoded: list[tuple[str, Example, list[int], list[int]]] = []
    for k, ex in enumerate(examples):
        where = f"{task.path}:{ex.line}" if ex.line else f"{task.path} (example {k + 1})"
        texts = [("prompt", ex.prompt), ("answer", ex.answer), *(("choice", c) for c in ex.choices or ())]
        for what, text in texts if unk_id is not None else ():
            if unk_id in _ids(tokenizer, text) and not (unk and unk in text):
                odd = [c for c in dict.fromkeys(text) if unk_id in _ids(tokenizer, c)]
                chars = f" ({', '.join(map(repr, odd[:5]))})" if odd else ""
                raise EvaluationError(
                    f"{where}: the {what} {text!r} has characters{chars} the tokenizer of {label} does not know; "
                    f"they would all read as {unk} — write the line in the model's vocabulary")
        seen: dict[tuple[int, ...], str] = {}
        for cont_text in ex.choices or (ex.answer,):
            ctx, cont = encode_pair(tokenizer, ex.prompt, cont_text)
            what = "choice" if ex.choices else "answer"
            if not cont:
                raise EvaluationError(f"{where}: the {what} {cont_text!r} tokenizes to nothing for {label}; "
                                      "there is nothing to score")
            if tuple(cont) in seen:
                raise EvaluationError(f"{where}: choices {seen[tuple(cont)]!r} and {cont_text!r} tokenize the same "
                                      f"for {label}, so neither can win — make them differ in tokens")
            seen[tuple(cont)] = cont_text
            encoded.append((where, ex, ctx, cont))
    if limit is None or not encoded:
        return
    new = max_new_tokens or max(len(cont) for *_, cont in encoded) + 1  # what _score_generate uses
    for where, ex, ctx, cont in encoded:
        # positions fed to the model: the context and all but the last scored/generated token
        need = len(ctx) + (len(cont) if ex.choices else max(len(cont), new)) - 1
        if need > limit:
            raise EvaluationError(
                f"{where}: the prompt with its {'choice' if ex.choices else 'answer'} needs {need} positions but "
                f"{label} has {limit} (max_position_embeddings) — shorten the line")


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def max_positions(model: Any) -> int | None:
    """How many positions the model reads (``max_position_embeddings``); None when unbounded."""
    return getattr(model.config, "max_position_embeddings", None)
