"""Labelled task formats: the benchmarks the pipeline evaluates on, as `tasks` rows.

A task row has `task` ("" for a single-task format: ingest names it after the source; SICK's two
tasks are "entailment" and "relatedness", which ingest prefixes with the source name),
`task_type` (classification, entailment, similarity or multiple_choice), `text_a`, and as the task
needs `text_b`, `choices`, `label` (int) or `score` (float). When a file's name says which split
it is (train; dev, val or trial; test), the rows carry that `split`.

TSV files are split on tabs with no quoting: MSRP and SST-2 sentences contain quote characters.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterator

from instructgpt.errors import DataError
from instructgpt.formats.base import Item, Reject, Row
from instructgpt.formats.reading import (
    FieldError,
    float_field,
    int_field,
    iter_lines,
    json_rows,
    parse_float,
    parse_int,
    text_field,
    text_list_field,
)

_SPLIT_WORDS = {
    "train": "train",
    "dev": "dev",
    "val": "dev",
    "valid": "dev",
    "validation": "dev",
    "trial": "dev",
    "test": "test",
}


def split_from_name(relname: str) -> str | None:
    """The split a file's name declares (msr-para-val.tsv -> dev), or None if it names none or several."""
    words = re.split(r"[^a-z0-9]+", Path(relname).name.lower())
    splits = {_SPLIT_WORDS[word] for word in words if word in _SPLIT_WORDS}
    return splits.pop() if len(splits) == 1 else None


def _task_row(split: str | None, **values: Any) -> dict[str, Any]:
    return {"task": "", **values, **({"split": split} if split else {})}


# --- TSV machinery ------------------------------------------------------------------------------

Builder = Callable[[list[str]], dict[str, Any]]


def _tsv_rows(
    path: Path,
    relname: str,
    columns: tuple[str, ...],
    builders: tuple[Builder, ...],
    *,
    headers: tuple[tuple[str, ...], ...] = (),
) -> Iterator[Item]:
    """Rows from each line through every builder (each line may give several rows).

    `headers`: the accepted first lines; none means the file has no header. A line with the wrong
    number of columns is one Reject; a builder's FieldError rejects only that builder's row.
    """
    lines = iter_lines(path, relname)
    if headers:
        lineno, line = next(lines, (1, ""))
        found = tuple(cell.strip() for cell in line.split("\t"))
        if found not in headers:
            expected = " or ".join(repr("<TAB>".join(h)) for h in headers)
            raise DataError(
                f"expected the header {expected}, found {'<TAB>'.join(found)!r}",
                file=relname,
                line=lineno,
                field="header",
            )
    for lineno, line in lines:
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(columns):
            yield Reject(
                relname,
                lineno,
                None,
                f"expected {len(columns)} tab-separated columns ({', '.join(columns)}), got {len(cells)}",
                line,
            )
            continue
        for build in builders:
            try:
                values = build(cells)
            except FieldError as err:
                yield Reject(relname, lineno, err.field, err.reason, line)
            else:
                yield Row("tasks", values, relname, lineno)


def _text(cells: list[str], columns: tuple[str, ...], name: str) -> str:
    text = cells[columns.index(name)].strip()
    if not text:
        raise FieldError(name, "empty")
    return text


# --- sst2_tsv -----------------------------------------------------------------------------------

_SST2 = ("label", "sentence")


def parse_sst2_tsv(path: Path, relname: str) -> Iterator[Item]:
    split = split_from_name(relname)

    def build(cells: list[str]) -> dict[str, Any]:
        label = parse_int(cells[0], "label", frozenset({0, 1}))
        return _task_row(
            split, task_type="classification", text_a=_text(cells, _SST2, "sentence"), label=label
        )

    # The GLUE-style dev.tsv of the pack names its text column "content", train.tsv "sentence".
    return _tsv_rows(path, relname, _SST2, (build,), headers=(_SST2, ("label", "content")))


# --- rt_polarity ---------------------------------------------------------------------------------


def parse_rt_polarity(path: Path, relname: str) -> Iterator[Item]:
    suffix = Path(relname).suffix
    if suffix not in (".pos", ".neg"):
        raise DataError(
            "rt_polarity reads '*.pos' and '*.neg' files: the suffix gives the label", file=relname
        )
    label = 1 if suffix == ".pos" else 0
    # Pang & Lee released Latin-1; the pack's copy is UTF-8. A file that is not UTF-8 is read as Latin-1.
    for lineno, line in iter_lines(path, relname, fallback="latin-1"):
        if line.strip():
            values = _task_row(None, task_type="classification", text_a=line.strip(), label=label)
            yield Row("tasks", values, relname, lineno)


# --- sick_tsv: two tasks a line -------------------------------------------------------------------

_SICK = ("pair_ID", "sentence_A", "sentence_B", "relatedness_score", "entailment_judgment")
ENTAILMENT_LABELS = {"ENTAILMENT": 0, "NEUTRAL": 1, "CONTRADICTION": 2}


def parse_sick_tsv(path: Path, relname: str) -> Iterator[Item]:
    split = split_from_name(relname)

    def pair(cells: list[str]) -> dict[str, str]:
        return {"text_a": _text(cells, _SICK, "sentence_A"), "text_b": _text(cells, _SICK, "sentence_B")}

    def entailment(cells: list[str]) -> dict[str, Any]:
        judgment = cells[4].strip().upper()
        if judgment not in ENTAILMENT_LABELS:
            raise FieldError(
                "entailment_judgment", f"must be one of {list(ENTAILMENT_LABELS)}, got {cells[4]!r}"
            )
        return _task_row(
            split, **pair(cells), task="entailment", task_type="entailment", label=ENTAILMENT_LABELS[judgment]
        )

    def relatedness(cells: list[str]) -> dict[str, Any]:
        score = parse_float(cells[3], "relatedness_score", 1.0, 5.0)
        return _task_row(split, **pair(cells), task="relatedness", task_type="similarity", score=score)

    return _tsv_rows(path, relname, _SICK, (entailment, relatedness), headers=(_SICK,))


# --- msrp_tsv --------------------------------------------------------------------------------------

_MSRP = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")


def parse_msrp_tsv(path: Path, relname: str) -> Iterator[Item]:
    split = split_from_name(relname)

    def build(cells: list[str]) -> dict[str, Any]:
        return _task_row(
            split,
            task_type="similarity",
            text_a=_text(cells, _MSRP, "#1 String"),
            text_b=_text(cells, _MSRP, "#2 String"),
            label=parse_int(cells[0], "Quality", frozenset({0, 1})),
        )

    return _tsv_rows(path, relname, _MSRP, (build,), headers=(_MSRP,))


# --- sts_tsv -----------------------------------------------------------------------------------------

_STS = ("score", "sentence_a", "sentence_b")


def parse_sts_tsv(path: Path, relname: str) -> Iterator[Item]:
    split = split_from_name(relname)

    def build(cells: list[str]) -> dict[str, Any]:
        return _task_row(
            split,
            task_type="similarity",
            text_a=_text(cells, _STS, "sentence_a"),
            text_b=_text(cells, _STS, "sentence_b"),
            score=parse_float(cells[0], "score", 0.0, 5.0),
        )

    return _tsv_rows(path, relname, _STS, (build,))


# --- user-defined JSON Lines task formats -------------------------------------------------------


def parse_classification_jsonl(path: Path, relname: str) -> Iterator[Item]:
    split = split_from_name(relname)
    return json_rows(
        path,
        relname,
        "tasks",
        lambda r: _task_row(
            split, task_type="classification", text_a=text_field(r, "text"), label=int_field(r, "label")
        ),
    )


def parse_pairs_jsonl(path: Path, relname: str) -> Iterator[Item]:
    split = split_from_name(relname)
    return json_rows(path, relname, "tasks", lambda r: _pair_row(split, r))


def _pair_row(split: str | None, record: dict[str, Any]) -> dict[str, Any]:
    task_type = record.get("task_type", "similarity")
    if task_type not in ("similarity", "entailment"):
        raise FieldError("task_type", f"must be 'similarity' or 'entailment', got {task_type!r}")
    texts = {"text_a": text_field(record, "a"), "text_b": text_field(record, "b")}
    has_label, has_score = record.get("label") is not None, record.get("score") is not None
    if task_type == "entailment" or (has_label and not has_score):
        return _task_row(split, task_type=task_type, **texts, label=int_field(record, "label"))
    if has_score and not has_label:
        return _task_row(split, task_type=task_type, **texts, score=float_field(record, "score"))
    raise FieldError(
        "label",
        "give either 'label' (an integer) or 'score' (a number)" + (", not both" if has_label else ""),
    )


def parse_multiple_choice_jsonl(path: Path, relname: str) -> Iterator[Item]:
    split = split_from_name(relname)
    return json_rows(path, relname, "tasks", lambda r: _choice_row(split, r))


def _choice_row(split: str | None, record: dict[str, Any]) -> dict[str, Any]:
    context = text_field(record, "context")
    choices = text_list_field(record, "choices", min_items=2)
    answer = int_field(record, "answer")
    if not 0 <= answer < len(choices):
        raise FieldError("answer", f"must be a 0-based index into the {len(choices)} choices, got {answer}")
    return _task_row(split, task_type="multiple_choice", text_a=context, choices=choices, label=answer)
