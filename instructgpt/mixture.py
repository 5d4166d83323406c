"""Source mixtures, GPT-3 style: each source gets a share of the total, not its natural size.

A source's weight is its share of the mix (`{c4: 0.6}`: 60% of the mix is C4). Sources without a
weight share what the weights leave, in proportion to their natural sizes. When every source has a
weight, the weights are normalised to sum to 1. A source whose
share exceeds its size is repeated: whole passes over its documents in a seeded shuffled order,
then the shortest prefix that meets its target, so small high-quality sources can be seen more
than once (GPT-3 saw Wikipedia 3.4 times). Sizes are in whatever unit the caller counts: tokens
for the pretraining shards, characters for the tokenizer's training text.
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping

import numpy as np

from instructgpt.errors import ConfigError, DataError


def mix(
    sources: np.ndarray, sizes: np.ndarray, weights: Mapping[str, float], total: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Pick documents for the mix.

    `sources[i]` and `sizes[i]` describe document i. Returns the picked document indices in a
    seeded interleaved order, each occurrence's epoch (0 for a first pass), and a record of the
    mix (shares, natural shares, epochs per source) for metadata. `total` defaults to the natural
    total; each source may overshoot its target by less than one document.
    """
    names = sorted({str(s) for s in sources})
    if not names:
        raise DataError("no documents to mix: the train split is empty", field="split")
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ConfigError(
            f"names source(s) {unknown} that have no train documents; sources: {names}",
            field=f"mixture.{unknown[0]}",
        )
    natural = {s: int(sizes[sources == s].sum()) for s in names}
    natural_total = sum(natural.values())
    shares = _shares(natural, weights)
    target_total = total if total is not None else natural_total

    docs, epochs, taken = [], [], {}
    for source in names:
        members = np.flatnonzero(sources == source)
        rng = np.random.default_rng([seed, zlib.crc32(source.encode("utf-8"))])
        order = members[rng.permutation(len(members))]
        picked, epoch = take_to_target(order, sizes[order], round(shares[source] * target_total))
        docs.append(picked)
        epochs.append(epoch)
        taken[source] = int(sizes[picked].sum())
    interleave = np.random.default_rng([seed, 1]).permutation(sum(map(len, docs)))
    record = {
        "seed": seed,
        "target_total": target_total,
        "shares": {s: round(shares[s], 6) for s in names},
        "natural_shares": {s: round(natural[s] / natural_total, 6) for s in names},
        "epochs": {s: round(taken[s] / natural[s], 4) if natural[s] else 0.0 for s in names},
    }
    return np.concatenate(docs)[interleave], np.concatenate(epochs)[interleave], record


def _shares(natural: Mapping[str, int], weights: Mapping[str, float]) -> dict[str, float]:
    """Each source's share: its weight; the unweighted split the rest by natural size."""
    given = {s: float(weights[s]) for s in natural if s in weights}
    rest = [s for s in natural if s not in weights]
    claimed = sum(given.values())
    if not rest:
        if claimed <= 0:
            raise ConfigError("every source has weight 0: the mix would be empty", field="mixture")
        return {s: w / claimed for s, w in given.items()}
    if claimed >= 1:
        raise ConfigError(
            f"the weights sum to {claimed:g}, leaving nothing for the unweighted source(s) {rest}; "
            "give them weights too, or lower the others",
            field="mixture",
        )
    rest_size = sum(natural[s] for s in rest)
    left = 1.0 - claimed
    return {**given, **{s: left * natural[s] / rest_size if rest_size else 0.0 for s in rest}}


def take_to_target(order: np.ndarray, sizes: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole passes over `order`, then its shortest prefix that reaches `target`; and the epochs."""
    if target <= 0 or not len(order) or int(sizes.sum()) <= 0:
        return order[:0], np.zeros(0, np.int64)
    passes, rest = divmod(target, int(sizes.sum()))
    prefix = int(np.searchsorted(np.cumsum(sizes), rest)) + 1 if rest else 0
    docs = np.concatenate([np.tile(order, passes), order[:prefix]])
    epochs = np.concatenate([np.repeat(np.arange(passes), len(order)), np.full(prefix, passes)])
    return docs, epochs.astype(np.int64)
