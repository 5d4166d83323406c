"""Batches: random training windows of token shards, per-source validation windows, and epochs over
a list of examples (SFT demonstrations, ranked sets) padded to the longest row.

Training (`TokenBatches`): every row is a window of `context + 1` tokens starting at a uniformly
random offset of the train shard (windows cross document boundaries, whose end-of-text tokens the
model learns to read as a reset, as in GPT-2's WebText training). The rows of a whole optimizer
step (grad_accum micro batches x world processes x B rows) are drawn from a generator seeded with
(seed, step) alone, and micro step m of process r takes rows ``(m * world + r) * B`` onwards. So:

- a batch is a pure function of (seed, step, micro, rank, world): resuming needs only the step as
  the data position, and nothing is saved about the loader;
- every layout of the same global batch sees the same rows: 2 processes of B rows, 1 process of 2B,
  and 1 process accumulating 2 micro batches of B. That is what makes data-parallel training and
  gradient accumulation equal to one big batch, and lets a run change its layout (more GPUs, less
  memory) without changing what it trains on.

Validation (`val_windows`): each source's val documents (with their end-of-text tokens) are laid
end to end and cut into windows that predict every token but the first exactly once: inputs
``stream[i*T : (i+1)*T]``, targets one token later, the last window padded with ignored (-100)
targets. Mean loss per source is then a plain token-weighted mean, and perplexity its exponential.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

IGNORE = -100  # targets the loss skips (F.cross_entropy's ignore_index, as the model uses)


class TokenBatches:
    """Random windows of a token array; `batch(step, micro, rank, world)` is one micro batch of B rows."""

    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, seed: int) -> None:
        if len(tokens) < context + 1:
            raise ValueError(f"the shard has {len(tokens)} tokens, fewer than one window of context + 1 = {context + 1}")
        self.tokens = tokens
        self.context = context
        self.batch_size = batch_size
        self.seed = seed

    def starts(self, step: int, rows: int) -> np.ndarray:
        """Offsets of the first `rows` windows of step `step`'s global batch.

        numpy draws them one after another from one stream, so the first k of n rows are the same
        whatever n is: every process draws just up to its own slice.
        """
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.tokens) - self.context, size=rows)

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), int64 [B, context] each: rows (micro * world + rank) * B onwards."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world}")
        b, position = self.batch_size, micro * world + rank
        starts = self.starts(step, (position + 1) * b)[position * b :]
        windows = np.stack([self.tokens[s : s + self.context + 1] for s in starts]).astype(np.int64)
        return windows[:, :-1], windows[:, 1:]


class EpochSampler:
    """Which examples a micro batch holds: epochs over `n` examples, each epoch a fresh permutation.

    The rows of the global batch follow one another through the epochs: step s's global batch is
    positions ``s * G .. (s + 1) * G - 1`` of the endless sequence perm(0), perm(1), ..., with
    G = batch_size x grad_accum x world, and micro step m of process r takes the B positions from
    ``s * G + (m * world + r) * B``. As with `TokenBatches`, a micro batch is a pure function of
    (seed, step, micro, rank, world), and every layout of the same global batch sees the same rows;
    unlike it, every example is seen once per epoch.
    """

    def __init__(self, n: int, batch_size: int, grad_accum: int, seed: int) -> None:
        if n < 1:
            raise ValueError("there are no examples to train on")
        self.n, self.batch_size, self.grad_accum, self.seed = n, batch_size, grad_accum, seed
        self._permutations: dict[int, np.ndarray] = {}

    def indices(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> np.ndarray:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world}")
        b = self.batch_size
        first = step * b * self.grad_accum * world + (micro * world + rank) * b
        positions = np.arange(first, first + b)
        epochs, offsets = np.divmod(positions, self.n)
        return np.array([self._permutation(int(e))[o] for e, o in zip(epochs, offsets)], dtype=np.int64)

    def epochs(self, steps: int, world: int = 1) -> float:
        """How many passes over the examples `steps` optimizer steps make."""
        return steps * self.batch_size * self.grad_accum * world / self.n

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) >= 4:  # a step spans at most a few epochs
                self._permutations.pop(min(self._permutations))
            self._permutations[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._permutations[epoch]


class LengthGroupedSampler(EpochSampler):
    """An `EpochSampler` whose batches hold examples of similar length: less padding, same epochs.

    Each epoch's permutation is cut into windows of `window` batches; a window is sorted by length,
    cut into batches, and the batches put back in a seeded random order. Every example is still seen
    once per epoch, and a batch is still a pure function of (seed, step, micro, rank, world), so a
    run resumes exactly; what changes is that a batch's rows pad to a similar width, not to the
    longest of a random draw (a 2-3x saving on short-sentence tasks with a long tail).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, grad_accum: int, seed: int, window: int = 32) -> None:
        super().__init__(len(lengths), batch_size, grad_accum, seed)
        self.lengths = np.asarray(lengths)
        self.window = window

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch in self._permutations:
            return self._permutations[epoch]
        order = super()._permutation(epoch)
        rng = np.random.default_rng([self.seed, epoch, 1])
        span = self.batch_size * self.window
        grouped = []
        for start in range(0, self.n, span):
            chunk = order[start : start + span]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches = [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            grouped += [batches[i] for i in rng.permutation(len(batches))]
        self._permutations[epoch] = np.concatenate(grouped)
        return self._permutations[epoch]


def pad_right(rows: Sequence[Sequence[int]], pad: int) -> np.ndarray:
    """int64 [len(rows), longest]: each row from the left, `pad` after it."""
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@dataclass(frozen=True)
class ValWindows:
    """One source's validation windows: inputs and targets, int64 [N, context]."""

    source: str
    inputs: np.ndarray
    targets: np.ndarray

    @property
    def n_tokens(self) -> int:
        """Tokens predicted (the padding of the last window is not counted)."""
        return int((self.targets != IGNORE).sum())

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(0, len(self.inputs), batch_size):
            yield self.inputs[i : i + batch_size], self.targets[i : i + batch_size]


def val_windows(
    tokens: np.ndarray, index: pd.DataFrame, context: int, max_tokens: int | None = None
) -> dict[str, ValWindows]:
    """Non-overlapping windows over each source's val documents, sources in sorted order.

    `tokens` is the val shard, `index` the shard index (its val rows are used). `max_tokens` caps
    the tokens predicted per source (the first ones, so the subset is the same every run); None
    evaluates every val token.
    """
    val = index[index["split"] == "val"]
    windows = {}
    for source, docs in sorted(val.groupby("source"), key=lambda item: str(item[0])):
        stream = np.concatenate([tokens[o : o + n + 1] for o, n in zip(docs["offset"], docs["n_tokens"])])
        if max_tokens is not None:
            stream = stream[: max_tokens + 1]
        if len(stream) < 2:
            continue  # nothing to predict
        windows[str(source)] = _cut(str(source), stream.astype(np.int64), context)
    return windows


def _cut(source: str, stream: np.ndarray, context: int) -> ValWindows:
    n = -(-(len(stream) - 1) // context)  # windows needed to predict stream[1:]
    inputs = np.zeros((n, context), np.int64)
    targets = np.full((n, context), IGNORE, np.int64)
    flat_in, flat_tg = inputs.reshape(-1), targets.reshape(-1)
    flat_in[: len(stream) - 1] = stream[:-1]
    flat_tg[: len(stream) - 1] = stream[1:]
    return ValWindows(source, inputs, targets)
