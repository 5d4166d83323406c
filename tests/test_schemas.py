"""Data contracts: each table's schema accepts good rows and names what is wrong with bad ones."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from instructgpt import schemas
from instructgpt.errors import DataError


def _tasks(**overrides: list) -> pd.DataFrame:
    data = {
        "task": ["sst2", "sick-relatedness", "cloze"],
        "task_type": ["classification", "similarity", "multiple_choice"],
        "text_a": ["great film", "a man runs", "once upon a time"],
        "text_b": [None, "a person runs", None],
        "choices": [None, None, ["they lived", "bananas"]],
        "label": pd.array([1, None, 0], dtype="Int64"),
        "score": [None, 4.5, None],
        "source": ["sst2", "sick", "books"],
        "split": ["train", "dev", "test"],
    }
    data.update(overrides)
    return pd.DataFrame(data)


def test_every_table_has_a_schema_and_empty_tables_validate() -> None:
    assert set(schemas.TABLE_SCHEMAS) == {
        "documents", "demonstrations", "comparisons", "rankings", "prompts", "tasks", "rejects",
    }
    for name, model in schemas.TABLE_SCHEMAS.items():
        assert len(schemas.validate(schemas.empty(model), model, name)) == 0


def test_tasks_survive_a_parquet_round_trip(tmp_path: Path) -> None:
    _tasks().to_parquet(tmp_path / "t.parquet")
    schemas.validate(pd.read_parquet(tmp_path / "t.parquet"), schemas.Tasks, "tasks")


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        ({"label": pd.array([1, None, 5], dtype="Int64")}, "fields_required_by_task_type"),  # answer out of range
        ({"text_b": [None, None, None]}, "fields_required_by_task_type"),  # a pair task without its pair
        ({"score": [0.5, 4.5, None]}, "exactly_one_of_label_or_score"),
        ({"split": ["train", "dev", "holdout"]}, "isin"),
        ({"task_type": ["classification", "similarity", "ranking"]}, "isin"),
    ],
)
def test_bad_task_rows_are_named(overrides: dict, check: str) -> None:
    with pytest.raises(DataError, match=f"table 'tasks' does not match its schema: check {check}"):
        schemas.validate(_tasks(**overrides), schemas.Tasks, "tasks")


def test_rankings_need_two_responses_and_matching_ranks(tmp_path: Path) -> None:
    good = pd.DataFrame({"prompt": ["p"], "responses": [["a", "b", "c"]], "ranking": [[0, 2, 1]],
                         "source": ["s"], "split": ["train"]})
    good.to_parquet(tmp_path / "r.parquet")
    schemas.validate(pd.read_parquet(tmp_path / "r.parquet"), schemas.Rankings, "rankings")
    for responses, ranking in ([["a"], [0]], [["a", "b"], [0]], [["a", "b"], [1, 1]], [["a", ""], [0, 1]]):
        bad = good.assign(responses=[responses], ranking=[ranking])
        with pytest.raises(DataError, match="table 'rankings'"):
            schemas.validate(bad, schemas.Rankings, "rankings")


def test_strict_columns_and_distinct_pairs() -> None:
    pairs = pd.DataFrame({"prompt": ["p"], "chosen": ["same"], "rejected": ["same"], "source": ["s"], "split": ["val"]})
    with pytest.raises(DataError, match="chosen_differs_from_rejected"):
        schemas.validate(pairs, schemas.Comparisons, "comparisons")
    with pytest.raises(DataError, match="table 'comparisons'"):
        schemas.validate(pairs.assign(extra=1, rejected="other"), schemas.Comparisons, "comparisons")


def test_documents_need_unique_ids_and_text() -> None:
    docs = pd.DataFrame({"doc_id": ["a", "a"], "source": ["s", "s"], "kind": ["books", "books"],
                         "text": ["x", "  "], "license": ["l", "l"], "split": ["train", "val"]})
    with pytest.raises(DataError) as err:
        schemas.validate(docs, schemas.Documents, "documents")
    assert "doc_id" in str(err.value) and "non_blank" in str(err.value)
