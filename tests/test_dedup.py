"""Duplicate detection: exact after case/whitespace folding, near by MinHash over word shingles."""

from __future__ import annotations

import random

from instructgpt.dedup import find_exact, find_near, shingles


def _text(seed: int, words: int = 300) -> str:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(2000)]
    return " ".join(rng.choice(vocab) for _ in range(words))


def test_exact_duplicates_ignore_case_and_whitespace() -> None:
    found = find_exact(["Hello  world", "other", "hello world\n"])
    assert [(d.index, d.of, d.kind) for d in found] == [(2, 0, "exact")]


def test_near_duplicate_is_found_and_points_to_the_first_copy() -> None:
    original = _text(1)
    words = original.split()
    edited = " ".join(words[:5] + ["changed"] + words[6:])  # one word of 300 replaced
    unrelated = _text(2)
    found = find_near([original, unrelated, edited], threshold=0.8)
    assert [(d.index, d.of, d.kind) for d in found] == [(2, 0, "near")]
    assert 0.8 <= found[0].similarity <= 1.0


def test_different_documents_are_not_near_duplicates() -> None:
    texts = [_text(seed) for seed in range(30)]
    assert find_near(texts, threshold=0.8) == []


def test_skipped_indices_are_neither_reported_nor_indexed() -> None:
    text = _text(3)
    found = find_near([text, text, text], threshold=0.8, skip=frozenset({0}))
    assert [(d.index, d.of) for d in found] == [(2, 1)]


def test_shingles_of_short_text() -> None:
    assert shingles("One two", 5) == [b"one two"]
    assert shingles("", 5) == []
    assert len(shingles("a b c d e f", 5)) == 2
