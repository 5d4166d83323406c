"""The reward model: a GPT body without its unembedding, and a scalar head on the final hidden states.

InstructGPT's reward model is the SFT model with the unembedding layer removed and a projection to
one number: r(x, y) is read at the last token of prompt x followed by response y (here the
end-of-text, when the response ended). `token_scores` gives the head at every position; PPO's
critic (a value per token) starts from the same module.

Sequences are right-padded, so every real token comes before any padding and causal attention keeps
padding invisible to it; the score is read at position `length - 1` of each row.

After training a bias is set so that the reference demonstrations score mean 0 (InstructGPT
normalises its reward model this way before RL). It is a buffer: saved with the weights, applied
in every score, never trained.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from instructgpt import checkpoint
from instructgpt.model import GPT, GPTConfig


class RewardModel(nn.Module):
    def __init__(self, body: GPT) -> None:
        super().__init__()
        self.config: GPTConfig = body.config  # checkpoints record the body's config
        del body.lm_head  # the unembedding is removed: the body only yields hidden states
        self.body = body
        self.head = nn.Linear(body.config.n_embd, 1, bias=False)
        # 1/sqrt(d + 1): unit-variance scores for unit-variance features at the start (Ziegler et al. 2019)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(body.config.n_embd + 1))
        self.register_buffer("score_bias", torch.zeros(()))

    def token_scores(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The head at every position [B, T], the normalisation bias included.

        attention_mask: [B, T], 1 for real tokens, for rows padded anywhere (e.g. a left-padded
        prompt and its response, as PPO's critic reads them); positions count real tokens only.
        """
        hidden = self.body.hidden_states(input_ids, attention_mask=attention_mask)
        return self.head(hidden).squeeze(-1).float() + self.score_bias

    def forward(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        """r(x, y) [B] of right-padded rows [B, T] with `lengths` real tokens each."""
        scores = self.token_scores(input_ids)
        return scores.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)

    def set_bias(self, bias: float) -> None:
        self.score_bias.fill_(bias)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """6N over the body without the unembedding (the tied embedding is a lookup), plus attention."""
        c = self.config
        t = seq_len or c.context
        body = sum(p.numel() for p in self.parameters()) - c.vocab_size * c.n_embd - c.context * c.n_embd
        return 6 * body + 12 * c.n_layer * c.n_embd * t


def load_reward_model(path: str | Path, device: str | torch.device = "cpu", **overrides: Any) -> RewardModel:
    """The reward model of a checkpoint directory, its normalisation bias included."""
    path = Path(path)
    if checkpoint.read_state(path).get("extra", {}).get("model") != "reward":
        raise checkpoint.CheckpointError("is not a reward model checkpoint (extra.model != 'reward')",
                                         file=path / checkpoint.STATE_FILE)
    model = RewardModel(GPT(checkpoint.model_config(path, **overrides)))
    checkpoint.load_checkpoint(path, model, restore_rng=False, config_changes=overrides)
    return model.to(device)
