"""Encode throughput: the encode stage's path against the raw Rust engines, on the same text and vocabulary.

Builds a documents table from Jane Austen's novels (one document per paragraph, one source per
novel, every 20th paragraph for validation), trains an 8k byte-level BPE on it (or loads
``--tokenizer``), and prints MB/s (UTF-8 bytes of document text per second, best of N) for:

  (a) the stage: `instructgpt.shards.encode_documents`, DataFrame in, shard files out, engine "auto"
      (so it includes converting to tiktoken, checking both engines on a sample, the mixture and
      the writes);
  (b) HF tokenizers `encode_batch` and `encode_batch_fast` on the paragraphs;
  (c) tiktoken `encode_ordinary_batch` with the Encoding from `to_tiktoken`, and the sliced
      variant the stage calls;

asserts that (b) and (c) give identical ids, and prints the stage's ratio to the fastest engine.

    .venv/bin/python benchmarks/encode.py [--tokenizer PATH] [--repeats 5] [--threads N] [--mb 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from timing import best_of

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("INSTRUCTGPT_DATA_MIRROR", ROOT.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, help="tokenizer JSON; default: train an 8k BPE on the text")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both engines")
    parser.add_argument("--mb", type=float, default=4.0, help="megabytes of Austen to encode")
    args = parser.parse_args()
    # HF tokenizers sizes its rayon pool from this variable when it first encodes in parallel
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)

    import tiktoken
    import tokenizers

    from instructgpt.shards import EncodeConfig, encode_documents, tiktoken_encode_ordinary_batch
    from instructgpt.tokenizer import TokenizerConfig, load_tokenizer, ordinary, to_tiktoken, train_tokenizer

    documents = austen_documents(int(args.mb * 1e6))
    texts = documents["text"].tolist()
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    else:
        started = time.perf_counter()
        tokenizer = train_tokenizer(texts, TokenizerConfig(vocab_size=8192))
        print(f"trained an 8k byte-level BPE on the same text in {time.perf_counter() - started:.2f}s")
    started = time.perf_counter()
    encoding = to_tiktoken(tokenizer)
    convert_s = time.perf_counter() - started

    print(
        f"python {platform.python_version()}, tokenizers {tokenizers.__version__}, "
        f"tiktoken {tiktoken.__version__}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; threads: {args.threads} "
        "(tiktoken num_threads, RAYON_NUM_THREADS for tokenizers)"
    )
    print(f"text: {mb:.2f} MB in {len(texts)} paragraphs of Austen, vocab {tokenizer.get_vocab_size()}, "
          f"best of {args.repeats} interleaved rounds; to_tiktoken took {convert_s * 1e3:.0f} ms\n")

    with ordinary(tokenizer):
        hf_ids = [e.ids for e in tokenizer.encode_batch_fast(texts)]
    tt_ids = encoding.encode_ordinary_batch(texts, num_threads=args.threads)
    assert hf_ids == tt_ids, "tiktoken and tokenizers disagree"
    assert tiktoken_encode_ordinary_batch(encoding, texts, args.threads) == hf_ids
    print(f"ids identical between tokenizers and tiktoken: {sum(map(len, hf_ids)):,} tokens\n")

    def hf_batch() -> None:
        with ordinary(tokenizer):
            tokenizer.encode_batch(texts)

    def hf_batch_fast() -> None:
        with ordinary(tokenizer):
            tokenizer.encode_batch_fast(texts)

    def tt_batch() -> None:
        encoding.encode_ordinary_batch(texts, num_threads=args.threads)

    def tt_sliced() -> None:
        tiktoken_encode_ordinary_batch(encoding, texts, args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        config = EncodeConfig(engine="auto", num_threads=args.threads)
        stage_best = {"encode_mb_per_s": 0.0, "encode_tokens_per_s": 0.0, "other_seconds": float("inf")}
        engine: dict = {}

        def stage() -> None:
            metrics = encode_documents(documents, tokenizer, Path(tmp) / "shards", config)
            metrics["other_seconds"] = metrics["seconds"] - metrics["encode_seconds"]
            engine.update(metrics["engine"])
            for key in ("encode_mb_per_s", "encode_tokens_per_s"):
                stage_best[key] = max(stage_best[key], metrics[key])
            stage_best["other_seconds"] = min(stage_best["other_seconds"], metrics["other_seconds"])

        contenders = {
            "(a) stage: encode_documents, DataFrame -> shards": stage,
            "(b) tokenizers encode_batch": hf_batch,
            "(b) tokenizers encode_batch_fast": hf_batch_fast,
            "(c) tiktoken encode_ordinary_batch": tt_batch,
            "(c) tiktoken, slices per thread (the stage's call)": tt_sliced,
        }
        rows = list(zip(contenders, best_of(list(contenders.values()), args.repeats, warmup=True)))

    width = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"{name:<{width}}  {mb / seconds:7.2f} MB/s  ({seconds * 1e3:7.1f} ms)")
    stage_mb_s = mb / rows[0][1]
    engine_api = max(mb / seconds for _, seconds in rows[1:4])
    engine_any = max(mb / seconds for _, seconds in rows[1:])
    print(f"\nstage used engine {engine['used']!r} ({engine['reason']}; sample: {engine.get('sample')})")
    print(
        f"the stage's encoding step alone (its metrics, best run): {stage_best['encode_mb_per_s']:.2f} MB/s, "
        f"{stage_best['encode_tokens_per_s'] / 1e6:.2f} M tokens/s; the rest of the stage took "
        f"{stage_best['other_seconds'] * 1e3:.0f} ms: mostly fixed (to_tiktoken and its merge check, both "
        "engines on the sample), plus the mixture and the writes"
    )
    print(f"ratio stage / fastest engine batch API (b, c):             {stage_mb_s / engine_api:.2f}")
    print(f"ratio stage / fastest engine call measured (incl. sliced): {stage_mb_s / engine_any:.2f}")


def austen_documents(max_bytes: int):
    """Paragraphs of the six novels, one source per novel, until `max_bytes` of text."""
    import pandas as pd

    rows, total = [], 0
    for path in sorted((DATA / "books" / "austen").glob("*.txt")):
        paragraphs = [p for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
        for i, text in enumerate(paragraphs):
            if total >= max_bytes:
                break
            total += len(text.encode("utf-8"))
            split = "val" if i % 20 == 0 else "train"
            doc_id = f"{path.stem}-{i}"
            rows.append(dict(doc_id=doc_id, source=path.stem, kind="book", text=text, license="pd", split=split))
    if not rows:
        sys.exit(f"no Austen under {DATA}: put the data pack at ../shared/data or set INSTRUCTGPT_DATA_MIRROR")
    return pd.DataFrame(rows)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
