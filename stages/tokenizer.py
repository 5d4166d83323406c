"""Stage `tokenizer`: train the byte-level BPE on the train split of the document mixture.

Reads `data/prepared/documents.parquet` (train split; mixture and size from params `tokenizer`),
writes `data/tokenizer/tokenizer.json`, and measures bytes per token on each source's val split.

    python -m stages.tokenizer    (or: dvc repro tokenizer)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from instructgpt.config import from_params
from instructgpt.tokenizer import (
    SPECIAL_TOKENS,
    TokenizerConfig,
    bytes_per_token,
    save_tokenizer,
    train_tokenizer,
    training_texts,
)
from stages.common import StageContext, run_stage
from stages.ingest import PREPARED

TOKENIZER = Path("data/tokenizer/tokenizer.json")


def main(ctx: StageContext) -> dict[str, Any]:
    config = from_params(TokenizerConfig, ctx.section, ctx.where())
    documents = pd.read_parquet(ctx.path(PREPARED / "documents.parquet"))
    train = documents[documents["split"] == "train"]
    texts, mix = training_texts(train["text"].tolist(), train["source"].tolist(), config)

    started = time.perf_counter()
    tokenizer = train_tokenizer(texts, config)
    train_seconds = time.perf_counter() - started
    sha = save_tokenizer(tokenizer, ctx.path(TOKENIZER))

    val = documents[documents["split"] == "val"]
    per_source = {
        source: round(bytes_per_token(tokenizer, group["text"].tolist()), 4)
        for source, group in val.groupby("source")
    }
    ctx.tracker.log_artifact(ctx.path(TOKENIZER))
    ctx.tracker.set_tags({"tokenizer_sha256": sha})
    print(f"  vocab {tokenizer.get_vocab_size()} trained on {sum(map(len, texts)):,} chars in {train_seconds:.1f}s")
    return {
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "special_tokens": len(SPECIAL_TOKENS),
        "train_chars": sum(map(len, texts)),
        "train_documents": len(texts),
        "train_seconds": round(train_seconds, 3),
        "val_bytes_per_token": per_source,
        "val_bytes_per_token_mean": round(sum(per_source.values()) / max(len(per_source), 1), 4),
        "mixture_epochs": mix.get("epochs", {}),
        "tokenizer_sha256": sha,
    }


if __name__ == "__main__":
    run_stage("tokenizer", main)
