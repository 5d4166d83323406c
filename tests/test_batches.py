"""Pretraining batches: pure functions of (seed, step, micro, rank), one global batch whatever the
layout, and validation windows that predict every val token of a source exactly once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from instructgpt.batches import IGNORE, EpochSampler, LengthGroupedSampler, TokenBatches, val_windows
from instructgpt.shards import read_index, read_shard


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, 5_000).astype(np.uint16)


def test_a_batch_is_a_pure_function_of_seed_step_micro_rank(tokens: np.ndarray) -> None:
    first = TokenBatches(tokens, context=16, batch_size=4, seed=7)
    again = TokenBatches(tokens, context=16, batch_size=4, seed=7)
    for args in [(0, 0, 0, 1), (3, 1, 1, 2), (1000, 0, 0, 4)]:
        x, y = first.batch(*args)
        first.batch(5, 0)  # other calls in between change nothing
        assert np.array_equal(x, again.batch(*args)[0]) and np.array_equal(y, again.batch(*args)[1])
    base = first.batch(3, 0, 0, 2)[0]
    for other in [first.batch(4, 0, 0, 2)[0], first.batch(3, 1, 0, 2)[0], first.batch(3, 0, 1, 2)[0],
                  TokenBatches(tokens, 16, 4, seed=8).batch(3, 0, 0, 2)[0]]:
        assert not np.array_equal(base, other)


def test_targets_are_the_inputs_one_token_later(tokens: np.ndarray) -> None:
    x, y = TokenBatches(tokens, context=16, batch_size=4, seed=0).batch(2)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y):  # each row is a real window of the shard
        start = next(s for s in range(len(tokens) - 16) if np.array_equal(tokens[s : s + 16], row_x))
        assert np.array_equal(tokens[start + 1 : start + 17], row_y)


def test_every_layout_of_a_global_batch_sees_the_same_rows(tokens: np.ndarray) -> None:
    """2 processes x B = 1 process x 2B = 1 process accumulating 2 micro batches of B."""
    B = 3
    one_big = TokenBatches(tokens, 16, 2 * B, seed=5).batch(9, 0, 0, 1)[0]
    small = TokenBatches(tokens, 16, B, seed=5)
    two_ranks = np.concatenate([small.batch(9, 0, rank, 2)[0] for rank in range(2)])
    two_micro = np.concatenate([small.batch(9, micro, 0, 1)[0] for micro in range(2)])
    assert np.array_equal(one_big, two_ranks) and np.array_equal(one_big, two_micro)
    # 2 processes x 2 micro steps x B = 1 process x 4B: micro m of rank r holds rows (2m + r) * B...
    four = TokenBatches(tokens, 16, 4 * B, seed=5).batch(9)[0]
    layout = np.concatenate([small.batch(9, m, r, 2)[0] for m in range(2) for r in range(2)])
    assert np.array_equal(four, layout)


def test_a_shard_shorter_than_a_window_is_refused() -> None:
    with pytest.raises(ValueError, match="fewer than one window"):
        TokenBatches(np.zeros(16, np.uint16), context=16, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="outside a world"):
        TokenBatches(np.zeros(64, np.uint16), context=16, batch_size=1, seed=0).batch(0, 0, rank=2, world=2)


def _source_stream(shards: Path, source: str) -> np.ndarray:
    index = read_index(shards)
    val = read_shard(shards, "val")
    docs = index[(index["split"] == "val") & (index["source"] == source)]
    return np.concatenate([val[o : o + n + 1] for o, n in zip(docs["offset"], docs["n_tokens"])]).astype(np.int64)


def test_val_windows_predict_each_sources_val_tokens_exactly_once(random_shards: Path) -> None:
    windows = val_windows(read_shard(random_shards, "val"), read_index(random_shards), context=32)
    assert list(windows) == ["books", "web"]
    for source, w in windows.items():
        stream = _source_stream(random_shards, source)
        real = w.targets != IGNORE
        assert w.inputs.shape == w.targets.shape and w.inputs.shape[1] == 32
        assert np.array_equal(w.targets[real], stream[1:])  # every token after the first, in order, once
        assert np.array_equal(w.inputs[real], stream[:-1])  # each predicted from the token before it
        assert w.n_tokens == len(stream) - 1
        assert real[:-1].all()  # only the last window is padded
        assert sum(len(x) for x, _ in w.batches(3)) == len(w.inputs)


def test_val_windows_can_be_capped_per_source(random_shards: Path) -> None:
    windows = val_windows(read_shard(random_shards, "val"), read_index(random_shards), context=32, max_tokens=50)
    for source, w in windows.items():
        assert w.n_tokens == 50
        assert np.array_equal(w.targets[w.targets != IGNORE], _source_stream(random_shards, source)[1:51])


def test_an_epoch_sampler_sees_every_example_once_per_epoch_in_any_layout() -> None:
    from instructgpt.batches import EpochSampler

    one = EpochSampler(n=10, batch_size=4, grad_accum=1, seed=3)
    seen = np.concatenate([one.indices(step) for step in range(5)])  # 20 rows: two epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert not np.array_equal(seen[:10], seen[10:])  # each epoch is shuffled afresh
    # the same global batch: 1 process x 4 rows, 2 processes x 2 rows, 1 process x 2 micro x 2 rows
    two_ranks = EpochSampler(10, 2, 1, seed=3)
    accumulated = EpochSampler(10, 2, 2, seed=3)
    for step in range(4):
        whole = one.indices(step)
        assert np.array_equal(np.concatenate([two_ranks.indices(step, 0, r, 2) for r in range(2)]), whole)
        assert np.array_equal(np.concatenate([accumulated.indices(step, m) for m in range(2)]), whole)
    assert one.epochs(5) == 2.0


def test_pad_right_keeps_rows_at_the_left() -> None:
    from instructgpt.batches import pad_right

    assert pad_right([[1, 2, 3], [4]], pad=0).tolist() == [[1, 2, 3], [4, 0, 0]]


def test_length_grouped_sampler_sees_every_example_once_per_epoch_in_batches_of_similar_length() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=320)
    sampler = LengthGroupedSampler(lengths, batch_size=8, grad_accum=1, seed=3, window=10)
    epoch = np.concatenate([sampler.indices(step) for step in range(40)])
    assert sorted(epoch.tolist()) == list(range(320))
    grouped_width = np.mean([lengths[sampler.indices(s)].max() for s in range(40)])
    plain = EpochSampler(320, 8, 1, seed=3)
    random_width = np.mean([lengths[plain.indices(s)].max() for s in range(40)])
    assert grouped_width < 0.7 * random_width  # far less padding
    again = LengthGroupedSampler(lengths, batch_size=8, grad_accum=1, seed=3, window=10)
    assert all((again.indices(s) == sampler.indices(s)).all() for s in (0, 17, 39, 45))  # a pure function of the step
