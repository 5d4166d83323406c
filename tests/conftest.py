"""Shared fixtures: where the repo and the real data pack are; small random token shards; one torch thread."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def data_pack() -> Path:
    """The real data pack (../shared/data beside the repo, or INSTRUCTGPT_DATA_MIRROR)."""
    path = Path(os.environ.get("INSTRUCTGPT_DATA_MIRROR", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"the data pack is missing at {path}: put ../shared beside the repo")
    return path


def write_random_shards(
    out: Path, vocab_size: int = 256, train_tokens: int = 20_000, val_docs: dict[str, int] | None = None, seed: int = 0
) -> Path:
    """A shard directory (train.bin, val.bin, index.parquet, meta.json) of random tokens.

    Every document ends with the end-of-text id (vocab_size - 1), as the encode stage writes them;
    `val_docs` is the number of val documents per source (interleaved, as the stage may write them).
    """
    import json

    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    eot = vocab_size - 1
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    sources = {"train": {"mix": train_tokens // 100}, "val": val_docs or {"books": 5, "web": 7}}
    for split, counts in sources.items():
        order = [source for source, n in counts.items() for _ in range(n)]
        rng.shuffle(order)
        parts, offset = [], 0
        for i, source in enumerate(order):
            n_tokens = int(rng.integers(20, 180))
            parts.append(np.append(rng.integers(0, eot, n_tokens), eot))
            rows.append(dict(split=split, source=source, doc_id=f"{split}-{i}", epoch=0, offset=offset, n_tokens=n_tokens))
            offset += n_tokens + 1
        np.concatenate(parts).astype(np.uint16).tofile(out / f"{split}.bin")
    pd.DataFrame(rows).to_parquet(out / "index.parquet", index=False)
    meta = {"dtype": "uint16", "vocab_size": vocab_size, "eot_id": eot, "tokenizer_sha256": "0" * 64}
    (out / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def random_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shard directory of random tokens over a 256-token vocabulary (read it, do not write it)."""
    return write_random_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Tiny models train faster on one thread, and do not stall when other work shares the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
