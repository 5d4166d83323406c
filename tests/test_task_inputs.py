"""GPT-1's input transformations: each task type's token layout, both orders for similarity, one
sequence per choice, task tokens kept and text shortened (the right side of each part) to fit."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from instructgpt.task_inputs import TaskTokens, encode_examples, pair, single, transform
from instructgpt.tokenizer import TokenizerConfig, encode_ordinary_batch, train_tokenizer

T = TaskTokens(start=1, delim=2, extract=3)
A, B = [10, 11, 12], [20, 21]


def test_classification_is_start_text_extract() -> None:
    assert transform("classification", A, None, None, T, 64) == ((1, 10, 11, 12, 3),)


def test_entailment_is_start_premise_delim_hypothesis_extract() -> None:
    assert transform("entailment", A, B, None, T, 64) == ((1, 10, 11, 12, 2, 20, 21, 3),)


def test_similarity_gives_both_orders() -> None:
    assert transform("similarity", A, B, None, T, 64) == ((1, 10, 11, 12, 2, 20, 21, 3), (1, 20, 21, 2, 10, 11, 12, 3))


def test_multiple_choice_gives_one_sequence_per_choice() -> None:
    assert transform("multiple_choice", A, None, [[30], [40, 41]], T, 64) == ((1, 10, 11, 12, 2, 30, 3), (1, 10, 11, 12, 2, 40, 41, 3))


def test_shortening_keeps_task_tokens_the_end_of_the_first_part_and_the_start_of_the_second() -> None:
    first, second = list(range(100, 110)), list(range(200, 204))
    seq = pair(first, second, T, max_len=11)  # 8 text tokens: the longer part gives way until they are even
    assert len(seq) == 11 and seq[0] == 1 and seq[-1] == 3 and seq.count(2) == 1
    assert seq == (1, 106, 107, 108, 109, 2, 200, 201, 202, 203, 3)
    assert single(first, T, max_len=5) == (1, 100, 101, 102, 3)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="second text"):
        transform("entailment", A, None, None, T, 64)
    with pytest.raises(ValueError, match="two choices"):
        transform("multiple_choice", A, None, [[1]], T, 64)
    with pytest.raises(ValueError, match="unknown task type"):
        transform("translation", A, None, None, T, 64)
    with pytest.raises(ValueError, match="no room"):
        pair(A, B, T, max_len=3)


@pytest.fixture(scope="module")
def tokenizer(data_pack: Path) -> Tokenizer:
    text = (data_pack / "books/austen/emma.txt").read_text(encoding="utf-8")[:40_000]
    return train_tokenizer(text.split("\n\n"), TokenizerConfig(vocab_size=400))


def test_encode_examples_uses_the_tokenizers_task_tokens_and_reads_text_as_text(tokenizer: Tokenizer) -> None:
    t = TaskTokens.of(tokenizer)
    quoted = "She wrote <|extract|> on the card."
    [example] = encode_examples(tokenizer, "classification", [quoted], [None], [None], [1], [None], max_len=64)
    [text_ids] = encode_ordinary_batch(tokenizer, [quoted])
    assert example.sequences == ((t.start, *text_ids, t.extract),)
    assert example.label == 1 and example.score is None
    assert example.sequences[0][1:-1].count(t.extract) == 0  # the quoted token stays plain text


def test_encode_examples_multiple_choice_and_scored_pairs(tokenizer: Tokenizer) -> None:
    t = TaskTokens.of(tokenizer)
    [mc] = encode_examples(tokenizer, "multiple_choice", ["Emma smiled."], [None], [["Yes.", "No.", "Maybe."]], [2], [None], 64)
    assert len(mc.sequences) == 3 and all(s[0] == t.start and s[-1] == t.extract and t.delim in s for s in mc.sequences)
    assert mc.label == 2
    [sim] = encode_examples(tokenizer, "similarity", ["A man walks."], ["A person walks."], [None], [None], [3.5], 64)
    assert len(sim.sequences) == 2 and sim.label is None and sim.score == 3.5
