"""PPO's pure functions: GAE equals a brute-force recursion with ended sequences masked, the losses
equal hand computations, the first minibatch has ratio 1 and no clipping, the KL estimates are
non-negative in expectation on sampled tokens, the score lands on the last token, and β adapts."""

from __future__ import annotations

import math

import pytest
import torch

from instructgpt.ppo import (
    KLController,
    entropy,
    gae,
    kl_penalty,
    masked_mean,
    masked_whiten,
    policy_loss,
    score_with_penalties,
    token_logprobs,
    token_rewards,
    value_loss,
)


def right_padded_mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()


def brute_force_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """A_t = sum over l of (γλ)^l δ_{t+l}, δ_t = r_t + γ V_{t+1} − V_t, V after the end = 0."""
    n = len(rewards)
    v = values + [0.0]
    deltas = [rewards[t] + gamma * v[t + 1] - v[t] for t in range(n)]
    advantages = [sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t)) for t in range(n)]
    return advantages, [a + values[t] for t, a in enumerate(advantages)]


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_equals_a_brute_force_recursion_with_ended_sequences_masked(gamma: float, lam: float) -> None:
    torch.manual_seed(0)
    lengths = [7, 3, 1, 5]
    mask = right_padded_mask(lengths, 7)
    rewards, values = torch.randn(4, 7), torch.randn(4, 7)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for row, n in enumerate(lengths):
        expected_a, expected_r = brute_force_gae(rewards[row, :n].tolist(), values[row, :n].tolist(), gamma, lam)
        torch.testing.assert_close(advantages[row, :n], torch.tensor(expected_a), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(returns[row, :n], torch.tensor(expected_r), rtol=1e-5, atol=1e-5)
        assert advantages[row, n:].abs().sum() == 0 and returns[row, n:].abs().sum() == 0  # padding is inert


def test_the_score_lands_on_the_last_response_token_and_the_kl_penalty_everywhere() -> None:
    mask = right_padded_mask([3, 1], 4)
    kl = torch.tensor([[0.5, -0.1, 0.2, 9.0], [0.3, 9.0, 9.0, 9.0]]) * mask
    rewards, non_score = token_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.05, 0.01, -0.02 + 2.0, 0.0], [-0.03 - 1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(non_score, -0.1 * kl)


def test_a_response_without_end_of_text_is_penalised_and_scores_clip() -> None:
    scores = torch.tensor([1.0, 1.0, 8.0])
    ended = torch.tensor([True, False, True])
    assert score_with_penalties(scores, ended, 2.0).tolist() == [1.0, -1.0, 8.0]
    assert score_with_penalties(scores, ended, None, clip=5.0).tolist() == [1.0, 1.0, 5.0]


def test_the_policy_loss_equals_a_hand_computation() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.7, 0.2, 0.9]]))  # ratios 1.4, 0.4 (and padding)
    advantages = torch.tensor([[1.0, -2.0, 5.0]])
    loss, stats = policy_loss(new, old, advantages, mask, clip=0.2)
    # token 1: max(-1 * 1.4, -1 * 1.2) = -1.2 (clipped); token 2: max(2 * 0.4, 2 * 0.8) = 1.6 (clipped)
    assert loss.item() == pytest.approx((-1.2 + 1.6) / 2)
    assert stats["policy/clipfrac"].item() == pytest.approx(1.0)
    assert stats["val/ratio"].item() == pytest.approx((1.4 + 0.4) / 2)
    assert stats["policy/approxkl"].item() == pytest.approx(0.5 * (math.log(1.4) ** 2 + math.log(0.4) ** 2) / 2)


def test_at_the_first_minibatch_the_ratio_is_one_and_nothing_is_clipped() -> None:
    torch.manual_seed(1)
    logprobs = torch.randn(3, 5).log_softmax(-1)
    advantages = torch.randn(3, 5)
    mask = right_padded_mask([5, 2, 4], 5)
    loss, stats = policy_loss(logprobs, logprobs.clone(), advantages, mask, clip=0.2)
    assert stats["val/ratio"].item() == pytest.approx(1.0)
    assert stats["policy/clipfrac"].item() == 0.0 and stats["policy/approxkl"].item() == 0.0
    assert loss.item() == pytest.approx(-masked_mean(advantages, mask).item(), rel=1e-6)


def test_the_value_loss_clips_around_the_rollout_values() -> None:
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    old = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    new = torch.tensor([[0.5, 0.1, 1.0, 7.0]])
    returns = torch.tensor([[1.0, -1.0, 3.0, 0.0]])
    loss, stats = value_loss(new, old, returns, mask, clip=0.2)
    # token 1: unclipped (0.5-1)^2 = .25, clipped (0.2-1)^2 = .64 -> .64; token 2: 1.21 vs 1.21; token 3: 4 vs 4
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21 + 4.0) / 3)
    assert stats["val/clipfrac"].item() == pytest.approx(1 / 3)
    assert stats["val/error"].item() == pytest.approx((0.25 + 1.21 + 4.0) / 3)
    unclipped, _ = value_loss(new, old, returns, mask, clip=None)
    assert unclipped.item() == pytest.approx(0.5 * (0.25 + 1.21 + 4.0) / 3)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_the_kl_estimates_are_non_negative_in_expectation_on_sampled_tokens(estimator: str) -> None:
    generator = torch.Generator().manual_seed(0)
    policy = torch.randn(64, 50, generator=generator).log_softmax(-1)  # 64 positions, vocabulary 50
    reference = (policy + 0.5 * torch.randn(64, 50, generator=generator)).log_softmax(-1)
    exact = (policy.exp() * (policy - reference)).sum(-1).mean()
    samples = torch.multinomial(policy.exp(), 2000, replacement=True, generator=generator)  # [64, 2000]
    logp, logref = policy.gather(1, samples), reference.gather(1, samples)
    kl = kl_penalty(logp, logref, torch.ones_like(logp), estimator)
    assert kl.mean().item() > 0
    assert kl.mean().item() == pytest.approx(exact.item(), rel=0.1)
    if estimator == "k3":
        assert (kl >= -1e-6).all()  # k3 is never negative, token by token
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(logp, logref, torch.ones_like(logp), "k9")


def test_whitening_gives_zero_mean_unit_variance_over_the_mask() -> None:
    torch.manual_seed(2)
    values = torch.randn(4, 6) * 3 + 2
    mask = right_padded_mask([6, 4, 2, 5], 6)
    white = masked_whiten(values, mask)
    assert masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-6)
    picked = white[mask.bool()]
    assert picked.var().item() == pytest.approx(1.0, rel=1e-4)
    assert (white[~mask.bool()] == 0).all()
    kept = masked_whiten(values, mask, shift_mean=False)
    assert masked_mean(kept, mask).item() == pytest.approx(masked_mean(values, mask).item(), rel=1e-5)


def test_logprobs_use_the_sampling_temperature_and_entropy_is_that_of_the_distribution() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])
    tokens = torch.tensor([[0, 2]])
    at_half = token_logprobs(logits, tokens, temperature=0.5)
    assert at_half[0, 0].item() == pytest.approx(torch.log_softmax(logits[0, 0] / 0.5, -1)[0].item())
    assert at_half[0, 1].item() == pytest.approx(math.log(1 / 3))
    assert entropy(logits)[0, 1].item() == pytest.approx(math.log(3))


def test_the_kl_controller_is_fixed_or_adapts_towards_its_target() -> None:
    fixed = KLController(0.02)
    assert fixed.update(100.0, 512) == 0.02
    adaptive = KLController(0.1, target=6.0, horizon=10_000)
    assert adaptive.update(12.0, 1000) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped at +0.2
    before = adaptive.value
    assert adaptive.update(5.4, 1000) == pytest.approx(before * (1 - 0.1 * 0.1))  # KL below target: β falls
