"""The PPO loop: a rollout's layout and log-probabilities, frozen models left untouched, the first
minibatch at ratio 1 with nothing clipped, the logged entropy that of the policy sampled from, the
reward model scored at the last response token, a task with a known optimum (emit a given token)
whose reward PPO raises within a few iterations, and a trainer saved and loaded that continues
exactly as the run that never stopped."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from instructgpt.generate import SamplingConfig
from instructgpt.heads import RewardModel
from instructgpt.model import GPT, preset
from instructgpt.ppo import masked_mean
from instructgpt.rlhf import PPOConfig, PPOTrainer, Rollout, policy_logprobs, reward_model_scorer, rollout

VOCAB, EOS, PAD, TARGET = 48, 0, 1, 7


def tiny_gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(preset("cpu-tiny", vocab_size=VOCAB, n_layer=1))


def prompts(n: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(2, VOCAB, (int(torch.randint(2, 6, (1,), generator=generator)),), generator=generator).tolist()
            for _ in range(n)]


def target_share(experience: Rollout) -> torch.Tensor:
    """The known-optimum task: the share of response tokens that are TARGET."""
    hits = (experience.responses == TARGET).float() * experience.response_mask
    return hits.sum(dim=1) / experience.response_mask.sum(dim=1).clamp(min=1)


def test_a_rollout_lays_out_left_padded_prompts_then_responses_with_their_logprobs(single_thread: None) -> None:
    actor = tiny_gpt(0).eval()
    batch = prompts(5, seed=0)
    out = rollout(actor, batch, SamplingConfig(max_new_tokens=6, temperature=1.0, seed=0), eos_id=EOS, pad_id=PAD)
    width = max(len(p) for p in batch)
    assert out.prompt_width == width and out.sequences.shape[1] == width + out.response_mask.shape[1]
    for row, prompt in enumerate(batch):
        assert out.sequences[row, width - len(prompt) : width].tolist() == prompt
        assert out.attention_mask[row, : width - len(prompt)].sum() == 0
        n = int(out.response_mask[row].sum())
        assert out.attention_mask[row, width : width + n].all() and not out.attention_mask[row, width + n :].any()
        assert bool(out.ended[row]) == (out.responses[row, n - 1].item() == EOS)
    with torch.no_grad():
        recomputed, _ = policy_logprobs(actor, out, temperature=1.0)
    torch.testing.assert_close(recomputed * out.response_mask, out.logprobs, rtol=1e-4, atol=1e-4)


def test_the_reward_model_scorer_reads_each_response_at_its_last_token(single_thread: None) -> None:
    reward = RewardModel(tiny_gpt(1)).eval()
    out = rollout(tiny_gpt(0).eval(), prompts(4, seed=1), SamplingConfig(max_new_tokens=5, seed=1), eos_id=EOS, pad_id=PAD)
    with torch.no_grad():
        scores = reward_model_scorer(reward)(out)
        for row in range(4):
            real = out.sequences[row][out.attention_mask[row].bool()]
            alone = reward(real[None], torch.tensor([len(real)]))
            assert scores[row].item() == pytest.approx(alone.item(), rel=1e-4, abs=1e-5)


def trainer(config: PPOConfig, seed: int = 0) -> PPOTrainer:
    actor = tiny_gpt(seed)
    return PPOTrainer(actor, copy.deepcopy(actor), RewardModel(tiny_gpt(seed + 1)), target_share, config,
                      SamplingConfig(max_new_tokens=8, temperature=1.0), actor_lr=3e-3, critic_lr=3e-3,
                      eos_id=EOS, pad_id=PAD, seed=seed)


def test_the_first_minibatch_has_ratio_one_and_the_reference_never_changes(single_thread: None) -> None:
    ppo = trainer(PPOConfig(ppo_epochs=1, minibatches=1))
    reference = {k: v.clone() for k, v in ppo.reference.state_dict().items()}
    experience = ppo.make_experience(prompts(16, seed=2))
    first = ppo._minibatch(experience, torch.arange(16), with_entropy=True)
    assert first["val/ratio"] == pytest.approx(1.0, abs=1e-5)
    assert first["policy/clipfrac"] == 0.0 and first["policy/approxkl"] == pytest.approx(0.0, abs=1e-8)
    assert all(torch.equal(v, ppo.reference.state_dict()[k]) for k, v in reference.items())
    assert all(not p.requires_grad for p in ppo.reference.parameters())
    assert experience.stats["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # the actor still is the reference


def test_the_logged_entropy_is_that_of_the_policy_sampled_from(single_thread: None) -> None:
    ppo = trainer(PPOConfig(ppo_epochs=3, minibatches=1))
    experience = ppo.make_experience(prompts(16, seed=3))
    with torch.no_grad():
        _, entropy = policy_logprobs(ppo.actor, experience, ppo.sampling.temperature, with_entropy=True)
    before = float(masked_mean(entropy, experience.response_mask))
    stats = ppo.update(experience)  # three epochs move the actor; only the first one's entropy is π_old's
    assert stats["objective/entropy"] == pytest.approx(before, rel=1e-6)
    assert 0 < stats["objective/entropy"] <= math.log(VOCAB)


def test_ppo_raises_the_reward_of_a_task_with_a_known_optimum(single_thread: None) -> None:
    ppo = trainer(PPOConfig(kl_coef=0.01, missing_eos_penalty=None, ppo_epochs=4, minibatches=2))
    history = [ppo.step(prompts(32, seed=100 + i)) for i in range(15)]
    scores = [h["objective/scores"] for h in history]
    assert sum(scores[:2]) / 2 < 0.1  # about 1 / VOCAB at the start
    assert sum(scores[-2:]) / 2 > 0.3, scores  # four seeds tried: 0.35 to 0.68 after 15 iterations
    for key in ("objective/kl", "objective/entropy", "objective/rlhf_reward", "objective/non_score_reward",
                "policy/approxkl", "policy/clipfrac", "loss/policy", "loss/value", "val/clipfrac", "val/ratio",
                "val/error", "response/length_mean", "response/eos_rate", "objective/kl_coef",
                "time/generate_s", "time/update_s"):
        assert key in history[-1]
    assert history[-1]["objective/kl"] > 0  # it moved away from the reference to get there


def test_a_saved_and_loaded_trainer_continues_exactly(tmp_path: Path, single_thread: None) -> None:
    config = PPOConfig(kl_coef=0.05, target_kl=0.5, kl_horizon=100, missing_eos_penalty=None, minibatches=2)  # β adapts: state
    batches = [prompts(8, seed=10 + i) for i in range(4)]
    straight = trainer(config)
    expected = [straight.step(batch) for batch in batches]
    stopped = trainer(config)
    for batch in batches[:2]:
        stopped.step(batch)
    stopped.save(tmp_path / "step_2")
    resumed = trainer(config)  # a fresh process: the models as they were built, then the checkpoint
    resumed.load(tmp_path / "step_2")
    assert resumed.iteration == 2
    continued = [resumed.step(batch) for batch in batches[2:]]
    for mine, theirs in zip(continued, expected[2:]):
        for key in ("objective/scores", "objective/kl", "loss/policy", "loss/value", "objective/kl_coef"):
            assert mine[key] == theirs[key], key
    for model in ("actor", "critic"):
        a, b = getattr(resumed, model).state_dict(), getattr(straight, model).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), model
