"""GPT-1's task model: the pretrained GPT, a linear head on the extract token, and the auxiliary LM loss.

Radford et al. (2018), section 3.2: P(y | x) = softmax(h_l W_y) with h_l the final transformer
block's activation at the last (extract) token, and the objective L = L_task + λ·L_lm with the
language-modelling loss on the task's own text (λ = 0.5 in the paper).

A batch holds B examples of G sequences each (`TaskBatch`): one for classification and entailment,
the two orders of a similarity pair (their extract states are added before the head, so the
prediction does not depend on the order), or one per choice of a multiple-choice question (the head
gives each a scalar and the scalars are softmaxed across the choices; questions with fewer choices
than G mask the rest). A scored similarity task is a regression: one output, mean squared error on
the score scaled to [0, 1] by the training split's range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instructgpt.batches import IGNORE
from instructgpt.model import GPT, GPTConfig
from instructgpt.task_inputs import TaskExample


@dataclass(frozen=True)
class TaskSpec:
    """What the head predicts for one task."""

    task_type: str
    classes: int = 0  # > 0: a classifier over this many labels; 0: a regression (scored) or a choice
    score_range: tuple[float, float] = (0.0, 1.0)  # of the training scores, for a regression

    @property
    def outputs(self) -> int:
        return self.classes if self.classes else 1

    @property
    def is_regression(self) -> bool:
        return self.classes == 0 and self.task_type != "multiple_choice"

    def scaled(self, score: Tensor) -> Tensor:
        low, high = self.score_range
        return (score - low) / max(high - low, 1e-9)

    def unscaled(self, output: Tensor) -> Tensor:
        low, high = self.score_range
        return output * (high - low) + low


def collate(examples: Sequence[TaskExample], pad_id: int, task_tokens: frozenset[int]) -> dict[str, Tensor]:
    """input_ids [B, G, T] right-padded, lengths [B, G] (0 for a missing choice), lm_targets
    [B, G, T] (the next text token; IGNORE where the next token is padding or a task token), and
    label [B] or score [B] as the examples have them."""
    groups = max(len(e.sequences) for e in examples)
    width = max(len(s) for e in examples for s in e.sequences)
    ids = torch.full((len(examples), groups, width), pad_id, dtype=torch.long)
    lengths = torch.zeros((len(examples), groups), dtype=torch.long)
    for i, example in enumerate(examples):
        for g, sequence in enumerate(example.sequences):
            ids[i, g, : len(sequence)] = torch.as_tensor(sequence)
            lengths[i, g] = len(sequence)
    targets = torch.full_like(ids, IGNORE)
    targets[..., :-1] = ids[..., 1:]
    real = torch.arange(width)[None, None, :] < (lengths[..., None] - 1)  # a next token exists in the row
    is_task_token = torch.isin(targets, torch.tensor(sorted(task_tokens), dtype=torch.long))
    targets = torch.where(real & ~is_task_token, targets, torch.full_like(targets, IGNORE))
    batch = {"input_ids": ids, "lengths": lengths, "lm_targets": targets}
    if all(e.label is not None for e in examples):
        batch["label"] = torch.tensor([e.label for e in examples], dtype=torch.long)
    elif all(e.score is not None for e in examples):
        batch["score"] = torch.tensor([e.score for e in examples], dtype=torch.float32)
    return batch


class TaskModel(nn.Module):
    def __init__(self, body: GPT, spec: TaskSpec, head_dropout: float = 0.1) -> None:
        super().__init__()
        self.config: GPTConfig = body.config  # checkpoints record the body's config
        self.body = body  # keeps its unembedding: the auxiliary LM loss needs it
        self.spec = spec
        self.dropout = nn.Dropout(head_dropout)  # GPT-1: dropout 0.1 on the classifier
        self.head = nn.Linear(body.config.n_embd, spec.outputs)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, batch: dict[str, Tensor], lm: bool = False) -> tuple[Tensor, Tensor | None]:
        """The head's output [B, classes] (logits), [B] (a scaled score) or [B, G] (a choice's logit,
        −inf for a missing choice), and the mean LM loss over the text tokens when `lm`."""
        ids, lengths = batch["input_ids"], batch["lengths"]
        B, G, T = ids.shape
        hidden = self.body.hidden_states(ids.view(B * G, T)).view(B, G, T, -1)
        last = (lengths - 1).clamp(min=0)
        extract = hidden[torch.arange(B)[:, None], torch.arange(G)[None, :], last]  # [B, G, d]
        output = self._head(extract, lengths > 0)
        lm_loss = None
        if lm:
            logits = self.body.lm_head(hidden)
            lm_loss = F.cross_entropy(logits.float().flatten(0, 2), batch["lm_targets"].flatten(), ignore_index=IGNORE)
        return output, lm_loss

    def _head(self, extract: Tensor, present: Tensor) -> Tensor:
        if self.spec.task_type == "multiple_choice":
            logits = self.head(self.dropout(extract)).squeeze(-1).float()
            return logits.masked_fill(~present, float("-inf"))
        # classification and entailment have one sequence; similarity adds its two orders
        pooled = (extract * present[..., None]).sum(dim=1)
        output = self.head(self.dropout(pooled)).float()
        return output.squeeze(-1) if self.spec.is_regression else output

    def flops_per_token(self, seq_len: int | None = None) -> float:
        return self.body.flops_per_token(seq_len)


def task_loss(spec: TaskSpec, output: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Cross-entropy over the classes or choices, or the squared error of the scaled score."""
    if spec.is_regression:
        return F.mse_loss(output, spec.scaled(batch["score"]))
    return F.cross_entropy(output, batch["label"])


def predictions(spec: TaskSpec, output: Tensor) -> Tensor:
    """Class or choice index [B] (long), or the score in the task's own units [B] (float)."""
    if spec.is_regression:
        return spec.unscaled(output)
    return output.argmax(dim=-1)
