"""Natural-language tasks for the real-model zoo (fine-tunes of SmolLM2-135M-Instruct).

Each task is a pure function of a ``random.Random`` returning ``(prompt, answer)``: an English
sentence to complete, and the short completion that is right by a rule (calendar arithmetic,
numbers in words, word order, capitals, a story sum). The rules are easy to state and to check,
so the same seed gives the same examples on every machine and exact match scores them. The
pretrained model answers these prompts with chat boilerplate or a wrong value (exact match 0.00
on every task, docs/zoo.md); a fine-tune learns the format and the rule.

The ``smol`` preset uses six of them (``kinmerge.zoo.presets.SMOL_TASKS``). Two share their
surface on purpose, so a merge has something to get wrong: ``word_add`` and ``word_sub`` are the
same story with "got ... more" or "gave away". ``weekday`` and ``month`` (calendar arithmetic mod
7 and 12) stayed near chance after 150 fine-tuning steps and are not in the preset.

Example:
    >>> NL_TASKS["weekday"](random.Random(0))
    ('If today is Sunday, in 51 days it will be', ' Tuesday')
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["NL_TASKS", "number_in_words"]

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas",
         "Kemal", "Lena", "Marco", "Nina", "Omar", "Paula", "Quinn", "Rosa", "Sam", "Tara")
ITEMS = ("apples", "books", "coins", "pencils", "stamps", "marbles", "cards", "shells", "cookies",
         "stickers")
WORDS = (
    "apple", "river", "stone", "cloud", "tiger", "green", "music", "paper", "window", "garden",
    "silver", "orange", "bread", "light", "forest", "candle", "dream", "ocean", "yellow",
    "mountain", "winter", "summer", "doctor", "pocket", "rabbit", "basket", "mirror", "planet",
    "castle", "rocket", "pepper", "lemon", "violin", "island", "bottle", "hammer", "feather",
    "jacket", "ladder", "wallet",
)
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_in_words(n: int) -> str:
    """``n`` (0..999) in English words, American style (no "and").

    Example:
        >>> number_in_words(347)
        'three hundred forty-seven'
    """
    if not 0 <= n <= 999:
        raise ValueError(f"number_in_words takes 0..999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_in_words(rest))


def _weekday(rng: random.Random) -> tuple[str, str]:
    day, shift = rng.randrange(7), rng.randint(2, 99)
    return f"If today is {DAYS[day]}, in {shift} days it will be", " " + DAYS[(day + shift) % 7]


def _month(rng: random.Random) -> tuple[str, str]:
    month, shift = rng.randrange(12), rng.randint(2, 99)
    return f"If it is {MONTHS[month]} now, in {shift} months it will be", " " + MONTHS[(month + shift) % 12]


def _numwords(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(100, 999)
    return f"The number {n} in words is", " " + number_in_words(n)


def _reverse_words(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 4))
    return f"The words {' '.join(words)} in reverse order are", " " + " ".join(reversed(words))


def _word_add(rng: random.Random) -> tuple[str, str]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(10, 60), rng.randint(10, 39)
    return f"{name} had {a} {item} and got {b} more. Now {name} has", f" {a + b}"


def _word_sub(rng: random.Random) -> tuple[str, str]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(40, 99), rng.randint(10, 39)
    return f"{name} had {a} {item} and gave away {b}. Now {name} has", f" {a - b}"


def _capitals(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, 2)
    return f"In capital letters, {' '.join(words)} is", " " + " ".join(words).upper()


def _times(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 19), rng.randint(11, 99)
    return f"{a} times {b} equals", f" {a * b}"


def _larger(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(100, 1000), 2)
    return f"The larger of {a} and {b} is", f" {max(a, b)}"


def _initials(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, 3)
    return f"The initials of {' '.join(words)} are", " " + "".join(w[0].upper() for w in words)


#: task name -> generator(rng) -> (prompt, answer); answers start with a space, as a completion does.
NL_TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "weekday": _weekday, "month": _month, "numwords": _numwords, "reverse_words": _reverse_words,
    "word_add": _word_add, "word_sub": _word_sub, "capitals": _capitals, "times": _times,
    "larger": _larger, "initials": _initials,
}
