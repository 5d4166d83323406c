"""Stage `encode`: token shards for pretraining, train mixed by source weights, val natural.

Reads the documents and the tokenizer; writes `data/shards/` (train.bin, val.bin as uint16/uint32
memmaps with end-of-text between documents, index.parquet, meta.json). Source weights come from
params `encode.mixture`, else from `weight` in data/sources.yaml, else each source's natural share.

    python -m stages.encode       (or: dvc repro encode)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from instructgpt.config import from_params
from instructgpt.shards import EncodeConfig, encode_documents
from instructgpt.sources import load_catalogue
from instructgpt.tokenizer import load_tokenizer
from stages.common import StageContext, run_stage
from stages.ingest import PREPARED
from stages.tokenizer import TOKENIZER

SHARDS = Path("data/shards")


def main(ctx: StageContext) -> dict[str, Any]:
    config = from_params(EncodeConfig, ctx.section, ctx.where())
    documents = pd.read_parquet(ctx.path(PREPARED / "documents.parquet"))
    catalogue_weights = {
        s.name: s.weight for s in load_catalogue(ctx.path("data/sources.yaml"))
        if s.weight is not None and s.name in set(documents["source"])
    }
    config = dataclasses.replace(config, mixture={**catalogue_weights, **config.mixture})
    tokenizer = load_tokenizer(ctx.path(TOKENIZER))
    metrics = encode_documents(documents, tokenizer, ctx.path(SHARDS), config, where=str(PREPARED / "documents.parquet"))
    ctx.tracker.log_artifact(ctx.path(SHARDS / "meta.json"))
    ctx.tracker.log_params({"effective_mixture": config.mixture})
    totals = metrics["tokens_total"]
    print(f"  train {totals['train']:,} tokens, val {totals['val']:,} tokens, engine {metrics['engine']['used']},"
          f" {metrics['encode_mb_per_s']} MB/s")
    return metrics


if __name__ == "__main__":
    run_stage("encode", main)
