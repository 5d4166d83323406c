"""Labelers: the rubric prefers a reference-like finished answer over a loop or a cut-off one, ties
share a rank, a labels file ranks the sets it has (in any order of responses), every bad line is
named with its file, line and field, and agreement counts pairs ordered the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructgpt.errors import DataError
from instructgpt.labelers import (
    BadLabel,
    FileLabeler,
    ProgrammaticLabeler,
    RubricWeights,
    agreement,
    ordered_pairs,
    ranks_from_scores,
    read_label_files,
)

PROMPT = "Why do leaves change colour in autumn?"
REFERENCE = ("Leaves change colour because trees stop making chlorophyll in autumn. "
             "As the green pigment fades, yellow and orange pigments show through.")
GOOD = "Trees stop producing chlorophyll in autumn, so the green fades and yellow and orange pigments show."
LOOP = "the the leaves the the leaves the the leaves the the leaves the the leaves the the leaves the the"
CUT = "Trees stop producing chlorophyll in autumn, so the green fades and the yellow"
OFF_TOPIC = "My favourite food is a warm bowl of soup on a rainy evening."


def test_competition_ranks_from_scores() -> None:
    assert ranks_from_scores([9, 5, 5, 1]) == [0, 1, 1, 3]
    assert ranks_from_scores([0.5, 0.5004]) == [0, 0]  # within the resolution: a tie
    assert ranks_from_scores([0.1, 0.9]) == [1, 0]


def test_the_rubric_prefers_the_reference_like_finished_answer() -> None:
    labeler = ProgrammaticLabeler()
    ranks = labeler.rank(PROMPT, REFERENCE, [LOOP, CUT, GOOD, OFF_TOPIC, ""])
    assert ranks[2] == 0  # the good answer is best
    assert ranks[1] == 1  # the same answer cut off mid-sentence comes next
    assert ranks[4] == 4  # an empty response is worst
    assert min(ranks[0], ranks[3]) > ranks[1]


def test_each_criterion_measures_what_the_rubric_says() -> None:
    parts = ProgrammaticLabeler.criteria(REFERENCE, GOOD)
    assert parts["ending"] == 1.0 and parts["repetition"] == 1.0
    assert 0.3 < parts["overlap"] < 1.0
    assert ProgrammaticLabeler.criteria(REFERENCE, REFERENCE)["overlap"] == pytest.approx(1.0)
    assert ProgrammaticLabeler.criteria(REFERENCE, CUT)["ending"] == 0.0
    assert ProgrammaticLabeler.criteria(REFERENCE, LOOP)["repetition"] < 0.3
    assert ProgrammaticLabeler.criteria(REFERENCE, OFF_TOPIC)["overlap"] == 0.0
    assert ProgrammaticLabeler.criteria(REFERENCE, "Run this:\n```\nprint(1)\n```")["ending"] == 1.0
    assert ProgrammaticLabeler.criteria(REFERENCE, "```\nprint(1)")["ending"] == 0.0  # an open code block
    assert ProgrammaticLabeler.criteria(REFERENCE, "for 1 ``````````")["ending"] == 0.0  # backticks are not a fence
    assert ProgrammaticLabeler.criteria(REFERENCE, "x ` ` ` ` ` ` ` ` ` ` ` `")["repetition"] < 0.3  # symbol loops count
    assert ProgrammaticLabeler().score(REFERENCE, "   ") == 0.0


def test_the_labeler_is_deterministic_and_ties_share_a_rank() -> None:
    labeler = ProgrammaticLabeler()
    assert labeler.rank(PROMPT, REFERENCE, [GOOD, CUT]) == labeler.rank(PROMPT, REFERENCE, [GOOD, CUT])
    assert labeler.rank(PROMPT, REFERENCE, [GOOD, GOOD + " ", CUT]) == [0, 0, 2]


def test_weights_change_the_judgement_and_bad_weights_are_refused() -> None:
    only_length = ProgrammaticLabeler(RubricWeights(overlap=0, ending=0, repetition=0, length=1))
    # by length alone the long loop is as long as the reference, the short good answer is not
    assert only_length.rank(PROMPT, REFERENCE, [LOOP, CUT]) == [0, 1]
    with pytest.raises(ValueError, match="non-negative"):
        RubricWeights(overlap=-1)
    with pytest.raises(ValueError, match="not all zero"):
        RubricWeights(0, 0, 0, 0)


def write_labels(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines), encoding="utf-8")
    return path


def test_the_file_labeler_ranks_its_sets_whatever_the_order_of_responses(tmp_path: Path) -> None:
    path = write_labels(tmp_path / "ann.jsonl", [
        {"prompt": PROMPT, "responses": [GOOD, CUT, LOOP], "ranking": [0, 1, 2], "labeler": "ann"},
    ])
    records, bad, lines = read_label_files([path])
    assert (len(records), bad, lines) == (1, [], 1)
    labeler = FileLabeler(records)
    assert labeler.rank(PROMPT, REFERENCE, [LOOP, GOOD, CUT]) == [2, 0, 1]
    assert labeler.labeler_of(PROMPT, [LOOP, GOOD, CUT]) == "ann"
    assert labeler.rank(PROMPT, REFERENCE, [LOOP, GOOD]) is None  # not the set that was ranked
    assert labeler.rank("another prompt", REFERENCE, [LOOP, GOOD, CUT]) is None


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        ("{not json", None, "not valid JSON"),
        ([1, 2], None, "JSON object"),
        ({"responses": ["a", "b"], "ranking": [0, 1], "labeler": "x"}, "prompt", "missing"),
        ({"prompt": "p", "responses": ["a"], "ranking": [0], "labeler": "x"}, "responses", "at least two"),
        ({"prompt": "p", "responses": ["a", "a"], "ranking": [0, 1], "labeler": "x"}, "responses", "twice"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [0], "labeler": "x"}, "ranking", "1 ranks for 2"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": ["first", 1], "labeler": "x"}, "ranking", "integer"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, -1], "labeler": "x"}, "ranking", "0 or more"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [1, 1], "labeler": "x"}, "ranking", "tie"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1]}, "labeler", "who ranked"),
    ],
)
def test_a_bad_line_is_named_by_file_line_and_field(tmp_path: Path, line, field, reason) -> None:
    good = {"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0], "labeler": "ann"}
    path = write_labels(tmp_path / "labels.jsonl", [good, "", line])
    records, bad, lines = read_label_files([path])
    assert len(records) == 1 and lines == 2  # the blank line is not a record
    assert len(bad) == 1
    (problem,) = bad
    assert isinstance(problem, BadLabel)
    assert (problem.file, problem.line, problem.field) == (str(path), 3, field)
    assert reason in problem.reason


def test_an_unreadable_labels_file_raises_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b"\xff\xfe\x00not utf-8")
    with pytest.raises(DataError, match="broken.jsonl"):
        read_label_files([path])


def test_ordered_pairs_skip_ties_and_agreement_counts_shared_orderings() -> None:
    assert ordered_pairs([1, 0, 1, 2]) == [(1, 0), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert agreement([0, 1, 2], [0, 1, 2]) == (3, 3)
    assert agreement([0, 1, 2], [2, 1, 0]) == (0, 3)
    assert agreement([0, 1, 1], [0, 2, 1]) == (2, 2)  # the pair the first labeler tied is not counted
