"""Stage `ppo`: InstructGPT step 3, PPO against the reward model, and whether it beats SFT.

The actor starts from the SFT model (`data/models/sft/`) and is trained; the reference is the
frozen SFT model; the reward model (`data/models/reward/`, normalised) scores each response at its
end; the critic, a value per token, starts from the reward model (`critic_init: reward`) or from
SFT with a fresh head (`sft`). Each iteration takes `batch_prompts` prompts of phase `ppo` from the
`prompts` table (an epoch permutation), samples one response each with the KV-cache sampler, and
makes `ppo.ppo_epochs` passes over them (`instructgpt.rlhf`, `instructgpt.ppo`). Optional PPO-ptx
mixes in the pretraining LM loss on windows of `data/shards` (`ppo.ptx_coef`). Every
`checkpoint_every` iterations the trainer's state is saved under `.runs/ppo/<run key>/checkpoints/`;
a killed run started again continues from the newest, exactly (`PPOTrainer.save`/`load`).

After training, the policy and the SFT model answer the held-out prompts of phase `eval` (which
have reference demonstrations) with the same sampling: mean reward-model score, mean programmatic
labeler score (the stand-in judge, never the reward model), the policy's win rate against SFT under
the labeler, and each one's KL from the reference (`instructgpt.evaluation`).

Writes `data/models/policy/`, `metrics/ppo.json`, `metrics/ppo/train.csv` (per iteration, for `dvc
plots`), `metrics/ppo/curves.png` and `metrics/ppo/samples.jsonl` (every compared prompt: its reference, the SFT
and the policy answers that were judged).

    python -m stages.ppo        (or: dvc repro ppo)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from instructgpt import atomic, checkpoint, curves, hardware, shards
from instructgpt.batches import EpochSampler, TokenBatches
from instructgpt.chat import ChatTemplate
from instructgpt.config import from_params
from instructgpt.errors import ConfigError, DataError
from instructgpt.evaluation import compare
from instructgpt.generate import SamplingConfig
from instructgpt.heads import RewardModel, load_reward_model
from instructgpt.labelers import ProgrammaticLabeler
from instructgpt.rlhf import PPOConfig, PPOTrainer, reward_model_scorer
from instructgpt.tokenizer import SPECIAL, load_tokenizer, special_token_ids, tokenizer_sha256
from instructgpt.train import seed_everything
from stages import training
from stages.common import StageContext, read_table, run_stage, select_sources
from stages.reward import REWARD_MODEL
from stages.sft import DEMONSTRATIONS, SFT_MODEL

PROMPTS = Path("data/prepared/prompts.parquet")
SHARDS = Path("data/shards")
POLICY = Path("data/models/policy")
CURVE_PANELS = {
    "reward": ["objective/scores", "objective/rlhf_reward"],
    "KL to the reference": ["objective/kl"],
    "entropy": ["objective/entropy"],
    "policy": ["policy/approxkl", "policy/clipfrac"],
    "value": ["loss/value", "val/error", "val/clipfrac"],
    "responses": ["response/length_mean"],
}


@dataclass(frozen=True)
class EvalParams:
    """params.yaml: ppo.eval."""

    prompts: int | None = 64  # held-out prompts of phase eval with a reference; None = all
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=64, temperature=0.7, top_k=50, seed=1))


@dataclass(frozen=True)
class PpoParams:
    """params.yaml: ppo."""

    iterations: int = 30
    batch_prompts: int = 32
    max_prompt_tokens: int = 64  # longer prompts are left out of PPO (most are far shorter; each row costs its length)
    sources: list[str] = field(default_factory=list)  # prompt sources of phase ppo; [] = all
    # PPO samples from the full distribution at this temperature: the log-probabilities it trains
    # on are those of softmax(logits / temperature), so top-k / top-p would make it off-policy
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=48, temperature=1.0, seed=0))
    ppo: PPOConfig = field(default_factory=PPOConfig)
    actor_lr: float = 1e-5
    critic_lr: float = 1e-5
    weight_decay: float = 0.0
    critic_init: str = "reward"  # reward | sft
    ptx_batch_size: int = 4  # pretraining windows per minibatch when ppo.ptx_coef > 0
    eval: EvalParams = field(default_factory=EvalParams)
    checkpoint_every: int = 10  # iterations (and the last); a killed run resumes from the newest; 0: none
    keep_checkpoints: int = 2
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.critic_init not in ("reward", "sft"):
            raise ValueError("critic_init must be reward or sft")
        if self.iterations < 1 or self.batch_prompts < 1:
            raise ValueError("iterations and batch_prompts must be at least 1")
        if self.sampling.top_k or self.sampling.top_p < 1.0:
            raise ValueError("PPO samples from the full distribution: set sampling.top_k 0 and top_p 1.0")


def main(ctx: StageContext) -> dict[str, Any]:
    params = from_params(PpoParams, ctx.section, ctx.where())
    seed_everything(params.seed)
    device = hardware.select_device(params.device)
    sft_dir, reward_dir = ctx.path(SFT_MODEL), ctx.path(REWARD_MODEL)
    tokenizer = load_tokenizer(sft_dir / "tokenizer.json")
    ids = special_token_ids(tokenizer)
    eos, pad = ids[SPECIAL.end_of_text], ids[SPECIAL.pad]
    template = ChatTemplate(tokenizer)

    actor = checkpoint.load_model(sft_dir, dropout=0.0).to(device)
    reference = checkpoint.load_model(sft_dir, dropout=0.0).to(device)
    reward_model = load_reward_model(reward_dir, dropout=0.0).to(device).eval().requires_grad_(False)
    critic = (load_reward_model(reward_dir, dropout=0.0) if params.critic_init == "reward"
              else RewardModel(checkpoint.load_model(sft_dir, dropout=0.0))).to(device)
    prompts, too_long = _ppo_prompts(ctx, params, template, actor.config.context)
    trainer = PPOTrainer(actor, reference, critic, reward_model_scorer(reward_model), params.ppo, params.sampling,
                         actor_lr=params.actor_lr, critic_lr=params.critic_lr, eos_id=eos, pad_id=pad, seed=params.seed,
                         weight_decay=params.weight_decay, ptx_batches=_ptx_batches(ctx, params, actor.config.context, device))
    sampler = EpochSampler(len(prompts), params.batch_prompts, 1, params.seed)
    run = training.run_dir(ctx, params, [sft_dir, reward_dir, ctx.path(PROMPTS)])
    log = curves.CurveLog(run / "curve.jsonl")
    checkpoints = run / "checkpoints"
    latest = checkpoint.latest_checkpoint(checkpoints)
    if latest is not None:  # a killed run started again: continue where its last checkpoint left off
        trainer.load(latest)
        print(f"  resuming after iteration {trainer.iteration} from {latest}")
    else:
        log.path.unlink(missing_ok=True)
    ctx.tracker.log_params({"model": actor.config.to_dict(), "prompts.ppo": len(prompts), "run_dir": str(run)})
    print(f"  PPO on {len(prompts):,} prompts of phase ppo ({too_long} longer than {params.max_prompt_tokens} tokens left out): {params.iterations} iterations of {params.batch_prompts} "
          f"({sampler.epochs(params.iterations):.2f} epochs), critic from {params.critic_init}, on {device}")

    started = time.perf_counter()
    for iteration in range(trainer.iteration + 1, params.iterations + 1):
        batch = [prompts[i] for i in sampler.indices(iteration - 1)]
        metrics = trainer.step(batch)
        log.append("train", iteration, metrics)
        ctx.tracker.log_metrics(curves.finite(metrics), step=iteration)
        if params.checkpoint_every and (iteration % params.checkpoint_every == 0 or iteration == params.iterations):
            trainer.save(checkpoint.step_dir(checkpoints, iteration))
            checkpoint.prune_checkpoints(checkpoints, params.keep_checkpoints)
        print(f"  iteration {iteration:3d}: score {metrics['objective/scores']:+.3f}  kl {metrics['objective/kl']:.3f}  "
              f"entropy {metrics['objective/entropy']:.2f}  clipfrac {metrics['policy/clipfrac']:.3f}  "
              f"length {metrics['response/length_mean']:.1f}  eos {metrics['response/eos_rate']:.2f}", flush=True)
    train_seconds = time.perf_counter() - started

    frame = log.frame("train")
    out_dir = ctx.path("metrics/ppo")
    curves.write_csv(frame, out_dir / "train.csv", [c for c in frame.columns if c != "step"])
    curves.plot_panels(frame, out_dir / "curves.png", "ppo: per iteration", CURVE_PANELS)
    for name in ("train.csv", "curves.png"):
        ctx.tracker.log_artifact(out_dir / name, "curves")

    comparison, samples = _compare_with_sft(ctx, params, actor, reference, reward_model, template, pad)
    actor.to("cpu")
    training.publish_model(actor, sft_dir / "tokenizer.json", ctx.path(POLICY), step=params.iterations,
                           extra={"model": "policy", "stage": "ppo", "tokenizer_sha256": tokenizer_sha256(tokenizer),
                                  "sft_step": checkpoint.read_state(sft_dir)["step"], "comparison": comparison})
    ctx.tracker.log_artifact(ctx.path(POLICY / checkpoint.STATE_FILE), "model")
    return {"prompts": len(prompts), "prompts_too_long": too_long,
            **_report(frame, comparison, samples, train_seconds, params, device)}


def _ppo_prompts(ctx: StageContext, params: PpoParams, template: ChatTemplate, context: int) -> tuple[list[list[int]], int]:
    """The phase-ppo prompts as token ids, those longer than max_prompt_tokens left out (and counted)."""
    table = select_sources(ctx, read_table(ctx.path(PROMPTS), "prompts", "ingest"), params.sources, "sources", "prompts")
    table = table[table["phase"] == "ppo"].sort_values("prompt", kind="stable")
    if table.empty:
        raise DataError("no prompts of phase 'ppo': check ingest.phases", file=ctx.path(PROMPTS))
    limit = min(params.max_prompt_tokens, context - params.sampling.max_new_tokens)  # prompt + response fit one forward
    encoded = [template.prompt_ids(p) for p in table["prompt"]]
    kept = [ids for ids in encoded if len(ids) <= limit]
    if not kept:
        raise ConfigError(f"no prompt of phase ppo has at most {limit} tokens", file=ctx.where("max_prompt_tokens"))
    return kept, len(encoded) - len(kept)


def _ptx_batches(ctx: StageContext, params: PpoParams, context: int, device: torch.device):
    """PPO-ptx's pretraining windows, when it is on: batch i is a pure function of the iteration."""
    if params.ppo.ptx_coef <= 0:
        return None
    windows = TokenBatches(shards.read_shard(ctx.path(SHARDS), "train"), context, params.ptx_batch_size, params.seed)

    def batch(iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = windows.batch(iteration)
        return torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)

    return batch


def _compare_with_sft(ctx: StageContext, params: PpoParams, policy, sft, reward_model, template: ChatTemplate,
                      pad: int) -> tuple[dict[str, float], list[dict]]:
    """The policy against SFT on held-out prompts of phase eval, judged by the programmatic labeler."""
    table = read_table(ctx.path(DEMONSTRATIONS), "demonstrations", "ingest")
    table = table[table["phase"] == "eval"].drop_duplicates("prompt").sort_values("prompt", kind="stable")
    if params.eval.prompts is not None:
        table = table.head(params.eval.prompts)
    if table.empty:
        raise DataError("no demonstrations of phase 'eval' to compare the policy with SFT on", file=ctx.path(DEMONSTRATIONS))
    prompts, references = table["prompt"].tolist(), table["response"].tolist()
    print(f"  comparing the policy with SFT on {len(prompts)} held-out prompts")
    head_to_head = compare(policy, sft, sft, reward_model, template, prompts, references, params.eval.sampling,
                           pad_id=pad, labeler=ProgrammaticLabeler())
    answers = head_to_head.texts
    samples = [{"prompt": p, "reference": r, "sft": s, "policy": a}
               for p, r, s, a in zip(prompts, references, answers["baseline"], answers["policy"])]
    path = ctx.path("metrics/ppo/samples.jsonl")
    atomic.write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in samples))
    ctx.tracker.log_table(samples, "samples.json")
    return head_to_head.figures, samples


def _report(frame: pd.DataFrame, comparison: dict[str, float], samples: list[dict], train_seconds: float,
            params: PpoParams, device: torch.device) -> dict[str, Any]:
    first, last = frame.head(max(1, len(frame) // 5)), frame.tail(max(1, len(frame) // 5))
    mean = lambda part, key: round(float(np.mean(part[key])), 4) if key in part else None  # noqa: E731
    seconds = {key: round(float(frame[f"time/{key}_s"].sum()), 1) for key in ("generate", "rollout", "update")}
    total = seconds["rollout"] + seconds["update"]
    return {
        "iterations": params.iterations,
        "batch_prompts": params.batch_prompts,
        "train": {  # first and last fifth of the iterations
            key.replace("/", "_"): {"first": mean(first, key), "last": mean(last, key)}
            for key in ("objective/scores", "objective/kl", "objective/entropy", "objective/rlhf_reward",
                        "policy/clipfrac", "response/length_mean", "response/eos_rate")
        },
        "kl_coef_final": round(float(frame["objective/kl_coef"].iloc[-1]), 5),
        "comparison": {key: round(value, 4) for key, value in comparison.items()},
        "generation_share": round(seconds["generate"] / total, 3) if total else None,
        "seconds": seconds,
        "train_seconds": round(train_seconds, 1),
        "samples": len(samples),
        "config": {key: value for key, value in asdict(params.ppo).items() if value is not None},
        "device": hardware.device_name(device),
    }


if __name__ == "__main__":
    run_stage("ppo", main)
