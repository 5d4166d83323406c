"""Token shards: encode the documents once and lay them out as flat token arrays for pretraining.

An encode output directory holds:

- ``train.bin``, ``val.bin``: raw arrays of token ids (dtype in meta.json: uint16 when the vocabulary
  fits, else uint32), each document's tokens followed by the end-of-text id. Read with `read_shard`.
- ``index.parquet``: one row per document occurrence in a shard: ``split, source, doc_id, epoch,
  offset, n_tokens``. The document's tokens are ``shard[offset : offset + n_tokens]`` and its
  end-of-text is at ``offset + n_tokens``; `epoch` is 0 for a document's first pass in the train mix,
  1 for its second, and so on. Per-source validation loss reads the val rows of one source.
- ``meta.json``: dtype, vocab_size, eot_id, tokenizer_sha256, tokens per split and source, the train
  mix (shares, epochs per source). Only what the shards are: nothing timed, so encoding the same
  documents again writes the same bytes and the stages downstream are not retrained for nothing.

The train split is a mixture, GPT-3 style (`instructgpt.mixture`): each source gets a share of the
train tokens (its weight from `EncodeConfig.mixture`; unweighted sources split the rest by natural
size), a source is repeated whole passes and then a
prefix of its seeded shuffled documents until its share is met, and the documents of all sources
are interleaved in a seeded shuffled order. Validation is natural: every val document once, in
input order. Documents are encoded as ordinary text: special-token text inside a document is
spelled out as plain tokens, so only the separators we add are end-of-text ids.

Encoding runs in a Rust engine, batched: HF `tokenizers` or tiktoken with the same vocabulary
(`instructgpt.tokenizer.to_tiktoken`). ``engine: auto`` checks that both give the same ids on a
sample of the documents, times both there, and uses the faster; any doubt falls back to HF.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import pandas as pd
import tiktoken
from tokenizers import Tokenizer

from instructgpt import atomic, mixture, schemas
from instructgpt.errors import ConfigError, DataError
from instructgpt.tokenizer import (
    SPECIAL,
    encode_ordinary_batch,
    special_token_ids,
    to_tiktoken,
    tokenizer_sha256,
)

Split = Literal["train", "val"]
SPLITS: tuple[Split, ...] = ("train", "val")
DOCUMENT_COLUMNS = ("doc_id", "source", "kind", "text", "license", "split")
INDEX_COLUMNS = ("split", "source", "doc_id", "epoch", "offset", "n_tokens")
_GATHER_TOKENS = 1 << 22  # tokens copied per numpy gather when writing a shard (bounds memory)

Encoder = Callable[[Sequence[str]], list[list[int]]]


@dataclass(frozen=True)
class EncodeConfig:
    """How to encode the documents into shards.

    engine: "tiktoken" or "tokenizers" (HF) to force one; "auto" picks the faster of the two that
        give identical ids on a sample of `check_docs` documents.
    mixture: weight per source, its share of the train tokens. Sources without a weight share
        what the weights leave in proportion to their natural sizes; if every source has a weight,
        the weights are normalised to sum to 1. A weight of 0 leaves a source out.
    train_tokens: total tokens in train.bin (a source's last document is kept whole, so each
        source may overshoot its target by less than one document). None: the natural total,
        i.e. every train document once when there is no mixture.
    seed: the document order within each source and the interleaving of sources.
    num_threads: tiktoken's threads (0: every core). HF tokenizers uses its own rayon pool,
        sized by the RAYON_NUM_THREADS environment variable (default: every core).
    """

    engine: Literal["auto", "tiktoken", "tokenizers"] = "auto"
    mixture: dict[str, float] = field(default_factory=dict)
    train_tokens: int | None = None
    seed: int = 0
    num_threads: int = 0
    check_docs: int = 256

    def __post_init__(self) -> None:
        for source, weight in self.mixture.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"mixture.{source} must be a finite weight >= 0, got {weight}")
        if self.train_tokens is not None and self.train_tokens < 1:
            raise ValueError("train_tokens must be positive, or null for the natural total")
        if self.num_threads < 0:
            raise ValueError("num_threads must be at least 1, or 0 for every core")
        if self.check_docs < 1:
            raise ValueError("check_docs must be at least 1")

    @property
    def threads(self) -> int:
        return self.num_threads or os.cpu_count() or 1


def encode_documents(
    documents: pd.DataFrame,
    tokenizer: Tokenizer,
    out_dir: str | Path,
    config: EncodeConfig,
    where: str = "documents",
) -> dict[str, Any]:
    """Encode `documents` into the shard directory `out_dir` (replaced atomically); return metrics.

    `documents` has the columns of DOCUMENT_COLUMNS; `where` names it in errors. The metrics are
    tokens per split and source, epochs per source in the train mix, the engine and why it was
    chosen (`EngineChoice.record`), and the throughput of the encoding itself (MB of UTF-8 text
    and tokens per second).
    """
    started = time.perf_counter()
    _check_documents(documents, where)
    eot = special_token_ids(tokenizer)[SPECIAL.end_of_text]
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = shard_dtype(vocab_size)
    texts = documents["text"].tolist()

    engine = choose_engine(tokenizer, texts, config)
    encode_started = time.perf_counter()
    flat, starts, lengths = _encode_flat(engine.encode, texts, eot, dtype)
    encode_seconds = max(time.perf_counter() - encode_started, 1e-9)

    sources = documents["source"].to_numpy()
    doc_ids = documents["doc_id"].to_numpy()
    is_train = (documents["split"] == "train").to_numpy()
    train_pool = np.flatnonzero(is_train)
    picked, train_epochs, mix = mixture.mix(
        sources[train_pool], lengths[train_pool], config.mixture, config.train_tokens, config.seed
    )
    train_docs = train_pool[picked]
    val_docs = np.flatnonzero(~is_train)
    val_epochs = np.zeros(len(val_docs), np.int64)

    with atomic.atomic_dir(out_dir) as tmp:
        parts = []
        for split, docs, epochs in (("train", train_docs, train_epochs), ("val", val_docs, val_epochs)):
            offsets = _write_shard(tmp / f"{split}.bin", flat, starts, lengths, docs)
            columns = (split, sources[docs], doc_ids[docs], epochs, offsets, lengths[docs] - 1)
            parts.append(pd.DataFrame(dict(zip(INDEX_COLUMNS, columns))))
        index = schemas.validate(pd.concat(parts, ignore_index=True), schemas.ShardIndex, "index")
        index.to_parquet(tmp / "index.parquet", index=False)
        tokens = _tokens_by_source(index)
        totals = {split: sum(tokens[split].values()) for split in SPLITS}
        atomic.write_json(
            tmp / "meta.json",
            {
                "dtype": dtype.name,
                "vocab_size": vocab_size,
                "eot_id": eot,
                "tokenizer_sha256": tokenizer_sha256(tokenizer),
                "tokens": {split: {"total": totals[split], "by_source": tokens[split]} for split in SPLITS},
                "documents": {split: int((index["split"] == split).sum()) for split in SPLITS},
                "mixture": mix,
            },
        )

    n_bytes = sum(len(text.encode("utf-8")) for text in texts)
    n_tokens = int(lengths.sum()) - len(lengths)  # the end-of-text separators were not encoded
    return {
        "tokens": tokens,
        "tokens_total": totals,
        "epochs": mix["epochs"],
        "engine": engine.record(config),
        "encode_seconds": round(encode_seconds, 4),
        "encode_mb_per_s": round(n_bytes / 1e6 / encode_seconds, 3),
        "encode_tokens_per_s": round(n_tokens / encode_seconds, 1),
        "seconds": round(time.perf_counter() - started, 4),
    }


def shard_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (GPT-2's 50,257 does), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def read_meta(shard_dir: str | Path) -> dict[str, Any]:
    """meta.json of a shard directory (dtype, vocab_size, eot_id, tokenizer_sha256, tokens, ...)."""
    path = Path(shard_dir) / "meta.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read shard metadata: {err}", file=path) from err


def read_shard(shard_dir: str | Path, split: Split) -> np.ndarray:
    """The token ids of one split as a read-only np.memmap (a plain empty array for an empty split)."""
    dtype = np.dtype(read_meta(shard_dir)["dtype"])
    path = Path(shard_dir) / f"{split}.bin"
    if not path.is_file():
        raise DataError(f"no {split} shard; run the encode stage", file=path)
    if path.stat().st_size == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def read_index(shard_dir: str | Path) -> pd.DataFrame:
    """One row per document occurrence: split, source, doc_id, epoch, offset, n_tokens."""
    path = Path(shard_dir) / "index.parquet"
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read shard index: {err}", file=path) from err


# ---------------------------------------------------------------------------------------------
# engines


@dataclass(frozen=True)
class EngineChoice:
    """The engine that encodes, and why: what the metrics record under "engine" (not meta.json: which
    engine won on this host's timings says nothing about the shards, whose ids are the same)."""

    name: Literal["tiktoken", "tokenizers"]
    encode: Encoder
    num_threads: int
    reason: str = "requested"
    sample: dict[str, Any] | None = None  # documents checked, seconds per engine

    def record(self, config: EncodeConfig) -> dict[str, Any]:
        record = {"requested": config.engine, "used": self.name, "num_threads": self.num_threads}
        return {**record, "reason": self.reason, **({"sample": self.sample} if self.sample else {})}


def choose_engine(tokenizer: Tokenizer, texts: Sequence[str], config: EncodeConfig) -> EngineChoice:
    """The engine `config.engine` asks for; "auto" times both on a sample and takes the faster.

    tiktoken is used only when it gives the same ids as HF on the sample (and `to_tiktoken`
    accepted the tokenizer); otherwise "auto" falls back to HF and a forced "tiktoken" fails.
    """
    hf_threads = int(os.environ.get("RAYON_NUM_THREADS") or os.cpu_count() or 1)
    hf = EngineChoice("tokenizers", partial(encode_ordinary_batch, tokenizer), hf_threads)
    if config.engine == "tokenizers":
        return hf
    try:
        encoding = to_tiktoken(tokenizer)
    except ValueError as err:
        return _fall_back(hf, str(err), config)
    tt_encode = partial(tiktoken_encode_ordinary_batch, encoding, num_threads=config.threads)
    tt = EngineChoice("tiktoken", tt_encode, config.threads)

    picked = np.sort(np.random.default_rng(config.seed).permutation(len(texts))[: config.check_docs])
    sample = [texts[i] for i in picked]
    (hf_ids, hf_s), (tt_ids, tt_s) = _timed(hf.encode, sample), _timed(tt.encode, sample)
    timing = {"documents": len(sample), "tokenizers_s": round(hf_s, 5), "tiktoken_s": round(tt_s, 5)}
    if hf_ids != tt_ids:
        first = next(i for i, (a, b) in enumerate(zip(hf_ids, tt_ids)) if a != b)
        reason = f"tiktoken and tokenizers disagree on document row {int(picked[first])}"
        return _fall_back(replace(hf, sample=timing), reason, config)
    if config.engine == "tiktoken":
        return replace(tt, reason="requested; same ids as tokenizers on the sample", sample=timing)
    faster = tt if tt_s <= hf_s else hf
    return replace(faster, reason="faster on the sample, same ids", sample=timing)


def _fall_back(hf: EngineChoice, reason: str, config: EncodeConfig) -> EngineChoice:
    if config.engine == "tiktoken":
        raise ConfigError(f"{reason}; use engine: tokenizers (or auto)", field="engine")
    return replace(hf, reason=reason)


def tiktoken_encode_ordinary_batch(
    encoding: tiktoken.Encoding, texts: Sequence[str], num_threads: int
) -> list[list[int]]:
    """tiktoken's `encode_ordinary` over `texts` on `num_threads` threads, a few long slices each.

    tiktoken releases the GIL while it encodes, but its `encode_ordinary_batch` submits one
    future per text, which costs about as much as encoding a paragraph; slicing the batch was
    about 1.5-2.5x faster on Austen paragraphs (benchmarks/encode.py prints both).
    """
    texts = list(texts)
    step = max(1, -(-len(texts) // (num_threads * 4)))
    slices = [texts[i : i + step] for i in range(0, len(texts), step)]
    encode = encoding.encode_ordinary
    with ThreadPoolExecutor(num_threads) as pool:
        return list(chain.from_iterable(pool.map(lambda part: [encode(t) for t in part], slices)))


def _timed(encode: Encoder, texts: Sequence[str], repeats: int = 2) -> tuple[list[list[int]], float]:
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        ids = encode(texts)
        best = min(best, time.perf_counter() - started)
    return ids, best


def _encode_flat(
    encode: Encoder, texts: Sequence[str], eot: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every document's ids followed by eot, in one array; and each document's start and length."""
    ids = encode(texts)
    n_ids = np.fromiter(map(len, ids), np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype, count=int(n_ids.sum()))
    flat = np.insert(flat, np.cumsum(n_ids), eot)
    lengths = n_ids + 1
    return flat, np.cumsum(lengths) - lengths, lengths


# ---------------------------------------------------------------------------------------------
# writing


def _write_shard(
    path: Path, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, docs: np.ndarray
) -> np.ndarray:
    """Write documents `docs` (indices into starts/lengths) back to back; return their offsets."""
    lens = lengths[docs]
    ends = np.cumsum(lens)
    offsets = ends - lens
    with open(path, "wb") as handle:
        lo = 0
        while lo < len(docs):  # gather a few million tokens at a time: positions are int64
            hi = max(lo + 1, int(np.searchsorted(ends, offsets[lo] + _GATHER_TOKENS, side="right")))
            shift = starts[docs[lo:hi]] - (offsets[lo:hi] - offsets[lo])
            positions = np.repeat(shift, lens[lo:hi]) + np.arange(int(lens[lo:hi].sum()))
            flat[positions].tofile(handle)
            lo = hi
    return offsets


def _tokens_by_source(index: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Tokens per split and source, end-of-text included, from the index."""
    counted = index.assign(tokens=index["n_tokens"] + 1)
    return {
        split: {
            str(source): int(n)
            for source, n in counted[counted["split"] == split].groupby("source")["tokens"].sum().items()
        }
        for split in SPLITS
    }


def _check_documents(documents: pd.DataFrame, where: str) -> None:
    missing = [c for c in DOCUMENT_COLUMNS if c not in documents.columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; expected {list(DOCUMENT_COLUMNS)}", file=where, field=missing[0]
        )
    checks = (
        ("split", ~documents["split"].isin(SPLITS), f"must be one of {list(SPLITS)}"),
        ("text", ~documents["text"].map(lambda text: isinstance(text, str)), "must be a string"),
        ("doc_id", documents.duplicated(["source", "doc_id"]), "appears twice in one source"),
    )
    for column, bad, rule in checks:
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"row {row}: {documents[column].iloc[row]!r} {rule}", file=where, field=column)
