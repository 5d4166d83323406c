"""The canonical multi-turn transcript: how every source's conversations become one prompt string.

A prompt is either a single user message, kept as plain text with no markers, or a transcript of
turns rendered in HH-RLHF's convention without its leading blank line::

    Human: q1

    Assistant: a1

    Human: q2

`format_prompt` renders turns, `parse_prompt` is its inverse, and `parse_hh_transcript` reads the
raw HH-RLHF form (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``). The convention has one ambiguity it
cannot escape: a turn whose own text contains ``"\\n\\nHuman: "`` or ``"\\n\\nAssistant: "`` reads
back as two turns, and a single user message that itself looks like a transcript (starts with
``"Human: "`` and contains another turn marker, or starts with ``"Assistant: "``) reads back as
several. Real data almost never does either; where HH-RLHF does, we keep what the markers say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Literal

Role = Literal["user", "assistant"]

_SPEAKER = {"user": "Human", "assistant": "Assistant"}
_ROLE = {"Human": "user", "Assistant": "assistant"}
_SEPARATOR = "\n\n"
# A turn starts at the beginning of the text or after a blank line, with the speaker and a colon;
# one space after the colon belongs to the marker.
_CANONICAL_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant): ?")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str


def format_prompt(turns: Iterable[Turn]) -> str:
    """Render turns as a prompt: one user turn is its plain text, anything else a transcript."""
    turns = list(turns)
    if not turns:
        raise ValueError("a prompt needs at least one turn")
    if len(turns) == 1 and turns[0].role == "user":
        return turns[0].text
    return _SEPARATOR.join(f"{_SPEAKER[turn.role]}: {turn.text}" for turn in turns)


def parse_prompt(text: str) -> list[Turn]:
    """Inverse of `format_prompt`: a transcript becomes its turns, plain text one user turn."""
    is_transcript = text.startswith("Assistant:") or (
        text.startswith("Human:") and ("\n\nAssistant:" in text or "\n\nHuman:" in text)
    )
    if not is_transcript:
        return [Turn("user", text)]
    return _split(text, _CANONICAL_TURN, strip=False)


def parse_hh_transcript(text: str) -> list[Turn]:
    """Split a raw HH-RLHF transcript into turns, each text stripped of surrounding whitespace.

    Raises ValueError when there is no turn marker, or text before the first one.
    Consecutive turns of the same speaker (HH-RLHF has a few) are kept as they are.
    """
    body = text.lstrip(" \t\r\n")
    turns = _split("\n\n" + body, _HH_TURN, strip=True)
    if not turns:
        raise ValueError("no '\\n\\nHuman:' or '\\n\\nAssistant:' turn marker")
    return turns


def _split(text: str, marker: re.Pattern[str], *, strip: bool) -> list[Turn]:
    matches = list(marker.finditer(text))
    if not matches:
        return []
    preamble = text[: matches[0].start()].strip()
    if preamble:
        raise ValueError(f"text before the first turn marker: {preamble[:40]!r}")
    turns = []
    for match, following in zip(matches, matches[1:] + [None]):
        body = text[match.end() : following.start() if following else len(text)]
        turns.append(Turn(_ROLE[match.group(1)], body.strip() if strip else body))  # type: ignore[arg-type]
    return turns
