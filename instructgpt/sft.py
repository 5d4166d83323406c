"""Supervised fine-tuning as a task for the shared loop: learn to answer like the demonstrations.

Each demonstration is rendered in the chat template (`instructgpt.chat`): role tokens around the
prompt's turns, then the response and its end-of-text; only the response tokens are targets
(InstructGPT's SFT learns to answer, not to write prompts). A micro batch is B examples of an epoch
permutation grouped by length (`LengthGroupedSampler`: on the data pack's demonstrations, real
tokens rise from 75% to 98% of a batch's cells), padded on the right to its longest row with the
pad token: padding sits after every real token, so causal attention never lets a real token see
it, and its targets are ignored. The loss is the mean cross-entropy over the batch's response tokens.

`evaluate` gives the validation loss on responses, token-weighted, overall and per source
(`val/loss`, `val/ppl`, `val/<source>/loss`, `val/<source>/ppl`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instructgpt.batches import IGNORE, LengthGroupedSampler, pad_right
from instructgpt.chat import ChatTemplate, Rendered
from instructgpt.pretraining import perplexity


@dataclass(frozen=True)
class Example:
    """One rendered demonstration: token ids, next-token targets (IGNORE off the response), source."""

    ids: list[int]
    targets: list[int]
    source: str

    @property
    def response_tokens(self) -> int:
        return sum(t != IGNORE for t in self.targets)


def render_examples(
    template: ChatTemplate,
    prompts: Sequence[str],
    responses: Sequence[str],
    sources: Sequence[str],
    max_len: int,
    min_prompt_tokens: int = 0,
) -> list[Example]:
    """Demonstrations as training examples of at most `max_len` tokens (see `ChatTemplate.render`)."""
    examples = []
    for prompt, response, source in zip(prompts, responses, sources):
        rendered: Rendered = template.render(prompt, response, max_len=max_len, min_prompt_tokens=min_prompt_tokens)
        examples.append(Example(rendered.ids, rendered.targets(IGNORE), source))
    return examples


class SupervisedFineTuning:
    """The `Task` of SFT: batches of padded examples, the response loss, validation per source."""

    def __init__(
        self,
        train: Sequence[Example],
        val: Sequence[Example],
        *,
        batch_size: int,
        grad_accum: int,
        seed: int,
        pad_id: int,
        eval_batch_size: int | None = None,
    ) -> None:
        if not train:
            raise ValueError("SFT needs at least one training example")
        self.train, self.val, self.pad_id = list(train), list(val), pad_id
        self.sampler = LengthGroupedSampler([len(e.ids) for e in self.train], batch_size, grad_accum, seed)
        self.eval_batch_size = eval_batch_size or batch_size
        self.seq_len = max(len(e.ids) for e in self.train)  # for the FLOPs estimate

    def batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, Tensor]:
        rows = [self.train[i] for i in self.sampler.indices(step, micro, rank, world)]
        return collate(rows, self.pad_id)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model(batch["input_ids"], batch["targets"]).loss

    def tokens(self, batch: dict[str, Tensor]) -> int:
        return int(batch["lengths"].sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return response_loss(model, self.val, self.pad_id, self.eval_batch_size)


def collate(rows: Sequence[Example], pad_id: int) -> dict[str, Tensor]:
    """input_ids and targets [B, longest] (padded: pad_id, IGNORE), and each row's length [B]."""
    return {
        "input_ids": torch.from_numpy(pad_right([r.ids for r in rows], pad_id)),
        "targets": torch.from_numpy(pad_right([r.targets for r in rows], IGNORE)),
        "lengths": torch.tensor([len(r.ids) for r in rows], dtype=torch.long),
    }


@torch.no_grad()
def response_loss(model: nn.Module, examples: Sequence[Example], pad_id: int, batch_size: int) -> dict[str, float]:
    """Token-weighted cross-entropy on the response tokens of `examples`, overall and per source.

    Examples are batched in order of length, so little is padded.
    """
    if not examples:
        return {}
    device = next(model.parameters()).device
    loss_sum: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    order = np.argsort([len(e.ids) for e in examples], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = [examples[i] for i in order[start : start + batch_size]]
        batch = collate(rows, pad_id)
        logits = model(batch["input_ids"].to(device)).logits.float()
        targets = batch["targets"].to(device)
        per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
        per_row = per_token.view(targets.shape).sum(dim=1).tolist()
        for row, total in zip(rows, per_row):
            loss_sum[row.source] += total
            count[row.source] += row.response_tokens
    metrics: dict[str, float] = {}
    for source in sorted(loss_sum):
        if count[source]:
            metrics[f"val/{source}/loss"] = loss_sum[source] / count[source]
            metrics[f"val/{source}/ppl"] = perplexity(metrics[f"val/{source}/loss"])
    total_tokens = sum(count.values())
    if total_tokens:
        metrics["val/loss"] = sum(loss_sum.values()) / total_tokens
        metrics["val/ppl"] = perplexity(metrics["val/loss"])
        metrics["val/response_tokens"] = float(total_tokens)
    return metrics
