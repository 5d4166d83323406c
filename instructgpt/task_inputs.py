"""GPT-1's input transformations: every task as token sequences a language model can read.

Radford et al. (2018), section 3.3: structured inputs become ordered sequences with start, delimiter
and extract tokens, and a linear head reads the final hidden state of the extract token.

    classification   start text extract
    entailment       start premise delim hypothesis extract
    similarity       start a delim b extract   and   start b delim a extract   (no inherent order)
    multiple choice  start context delim answer_i extract   for every choice i

A sequence longer than `max_len` is shortened in its text, never in its task tokens: the longer of
two parts loses tokens first, the first part (context, premise, sentence a) from its beginning so
that what sits next to the delimiter survives, the second part from its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
from tokenizers import Tokenizer

from instructgpt.tokenizer import SPECIAL, encode_ordinary_batch, special_token_ids

TASK_TYPES = ("classification", "entailment", "similarity", "multiple_choice")


@dataclass(frozen=True)
class TaskTokens:
    start: int
    delim: int
    extract: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> "TaskTokens":
        ids = special_token_ids(tokenizer)
        return cls(ids[SPECIAL.start], ids[SPECIAL.delim], ids[SPECIAL.extract])

    def all(self) -> frozenset[int]:
        return frozenset((self.start, self.delim, self.extract))


@dataclass(frozen=True)
class TaskExample:
    """One example after its transformation: the sequences the model reads, and its target.

    sequences: one (classification, entailment), two (similarity: both orders), or one per choice
    (multiple choice), each ending in the extract token. label: the class, or the index of the
    right choice; score: the regression target of a scored similarity task.
    """

    sequences: tuple[tuple[int, ...], ...]
    label: int | None = None
    score: float | None = None

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


def single(text: Sequence[int], t: TaskTokens, max_len: int) -> tuple[int, ...]:
    """start text extract."""
    budget = _budget(max_len, 2)
    return (t.start, *text[:budget], t.extract)


def pair(first: Sequence[int], second: Sequence[int], t: TaskTokens, max_len: int) -> tuple[int, ...]:
    """start first delim second extract, the texts shortened to fit."""
    first, second = _fit(first, second, _budget(max_len, 3))
    return (t.start, *first, t.delim, *second, t.extract)


def transform(task_type: str, a: Sequence[int], b: Sequence[int] | None, choices: Sequence[Sequence[int]] | None,
              t: TaskTokens, max_len: int) -> tuple[tuple[int, ...], ...]:
    """The sequences of one example of `task_type` from its texts' token ids."""
    if task_type == "classification":
        return (single(a, t, max_len),)
    if task_type == "entailment":
        return (pair(a, _required(b, task_type), t, max_len),)
    if task_type == "similarity":
        b = _required(b, task_type)
        return pair(a, b, t, max_len), pair(b, a, t, max_len)
    if task_type == "multiple_choice":
        if not choices or len(choices) < 2:
            raise ValueError("a multiple-choice example needs at least two choices")
        return tuple(pair(a, choice, t, max_len) for choice in choices)
    raise ValueError(f"unknown task type {task_type!r}; task types: {TASK_TYPES}")


def encode_examples(tokenizer: Tokenizer, task_type: str, texts_a: Sequence[str], texts_b: Sequence[str | None],
                    choices: Sequence[Sequence[str] | None], labels: Sequence[int | None], scores: Sequence[float | None],
                    max_len: int) -> list[TaskExample]:
    """Rows of one task (columns of the `tasks` table) as transformed examples.

    Texts are encoded as ordinary text: a sentence that quotes "<|extract|>" stays a sentence.
    """
    t = TaskTokens.of(tokenizer)
    ids_a = encode_ordinary_batch(tokenizer, list(texts_a))
    ids_b = encode_ordinary_batch(tokenizer, [b or "" for b in texts_b])
    flat = [c for row in choices if row is not None for c in row]
    flat_ids = iter(encode_ordinary_batch(tokenizer, flat)) if flat else iter(())
    examples = []
    for i, (a, b, row_choices) in enumerate(zip(ids_a, ids_b, choices)):
        choice_ids = [next(flat_ids) for _ in row_choices] if row_choices is not None else None
        sequences = transform(task_type, a, b if texts_b[i] is not None else None, choice_ids, t, max_len)
        examples.append(TaskExample(sequences, _optional_int(labels[i]), _optional_float(scores[i])))
    return examples


def _budget(max_len: int, task_tokens: int) -> int:
    if max_len <= task_tokens:
        raise ValueError(f"max_len {max_len} leaves no room for text beside {task_tokens} task tokens")
    return max_len - task_tokens


def _fit(first: Sequence[int], second: Sequence[int], budget: int) -> tuple[Sequence[int], Sequence[int]]:
    """Both parts within `budget` tokens together: the longer one is shortened first."""
    keep_first, keep_second = len(first), len(second)
    while keep_first + keep_second > budget:
        if keep_first >= keep_second:
            keep_first -= 1
        else:
            keep_second -= 1
    return first[len(first) - keep_first :], second[:keep_second]


def _required(b: Sequence[int] | None, task_type: str) -> Sequence[int]:
    if b is None:
        raise ValueError(f"a {task_type} example needs a second text")
    return b


def _optional_int(value: object) -> int | None:
    return None if pd.isna(value) else int(value)  # type: ignore[call-overload]  # None, NaN and pd.NA are missing


def _optional_float(value: object) -> float | None:
    return None if pd.isna(value) else float(value)  # type: ignore[arg-type]
