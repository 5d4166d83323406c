"""SFT as a task: the loss reads only response tokens, padding changes nothing, batches are an
epoch permutation, and the validation loss is the token-weighted mean a hand computation gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from instructgpt.batches import IGNORE
from instructgpt.chat import ChatTemplate
from instructgpt.model import GPT, preset
from instructgpt.sft import Example, SupervisedFineTuning, collate, render_examples, response_loss
from instructgpt.tokenizer import SPECIAL, TokenizerConfig, special_token_ids, train_tokenizer

PROMPTS = ["Who is Emma?", "Name a village.", "What is a ball?", "Say something kind.", "Count to three."]
RESPONSES = ["A young woman.", "Highbury, in Surrey.", "A dance, with music.", "You did well today.", "One, two, three."]
SOURCES = ["a", "b", "a", "b", "a"]


@pytest.fixture(scope="module")
def tokenizer(data_pack: Path) -> Tokenizer:
    text = (data_pack / "books/austen/emma.txt").read_text(encoding="utf-8")[:60_000]
    return train_tokenizer(text.split("\n\n"), TokenizerConfig(vocab_size=400))


@pytest.fixture(scope="module")
def examples(tokenizer: Tokenizer) -> list[Example]:
    return render_examples(ChatTemplate(tokenizer), PROMPTS, RESPONSES, SOURCES, max_len=64)


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> GPT:
    torch.manual_seed(0)
    return GPT(preset("cpu-tiny", vocab_size=tokenizer.get_vocab_size())).eval()


def pad_id(tokenizer: Tokenizer) -> int:
    return special_token_ids(tokenizer)[SPECIAL.pad]


def test_targets_are_the_response_and_its_end_of_text_only(tokenizer: Tokenizer, examples: list[Example]) -> None:
    template = ChatTemplate(tokenizer)
    for example, prompt, response in zip(examples, PROMPTS, RESPONSES):
        prompt_len = len(template.prompt_ids(prompt))
        trained = [t for t in example.targets if t != IGNORE]
        assert trained == example.ids[prompt_len:]  # every response token, the end-of-text last
        assert trained[-1] == template.eot
        assert all(t == IGNORE for t in example.targets[: prompt_len - 1])
        assert example.response_tokens == len(example.ids) - prompt_len


def test_collate_pads_on_the_right_and_ignores_the_padding(tokenizer: Tokenizer, examples: list[Example]) -> None:
    batch = collate(examples[:3], pad_id(tokenizer))
    width = max(len(e.ids) for e in examples[:3])
    assert batch["input_ids"].shape == batch["targets"].shape == (3, width)
    for row, example in enumerate(examples[:3]):
        n = len(example.ids)
        assert batch["input_ids"][row, :n].tolist() == example.ids
        assert set(batch["input_ids"][row, n:].tolist()) <= {pad_id(tokenizer)}
        assert set(batch["targets"][row, n:].tolist()) <= {IGNORE}
    assert batch["lengths"].tolist() == [len(e.ids) for e in examples[:3]]


def test_padding_changes_neither_the_loss_nor_its_gradient(tokenizer: Tokenizer, examples: list[Example], model: GPT) -> None:
    short = min(examples, key=lambda e: len(e.ids))
    long = max(examples, key=lambda e: len(e.ids))
    alone = collate([short], pad_id(tokenizer))
    padded = collate([short, long], pad_id(tokenizer))
    logits_alone = model(alone["input_ids"]).logits[0]
    logits_padded = model(padded["input_ids"]).logits[0, : len(short.ids)]
    torch.testing.assert_close(logits_padded, logits_alone, rtol=1e-5, atol=1e-5)
    # the batch loss is the mean over both rows' response tokens, computed by hand per row
    loss = model(padded["input_ids"], padded["targets"]).loss
    by_hand = torch.cat([
        F.cross_entropy(model(collate([e], pad_id(tokenizer))["input_ids"]).logits[0], torch.tensor(e.targets),
                        ignore_index=IGNORE, reduction="none")[torch.tensor(e.targets) != IGNORE]
        for e in (short, long)
    ]).mean()
    torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-6)


def test_batches_are_deterministic_and_cover_an_epoch(tokenizer: Tokenizer, examples: list[Example]) -> None:
    def task() -> SupervisedFineTuning:
        return SupervisedFineTuning(examples, examples[:2], batch_size=1, grad_accum=1, seed=7, pad_id=pad_id(tokenizer))

    first, second = task(), task()
    seen = [first.batch(step, 0, 0, 1)["input_ids"][0].tolist() for step in range(len(examples))]
    assert seen == [second.batch(step, 0, 0, 1)["input_ids"][0].tolist() for step in range(len(examples))]
    assert sorted(map(tuple, seen)) == sorted(tuple(e.ids) for e in examples)  # each example once per epoch
    assert first.tokens(first.batch(0, 0, 0, 1)) == len(seen[0])


def test_validation_loss_is_token_weighted_per_source_and_overall(tokenizer: Tokenizer, examples: list[Example], model: GPT) -> None:
    metrics = response_loss(model, examples, pad_id(tokenizer), batch_size=2)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    with torch.no_grad():
        for e in examples:
            logits = model(torch.tensor([e.ids])).logits[0]
            total = F.cross_entropy(logits, torch.tensor(e.targets), ignore_index=IGNORE, reduction="sum").item()
            sums[e.source] = sums.get(e.source, 0.0) + total
            counts[e.source] = counts.get(e.source, 0) + e.response_tokens
    for source in ("a", "b"):
        assert metrics[f"val/{source}/loss"] == pytest.approx(sums[source] / counts[source], rel=1e-5)
    assert metrics["val/loss"] == pytest.approx(sum(sums.values()) / sum(counts.values()), rel=1e-5)
    assert metrics["val/response_tokens"] == sum(counts.values())
    assert metrics["val/ppl"] == pytest.approx(torch.tensor(metrics["val/loss"]).exp().item(), rel=1e-5)


def test_an_empty_training_set_is_refused(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match="at least one"):
        SupervisedFineTuning([], [], batch_size=2, grad_accum=1, seed=0, pad_id=pad_id(tokenizer))


def test_a_batch_holds_examples_of_similar_length() -> None:
    # 256 examples whose lengths run from 4 to 200 tokens: a random batch of 8 pads to near its
    # longest draw; a length-grouped one pads to a neighbour's length.
    lengths = np.random.default_rng(0).integers(4, 200, size=256)
    examples = [Example([5] * int(n), [IGNORE] * (int(n) - 1) + [5], "a") for n in lengths]
    task = SupervisedFineTuning(examples, examples[:2], batch_size=8, grad_accum=1, seed=1, pad_id=0)
    batches = [task.batch(step, 0, 0, 1) for step in range(len(examples) // 8)]
    real = sum(task.tokens(b) for b in batches) / sum(b["input_ids"].numel() for b in batches)
    shuffled = np.split(np.random.default_rng(1).permutation(256), 32)
    random_real = np.mean([lengths[rows].sum() / (8 * lengths[rows].max()) for rows in shuffled])
    assert real > 0.9 > random_real
    assert sorted(n for b in batches for n in b["lengths"].tolist()) == sorted(lengths.tolist())  # one epoch, every example
