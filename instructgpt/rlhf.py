"""One PPO iteration of RLHF: roll out responses, score them, and update the actor and the critic.

The four models: the actor (trained, from SFT), the reference (frozen SFT), the critic (trained, a
value per token, from the reward model) and the scorer (frozen; the reward model in the pipeline,
any function of the rollout in tests). Frozen models run under `torch.inference_mode` and hold no
optimizer state.

A rollout's layout is one row per response: the prompt left-padded to the batch's widest (P
columns), then the response right-padded (T columns):

    [pad pad p0 p1 p2 | y0 y1 y2 eot pad]      attention_mask 0 on the pads

The logits at column P − 1 + t predict y_t, so the actor's, the reference's and the critic's
per-token outputs are read from columns P − 1 .. P + T − 2. The critic's V_t is its value at that
column: the state before y_t. The math is `instructgpt.ppo`.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from instructgpt import atomic, checkpoint, hardware, ppo
from instructgpt.generate import SamplingConfig, generate

Scorer = Callable[["Rollout"], Tensor]  # a rollout's scores [B], one per response


@dataclass(frozen=True)
class PPOConfig:
    """The knobs of one iteration; defaults from InstructGPT and the RLHF implementations' consensus."""

    ppo_epochs: int = 4  # passes over each batch of experience
    minibatches: int = 4  # per pass
    clip_ratio: float = 0.2  # ε of the clipped surrogate
    clip_value: float | None = 0.2  # the value loss is clipped around the rollout's values; None: off
    vf_coef: float = 0.1  # weight of the value loss (the critic has its own optimizer; this scales its step)
    entropy_coef: float = 0.0  # entropy bonus
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.02  # β (InstructGPT: 0.02)
    target_kl: float | None = None  # adaptive β towards this KL per response; None: fixed β
    kl_horizon: int = 10_000
    kl_estimator: str = "k1"
    missing_eos_penalty: float | None = 1.0  # subtracted from the score of a response cut off without end-of-text
    score_clip: float | None = None
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    grad_clip: float = 1.0
    ptx_coef: float = 0.0  # γ of PPO-ptx (InstructGPT: 27.8 with its own loss scaling); 0: off

    def __post_init__(self) -> None:
        if self.ppo_epochs < 1 or self.minibatches < 1:
            raise ValueError("ppo_epochs and minibatches must be at least 1")
        if not 0 < self.clip_ratio < 1:
            raise ValueError("clip_ratio must be in (0, 1)")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError("kl_estimator must be k1 or k3")


@dataclass
class Rollout:
    """Sampled responses and everything PPO computes about them before updating."""

    sequences: Tensor  # [B, P + T]
    attention_mask: Tensor  # [B, P + T]
    prompt_width: int  # P
    response_mask: Tensor  # [B, T] float, 1 on response tokens (the end-of-text included)
    ended: Tensor  # [B] bool
    logprobs: Tensor  # [B, T] under the actor at rollout (π_old)
    ref_logprobs: Tensor | None = None
    values: Tensor | None = None
    scores: Tensor | None = None  # the scorer's, before penalties
    rewards: Tensor | None = None
    advantages: Tensor | None = None
    returns: Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def responses(self) -> Tensor:
        return self.sequences[:, self.prompt_width :]

    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(dim=1).long()


def per_token(outputs: Tensor, prompt_width: int) -> Tensor:
    """Columns P − 1 .. P + T − 2 of a per-position output [B, P + T, ...]: one per response token."""
    return outputs[:, prompt_width - 1 : -1]


def positions(attention_mask: Tensor) -> Tensor:
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def policy_logprobs(model: nn.Module, rollout: Rollout, temperature: float, rows: Tensor | None = None,
                    with_entropy: bool = False, entropy_grad: bool = False) -> tuple[Tensor, Tensor | None]:
    """log π(y_t) of the rollout's tokens under `model` (logits / temperature) [b, T], and the entropy
    (with its gradient only when `entropy_grad`: a softmax over the vocabulary is costly to differentiate)."""
    ids = rollout.sequences if rows is None else rollout.sequences[rows]
    mask = rollout.attention_mask if rows is None else rollout.attention_mask[rows]
    hidden = model.hidden_states(ids, attention_mask=mask, position_ids=positions(mask))
    # the unembedding only where a response token is predicted: a third of the logits' cost saved
    # for 16-token prompts and 32-token responses
    logits = model.lm_head(per_token(hidden, rollout.prompt_width))
    log_distribution = ppo.log_distribution(logits, temperature)  # once, for the log-probs and the entropy
    logprobs = ppo.pick(log_distribution, ids[:, rollout.prompt_width :])
    if not with_entropy:
        return logprobs, None
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        return logprobs, ppo.entropy_of(log_distribution if entropy_grad else log_distribution.detach())


def critic_values(critic: nn.Module, rollout: Rollout, rows: Tensor | None = None) -> Tensor:
    """V_t of the critic for every response token [b, T]."""
    ids = rollout.sequences if rows is None else rollout.sequences[rows]
    mask = rollout.attention_mask if rows is None else rollout.attention_mask[rows]
    return per_token(critic.token_scores(ids, attention_mask=mask), rollout.prompt_width)


def reward_model_scorer(reward_model: nn.Module) -> Scorer:
    """Scores from a reward model (`instructgpt.heads.RewardModel`) at each response's last token."""

    def score(rollout: Rollout) -> Tensor:
        values = reward_model.token_scores(rollout.sequences, attention_mask=rollout.attention_mask)
        last = rollout.prompt_width - 1 + rollout.response_lengths()
        return values[torch.arange(values.size(0), device=values.device), last]

    return score


def rollout(actor: nn.Module, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, *, eos_id: int, pad_id: int,
            generator: torch.Generator | None = None) -> Rollout:
    """Sample one response per prompt with the KV-cache sampler, with the actor's log-probabilities."""
    out = generate(actor, prompts, sampling, eos_id=eos_id, pad_id=pad_id, generator=generator, return_logprobs=True)
    device = out.tokens.device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    prompt_mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.as_tensor(prompt, device=device)
        prompt_mask[row, width - len(prompt) :] = 1
    response_mask = out.mask.long()
    return Rollout(
        sequences=torch.cat([ids, out.tokens], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
        prompt_width=width,
        response_mask=response_mask.float(),
        ended=out.ended,
        logprobs=out.logprobs,
    )


class PPOTrainer:
    """Iterations of PPO on the four models; `step` returns the iteration's metrics."""

    def __init__(
        self,
        actor: nn.Module,
        reference: nn.Module,
        critic: nn.Module,
        scorer: Scorer,
        config: PPOConfig,
        sampling: SamplingConfig,
        *,
        actor_lr: float,
        critic_lr: float,
        eos_id: int,
        pad_id: int,
        seed: int = 0,
        weight_decay: float = 0.0,
        ptx_batches: Callable[[int], tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        self.actor, self.reference, self.critic, self.scorer = actor, reference, critic, scorer
        self.config, self.sampling = config, sampling
        self.eos_id, self.pad_id = eos_id, pad_id
        # Dropout stays off in every model (eval mode throughout), as RLHF implementations do: the
        # ratio of the first minibatch is then exactly 1, and π_old is the distribution sampled from.
        for model in (actor, reference, critic):
            model.eval()
        reference.requires_grad_(False)
        device = next(actor.parameters()).device
        if device.type == "cpu":
            hardware.keep_freed_memory()  # reuse activation memory rather than map it afresh every pass
        fused = device.type in ("cuda", "cpu") or None  # as in instructgpt.train: fused AdamW is faster on both
        self.actor_optimizer = torch.optim.AdamW([p for p in actor.parameters() if p.requires_grad], lr=actor_lr,
                                                 weight_decay=weight_decay, betas=(0.9, 0.95), fused=fused)
        self.critic_optimizer = torch.optim.AdamW([p for p in critic.parameters() if p.requires_grad], lr=critic_lr,
                                                  weight_decay=weight_decay, betas=(0.9, 0.95), fused=fused)
        self.kl = ppo.KLController(config.kl_coef, config.target_kl, config.kl_horizon)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.shuffle = torch.Generator().manual_seed(seed + 1)
        self.ptx_batches = ptx_batches
        self.iteration = 0

    def save(self, path: str | Path) -> Path:
        """Everything the next iteration depends on, as one directory written atomically: `actor/`
        and `critic/` (weights and optimizer state, `instructgpt.checkpoint`) and `state.json`
        (iterations done, β, the sampling and shuffling generators): a step directory that
        `checkpoint.latest_checkpoint` finds and `prune_checkpoints` prunes. The frozen models are inputs."""
        path = Path(path)
        with atomic.atomic_dir(path) as tmp:
            checkpoint.save_checkpoint(tmp / "actor", self.actor, self.actor_optimizer, step=self.iteration)
            checkpoint.save_checkpoint(tmp / "critic", self.critic, self.critic_optimizer, step=self.iteration)
            state = {"iteration": self.iteration, "kl_coef": self.kl.value,
                     "generator": _state_b64(self.generator), "shuffle": _state_b64(self.shuffle)}
            checkpoint.write_state(tmp, state)
        return path

    def load(self, path: str | Path) -> None:
        """Continue from a directory `save` wrote: the next `step` is the one that run would have taken."""
        path = Path(path)
        checkpoint.load_checkpoint(path / "actor", self.actor, self.actor_optimizer, restore_rng=False)
        checkpoint.load_checkpoint(path / "critic", self.critic, self.critic_optimizer, restore_rng=False)
        state = checkpoint.read_state(path)
        self.iteration, self.kl.value = int(state["iteration"]), float(state["kl_coef"])
        self.generator.set_state(_state_from_b64(state["generator"]))
        self.shuffle.set_state(_state_from_b64(state["shuffle"]))

    def step(self, prompts: Sequence[Sequence[int]]) -> dict[str, float]:
        started = time.perf_counter()
        experience = self.make_experience(prompts)
        generated = time.perf_counter()
        stats = self.update(experience)
        trained = time.perf_counter()
        self.kl.update(experience.stats["objective/kl"], len(prompts))
        self.iteration += 1
        return {**experience.stats, **stats, "objective/kl_coef": self.kl.value,
                "time/rollout_s": generated - started, "time/update_s": trained - generated}

    @torch.no_grad()
    def make_experience(self, prompts: Sequence[Sequence[int]]) -> Rollout:
        """Sample, then score with the frozen models and the critic; rewards and advantages."""
        c = self.config
        gen_start = time.perf_counter()
        out = rollout(self.actor, prompts, self.sampling, eos_id=self.eos_id, pad_id=self.pad_id, generator=self.generator)
        gen_seconds = time.perf_counter() - gen_start
        mask = out.response_mask
        with torch.inference_mode():
            ref_logprobs, _ = policy_logprobs(self.reference, out, self.sampling.temperature)
            scores = self.scorer(out).float()
        out.ref_logprobs, out.scores = ref_logprobs.clone(), scores.clone()
        # π_old is the sampler's own log-probabilities (softmax(logits / temperature) of the drawn
        # tokens): no extra forward; they match a training-shaped forward to float rounding
        out.logprobs = out.logprobs * mask
        out.values = critic_values(self.critic, out) * mask

        kl = ppo.kl_penalty(out.logprobs, out.ref_logprobs, mask, c.kl_estimator)
        penalised = ppo.score_with_penalties(scores, out.ended, c.missing_eos_penalty, c.score_clip)
        rewards, non_score = ppo.token_rewards(penalised, kl, mask, self.kl.value)
        if c.whiten_rewards:
            rewards = ppo.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = ppo.gae(rewards, out.values, mask, c.gamma, c.lam)
        if c.whiten_advantages:
            advantages = ppo.masked_whiten(advantages, mask)
        out.rewards, out.advantages, out.returns = rewards, advantages, returns
        lengths = mask.sum(dim=1)
        kl_per_response = kl.sum(dim=1)
        out.stats = {
            "objective/kl": float(kl_per_response.mean()),
            "objective/scores": float(scores.mean()),
            "objective/non_score_reward": float(non_score.sum(dim=1).mean()),
            "objective/rlhf_reward": float((penalised + non_score.sum(dim=1)).mean()),
            "response/length_mean": float(lengths.mean()),
            "response/eos_rate": float(out.ended.float().mean()),
            "time/generate_s": gen_seconds,
        }
        return out

    def update(self, experience: Rollout) -> dict[str, float]:
        """`ppo_epochs` passes of shuffled minibatches; the mean of every statistic over the minibatches
        that computed it. The entropy is the full distribution's, over the vocabulary: without an
        entropy bonus it is only a statistic, and it is computed in the first pass alone (π_old's, the
        policy sampled from), which saves three passes over B x T x V per minibatch in the other epochs."""
        c = self.config
        batch = experience.sequences.size(0)
        size = max(1, batch // c.minibatches)
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        for epoch in range(c.ppo_epochs):
            order = torch.randperm(batch, generator=self.shuffle).to(experience.sequences.device)
            for start in range(0, batch, size):
                rows = order[start : start + size]
                stats = self._minibatch(experience, rows, with_entropy=epoch == 0 or c.entropy_coef > 0)
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
        return {key: value / counts[key] for key, value in totals.items()}

    def _minibatch(self, experience: Rollout, rows: Tensor, with_entropy: bool) -> dict[str, float]:
        c = self.config
        mask = experience.response_mask[rows]
        logprobs, token_entropy = policy_logprobs(self.actor, experience, self.sampling.temperature, rows,
                                                  with_entropy=with_entropy, entropy_grad=c.entropy_coef > 0)
        pg_loss, pg_stats = ppo.policy_loss(logprobs, experience.logprobs[rows], experience.advantages[rows], mask, c.clip_ratio)
        actor_loss = pg_loss
        entropy_stats = {}
        if token_entropy is not None:
            mean_entropy = ppo.masked_mean(token_entropy, mask)
            entropy_stats["objective/entropy"] = float(mean_entropy.detach())
            if c.entropy_coef > 0:
                actor_loss = pg_loss - c.entropy_coef * mean_entropy
        ptx_loss = None
        if c.ptx_coef > 0 and self.ptx_batches is not None:
            inputs, targets = self.ptx_batches(self.iteration)
            ptx_loss = self.actor(inputs, targets).loss
            actor_loss = actor_loss + c.ptx_coef * ptx_loss
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        actor_norm = torch.nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_clip)
        self.actor_optimizer.step()

        values = critic_values(self.critic, experience, rows)
        vf_loss, vf_stats = ppo.value_loss(values, experience.values[rows], experience.returns[rows], mask, c.clip_value)
        self.critic_optimizer.zero_grad(set_to_none=True)
        (c.vf_coef * vf_loss).backward()
        critic_norm = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), c.grad_clip)
        self.critic_optimizer.step()

        stats = {
            "loss/policy": float(pg_loss.detach()), "loss/value": float(vf_loss.detach()), **entropy_stats,
            "policy/grad_norm": float(actor_norm), "val/grad_norm": float(critic_norm),
            **{key: float(value) for key, value in {**pg_stats, **vf_stats}.items()},
        }
        if ptx_loss is not None:
            stats["loss/ptx"] = float(ptx_loss.detach())
        return stats


def _state_b64(generator: torch.Generator) -> str:
    return base64.b64encode(generator.get_state().numpy().tobytes()).decode("ascii")


def _state_from_b64(text: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
