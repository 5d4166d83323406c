"""The policy-against-baseline comparison: a model against itself ties every prompt with zero KL,
log-probability sums match a hand computation, and answers fit the context however long the prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from instructgpt.chat import ChatTemplate
from instructgpt.evaluation import answers_of, compare, response_logprob_sums
from instructgpt.generate import SamplingConfig
from instructgpt.heads import RewardModel
from instructgpt.model import GPT, preset
from instructgpt.tokenizer import SPECIAL, TokenizerConfig, special_token_ids, train_tokenizer

PROMPTS = ["Who is Emma?", "Name a village in Surrey.", "What is a ball?"]
REFERENCES = ["Emma is a young woman of Highbury.", "Highbury is a village.", "A ball is a dance."]


@pytest.fixture(scope="module")
def tokenizer(data_pack: Path) -> Tokenizer:
    text = (data_pack / "books/austen/emma.txt").read_text(encoding="utf-8")[:60_000]
    return train_tokenizer(text.split("\n\n"), TokenizerConfig(vocab_size=400))


def gpt(tokenizer: Tokenizer, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(preset("cpu-tiny", vocab_size=tokenizer.get_vocab_size())).eval()


def test_a_model_against_itself_ties_everywhere_with_zero_kl(tokenizer: Tokenizer) -> None:
    model, reward = gpt(tokenizer, 0), RewardModel(gpt(tokenizer, 1)).eval()
    pad = special_token_ids(tokenizer)[SPECIAL.pad]
    sampling = SamplingConfig(max_new_tokens=10, temperature=1.0, seed=3)
    out = compare(model, model, model, reward, ChatTemplate(tokenizer), PROMPTS, REFERENCES, sampling, pad_id=pad)
    assert out.texts["policy"] == out.texts["baseline"] and len(out.texts["policy"]) == len(PROMPTS)
    out = out.figures
    assert out["win_rate"] == 0.5 and out["ties"] == 3
    assert out["policy/reward_score"] == out["baseline/reward_score"]
    assert out["policy/kl_to_reference"] == pytest.approx(0.0, abs=1e-5)
    other = compare(gpt(tokenizer, 5), model, model, reward, ChatTemplate(tokenizer), PROMPTS, REFERENCES, sampling,
                    pad_id=pad).figures
    assert other["policy/kl_to_reference"] != 0.0 and other["baseline/kl_to_reference"] == pytest.approx(0.0, abs=1e-5)


def test_logprob_sums_match_a_hand_computation(tokenizer: Tokenizer) -> None:
    model = gpt(tokenizer, 0)
    pad = special_token_ids(tokenizer)[SPECIAL.pad]
    answers = answers_of(model, ChatTemplate(tokenizer), PROMPTS, SamplingConfig(max_new_tokens=6, temperature=1.0, seed=0))
    sums = response_logprob_sums(model, answers, pad, temperature=0.5, batch_size=2)
    with torch.no_grad():
        for i, (seq, p) in enumerate(zip(answers.sequences, answers.prompt_lengths)):
            logp = torch.log_softmax(model(torch.tensor([seq])).logits[0] / 0.5, dim=-1)
            by_hand = sum(logp[t - 1, seq[t]].item() for t in range(p, len(seq)))
            assert sums[i] == pytest.approx(by_hand, rel=1e-4, abs=1e-4)


def test_answers_to_a_full_length_prompt_fit_the_context(tokenizer: Tokenizer) -> None:
    model = gpt(tokenizer, 0)
    long_prompt = "Emma Woodhouse, handsome, clever, and rich, " * 40
    answers = answers_of(model, ChatTemplate(tokenizer), [long_prompt], SamplingConfig(max_new_tokens=8, temperature=1.0, seed=0))
    assert len(answers.sequences[0]) <= model.config.context  # one forward can score it
    assert 0 < answers.prompt_lengths[0] < len(answers.sequences[0])
