"""Data contracts: a pandera model for every table that crosses a stage boundary.

The stage that writes a table validates it (`validate`); the stage that reads it trusts it.
All models are `strict` (no unexpected columns: a renamed field fails loudly) and `coerce` only
where parquet round trips change dtypes (nullable integers), never to repair bad values.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors
from pandera.typing import Series

from instructgpt.errors import DataError

DOCUMENT_KINDS = ["books", "web"]
TRAIN_VAL = ["train", "val"]
TASK_SPLITS = ["train", "dev", "test"]
TASK_TYPES = ["classification", "entailment", "similarity", "multiple_choice"]
REJECT_KINDS = ["invalid", "filtered", "duplicate"]
PHASES = ["sft", "reward", "ppo", "eval"]  # instructgpt.phases: the InstructGPT step a prompt serves


def _non_blank(series: pd.Series) -> pd.Series:
    return series.str.strip().str.len() > 0


def _is_str_list(value: Any, min_len: int) -> bool:
    try:
        items = list(value)
    except TypeError:
        return False
    return len(items) >= min_len and all(isinstance(v, str) and v.strip() for v in items)


class _Config:
    strict = True
    coerce = False


class Documents(pa.DataFrameModel):
    """Pretraining text: books and web documents (long books are cut into parts at paragraphs)."""

    doc_id: Series[str] = pa.Field(unique=True)
    source: Series[str]
    kind: Series[str] = pa.Field(isin=DOCUMENT_KINDS)
    text: Series[str]
    license: Series[str]
    split: Series[str] = pa.Field(isin=TRAIN_VAL)

    Config = _Config

    @pa.check("text", name="non_blank")
    def _text(cls, text: Series[str]) -> Series[bool]:
        return _non_blank(text)


class Demonstrations(pa.DataFrameModel):
    """Prompt and the response a person (or a stated model) wrote for it, and the step it serves."""

    prompt: Series[str]
    response: Series[str]
    source: Series[str]
    split: Series[str] = pa.Field(isin=TRAIN_VAL)
    phase: Series[str] = pa.Field(isin=PHASES)

    Config = _Config

    @pa.check("prompt", "response", name="non_blank")
    def _fields(cls, column: Series[str]) -> Series[bool]:
        return _non_blank(column)


class Comparisons(pa.DataFrameModel):
    """A preference pair: for `prompt`, `chosen` was preferred to `rejected`."""

    prompt: Series[str]
    chosen: Series[str]
    rejected: Series[str]
    source: Series[str]
    split: Series[str] = pa.Field(isin=TRAIN_VAL)

    Config = _Config

    @pa.check("prompt", "chosen", "rejected", name="non_blank")
    def _fields(cls, column: Series[str]) -> Series[bool]:
        return _non_blank(column)

    @pa.dataframe_check(name="chosen_differs_from_rejected")
    def _distinct(cls, df: pd.DataFrame) -> Series[bool]:
        return df["chosen"] != df["rejected"]


class Rankings(pa.DataFrameModel):
    """K >= 2 responses to one prompt with their ranks (0 = best; ties share a rank).

    Imported pairs are ranked sets of two: responses [chosen, rejected], ranking [0, 1].
    """

    prompt: Series[str]
    responses: Series[Any]
    ranking: Series[Any]
    source: Series[str]
    split: Series[str] = pa.Field(isin=TRAIN_VAL)

    Config = _Config

    @pa.check("responses", name="at_least_two_non_blank_strings", element_wise=True)
    def _responses(cls, value: Any) -> bool:
        return _is_str_list(value, 2)

    @pa.dataframe_check(name="ranking_matches_responses_and_is_not_all_ties")
    def _ranking(cls, df: pd.DataFrame) -> Series[bool]:
        def ok(row: pd.Series) -> bool:
            try:
                ranks = [int(r) for r in row["ranking"]]
                n = len(list(row["responses"]))
            except (TypeError, ValueError):
                return False
            return len(ranks) == n and min(ranks) >= 0 and len(set(ranks)) > 1

        return df.apply(ok, axis=1) if len(df) else pd.Series([], dtype=bool)


class RankedSets(Rankings):
    """The reward model's data (stage `comparisons`): ranked sets with who ranked them.

    source: the dataset of an imported pair (`hh_rlhf`, ...), `sampled` for the SFT model's K
    responses ranked by a labeler, `labels` for sets from labels files. labeler: `imported`,
    `programmatic`, or the id a labels file gives.
    """

    labeler: Series[str]

    @pa.check("responses", name="responses_are_distinct", element_wise=True)
    def _distinct(cls, value: Any) -> bool:
        return len(set(value)) == len(list(value))


class Prompts(pa.DataFrameModel):
    """Every distinct prompt once, with the step it serves (PPO takes `phase == "ppo"`)."""

    prompt: Series[str] = pa.Field(unique=True)
    source: Series[str]
    split: Series[str] = pa.Field(isin=TRAIN_VAL)
    phase: Series[str] = pa.Field(isin=PHASES)

    Config = _Config

    @pa.check("prompt", name="non_blank")
    def _prompt(cls, prompt: Series[str]) -> Series[bool]:
        return _non_blank(prompt)


class Tasks(pa.DataFrameModel):
    """Supervised task examples, one table for every task: the fields each task type needs.

    classification: text_a, label. entailment: text_a (premise), text_b (hypothesis), label.
    similarity: text_a, text_b, and label (paraphrase) or score (relatedness, regression).
    multiple_choice: text_a (context), choices, label (index of the right choice).
    """

    task: Series[str]
    task_type: Series[str] = pa.Field(isin=TASK_TYPES)
    text_a: Series[str]
    text_b: Series[str] = pa.Field(nullable=True)
    choices: Series[Any] = pa.Field(nullable=True)
    label: Series[pd.Int64Dtype] = pa.Field(nullable=True, ge=0, coerce=True)
    score: Series[float] = pa.Field(nullable=True)
    source: Series[str]
    split: Series[str] = pa.Field(isin=TASK_SPLITS)

    Config = _Config

    @pa.dataframe_check(name="exactly_one_of_label_or_score")
    def _target(cls, df: pd.DataFrame) -> Series[bool]:
        return df["label"].isna() != df["score"].isna()

    @pa.dataframe_check(name="fields_required_by_task_type")
    def _fields(cls, df: pd.DataFrame) -> Series[bool]:
        pair = df["task_type"].isin(["entailment", "similarity"])
        choice = df["task_type"] == "multiple_choice"
        has_b = df["text_b"].notna()
        has_choices = df["choices"].map(lambda c: c is not None and _is_str_list(c, 2))
        label_in_range = [
            (not ch) or (pd.notna(lbl) and int(lbl) < len(list(c)))
            for ch, lbl, c in zip(choice, df["label"], df["choices"])
        ]
        return (~pair | has_b) & (~choice | (has_choices & pd.Series(label_in_range, index=df.index)))


class Rejects(pa.DataFrameModel):
    """Everything ingest did not keep, and why: nothing is dropped silently.

    kind: `invalid` (failed parsing or validation; counts towards the stage's failure threshold),
    `filtered` (a length filter), `duplicate` (exact or near duplicate of a kept record).
    """

    source: Series[str]
    file: Series[str]
    line: Series[pd.Int64Dtype] = pa.Field(nullable=True, coerce=True)
    field: Series[str] = pa.Field(nullable=True)
    kind: Series[str] = pa.Field(isin=REJECT_KINDS)
    reason: Series[str]
    record: Series[str]

    Config = _Config


class ShardIndex(pa.DataFrameModel):
    """Where each document occurrence lies in a token shard."""

    split: Series[str] = pa.Field(isin=TRAIN_VAL)
    source: Series[str]
    doc_id: Series[str]
    epoch: Series[int] = pa.Field(ge=0)
    offset: Series[int] = pa.Field(ge=0)
    n_tokens: Series[int] = pa.Field(ge=0)  # the document's tokens; its end-of-text follows

    Config = _Config


TABLE_SCHEMAS: dict[str, type[pa.DataFrameModel]] = {
    "documents": Documents,
    "demonstrations": Demonstrations,
    "comparisons": Comparisons,
    "rankings": Rankings,
    "prompts": Prompts,
    "tasks": Tasks,
    "rejects": Rejects,
}


def validate(df: pd.DataFrame, model: type[pa.DataFrameModel], name: str) -> pd.DataFrame:
    """Validate `df` against `model`; a failure names the table, the rows and the columns."""
    try:
        return model.validate(df, lazy=True)
    except (SchemaErrors, SchemaError) as err:
        raise DataError(f"table '{name}' does not match its schema: {_describe(err)}", field=name) from err


def _describe(err: SchemaErrors | SchemaError) -> str:
    """One line per failed check: its name, the column (for column checks) and the first rows."""
    cases = getattr(err, "failure_cases", None)
    if cases is None or not len(cases):
        return str(err).splitlines()[0]
    parts = []
    for check, group in cases.groupby("check", sort=False, dropna=False):
        columns = sorted({str(c) for c in group["column"].dropna()})
        column = f" on column '{columns[0]}'" if len(columns) == 1 else ""
        rows = sorted({int(i) for i in group["index"].dropna()})[:5]
        where = f" at rows {rows}" if rows else f" (got {group['failure_case'].iloc[0]})"
        parts.append(f"check {check}{column} failed{where}")
    return "; ".join(parts[:5])


def rejects_table(rows: list[dict]) -> pd.DataFrame:
    """Reject rows ({source, file, line, field, kind, reason, record}) as a `Rejects` frame, empty or not."""
    if not rows:
        return empty(Rejects)
    rejects = pd.DataFrame(rows, columns=list(Rejects.to_schema().columns))
    rejects["line"] = rejects["line"].astype("Int64")
    rejects["field"] = rejects["field"].astype("str").where(rejects["field"].notna(), None)
    return rejects


def empty(model: type[pa.DataFrameModel]) -> pd.DataFrame:
    """An empty frame with the model's columns (so every table is written even when no source feeds it)."""
    columns = {}
    for name, column in model.to_schema().columns.items():
        dtype = str(column.dtype)
        kind = "str" if "str" in dtype else "Int64" if dtype == "Int64" else "float64" if "float" in dtype else "int64" if "int" in dtype else object
        columns[name] = pd.Series([], dtype=kind)
    return pd.DataFrame(columns)
