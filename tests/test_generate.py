"""Sampling: the KV cache changes nothing but speed, left padding changes nothing at all, and the
sampler picks only from what temperature, top-k and top-p allow, reproducibly."""

from __future__ import annotations

import pytest
import torch

from instructgpt.generate import Generation, SamplingConfig, filter_logits, generate, pick_tokens, sample
from instructgpt.model import GPT, preset

VOCAB, PAD = 97, 1
PROMPTS = [[5, 17, 33], list(range(10, 31)), [42], [7, 8, 9, 10, 11, 12, 13]]  # 3, 21, 1 and 7 tokens
# fp32: the cache, the padding and a full forward add the same numbers in other orders and in other
# matmul shapes. The bound is 1e-5 of the largest logit (about 10 here, so 1e-4 absolute); measured:
# 1.3e-5 absolute (1.3e-6 relative), and 1e-6 for a default-initialised cpu-small model.
RTOL = 1e-5


def tiny_gpt(**overrides: object) -> GPT:
    """A seeded cpu-tiny GPT. A larger init spread makes its next-token distributions peaked, so
    greedy choices are not near-ties that float rounding could flip."""
    torch.manual_seed(0)
    return GPT(preset("cpu-tiny", vocab_size=VOCAB, init_std=0.3, **overrides)).eval()


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_gpt()


def logits_alone(model: GPT, prompt: list[int], new: list[int]) -> torch.Tensor:
    """Next-token logits [len(new), V] that produced `new`, from one unpadded forward without a cache."""
    ids = torch.tensor([prompt + new])
    with torch.no_grad():
        logits = model(ids).logits[0]
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(new)]


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_logits_with_the_cache_equal_a_full_recomputation(sparse: bool) -> None:
    # a band of 4 positions is narrower than the prompts, so the sparse layers' band matters
    model = tiny_gpt(sparse_attention=True, local_window=4) if sparse else tiny_gpt()
    config = SamplingConfig(max_new_tokens=40, temperature=1.0, seed=3)
    out = generate(model, PROMPTS, config, eos_id=None, pad_id=PAD)
    # Replay the generation through the cache as `generate` does: left-padded prefill, one token a step.
    width = max(map(len, PROMPTS))
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in PROMPTS])
    cache = model.new_cache(len(PROMPTS), width + 40)
    with torch.no_grad():
        steps = [model(ids, attention_mask=mask, cache=cache).logits[:, -1]]
        for t in range(39):
            steps.append(model(out.tokens[:, t : t + 1], cache=cache).logits[:, -1])
    cached = torch.stack(steps, dim=1)
    for row, prompt in enumerate(PROMPTS):
        full = logits_alone(model, prompt, out.tokens[row].tolist())
        assert (cached[row] - full).abs().max().item() < RTOL * full.abs().max().item()


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_a_left_padded_batch_gives_each_prompt_its_own_greedy_tokens(sparse: bool) -> None:
    model = tiny_gpt(sparse_attention=True, local_window=4) if sparse else tiny_gpt()
    config = SamplingConfig(max_new_tokens=24, temperature=0)
    batch = generate(model, PROMPTS, config, eos_id=None, pad_id=PAD)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, [prompt], config, eos_id=None, pad_id=PAD)
        assert batch.tokens[row].tolist() == alone.tokens[0].tolist()


def test_greedy_picks_the_argmax_of_a_full_recomputation(model: GPT) -> None:
    out = generate(model, PROMPTS, SamplingConfig(max_new_tokens=16, temperature=0), eos_id=None, pad_id=PAD)
    for row, prompt in enumerate(PROMPTS):
        new = out.tokens[row].tolist()
        assert logits_alone(model, prompt, new).argmax(dim=-1).tolist() == new


def test_without_a_cache_the_same_tokens_come_out(model: GPT) -> None:
    config = SamplingConfig(max_new_tokens=20, temperature=0.9, top_k=20, seed=5)
    cached = generate(model, PROMPTS, config, eos_id=None, pad_id=PAD, return_logprobs=True)
    recomputed = generate(model, PROMPTS, config, eos_id=None, pad_id=PAD, return_logprobs=True, use_cache=False)
    assert torch.equal(cached.tokens, recomputed.tokens)
    torch.testing.assert_close(cached.logprobs, recomputed.logprobs, atol=RTOL, rtol=RTOL)


@pytest.mark.parametrize("temperature", [0.7, 1.0, 0.0])
def test_logprobs_are_log_softmax_of_logits_over_temperature(model: GPT, temperature: float) -> None:
    config = SamplingConfig(max_new_tokens=20, temperature=temperature, top_k=10, top_p=0.9, seed=1)
    out = generate(model, PROMPTS, config, eos_id=None, pad_id=PAD, return_logprobs=True)
    for row, prompt in enumerate(PROMPTS):
        new = out.tokens[row].tolist()
        scaled = logits_alone(model, prompt, new) / (temperature or 1.0)  # greedy: under softmax(logits)
        expected = scaled.log_softmax(dim=-1).gather(1, torch.tensor(new)[:, None]).squeeze(1)
        torch.testing.assert_close(out.logprobs[row], expected, atol=RTOL, rtol=RTOL)


def test_each_row_stops_at_its_end_of_text(model: GPT) -> None:
    config = SamplingConfig(max_new_tokens=30, temperature=1.0, seed=11)
    free = generate(model, PROMPTS, config, eos_id=None, pad_id=PAD).tokens
    eos = free[0, 4].item()  # a token that row 0 emits, so at least one row ends early
    out = generate(model, PROMPTS, config, eos_id=eos, pad_id=PAD, return_logprobs=True)
    for row in range(len(PROMPTS)):
        hits = (free[row] == eos).nonzero()
        length = hits[0].item() + 1 if len(hits) else 30
        assert out.lengths[row].item() == length
        assert out.ended[row].item() == bool(len(hits))
        assert out.tokens[row, :length].tolist() == free[row, :length].tolist()  # same stream until the end
        assert (out.tokens[row, length:] == PAD).all() and (out.logprobs[row, length:] == 0).all()
    assert out.tokens.shape[1] == out.lengths.max().item()
    assert out.mask.sum().item() == out.lengths.sum().item()
    assert [len(s) for s in out.sequences()] == out.lengths.tolist()


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "recomputed"])
def test_dropping_finished_rows_changes_nothing(model: GPT, use_cache: bool) -> None:
    config = SamplingConfig(max_new_tokens=30, temperature=1.0, seed=11)
    free = generate(model, PROMPTS, config, eos_id=None, pad_id=PAD).tokens
    eos = free[0, 4].item()
    run = dict(eos_id=eos, pad_id=PAD, return_logprobs=True, use_cache=use_cache)
    kept = generate(model, PROMPTS, config, **run, drop_finished=False)
    dropped = generate(model, PROMPTS, config, **run)
    assert kept.ended.sum().item() >= 2  # so that rows were dropped
    assert torch.equal(kept.tokens, dropped.tokens) and torch.equal(kept.lengths, dropped.lengths)
    torch.testing.assert_close(kept.logprobs, dropped.logprobs, atol=RTOL, rtol=RTOL)


def test_generation_stops_early_once_every_row_has_ended(model: GPT) -> None:
    greedy = SamplingConfig(max_new_tokens=30, temperature=0)
    first = generate(model, [PROMPTS[0]], greedy, eos_id=None, pad_id=PAD).tokens[0, 0].item()
    out = generate(model, [PROMPTS[0]], greedy, eos_id=first, pad_id=PAD)
    assert out.tokens.tolist() == [[first]] and out.ended.tolist() == [True] and out.lengths.tolist() == [1]


def test_the_same_seed_gives_the_same_output(model: GPT) -> None:
    config = SamplingConfig(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=7)
    a = generate(model, PROMPTS, config, eos_id=None, pad_id=PAD)
    b = generate(model, PROMPTS, config, eos_id=None, pad_id=PAD)
    other_seed = SamplingConfig(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=8)
    c = generate(model, PROMPTS, other_seed, eos_id=None, pad_id=PAD)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    unseeded = SamplingConfig(max_new_tokens=20, temperature=1.0, top_p=0.95)
    d = generate(model, PROMPTS, unseeded, eos_id=None, pad_id=PAD, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, d.tokens)


def test_outputs_feed_a_training_step_and_the_mode_is_restored(model: GPT) -> None:
    model.train()
    config = SamplingConfig(max_new_tokens=5, seed=0)
    out = generate(model, PROMPTS[:2], config, eos_id=None, pad_id=PAD, return_logprobs=True)
    assert model.training
    model.eval()
    loss = model(out.tokens, out.tokens).loss  # ordinary tensors, not inference-mode ones
    loss.backward()
    model.zero_grad(set_to_none=True)
    assert isinstance(out, Generation) and out.logprobs.requires_grad is False


def test_prompts_too_long_for_the_context_or_empty_are_refused(model: GPT) -> None:
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate(model, [[3] * 100], SamplingConfig(max_new_tokens=30), eos_id=0, pad_id=PAD)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[3], []], SamplingConfig(max_new_tokens=3), eos_id=0, pad_id=PAD)


# --- the sampler alone, on logits we choose -------------------------------------------------

DRAWS = 20_000


def draw(logits: list[float], config: SamplingConfig) -> torch.Tensor:
    """DRAWS samples from one row of logits (the row repeated, so one call samples them all)."""
    batch = torch.tensor(logits).expand(DRAWS, -1)
    uniform = torch.rand(DRAWS, generator=torch.Generator().manual_seed(0))
    tokens, _ = pick_tokens(batch, config, uniform, want_logprobs=False)
    return tokens


def frequencies(tokens: torch.Tensor, size: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=size).float() / len(tokens)


PROBS = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])  # sorted: 1 (0.4), 3 (0.3), 4 (0.15), 2 (0.1), 0 (0.05)


def test_greedy_is_the_argmax() -> None:
    logits = torch.randn(64, 300, generator=torch.Generator().manual_seed(0))
    tokens, _ = pick_tokens(logits, SamplingConfig(temperature=0), None, want_logprobs=False)
    assert torch.equal(tokens, logits.argmax(dim=-1))


def test_plain_sampling_follows_the_softmax() -> None:
    tokens = draw(PROBS.log().tolist(), SamplingConfig(temperature=1.0))
    assert (frequencies(tokens, 5) - PROBS).abs().max() < 0.015


def test_temperature_sharpens_the_distribution() -> None:
    tokens = draw(PROBS.log().tolist(), SamplingConfig(temperature=0.5))
    expected = PROBS**2 / (PROBS**2).sum()  # softmax(log p / 0.5) = p^2 normalised
    assert (frequencies(tokens, 5) - expected).abs().max() < 0.015


def test_top_k_never_samples_outside_the_k_most_likely() -> None:
    tokens = draw(PROBS.log().tolist(), SamplingConfig(temperature=1.0, top_k=2))
    assert set(tokens.tolist()) == {1, 3}
    assert abs(frequencies(tokens, 5)[1].item() - 0.4 / 0.7) < 0.015


def test_top_p_never_samples_outside_the_nucleus() -> None:
    # cumulative mass before each (sorted): 0, 0.4, 0.7, 0.85, 0.95 -> top_p 0.75 keeps 1, 3, 4
    tokens = draw(PROBS.log().tolist(), SamplingConfig(temperature=1.0, top_p=0.75))
    assert set(tokens.tolist()) == {1, 3, 4}
    assert abs(frequencies(tokens, 5)[4].item() - 0.15 / 0.85) < 0.015


def test_top_p_applies_to_what_top_k_kept() -> None:
    # top-k 3 keeps 1, 3, 4 (renormalised 0.47, 0.35, 0.18); top-p 0.5 then keeps 1 and 3
    tokens = draw(PROBS.log().tolist(), SamplingConfig(temperature=1.0, top_k=3, top_p=0.5))
    assert set(tokens.tolist()) == {1, 3}


def test_the_most_likely_token_survives_any_top_p() -> None:
    scores, ids = filter_logits(PROBS.log()[None], top_p=0.01)
    assert ids[0, 0].item() == 1 and torch.isfinite(scores).sum().item() == 1


def test_candidates_of_probability_zero_are_never_drawn() -> None:
    probs = torch.tensor([0.0, 0.0, 1e-3, 0.0, 2.0, 0.0]).expand(DRAWS, -1)
    picked = sample(probs, torch.rand(DRAWS, generator=torch.Generator().manual_seed(0)))
    assert set(picked.tolist()) == {2, 4}
    picked = sample(probs[:3], torch.tensor([0.0, 0.999_999_9, 1.0 - 2**-24]))  # the ends of [0, 1)
    assert set(picked.tolist()) == {2, 4}


def test_sampling_configs_are_checked() -> None:
    for bad in (dict(max_new_tokens=0), dict(temperature=-1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)  # type: ignore[arg-type]
