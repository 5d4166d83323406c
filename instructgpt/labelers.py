"""Labelers: who ranks the K responses sampled for a prompt (InstructGPT's labelers' step).

A labeler sees a prompt, its reference demonstration and the responses, and returns their ranks
(0 = best; responses it judges equal share a rank, competition style: scores 9, 5, 5, 1 rank
0, 1, 1, 3), or None when it has no judgement for that set. Two ship here:

- `ProgrammaticLabeler`, the default: a deterministic stand-in for a human with a fixed rubric.
  Each response gets a score in [0, 1], a weighted mean of
    overlap     F1 of the content words (lower-cased words, stop words removed) shared with the
                reference: does it say what the reference says;
    ending      1 when the text ends like finished prose (. ! ? and closing quotes or brackets)
                or with a closed code block (a last line of exactly ``` that closes an opened
                fence), else 0: a response cut off mid-sentence is worse;
    repetition  distinct 3-grams / all 3-grams of its words and punctuation marks (each mark a
                token, so runs of symbols count too): degenerate loops score near 0;
    length      shorter / longer of the response's and the reference's word counts.
  An empty response scores 0. Scores are compared at `resolution` (1e-3), so near-equal responses tie.
- `FileLabeler`: rankings that people made elsewhere, from JSON-lines files (see
  `data/labels/README.md`). It ranks a sampled set when a record has the same prompt and the same
  responses (in any order); its records also stand as ranked sets of their own.

`agreement` measures how often two labelers order a pair of responses the same way.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Protocol, Sequence

from instructgpt.errors import DataError

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")  # words, and each other mark on its own
FINISHED_PROSE = re.compile(r"""[.!?…]["'”’)\]]*\s*$""")
FENCE = "```"
STOP_WORDS = frozenset(
    "a an the and or but if then so of to in on at by for with from as is are was were be been being "
    "it its this that these those i you he she we they me him her us them my your his our their "
    "do does did not no yes can could will would should may might must shall have has had there here "
    "what which who whom when where why how all any some each more most other such only own same than too very".split()
)


class Labeler(Protocol):
    """Ranks the responses to one prompt; None when it cannot judge this set."""

    name: str

    def rank(self, prompt: str, reference: str, responses: Sequence[str]) -> list[int] | None: ...

    def labeler_of(self, prompt: str, responses: Sequence[str]) -> str:
        """Who ranked this set: recorded with every ranking, so agreement is counted per person."""
        ...


def ranks_from_scores(scores: Sequence[float], resolution: float = 1e-3) -> list[int]:
    """Competition ranks, 0 = best: a response's rank is how many responses scored clearly higher."""
    steps = [round(s / resolution) for s in scores]
    return [sum(other > mine for other in steps) for mine in steps]


@dataclass(frozen=True)
class RubricWeights:
    """params.yaml: comparisons.rubric. The weights of the programmatic labeler's criteria."""

    overlap: float = 0.5
    ending: float = 0.15
    repetition: float = 0.2
    length: float = 0.15

    def __post_init__(self) -> None:
        values = [self.overlap, self.ending, self.repetition, self.length]
        if min(values) < 0 or sum(values) <= 0:
            raise ValueError("rubric weights must be non-negative and not all zero")


@dataclass(frozen=True)
class ProgrammaticLabeler:
    """The documented rubric above; the same inputs always get the same ranks."""

    weights: RubricWeights = field(default_factory=RubricWeights)
    resolution: float = 1e-3
    name: str = "programmatic"

    def rank(self, prompt: str, reference: str, responses: Sequence[str]) -> list[int]:
        return ranks_from_scores([self.score(reference, r) for r in responses], self.resolution)

    def labeler_of(self, prompt: str, responses: Sequence[str]) -> str:
        return self.name

    def score(self, reference: str, response: str) -> float:
        """The response's rubric score in [0, 1]."""
        parts = self.criteria(reference, response)
        w = self.weights
        total = w.overlap + w.ending + w.repetition + w.length
        if not words(response):
            return 0.0
        return (w.overlap * parts["overlap"] + w.ending * parts["ending"]
                + w.repetition * parts["repetition"] + w.length * parts["length"]) / total

    @staticmethod
    def criteria(reference: str, response: str) -> dict[str, float]:
        """Each criterion's value in [0, 1] (see the module docstring)."""
        mine, theirs = words(response), words(reference)
        return {
            "overlap": content_f1(mine, theirs),
            "ending": 1.0 if ends_finished(response) else 0.0,
            "repetition": distinct_trigrams(TOKEN.findall(response.lower())),
            "length": min(len(mine), len(theirs)) / max(len(mine), len(theirs), 1),
        }


def ends_finished(text: str) -> bool:
    """Ends like finished prose, or with a fence line that closes a code block."""
    if FINISHED_PROSE.search(text):
        return True
    lines = [line.strip() for line in text.strip().splitlines()]
    fences = sum(line.startswith(FENCE) for line in lines)
    return bool(lines) and lines[-1] == FENCE and fences >= 2 and fences % 2 == 0


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def content_f1(response: list[str], reference: list[str]) -> float:
    """F1 of the multisets of content words (stop words removed): 0 when either has none."""
    mine = Counter(w for w in response if w not in STOP_WORDS)
    theirs = Counter(w for w in reference if w not in STOP_WORDS)
    shared = sum((mine & theirs).values())
    if not shared:
        return 0.0
    precision, recall = shared / sum(mine.values()), shared / sum(theirs.values())
    return 2 * precision * recall / (precision + recall)


def distinct_trigrams(tokens: list[str]) -> float:
    """Distinct 3-grams over all of them; 1 for fewer than three tokens."""
    grams = list(zip(tokens, tokens[1:], tokens[2:]))
    return len(set(grams)) / len(grams) if grams else 1.0


@dataclass(frozen=True)
class LabelRecord:
    """One line of a labels file."""

    prompt: str
    responses: tuple[str, ...]
    ranking: tuple[int, ...]
    labeler: str
    file: str
    line: int


@dataclass(frozen=True)
class BadLabel:
    """A line of a labels file that could not be used, and why (quarantined, not lost)."""

    file: str
    line: int
    field: str | None
    reason: str
    record: str


class FileLabeler:
    """Rankings from JSON-lines files: {"prompt", "responses": [...], "ranking": [...], "labeler"}."""

    name = "file"

    def __init__(self, records: Sequence[LabelRecord]) -> None:
        self.records = list(records)
        self._index = {_set_key(r.prompt, r.responses): r for r in self.records}

    def rank(self, prompt: str, reference: str, responses: Sequence[str]) -> list[int] | None:
        record = self._index.get(_set_key(prompt, responses))
        if record is None:
            return None
        rank_of = {}
        for response, rank in zip(record.responses, record.ranking):
            rank_of.setdefault(response, rank)
        return [rank_of[r] for r in responses]

    def labeler_of(self, prompt: str, responses: Sequence[str]) -> str:
        """The id of the person (or tool) who ranked this set, as the file says."""
        record = self._index.get(_set_key(prompt, responses))
        return record.labeler if record else self.name


def _set_key(prompt: str, responses: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    return prompt, tuple(sorted(responses))


def read_label_files(paths: Sequence[Path]) -> tuple[list[LabelRecord], list[BadLabel], int]:
    """Every record of the files, the bad lines with their reasons, and the number of lines read.

    An unreadable file raises `DataError` naming it; a bad line is returned, not raised, so the
    caller decides (by share) whether the file is bad or one record is.
    """
    records, bad, lines = [], [], 0
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read the labels file ({err})", file=path) from err
        for number, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            lines += 1
            parsed = parse_label_line(raw, str(path), number)
            (bad if isinstance(parsed, BadLabel) else records).append(parsed)
    return records, bad, lines


def parse_label_line(raw: str, file: str, line: int) -> LabelRecord | BadLabel:
    """One JSON line as a record, or the first thing wrong with it."""

    def wrong(field_name: str | None, reason: str) -> BadLabel:
        return BadLabel(file, line, field_name, reason, raw[:500])

    try:
        row = json.loads(raw)
    except json.JSONDecodeError as err:
        return wrong(None, f"not valid JSON ({err.msg} at column {err.colno})")
    if not isinstance(row, dict):
        return wrong(None, "a line must be a JSON object")
    prompt, responses, ranking, labeler = (row.get(k) for k in ("prompt", "responses", "ranking", "labeler"))
    if not isinstance(prompt, str) or not prompt.strip():
        return wrong("prompt", "missing or not a non-empty string")
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) and r.strip() for r in responses):
        return wrong("responses", "must be a list of at least two non-empty strings")
    if len(set(responses)) != len(responses):
        return wrong("responses", "the same response appears twice")
    if not isinstance(ranking, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranking):
        return wrong("ranking", "must be a list of integer ranks (0 = best)")
    if len(ranking) != len(responses):
        return wrong("ranking", f"has {len(ranking)} ranks for {len(responses)} responses")
    if min(ranking) < 0:
        return wrong("ranking", "ranks must be 0 or more")
    if len(set(ranking)) < 2:
        return wrong("ranking", "all responses tie: the set says nothing about preference")
    if not isinstance(labeler, str) or not labeler.strip():
        return wrong("labeler", "missing or not a non-empty string (who ranked this set)")
    return LabelRecord(prompt, tuple(responses), tuple(ranking), labeler, file, line)


def ordered_pairs(ranking: Sequence[int]) -> list[tuple[int, int]]:
    """(better, worse) index pairs of a ranking; tied responses make no pair."""
    pairs = []
    for i, j in combinations(range(len(ranking)), 2):
        if ranking[i] < ranking[j]:
            pairs.append((i, j))
        elif ranking[j] < ranking[i]:
            pairs.append((j, i))
    return pairs


def agreement(first: Sequence[int], second: Sequence[int]) -> tuple[int, int]:
    """(pairs both labelers ordered the same way, pairs both labelers ordered) for one set."""
    agreed = total = 0
    for i, j in combinations(range(len(first)), 2):
        a, b = first[i] - first[j], second[i] - second[j]
        if a and b:
            total += 1
            agreed += (a > 0) == (b > 0)
    return agreed, total
