"""Pretraining as a task for the shared loop: next-token prediction on the token shards.

`Pretraining(shard_dir, context, batch_size, seed)` gives `train` its batches (random windows of
the train shard, `instructgpt.batches.TokenBatches`) and its loss (the model's mean next-token
cross-entropy), and evaluates the validation loss and perplexity of every source separately
(`val/<source>/loss`, `val/<source>/ppl`) and over all of them (`val/loss`, `val/ppl`,
token-weighted), on non-overlapping windows of each source's val documents.

Run as a module it pretrains a preset GPT on a shard directory, alone or under torchrun:

    python -m instructgpt.pretraining data/shards .runs/pretrain --preset cpu-tiny \\
        --train max_steps=200 batch_size=8 lr=1e-3 --model dropout=0.1
    torchrun --standalone --nproc_per_node 2 -m instructgpt.pretraining data/shards .runs/pretrain ...

Started again on the same checkpoint directory it resumes where the last checkpoint left off.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from instructgpt import atomic
from instructgpt.batches import IGNORE, TokenBatches, val_windows
from instructgpt.config import from_params
from instructgpt.distributed import init_distributed
from instructgpt.model import GPT, preset
from instructgpt.shards import read_index, read_meta, read_shard
from instructgpt.train import TrainConfig, seed_everything, train


class Pretraining:
    """Next-token loss on random train windows; per-source validation loss and perplexity."""

    def __init__(
        self,
        shard_dir: str | Path,
        context: int,
        batch_size: int,
        seed: int,
        *,
        val_tokens_per_source: int | None = None,
        eval_batch_size: int | None = None,
    ) -> None:
        self.seq_len = context
        self.train_batches = TokenBatches(read_shard(shard_dir, "train"), context, batch_size, seed)
        self.val = val_windows(read_shard(shard_dir, "val"), read_index(shard_dir), context, val_tokens_per_source)
        self.eval_batch_size = eval_batch_size or batch_size

    def batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, Tensor]:
        inputs, targets = self.train_batches.batch(step, micro, rank, world)
        return {"input_ids": torch.from_numpy(inputs), "targets": torch.from_numpy(targets)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model(batch["input_ids"], batch["targets"]).loss

    def tokens(self, batch: dict[str, Tensor]) -> int:
        return batch["targets"].numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """val/<source>/loss and /ppl for every source with val documents, and val/loss, val/ppl overall."""
        device = next(model.parameters()).device
        metrics: dict[str, float] = {}
        total_loss, total_tokens = 0.0, 0
        for source, windows in self.val.items():
            loss_sum = 0.0
            for inputs, targets in windows.batches(self.eval_batch_size):
                logits = model(torch.from_numpy(inputs).to(device)).logits
                targets_t = torch.from_numpy(targets).to(device)
                loss_sum += float(F.cross_entropy(logits.float().flatten(0, 1), targets_t.flatten(), ignore_index=IGNORE, reduction="sum"))
            metrics[f"val/{source}/loss"] = loss_sum / windows.n_tokens
            metrics[f"val/{source}/ppl"] = perplexity(loss_sum / windows.n_tokens)
            total_loss += loss_sum
            total_tokens += windows.n_tokens
        if total_tokens:
            metrics["val/loss"] = total_loss / total_tokens
            metrics["val/ppl"] = perplexity(total_loss / total_tokens)
        return metrics


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # exp overflows a float beyond ~709


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    config = from_params(TrainConfig, _pairs(args.train), "--train")
    meta = read_meta(args.shards)
    model_config = preset(args.preset, **{"vocab_size": meta["vocab_size"], **_pairs(args.model)})
    dist = init_distributed(config.device)
    try:
        seed_everything(config.seed)
        model = GPT(model_config)
        task = Pretraining(args.shards, model_config.context, config.batch_size, config.seed, val_tokens_per_source=args.val_tokens)
        result = train(
            model,
            task,
            config,
            args.checkpoints,
            dist=dist,
            on_log=lambda step, m: tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items())),
            extra_state={"tokenizer_sha256": meta.get("tokenizer_sha256")},
            peak_flops_cache=args.peak_cache,
        )
        if args.result and dist.is_main:
            atomic.write_json(args.result, {"step": result.step, "loss": result.loss, "tokens": result.tokens,
                                            "eval": result.eval, "checkpoint": str(result.checkpoint)})
    finally:
        dist.close()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m instructgpt.pretraining", description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", type=Path, help="a shard directory (the encode stage's output)")
    parser.add_argument("checkpoints", type=Path, help="checkpoint directory; resumed from if it holds one")
    parser.add_argument("--preset", default="cpu-tiny", help="model preset (instructgpt.model.PRESETS)")
    parser.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE", help="GPTConfig overrides")
    parser.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig fields")
    parser.add_argument("--val-tokens", type=int, default=None, help="validation tokens per source (default: all)")
    parser.add_argument("--peak-cache", type=Path, default=None, help="JSON file recording the CPU's measured peak")
    parser.add_argument("--result", type=Path, default=None, help="write the final step, loss and eval here")
    return parser.parse_args(argv)


def _pairs(items: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE strings, values read as YAML scalars or lists (so 3e-4, true, [0.9, 0.95] work)."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        pairs[key] = _scalar(value)
    return pairs


def _scalar(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            return float(text)
        except ValueError:
            pass
    return value


if __name__ == "__main__":
    main()
