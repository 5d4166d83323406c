"""PPO's quantities for RLHF as pure functions of tensors: rewards, advantages, losses, KL control.

InstructGPT's step 3 optimises E[r(x, y) − β log(π(y|x) / π_SFT(y|x))] with PPO in a bandit
setting: a prompt, a sampled response, the reward model's score at the end. Per response token t
(of a batch [B, T] of right-padded responses, `mask` 1 on real response tokens):

    kl_t          = log π_old(y_t) − log π_ref(y_t)              (the k1 estimate; its mean is KL(π_old ‖ π_ref))
    r_t           = −β·kl_t, plus the score on the response's last token
    δ_t           = r_t + γ·V_{t+1} − V_t                        (V past the last token is 0)
    A_t           = δ_t + γ·λ·A_{t+1}                            (GAE), returns R_t = A_t + V_t
    ρ_t           = exp(log π(y_t) − log π_old(y_t))
    policy loss   = mean of max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε, 1 + ε))
    value loss    = ½ · mean of max((V_t − R_t)², (clip(V_t, V_old ± ε_v) − R_t)²)

Means are over the real tokens of the whole batch. Log-probabilities are those of logits divided
by the sampling temperature, so they are the distribution the tokens were drawn from. Each
function returns its statistics with the names RLHF practice logs (`policy/approxkl`,
`policy/clipfrac`, `val/clipfrac`, ...), so the loop just collects them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` where `mask` is 1 (over everything, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: Tensor, mask: Tensor) -> Tensor:
    """Unbiased variance of the masked values (0 for fewer than two)."""
    mean = masked_mean(values, mask)
    n = mask.sum()
    squares = masked_mean((values - mean) ** 2, mask)
    return squares * n / (n - 1) if n > 1 else torch.zeros_like(squares)


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(values − mean) / std over the masked entries; with shift_mean False the mean is kept."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    return (whitened if shift_mean else whitened + mean) * mask.to(values.dtype)


def last_token_index(mask: Tensor) -> Tensor:
    """[B] index of each row's last real token (rows are right-padded and non-empty)."""
    return (mask.sum(dim=1) - 1).clamp(min=0).long()


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) on tokens sampled from π [B, T] (0 off the mask).

    k1 = log π − log π_ref: unbiased, can be negative per token. k3 = (r − 1) − log r with
    r = π_ref / π: unbiased too, never negative, lower variance (Schulman, "Approximating KL").
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k3":
        kl = torch.expm1(-log_ratio) + log_ratio
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}: k1 or k3")
    return kl * mask.to(kl.dtype)


def score_with_penalties(scores: Tensor, ended: Tensor, missing_eos_penalty: float | None, clip: float | None = None) -> Tensor:
    """The reward model's scores [B], minus `missing_eos_penalty` where a response did not end,
    then clipped to ±clip (None: either step is off)."""
    scores = scores.float()
    if missing_eos_penalty is not None:
        scores = torch.where(ended.bool(), scores, scores - missing_eos_penalty)
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    return scores


def token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> tuple[Tensor, Tensor]:
    """Per-token rewards [B, T]: −β·kl everywhere, the score added on each row's last real token.

    Returns (rewards, non_score_rewards).
    """
    non_score = -kl_coef * kl * mask.to(kl.dtype)
    rewards = non_score.clone()
    rows = torch.arange(rewards.size(0), device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards, non_score


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns [B, T] (0 off the mask).

    A backward recursion over positions; past a row's last real token the value and the
    advantage are 0 (the episode has ended), so padding contributes nothing.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip: float) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate loss and its statistics (policy/approxkl, policy/clipfrac, val/ratio)."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "policy/approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "policy/clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "val/ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None) -> tuple[Tensor, dict[str, Tensor]]:
    """The critic's loss, clipped around the values seen at rollout, and val/clipfrac, val/error."""
    unclipped = (values - returns) ** 2
    if clip is None:
        worst = unclipped
        clipfrac = torch.zeros((), device=values.device)
    else:
        clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
        clipped = (clipped_values - returns) ** 2
        worst = torch.maximum(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).float(), mask).detach()
    loss = 0.5 * masked_mean(worst, mask)
    return loss, {"val/clipfrac": clipfrac, "val/error": masked_mean(unclipped, mask).detach()}


def entropy(logits: Tensor) -> Tensor:
    """Entropy of each position's distribution [B, T] (nats)."""
    return entropy_of(F.log_softmax(logits.float(), dim=-1))


def entropy_of(log_distribution: Tensor) -> Tensor:
    """Entropy [B, T] of log-probabilities over the vocabulary [B, T, V]."""
    return -(log_distribution.exp() * log_distribution).sum(dim=-1)


def log_distribution(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) [B, T, V]: the distribution a token was sampled from."""
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:  # at 1 (PPO's default) a division is a pass over B x T x V for nothing
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(token) under logits / temperature [B, T] (logits [B, T, V] aligned with tokens)."""
    return pick(log_distribution(logits, temperature), tokens)


def pick(log_distribution: Tensor, tokens: Tensor) -> Tensor:
    """The log-probabilities [B, T] of `tokens` [B, T] in a log distribution [B, T, V]."""
    return torch.gather(log_distribution, 2, tokens.unsqueeze(-1)).squeeze(-1)


@dataclass
class KLController:
    """β of the KL penalty: fixed, or adaptive towards a target KL (Ziegler et al. 2019):
    β ← β · (1 + clip(KL / target − 1, −0.2, 0.2) · n / horizon) after n more samples."""

    value: float
    target: float | None = None  # None: fixed β
    horizon: int = 10_000

    def update(self, kl: float, n_samples: int) -> float:
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_samples / self.horizon
        return self.value
