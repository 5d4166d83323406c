"""How much of an SFT and a reward-model batch is real tokens: random batches against length-grouped ones.

Reads the pipeline's own data as the stages do (the `sft` demonstrations rendered in the chat
template, the `reward` training sets from `comparisons`), builds the samplers the stages use with
the default params, and counts over every micro batch of the run's steps the real tokens and the
cells of the right-padded batch (rows x longest row). Padding is compute the model spends on
nothing, so the share is the fraction of a step's matmul work that is useful. Needs `dvc repro
reward` to have run (it reads data/models/base and data/comparisons).

    .venv/bin/python benchmarks/batch_padding.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from instructgpt import checkpoint  # noqa: E402
from instructgpt.batches import EpochSampler, LengthGroupedSampler  # noqa: E402
from instructgpt.chat import ChatTemplate  # noqa: E402
from instructgpt.config import from_params  # noqa: E402
from instructgpt.reward import encode_sets  # noqa: E402
from instructgpt.sft import render_examples  # noqa: E402
from instructgpt.tokenizer import load_tokenizer  # noqa: E402
from instructgpt.tracking import Tracker  # noqa: E402
from instructgpt.train import TrainConfig  # noqa: E402
from stages import reward, sft, training  # noqa: E402
from stages.common import StageContext, load_params, read_table  # noqa: E402


def real_share(rows_of: Callable[[np.ndarray], list[int]], sampler: EpochSampler, config: TrainConfig) -> float:
    """Real tokens / padded cells over every micro batch of `config.max_steps` steps."""
    real = cells = 0
    for step in range(config.max_steps):
        for micro in range(config.grad_accum):
            rows = rows_of(sampler.indices(step, micro))
            real += sum(rows)
            cells += max(rows) * len(rows)
    return real / cells


def compare(name: str, keys: Sequence[int], rows_of: Callable[[np.ndarray], list[int]], config: TrainConfig) -> None:
    random = EpochSampler(len(keys), config.batch_size, config.grad_accum, config.seed)
    grouped = LengthGroupedSampler(keys, config.batch_size, config.grad_accum, config.seed)
    print(f"{name:7s} {config.max_steps:4d} steps of {config.batch_size * config.grad_accum:3d}: real tokens "
          f"{real_share(rows_of, random, config):.1%} of the cells with random batches, "
          f"{real_share(rows_of, grouped, config):.1%} length-grouped")


def main() -> None:
    params = load_params(ROOT)
    tokenizer = load_tokenizer(ROOT / "data/models/base/tokenizer.json")
    template = ChatTemplate(tokenizer)
    context = checkpoint.model_config(ROOT / "data/models/base").context  # max_len's default, as in the stages

    ctx = StageContext(name="sft", root=ROOT, params=params, tracker=Tracker())
    sft_params = from_params(sft.SftParams, ctx.section, ctx.where())
    demonstrations = sft._sft_demonstrations(ctx, sft_params)  # the stage's own selection
    train = demonstrations[demonstrations["split"] == "train"]
    examples = render_examples(template, train["prompt"].tolist(), train["response"].tolist(), train["source"].tolist(),
                               sft_params.max_len or context, sft_params.min_prompt_tokens)
    lengths = [len(e.ids) for e in examples]
    compare("sft", lengths, lambda rows: [lengths[i] for i in rows],
            training.with_epochs(sft_params.train, sft_params.epochs, len(examples)))

    ctx = StageContext(name="reward", root=ROOT, params=params, tracker=Tracker())
    reward_params = from_params(reward.RewardParams, ctx.section, ctx.where())
    sets = reward._train_sets(ctx, read_table(ROOT / reward.RANKED_SETS, "ranked sets", "comparisons"), reward_params)
    encoded = encode_sets(template, sets["prompt"].tolist(), sets["responses"].tolist(), sets["ranking"].tolist(),
                          sets["source"].tolist(), reward_params.max_len or context, reward_params.min_prompt_tokens)
    # a reward batch pads every response of its sets to the batch's longest response
    compare("reward", [max(len(s) for s in e.sequences) for e in encoded],
            lambda rows: [len(s) for i in rows for s in encoded[i].sequences],
            training.with_epochs(reward_params.train, reward_params.epochs, len(encoded)))


if __name__ == "__main__":
    main()
