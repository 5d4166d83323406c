"""Peak memory of PPO's four models (actor, reference, reward model, critic) through one iteration.

For each shape, a fresh process builds the four models with random weights (the pipeline's
default `cpu-small`, vocab 8,192, and `gpt2-small`, 124M, vocab 50,257), runs one PPO iteration
(`instructgpt.rlhf.PPOTrainer`: sampling, scoring, 4 PPO epochs of one minibatch), and reports its
peak resident memory above what the process held after importing torch, beside the parts one
can count: the four models' weights, the two trained models' gradients and AdamW states (two fp32
tensors per parameter). The rest is activations, the KV cache and allocator slack.

    .venv/bin/python benchmarks/ppo_memory.py [--batch 8] [--prompt 16] [--response 32] [--threads 2] [--shapes cpu-small gpt2-small]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"cpu-small": 8192, "gpt2-small": 50257}


def measure(shape: str, batch: int, prompt: int, response: int) -> dict:
    """Runs in the child process: one iteration, then the figures."""
    import resource

    import torch

    sys.path.insert(0, str(ROOT))
    from instructgpt.generate import SamplingConfig
    from instructgpt.heads import RewardModel
    from instructgpt.model import GPT, preset
    from instructgpt.rlhf import PPOConfig, PPOTrainer, reward_model_scorer

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes

    base = rss_mb()
    vocab = SHAPES[shape]

    def gpt(seed: int) -> GPT:
        torch.manual_seed(seed)
        return GPT(preset(shape, vocab_size=vocab, context=prompt + response, dropout=0.0))

    actor, reference = gpt(0), gpt(0)
    reward, critic = RewardModel(gpt(1)).eval().requires_grad_(False), RewardModel(gpt(1))
    trainer = PPOTrainer(actor, reference, critic, reward_model_scorer(reward), PPOConfig(ppo_epochs=4, minibatches=1,
                         missing_eos_penalty=None), SamplingConfig(max_new_tokens=response), actor_lr=1e-5, critic_lr=1e-5,
                         eos_id=-1, pad_id=0)
    generator = torch.Generator().manual_seed(0)
    trainer.step(torch.randint(3, vocab, (batch, prompt), generator=generator).tolist())
    mb = 1 / 2**20
    weights = sum(p.numel() * p.element_size() for m in (actor, reference, reward, critic) for p in m.parameters()) * mb
    trained = sum(p.numel() * p.element_size() for m in (actor, critic) for p in m.parameters()) * mb
    return {"shape": shape, "parameters_m": round(actor.num_params() / 1e6, 1), "peak_mb": round(rss_mb() - base),
            "weights_mb": round(weights), "grads_mb": round(trained), "adam_mb": round(2 * trained)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--response", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.child, args.batch, args.prompt, args.response)))
        return
    print(f"PPO peak memory: one iteration, {args.batch} prompts x {args.prompt} tokens, {args.response} new tokens, "
          f"4 PPO epochs, fp32 on the CPU")
    print(f"  {'shape':<11} {'params':>8} {'peak':>9} {'weights x4':>11} {'grads x2':>9} {'AdamW x2':>9}")
    for shape in args.shapes:
        out = subprocess.run([sys.executable, __file__, "--child", shape, "--batch", str(args.batch), "--prompt", str(args.prompt),
                              "--response", str(args.response), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {r['shape']:<11} {r['parameters_m']:>7}M {r['peak_mb']:>6} MB {r['weights_mb']:>8} MB "
              f"{r['grads_mb']:>6} MB {r['adam_mb']:>6} MB")


if __name__ == "__main__":
    main()
