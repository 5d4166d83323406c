"""Reward modelling as a task for the shared loop: InstructGPT's ranking loss over all pairs of a set.

For a prompt x with K ranked responses, InstructGPT's loss is

    loss = -1/C(K,2) * sum over pairs (y_w better than y_l) of log sigmoid(r(x, y_w) - r(x, y_l))

and all C(K,2) pairs of a prompt go through the model in the same batch: each response is encoded
once, and the pairs index into the K scores (training on pairs as separate examples would see each
response K-1 times and overfit, the paper notes). A pair set is the case K = 2. Tied responses make
no pair, so C(K,2) is, precisely, the set's number of untied pairs. A batch is B sets (an epoch
permutation of the sets grouped by their longest response, `LengthGroupedSampler`: on the data
pack's comparisons the real tokens of a batch rise from 57% to 87% of its cells); its loss is the
mean over its sets of each set's mean over its pairs. An optional margin m asks the better
response to win by m per step of rank: log sigmoid(r_w - r_l - m * (rank_l - rank_w)).

Each response is rendered in the chat template with its end-of-text (`ChatTemplate.render`), so
the reward model reads the same layout the SFT model writes; a long prompt is cut from the left.

`evaluate` scores the held-out sets: loss, pairwise accuracy (a tie of scores counts a half), overall
and per source, and the mean and std of the scores of the better and the worse response of each pair.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instructgpt.batches import LengthGroupedSampler, pad_right
from instructgpt.chat import ChatTemplate
from instructgpt.labelers import ordered_pairs


@dataclass(frozen=True)
class EncodedSet:
    """One ranked set as the model reads it: each response rendered after the prompt, and the pairs."""

    sequences: list[list[int]]
    ranking: list[int]
    pairs: list[tuple[int, int]]  # (better, worse) indices into sequences
    source: str

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


def encode_sets(
    template: ChatTemplate,
    prompts: Sequence[str],
    responses: Sequence[Sequence[str]],
    rankings: Sequence[Sequence[int]],
    sources: Sequence[str],
    max_len: int,
    min_prompt_tokens: int = 0,
) -> list[EncodedSet]:
    """Ranked sets as token sequences of at most `max_len` (see `ChatTemplate.render`)."""
    sets = []
    for prompt, answers, ranking, source in zip(prompts, responses, rankings, sources):
        ranks = [int(r) for r in ranking]
        sequences = [template.render(prompt, a, max_len=max_len, min_prompt_tokens=min_prompt_tokens).ids for a in answers]
        sets.append(EncodedSet(sequences, ranks, ordered_pairs(ranks), source))
    return sets


def collate_sets(sets: Sequence[EncodedSet], pad_id: int) -> dict[str, Tensor]:
    """Every response of every set once [N, T], right-padded, and the pairs as index tensors.

    better, worse [P]: rows of a pair; gap [P]: rank_worse - rank_better; weight [P]: 1 / (sets x
    the set's pairs), so summing weight x pair loss gives the mean over sets of each set's mean.
    set_index [P]: which set a pair belongs to.
    """
    rows, better, worse, gap, weight, set_index = [], [], [], [], [], []
    for s, ranked in enumerate(sets):
        offset = len(rows)
        rows += ranked.sequences
        for b, w in ranked.pairs:
            better.append(offset + b)
            worse.append(offset + w)
            gap.append(ranked.ranking[w] - ranked.ranking[b])
            weight.append(1.0 / (len(sets) * len(ranked.pairs)))
            set_index.append(s)
    return {
        "input_ids": torch.from_numpy(pad_right(rows, pad_id)),
        "lengths": torch.tensor([len(r) for r in rows], dtype=torch.long),
        "better": torch.tensor(better, dtype=torch.long),
        "worse": torch.tensor(worse, dtype=torch.long),
        "gap": torch.tensor(gap, dtype=torch.float32),
        "weight": torch.tensor(weight, dtype=torch.float32),
        "set_index": torch.tensor(set_index, dtype=torch.long),
    }


def pair_losses(scores: Tensor, batch: dict[str, Tensor], margin: float = 0.0) -> Tensor:
    """-log sigmoid(r_w - r_l - margin x gap) of every pair [P]."""
    diff = scores[batch["better"]] - scores[batch["worse"]] - margin * batch["gap"].to(scores.dtype)
    return -F.logsigmoid(diff)


def ranking_loss(scores: Tensor, batch: dict[str, Tensor], margin: float = 0.0) -> Tensor:
    """InstructGPT's loss: the mean over sets of the mean over each set's pairs."""
    return (pair_losses(scores, batch, margin) * batch["weight"].to(scores.dtype)).sum()


class RewardModelling:
    """The `Task` of the reward model: batches of whole sets, the ranking loss, held-out accuracy."""

    def __init__(
        self,
        train: Sequence[EncodedSet],
        val: Sequence[EncodedSet],
        *,
        batch_size: int,
        grad_accum: int,
        seed: int,
        pad_id: int,
        margin: float = 0.0,
        eval_batch_size: int = 32,
    ) -> None:
        if not train:
            raise ValueError("the reward model needs at least one training set")
        self.train, self.val, self.pad_id, self.margin = list(train), list(val), pad_id, margin
        self.sampler = LengthGroupedSampler([max(len(s) for s in e.sequences) for e in self.train], batch_size, grad_accum, seed)
        self.eval_batch_size = eval_batch_size
        self.seq_len = max(len(s) for e in self.train for s in e.sequences)  # for the FLOPs estimate

    def batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, Tensor]:
        return collate_sets([self.train[i] for i in self.sampler.indices(step, micro, rank, world)], self.pad_id)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return ranking_loss(model(batch["input_ids"], batch["lengths"]), batch, self.margin)

    def tokens(self, batch: dict[str, Tensor]) -> int:
        return int(batch["lengths"].sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate_sets(model, self.val, self.pad_id, self.eval_batch_size, self.margin)


@torch.no_grad()
def score_sequences(model: nn.Module, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int) -> np.ndarray:
    """r of each sequence, batched by length (less padding), in the order given."""
    device = next(model.parameters()).device
    scores = np.zeros(len(sequences), dtype=np.float64)
    order = np.argsort([len(s) for s in sequences], kind="stable")
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = [sequences[i] for i in chunk]
        ids = torch.from_numpy(pad_right(rows, pad_id)).to(device)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long, device=device)
        scores[chunk] = model(ids, lengths).float().cpu().numpy()
    return scores


@torch.no_grad()
def evaluate_sets(model: nn.Module, sets: Sequence[EncodedSet], pad_id: int, batch_size: int, margin: float = 0.0) -> dict[str, float]:
    """Held-out loss and pairwise accuracy, overall and per source; better/worse score statistics."""
    if not sets:
        return {}
    flat = [s for ranked in sets for s in ranked.sequences]
    scores = score_sequences(model, flat, pad_id, batch_size)
    per_source: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    offset = 0
    for ranked in sets:
        r = scores[offset : offset + len(ranked.sequences)]
        offset += len(ranked.sequences)
        bucket = per_source[ranked.source]
        set_losses = []
        for b, w in ranked.pairs:
            diff = r[b] - r[w]
            bucket["correct"].append(1.0 if diff > 0 else 0.5 if diff == 0 else 0.0)
            bucket["better"].append(r[b])
            bucket["worse"].append(r[w])
            set_losses.append(float(np.logaddexp(0.0, -(diff - margin * (ranked.ranking[w] - ranked.ranking[b])))))  # -log sigmoid
        bucket["set_loss"].append(float(np.mean(set_losses)))
    metrics: dict[str, float] = {}
    for source in sorted(per_source):
        bucket = per_source[source]
        metrics[f"val/{source}/loss"] = float(np.mean(bucket["set_loss"]))
        metrics[f"val/{source}/accuracy"] = float(np.mean(bucket["correct"]))
        metrics[f"val/{source}/pairs"] = float(len(bucket["correct"]))
    pooled = {key: [v for bucket in per_source.values() for v in bucket[key]] for key in ("set_loss", "correct", "better", "worse")}
    metrics["val/loss"] = float(np.mean(pooled["set_loss"]))
    metrics["val/accuracy"] = float(np.mean(pooled["correct"]))
    metrics["val/chosen_mean"] = float(np.mean(pooled["better"]))
    metrics["val/chosen_std"] = float(np.std(pooled["better"]))
    metrics["val/rejected_mean"] = float(np.mean(pooled["worse"]))
    metrics["val/rejected_std"] = float(np.std(pooled["worse"]))
    return metrics


def normalise(model: nn.Module, references: Sequence[Sequence[int]], pad_id: int, batch_size: int) -> float:
    """Set the model's bias so the reference sequences score mean 0 (InstructGPT); return the bias."""
    if not references:
        raise ValueError("no reference demonstrations to normalise the reward model on")
    mean = float(score_sequences(model, references, pad_id, batch_size).mean())
    model.set_bias(float(model.score_bias) - mean)
    return float(model.score_bias)
