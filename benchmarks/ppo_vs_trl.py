"""One PPO iteration: ours (`instructgpt.rlhf.PPOTrainer`) against TRL's PPO trainer, same shapes, same work.

Both sides get GPT-2-shaped models of the same size with seeded random weights (4 layers x 256
wide, 4 heads, vocab 8,192): the actor, a frozen reference, a frozen reward model and a critic
(TRL: `GPT2LMHeadModel` twice and `GPT2ForSequenceClassification` twice; ours: `GPT` twice and
`RewardModel` twice). Each iteration samples a batch of 16 prompts of 16 random tokens, exactly
`--response` new tokens each (end-of-text disabled on both sides, so the work is equal), then runs
4 PPO epochs of one minibatch of 16 (TRL's defaults: `num_mini_batches` 1). Both use AdamW, fp32,
the same learning rate and clipping. Prints the median seconds per iteration over `--iterations`
iterations after one warm-up, the ratio ours / TRL, and the share of each one's time spent
generating (TRL's measured by timing its `batch_generation`). Our trainer tells glibc to keep
freed memory (`hardware.keep_freed_memory`, as the training loop does on CPUs); that setting is
process-wide, so TRL is timed before it and again after it, and both ratios are printed.

TRL's PPO trainer lives in `trl.experimental.ppo` up to trl 1.12.0 and was removed after; it is
the `bench-trl` extra (`pip install -c constraints.txt -e '.[bench-trl]'`), not a dependency.

    .venv/bin/python benchmarks/ppo_vs_trl.py [--iterations 5] [--response 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB, LAYERS, WIDTH, HEADS, CONTEXT = 8192, 4, 256, 4, 128
BATCH, PROMPT, PPO_EPOCHS, LR = 16, 16, 4, 1e-5


def prompts(seed: int) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (BATCH, PROMPT), generator=generator).tolist()


def ours(iterations: int, response: int) -> tuple[list[float], float]:
    """Seconds per iteration (warm-up dropped) and the share spent generating."""
    import torch

    from instructgpt.generate import SamplingConfig
    from instructgpt.heads import RewardModel
    from instructgpt.model import GPT, preset
    from instructgpt.rlhf import PPOConfig, PPOTrainer, reward_model_scorer

    def gpt(seed: int) -> GPT:
        torch.manual_seed(seed)
        return GPT(preset("cpu-small", vocab_size=VOCAB, context=CONTEXT, n_layer=LAYERS, n_embd=WIDTH, n_head=HEADS))

    actor = gpt(0)
    reward = RewardModel(gpt(1)).eval().requires_grad_(False)
    config = PPOConfig(ppo_epochs=PPO_EPOCHS, minibatches=1, missing_eos_penalty=None, kl_coef=0.05)
    trainer = PPOTrainer(actor, copy.deepcopy(actor), RewardModel(gpt(1)), reward_model_scorer(reward), config,
                         SamplingConfig(max_new_tokens=response, temperature=1.0), actor_lr=LR, critic_lr=LR,
                         eos_id=-1, pad_id=0, seed=0)  # eos_id -1: no token ends a response
    seconds, generating = [], []
    for i in range(iterations + 1):
        started = time.perf_counter()
        stats = trainer.step(prompts(i))
        seconds.append(time.perf_counter() - started)
        generating.append(stats["time/generate_s"])
    return seconds[1:], sum(generating[1:]) / sum(seconds[1:])


def trl(iterations: int, response: int) -> tuple[list[float], float]:
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast, TrainerCallback

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    vocab = {f"t{i}": i for i in range(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t2"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="t0", eos_token="t1", unk_token="t2")
    shape = GPT2Config(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS,
                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, eos_token_id=1, bos_token_id=1,
                       num_labels=1)

    def seeded(cls, seed: int):
        torch.manual_seed(seed)
        return cls(shape)

    policy = seeded(GPT2LMHeadModel, 0)
    rows = [p for i in range(iterations + 1) for p in prompts(i)]
    dataset = Dataset.from_dict({"input_ids": rows})

    stamps: list[float] = []
    generating: list[float] = []
    original = trl_ppo.batch_generation

    def timed_generation(*args, **kwargs):
        started = time.perf_counter()
        out = original(*args, **kwargs)
        generating.append(time.perf_counter() - started)
        return out

    trl_ppo.batch_generation = timed_generation

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = PPOConfig(output_dir=out, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, num_mini_batches=1,
                         num_ppo_epochs=PPO_EPOCHS, response_length=response, stop_token=None, missing_eos_penalty=None,
                         total_episodes=BATCH * (iterations + 1), learning_rate=LR, local_rollout_forward_batch_size=BATCH,
                         num_sample_generations=0, report_to=[], save_strategy="no", logging_steps=1000, use_cpu=True,
                         bf16=False, fp16=False, temperature=1.0, kl_coef=0.05, seed=0, dataloader_drop_last=True)
        trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=copy.deepcopy(policy),
                             reward_model=seeded(GPT2ForSequenceClassification, 1),
                             value_model=seeded(GPT2ForSequenceClassification, 1), train_dataset=dataset,
                             callbacks=[Stamp()])
        started = time.perf_counter()
        trainer.train()
    trl_ppo.batch_generation = original
    ends = [started] + stamps
    seconds = [b - a for a, b in zip(ends, ends[1:])]
    return seconds[1:], sum(generating[1:]) / sum(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations after one warm-up")
    parser.add_argument("--response", type=int, default=32, help="new tokens per response")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    try:
        import trl as trl_package
    except ImportError:
        sys.exit("TRL is not installed: pip install -c constraints.txt -e '.[bench-trl]'")
    print(f"PPO iteration: {BATCH} prompts x {PROMPT} tokens, {args.response} new tokens, {PPO_EPOCHS} PPO epochs of one "
          f"minibatch; models {LAYERS} x {WIDTH}, vocab {VOCAB}; torch {torch.__version__}, trl {trl_package.__version__}, "
          f"{args.threads} threads, {platform.processor() or platform.machine()}")
    theirs, their_share = trl(args.iterations, args.response)
    mine, my_share = ours(args.iterations, args.response)  # sets glibc's malloc to keep freed memory, process-wide
    theirs_kept, kept_share = trl(args.iterations, args.response)  # so TRL runs again with the same allocator
    t, o, k = statistics.median(theirs), statistics.median(mine), statistics.median(theirs_kept)
    print(f"  TRL PPOTrainer   {t:6.3f} s/iteration (median of {len(theirs)}), generating {their_share:.0%}")
    print(f"  ours             {o:6.3f} s/iteration (median of {len(mine)}), generating {my_share:.0%}")
    print(f"  TRL, our malloc  {k:6.3f} s/iteration (median of {len(theirs_kept)}), generating {kept_share:.0%}")
    print(f"  ours / TRL       {o / t:6.2f}x   (target <= 0.5x); against TRL with the same allocator settings {o / k:.2f}x")


if __name__ == "__main__":
    main()
