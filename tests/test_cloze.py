"""The book cloze task: sentences split where prose ends one (not after 'Mr.'), every question's
answer is the passage's true next sentence, distractors come from the same book with similar
lengths and never from the passage, and the same input gives the same questions."""

from __future__ import annotations

from pathlib import Path

import pytest

from instructgpt.cloze import ClozeConfig, build_questions, sentences


def test_sentences_split_on_prose_boundaries() -> None:
    text = "Mr. Knightley came in.\nEmma was glad! “Was she?” asked Mrs. Weston. Yes."
    assert sentences(text) == ["Mr. Knightley came in.", "Emma was glad!", "“Was she?” asked Mrs. Weston.", "Yes."]


@pytest.fixture(scope="module")
def books(data_pack: Path) -> tuple[list[str], list[str]]:
    emma = (data_pack / "books/austen/emma.txt").read_text(encoding="utf-8")[20_000:60_000]
    persuasion = (data_pack / "books/austen/persuasion.txt").read_text(encoding="utf-8")[20_000:60_000]
    return ["emma", "persuasion"], [emma, persuasion]


def test_questions_hold_the_true_ending_among_same_book_distractors(books: tuple[list[str], list[str]]) -> None:
    ids, texts = books
    config = ClozeConfig(context_sentences=3, choices=4)
    questions = build_questions(ids, texts, config)
    assert len(questions) > 50
    by_doc = {doc: sentences(text) for doc, text in zip(ids, texts)}
    for q in questions:
        found = by_doc[q.document]
        ending = q.choices[q.answer]
        at = found.index(ending)
        assert " ".join(found[at - 3 : at]) == q.context  # the three sentences just before it
        for i, choice in enumerate(q.choices):
            assert choice in found  # drawn from the same book
            if i != q.answer:
                assert choice not in q.context and choice != ending
                assert len(ending) / 1.5 <= len(choice) <= len(ending) * 1.5
    answers = {q.answer for q in questions}
    assert answers == {0, 1, 2, 3}  # the right choice is not always in one place
    assert build_questions(ids, texts, config) == questions


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        ClozeConfig(choices=1)
