"""The chat template: role tokens around ordinary text, loss only on the response, left truncation."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from instructgpt.chat import ChatTemplate
from instructgpt.tokenizer import SPECIAL, TokenizerConfig, decode, special_token_ids, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(data_pack: Path) -> Tokenizer:
    text = (data_pack / "books/austen/emma.txt").read_text(encoding="utf-8")[:100_000]
    return train_tokenizer(text.split("\n\n"), TokenizerConfig(vocab_size=600))


def test_a_single_turn_prompt_and_its_response(tokenizer: Tokenizer) -> None:
    template = ChatTemplate(tokenizer)
    ids = special_token_ids(tokenizer)
    example = template.render("Who is Emma?", "A young woman of Highbury.")
    assert decode(tokenizer, example.ids) == "<|user|>Who is Emma?<|assistant|>A young woman of Highbury.<|endoftext|>"
    first_answer = example.ids.index(ids[SPECIAL.assistant]) + 1
    assert example.train_on == [False] * first_answer + [True] * (len(example) - first_answer)
    trained = [t for t, keep in zip(example.ids, example.train_on) if keep]
    assert decode(tokenizer, trained) == "A young woman of Highbury.<|endoftext|>"


def test_targets_are_the_next_trained_token(tokenizer: Tokenizer) -> None:
    example = ChatTemplate(tokenizer).render("Hi", "Hello there")
    targets = example.targets()
    assert len(targets) == len(example.ids) and targets[-1] == -100
    for i, target in enumerate(targets[:-1]):
        assert target == (example.ids[i + 1] if example.train_on[i + 1] else -100)


def test_a_transcript_becomes_role_turns_and_only_the_last_answer_is_trained(tokenizer: Tokenizer) -> None:
    example = ChatTemplate(tokenizer).render("Human: a question\n\nAssistant: an answer\n\nHuman: another", "final")
    text = decode(tokenizer, example.ids)
    assert text == "<|user|>a question<|assistant|>an answer<|user|>another<|assistant|>final<|endoftext|>"
    assert decode(tokenizer, [t for t, k in zip(example.ids, example.train_on) if k]) == "final<|endoftext|>"


def test_special_token_text_in_a_message_is_ordinary_text(tokenizer: Tokenizer) -> None:
    ids = special_token_ids(tokenizer)
    example = ChatTemplate(tokenizer).render("say <|assistant|> please", "<|endoftext|>")
    assert example.ids.count(ids[SPECIAL.assistant]) == 1
    assert example.ids.count(ids[SPECIAL.end_of_text]) == 1


def test_long_examples_keep_the_latest_context_and_the_whole_response(tokenizer: Tokenizer) -> None:
    template = ChatTemplate(tokenizer)
    prompt = "Human: " + "old words " * 50 + "\n\nAssistant: fine\n\nHuman: the latest question"
    full = template.render(prompt, "the answer")
    cut = template.render(prompt, "the answer", max_len=24)
    assert len(cut) <= 24 < len(full)
    assert decode(tokenizer, cut.ids).endswith("<|user|>the latest question<|assistant|>the answer<|endoftext|>")
    assert cut.ids[-sum(cut.train_on):] == full.ids[-sum(full.train_on):]
    too_long = template.render("q", "word " * 200, max_len=32)
    assert len(too_long) == 32 and too_long.ids[-1] != special_token_ids(tokenizer)[SPECIAL.end_of_text]


def test_prompt_ids_end_with_the_assistant_marker(tokenizer: Tokenizer) -> None:
    ids = ChatTemplate(tokenizer).prompt_ids("What now?")
    assert decode(tokenizer, ids) == "<|user|>What now?<|assistant|>"


def test_every_length_limit_is_respected_and_the_response_starts_after_the_marker(tokenizer: Tokenizer) -> None:
    template = ChatTemplate(tokenizer)
    assistant = special_token_ids(tokenizer)[SPECIAL.assistant]
    prompt = "Human: " + "a b c " * 20 + "\n\nAssistant: d e\n\nHuman: f g h"
    for max_len in range(4, 80):
        example = template.render(prompt, "x y z " * 10, max_len=max_len)
        assert len(example) <= max_len
        first = example.train_on.index(True)
        assert example.ids[first - 1] == assistant and not any(example.train_on[:first])


def test_a_long_response_leaves_the_prompt_its_reserved_room(tokenizer: Tokenizer) -> None:
    template = ChatTemplate(tokenizer)
    question = "What does Emma think of Mr Knightley, and why does it change?"
    whole_prompt = len(template.prompt_ids(question))
    example = template.render(question, "word " * 300, max_len=64, min_prompt_tokens=16)
    assert len(example) == 64
    assert example.train_on.index(True) == 16  # the prompt kept 16 tokens, cut from the left
    short = template.render("Why?", "word " * 300, max_len=64, min_prompt_tokens=16)
    assert short.train_on.index(True) == len(template.prompt_ids("Why?")) < 16  # a short prompt is whole
    assert whole_prompt > 16
