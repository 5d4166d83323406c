"""Stage `cloze`: a multiple-choice task from held-out book text (story-cloze style), as a `tasks` table.

Reads the val split of the book documents (`data/prepared/documents.parquet`: text no model trained
on), builds passages of `context_sentences` sentences whose right ending is the true next sentence
among drawn distractors (`instructgpt.cloze`), splits them train/dev/test by a hash of the passage,
and writes `data/prepared/book_cloze.parquet` (schema `Tasks`, task and source `book_cloze`) and
`metrics/cloze.json`. `finetune_tasks` and `evaluate_icl` read it beside ingest's tasks.

    python -m stages.cloze        (or: dvc repro cloze)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from instructgpt import corpus, schemas
from instructgpt.cloze import ClozeConfig, build_questions
from instructgpt.config import from_params
from stages.common import StageContext, read_table, run_stage, select_sources, write_table

DOCUMENTS = Path("data/prepared/documents.parquet")
BOOK_CLOZE = Path("data/prepared/book_cloze.parquet")
NAME = "book_cloze"


@dataclass(frozen=True)
class ClozeParams:
    """params.yaml: cloze."""

    sources: list[str] = field(default_factory=list)  # book sources whose val documents are used; [] = all books
    questions: ClozeConfig = field(default_factory=ClozeConfig)
    dev_fraction: float = 0.2
    test_fraction: float = 0.2
    salt: str = "book-cloze-v1"

    def __post_init__(self) -> None:
        if not (0 <= self.dev_fraction and 0 <= self.test_fraction and self.dev_fraction + self.test_fraction < 1):
            raise ValueError("dev_fraction and test_fraction must be >= 0 and leave a train split")


def main(ctx: StageContext) -> dict[str, Any]:
    params = from_params(ClozeParams, ctx.section, ctx.where())
    documents = read_table(ctx.path(DOCUMENTS), "documents", "ingest")
    books = documents[(documents["kind"] == "books") & (documents["split"] == "val")]
    books = select_sources(ctx, books, params.sources, "sources", "held-out book documents")
    questions = build_questions(books["doc_id"].tolist(), books["text"].tolist(), params.questions)
    if not questions:  # a catalogue without held-out prose: the other tasks go on without this one
        print(f"  warning: no passages in the {len(books)} held-out book documents; the cloze task is empty")
    splits = [("dev", params.dev_fraction), ("test", params.test_fraction)]
    table = schemas.empty(schemas.Tasks) if not questions else pd.DataFrame({
        "task": NAME, "task_type": "multiple_choice",
        "text_a": [q.context for q in questions], "text_b": None,
        "choices": [list(q.choices) for q in questions],
        "label": pd.array([q.answer for q in questions], dtype="Int64"), "score": float("nan"),
        "source": NAME, "split": [corpus.split_by_hash(q.context, params.salt, splits, "train") for q in questions],
    })
    table = schemas.validate(table, schemas.Tasks, str(BOOK_CLOZE))
    write_table(ctx.path(BOOK_CLOZE), table)
    counts = table["split"].value_counts().to_dict()
    print(f"  {len(table):,} questions from {books['doc_id'].nunique()} held-out book documents: "
          + ", ".join(f"{split} {counts.get(split, 0):,}" for split in ("train", "dev", "test")))
    return {
        "questions": len(table), "split": {s: int(counts.get(s, 0)) for s in ("train", "dev", "test")},
        "documents": int(books["doc_id"].nunique()), "choices": params.questions.choices,
        "answer_share": {str(k): round(v, 4) for k, v in table["label"].value_counts(normalize=True).sort_index().items()},
    }


if __name__ == "__main__":
    run_stage("cloze", main)
