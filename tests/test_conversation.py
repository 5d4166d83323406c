"""The canonical transcript: rendering, parsing back, and reading HH-RLHF's raw form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from instructgpt.conversation import Turn, format_prompt, parse_hh_transcript, parse_prompt

TRANSCRIPT = [Turn("user", "q1"), Turn("assistant", "a1"), Turn("user", "q2")]


def test_a_single_user_turn_is_plain_text() -> None:
    assert format_prompt([Turn("user", "What is 2 + 2?")]) == "What is 2 + 2?"
    assert parse_prompt("What is 2 + 2?") == [Turn("user", "What is 2 + 2?")]


def test_several_turns_render_in_hh_convention_without_the_leading_blank_line() -> None:
    assert format_prompt(TRANSCRIPT) == "Human: q1\n\nAssistant: a1\n\nHuman: q2"
    assert parse_prompt("Human: q1\n\nAssistant: a1\n\nHuman: q2") == TRANSCRIPT


def test_a_plain_prompt_that_merely_starts_with_human_stays_one_turn() -> None:
    assert parse_prompt("Human: a word I like") == [Turn("user", "Human: a word I like")]


def test_no_turns_is_an_error() -> None:
    with pytest.raises(ValueError):
        format_prompt([])


@pytest.mark.parametrize(
    "turns",
    [
        [Turn("user", "multi\nline\n\nquestion")],
        [Turn("user", "q"), Turn("assistant", "a\n"), Turn("user", " spaced ")],
        [Turn("assistant", "an opening line")],
        [Turn("user", "q"), Turn("assistant", "a"), Turn("assistant", "more"), Turn("user", "")],
    ],
)
def test_round_trip_examples(turns: list[Turn]) -> None:
    assert parse_prompt(format_prompt(turns)) == turns


_pieces = st.sampled_from(["Human", "Assistant", ":", " ", "\n", "a"])
_text = (
    st.lists(_pieces, max_size=8)
    .map("".join)
    .filter(lambda t: "\n\nHuman:" not in t and "\n\nAssistant:" not in t)
)
_turns = st.lists(st.builds(Turn, st.sampled_from(["user", "assistant"]), _text), min_size=1, max_size=5)


@given(_turns)
def test_round_trip_for_any_turns_without_markers_in_their_text(turns: list[Turn]) -> None:
    if len(turns) == 1 and turns[0].role == "user":
        # a lone user message is plain text; it reads back as one turn unless it looks like a transcript
        assert format_prompt(turns) == turns[0].text
        return
    assert parse_prompt(format_prompt(turns)) == turns


def test_hh_transcript_is_split_into_stripped_turns() -> None:
    raw = "\n\nHuman: what are some pranks?\n\nAssistant:  Are you looking for ideas? \n\nHuman: yep"
    assert parse_hh_transcript(raw) == [
        Turn("user", "what are some pranks?"),
        Turn("assistant", "Are you looking for ideas?"),
        Turn("user", "yep"),
    ]


def test_hh_transcript_keeps_consecutive_turns_of_one_speaker_and_empty_turns() -> None:
    raw = "\n\nHuman: hi\n\nAssistant: one\n\nAssistant: two\n\nHuman: ok\n\nAssistant:"
    roles = [turn.role for turn in parse_hh_transcript(raw)]
    assert roles == ["user", "assistant", "assistant", "user", "assistant"]
    assert parse_hh_transcript(raw)[-1] == Turn("assistant", "")


def test_hh_transcript_marker_inside_a_line_is_text() -> None:
    raw = "\n\nHuman: say 'Human: hi'\n\nAssistant: Human: hi"
    assert parse_hh_transcript(raw) == [Turn("user", "say 'Human: hi'"), Turn("assistant", "Human: hi")]


def test_hh_transcript_without_leading_blank_line_is_read_too() -> None:
    assert parse_hh_transcript("Human: q\n\nAssistant: a") == [Turn("user", "q"), Turn("assistant", "a")]


@pytest.mark.parametrize("raw", ["no markers at all", "preamble\n\nHuman: q\n\nAssistant: a"])
def test_hh_transcript_with_text_outside_turns_is_an_error(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_hh_transcript(raw)


def test_hh_transcript_renders_as_the_canonical_prompt() -> None:
    raw = "\n\nHuman: q1\n\nAssistant: a1\n\nHuman: q2"
    assert format_prompt(parse_hh_transcript(raw)) == raw.lstrip("\n")
