"""Answering prompts: K samples per prompt in the prompts' order, reproducible, and the same
answers whatever the batch size for greedy decoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from instructgpt.answers import answer
from instructgpt.chat import ChatTemplate
from instructgpt.generate import SamplingConfig
from instructgpt.model import GPT, preset
from instructgpt.tokenizer import SPECIAL, TokenizerConfig, decode, special_token_ids, train_tokenizer

PROMPTS = ["Who is Emma?", "Name a village in Surrey, please, and say why it matters.", "Hi"]


@pytest.fixture(scope="module")
def tokenizer(data_pack: Path) -> Tokenizer:
    text = (data_pack / "books/austen/emma.txt").read_text(encoding="utf-8")[:60_000]
    return train_tokenizer(text.split("\n\n"), TokenizerConfig(vocab_size=400))


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> GPT:
    torch.manual_seed(0)
    return GPT(preset("cpu-tiny", vocab_size=tokenizer.get_vocab_size(), init_std=0.3)).eval()


def test_k_samples_per_prompt_in_order_and_reproducible(tokenizer: Tokenizer, model: GPT) -> None:
    template = ChatTemplate(tokenizer)
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=3)
    first = answer(model, template, PROMPTS, sampling, samples=4, batch_rows=8)
    assert [len(a) for a in first] == [4, 4, 4]
    assert first == answer(model, template, PROMPTS, sampling, samples=4, batch_rows=8)
    eot = special_token_ids(tokenizer)[SPECIAL.end_of_text]
    for answers in first:
        for a in answers:
            assert a.ended == (a.tokens[-1] == eot)
            assert a.ended or len(a.tokens) == 12
            assert a.text == decode(tokenizer, a.tokens[:-1] if a.ended else a.tokens)
    assert len({tuple(a.tokens) for answers in first for a in answers}) > 3  # samples differ


def test_greedy_answers_do_not_depend_on_the_batching(tokenizer: Tokenizer, model: GPT) -> None:
    template = ChatTemplate(tokenizer)
    greedy = SamplingConfig(max_new_tokens=10, temperature=0.0)
    one_by_one = [answer(model, template, [p], greedy)[0][0].tokens for p in PROMPTS]
    batched = [a[0].tokens for a in answer(model, template, PROMPTS, greedy, batch_rows=3)]
    assert batched == one_by_one


def test_a_response_budget_larger_than_the_context_is_refused(tokenizer: Tokenizer, model: GPT) -> None:
    with pytest.raises(ValueError, match="no room"):
        answer(model, ChatTemplate(tokenizer), PROMPTS, SamplingConfig(max_new_tokens=model.config.context))
