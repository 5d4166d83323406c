"""A story-cloze-style multiple-choice task built from held-out book text.

Mostafazadeh et al.'s Story Cloze Test asks for the right ending of a short story; GPT-1 evaluates
on it as multiple choice. Here the stories are passages of books the model never trained on (the
val split of the documents): `context_sentences` consecutive sentences, then the true next sentence
against `choices - 1` sentences drawn from elsewhere in the held-out text, from the same book when
it has enough, so that style does not give the answer away, and with a length within a factor of
1.5 of the true sentence, so that length does not either. Every
draw comes from one seeded generator: the same documents and params give the same questions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# A sentence ends at . ! or ? (and any closing quote) followed by space and an opening quote or a capital.
_BOUNDARY = re.compile(r"(?<=[.!?])([\"”’']?)\s+(?=[\"“‘']?[A-Z])")
_ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.", "Mme.", "Messrs.", "Capt.", "Col.", "Gen.", "Rev.", "No.", "Vol.", "i.e.", "e.g.")


@dataclass(frozen=True)
class ClozeConfig:
    context_sentences: int = 3
    choices: int = 4
    min_sentence_chars: int = 20
    max_sentence_chars: int = 300
    max_questions: int | None = None  # the first N passages (null: all)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.context_sentences < 1:
            raise ValueError("context_sentences must be at least 1")
        if self.choices < 2:
            raise ValueError("choices must be at least 2")
        if not 0 < self.min_sentence_chars < self.max_sentence_chars:
            raise ValueError("need 0 < min_sentence_chars < max_sentence_chars")


@dataclass(frozen=True)
class Question:
    context: str
    choices: tuple[str, ...]
    answer: int
    document: str  # the doc_id the passage comes from


def sentences(text: str) -> list[str]:
    """The sentences of a text, its line breaks joined; 'Mr. Darcy' stays one sentence."""
    flat = " ".join(text.split())
    pieces, start = [], 0
    for match in _BOUNDARY.finditer(flat):
        end = match.start() + len(match.group(1))
        pieces.append(flat[start:end])
        start = match.end()
    pieces.append(flat[start:])
    merged: list[str] = []
    for piece in pieces:
        if merged and merged[-1].endswith(_ABBREVIATIONS):
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return [s.strip() for s in merged if s.strip()]


def build_questions(doc_ids: Sequence[str], texts: Sequence[str], config: ClozeConfig) -> list[Question]:
    """Passages of each document with their true ending and drawn distractors."""
    rng = np.random.default_rng(config.seed)
    passages: list[tuple[str, list[str], str]] = []  # (document, context sentences, ending)
    pool: list[tuple[str, str]] = []  # (document, sentence) for distractors
    window = config.context_sentences + 1
    for doc_id, text in zip(doc_ids, texts):
        found = sentences(text)
        pool += [(doc_id, s) for s in found if _usable(s, config)]
        for first in range(0, len(found) - window + 1, window):
            part = found[first : first + window]
            if all(_usable(s, config) for s in part):
                passages.append((doc_id, part[:-1], part[-1]))
    if config.max_questions is not None:
        passages = passages[: config.max_questions]
    lengths = np.array([len(s) for _, s in pool])
    questions = []
    for doc_id, context, ending in passages:
        close = np.flatnonzero((lengths >= len(ending) / 1.5) & (lengths <= len(ending) * 1.5))
        candidates = [i for i in close if pool[i][1] != ending and pool[i][1] not in context]
        same_book = [i for i in candidates if pool[i][0] == doc_id]
        if len(same_book) >= config.choices - 1:
            candidates = same_book  # the same book's style: only coherence tells the ending apart
        if len(candidates) < config.choices - 1:
            continue
        drawn = [pool[i][1] for i in rng.choice(candidates, size=config.choices - 1, replace=False)]
        answer = int(rng.integers(config.choices))
        choices = drawn[:answer] + [ending] + drawn[answer:]
        questions.append(Question(" ".join(context), tuple(choices), answer, doc_id))
    return questions


def _usable(sentence: str, config: ClozeConfig) -> bool:
    return config.min_sentence_chars <= len(sentence) <= config.max_sentence_chars and any(c.isalpha() for c in sentence)
