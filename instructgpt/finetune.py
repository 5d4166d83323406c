"""GPT-1 task fine-tuning as a task for the shared loop, and the scores of a fine-tuned model.

The loss of a batch is L_task + λ·L_lm (`instructgpt.task_model`); λ = 0 skips the unembedding
entirely. Batches are B examples of similar length from an epoch permutation
(`LengthGroupedSampler`), a pure function of the step, so a run resumes from any checkpoint like
every other training stage. `evaluate` scores the held-out examples (`eval/...`): accuracy for a
classifier or a choice (and F1 of class 1 for a binary task, MSRP's second figure), Pearson and
Spearman correlation for a scored task, and the mean task loss.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from instructgpt.batches import LengthGroupedSampler
from instructgpt.task_inputs import TaskExample
from instructgpt.task_metrics import accuracy, binary_f1, correlations
from instructgpt.task_model import TaskSpec, collate, predictions, task_loss


class TaskFineTuning:
    """The `Task` of one fine-tuning run."""

    def __init__(
        self,
        spec: TaskSpec,
        train: Sequence[TaskExample],
        held_out: Sequence[TaskExample],
        *,
        lm_coef: float,
        batch_size: int,
        grad_accum: int,
        seed: int,
        pad_id: int,
        task_tokens: frozenset[int],
        eval_batch_size: int = 64,
    ) -> None:
        if not train:
            raise ValueError("fine-tuning needs at least one training example")
        self.spec, self.train, self.held_out = spec, list(train), list(held_out)
        self.lm_coef, self.pad_id, self.task_tokens = lm_coef, pad_id, task_tokens
        # batches of similar widths: sentence tasks have a long tail that random batches all pad to
        self.sampler = LengthGroupedSampler([max(len(s) for s in e.sequences) for e in self.train], batch_size, grad_accum, seed)
        self.eval_batch_size = eval_batch_size
        self.seq_len = max(len(s) for e in self.train for s in e.sequences)  # for the FLOPs estimate

    def batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, Tensor]:
        rows = [self.train[i] for i in self.sampler.indices(step, micro, rank, world)]
        return collate(rows, self.pad_id, self.task_tokens)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        output, lm_loss = model(batch, lm=self.lm_coef > 0)
        loss = task_loss(self.spec, output, batch)
        return loss + self.lm_coef * lm_loss if lm_loss is not None else loss

    def tokens(self, batch: dict[str, Tensor]) -> int:
        return int(batch["lengths"].sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {f"eval/{k}": v for k, v in score(model, self.spec, self.held_out, self.pad_id, self.task_tokens,
                                                 self.eval_batch_size).items()}


@torch.no_grad()
def predict(model: nn.Module, spec: TaskSpec, examples: Sequence[TaskExample], pad_id: int,
            task_tokens: frozenset[int], batch_size: int) -> tuple[np.ndarray, float]:
    """Predictions in the examples' order (batched by length: little padding), and the mean task loss."""
    device = next(model.parameters()).device
    out = np.zeros(len(examples), dtype=np.float64 if spec.is_regression else np.int64)
    loss_sum = 0.0
    order = np.argsort([max(len(s) for s in e.sequences) for e in examples], kind="stable")
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in chunk], pad_id, task_tokens).items()}
        output, _ = model(batch)
        loss_sum += float(task_loss(spec, output, batch)) * len(chunk)
        out[chunk] = predictions(spec, output).cpu().numpy()
    return out, loss_sum / max(len(examples), 1)


def score(model: nn.Module, spec: TaskSpec, examples: Sequence[TaskExample], pad_id: int,
          task_tokens: frozenset[int], batch_size: int) -> dict[str, float]:
    """The task's figures on `examples`: loss, and accuracy (+ F1 when binary) or the correlations."""
    if not examples:
        return {}
    predicted, loss = predict(model, spec, examples, pad_id, task_tokens, batch_size)
    metrics = {"loss": loss, "examples": float(len(examples))}
    if spec.is_regression:
        return {**metrics, **correlations(predicted, [e.score for e in examples])}  # type: ignore[misc]
    gold = [int(e.label) for e in examples]  # type: ignore[arg-type]
    metrics["accuracy"] = accuracy(predicted, gold)
    if spec.classes == 2:
        metrics["f1"] = binary_f1(predicted, gold)
    return metrics
