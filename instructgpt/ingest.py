"""Ingest: parse every source into the normalised tables, clean, deduplicate, split, and account
for every record that was not kept.

Input is the catalogue's sources, each with a local path (already resolved and checksummed).
Output is one DataFrame per table (validated against `schemas`) plus `rejects`, and metrics.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import pandas as pd

from instructgpt import corpus, dedup, phases, schemas
from instructgpt.errors import ConfigError, DataError
from instructgpt.formats import get_format
from instructgpt.formats.base import Reject, Row
from instructgpt.sources import Source, iter_source_files

TABLES_BY_KIND = {
    "books": {"documents"},
    "web": {"documents"},
    "demonstrations": {"demonstrations"},
    "comparisons": {"comparisons", "rankings"},
    "prompts": {"prompts"},
    "tasks": {"tasks"},
}
_TEXT_FIELDS = {
    "demonstrations": ("prompt", "response"),
    "comparisons": ("prompt", "chosen", "rejected"),
    "prompts": ("prompt",),
}
_RECORD_PREVIEW = 2000


@dataclass(frozen=True)
class IngestConfig:
    """Cleaning, filtering, dedup and split settings (params.yaml: ingest)."""

    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    min_document_chars: int = 200
    max_document_chars: int = 50_000
    max_field_chars: int = 20_000
    val_fraction: float = 0.05
    task_dev_fraction: float = 0.1
    task_test_fraction: float = 0.1
    near_duplicate_threshold: float = 0.8
    minhash_permutations: int = 128
    shingle_words: int = 5
    max_reject_fraction: float = 0.05
    salt: str = "instructgpt-v1"
    # Which InstructGPT step each prompt serves (instructgpt.phases): shares of demonstration prompts.
    phases: dict[str, float] = field(default_factory=lambda: dict(phases.DEFAULT_SHARES))

    def __post_init__(self) -> None:
        phases.check_shares(self.phases)
        for name in ("val_fraction", "task_dev_fraction", "task_test_fraction", "max_reject_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.task_dev_fraction + self.task_test_fraction >= 1.0:
            raise ValueError("task_dev_fraction + task_test_fraction must leave some train data")
        if not 0.0 <= self.near_duplicate_threshold <= 1.0:
            raise ValueError("near_duplicate_threshold must be within [0, 1] (0 turns it off)")
        if self.max_document_chars < self.min_document_chars:
            raise ValueError("max_document_chars must be >= min_document_chars")


@dataclass(frozen=True)
class SourceInput:
    """A catalogued source and where its verified files are; `label` names it in messages."""

    source: Source
    path: Path
    label: str


@dataclass
class IngestResult:
    tables: dict[str, pd.DataFrame]
    metrics: dict[str, Any]


@dataclass
class _Record:
    table: str
    values: dict[str, Any]
    source: Source
    file: str  # as shown to people: the catalogue path (and the file within a directory source)
    rel: str  # the file's name within its source, for ids
    line: int | None


@dataclass
class _Ledger:
    """Rejected records and per-source counts, so that nothing leaves ingest unaccounted."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    parsed: Counter = field(default_factory=Counter)
    reasons: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, source: str, file: str, line: int | None, fld: str | None, kind: str, reason: str, record: str) -> None:
        self.rows.append(
            {"source": source, "file": file, "line": line, "field": fld, "kind": kind, "reason": reason, "record": record}
        )
        self.reasons[source][f"{kind}:{fld or 'record'}"] += 1

    def invalid(self, source: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["source"] == source and r["kind"] == "invalid"]


def ingest(inputs: list[SourceInput], config: IngestConfig) -> IngestResult:
    ledger = _Ledger()
    records = [rec for item in inputs for rec in _parse_source(item, ledger)]
    _check_reject_fraction(inputs, ledger, config)

    by_table: dict[str, list[_Record]] = defaultdict(list)
    for rec in records:
        by_table[rec.table].append(rec)

    documents = _documents(by_table["documents"], config, ledger)
    demonstrations = _fielded(by_table["demonstrations"], "demonstrations", config, ledger)
    comparisons = _fielded(by_table["comparisons"], "comparisons", config, ledger)
    rankings = _rankings(by_table["rankings"], comparisons, config, ledger)
    prompts = _prompts(by_table["prompts"], demonstrations, comparisons, rankings, config, ledger)
    _assign_phases(demonstrations, prompts, rankings, config)
    tasks = _tasks(by_table["tasks"], config)

    rejects = schemas.rejects_table(ledger.rows)
    tables = {
        "documents": documents,
        "demonstrations": demonstrations,
        "comparisons": comparisons,
        "rankings": rankings,
        "prompts": prompts,
        "tasks": tasks,
        "rejects": rejects,
    }
    for name, frame in tables.items():
        model = schemas.TABLE_SCHEMAS[name]
        tables[name] = schemas.validate(frame if len(frame) else schemas.empty(model), model, name)
    return IngestResult(tables=tables, metrics=_metrics(inputs, tables, ledger))


# --- parsing ------------------------------------------------------------------------------------


def _parse_source(item: SourceInput, ledger: _Ledger) -> Iterable[_Record]:
    source = item.source
    fmt = get_format(source.format)
    allowed = TABLES_BY_KIND[source.kind]
    files = list(iter_source_files(item.path, fmt.patterns))
    if not files:
        raise DataError(
            f"source '{source.name}': no file matches format '{fmt.name}' (patterns {list(fmt.patterns)})",
            file=item.label,
        )
    single = item.path.is_file()
    for path, rel in files:
        label = item.label if single else f"{item.label.rstrip('/')}/{rel}"
        try:
            for parsed in fmt.parse(path, rel):
                ledger.parsed[source.name] += 1
                if isinstance(parsed, Reject):
                    ledger.add(source.name, label, parsed.line, parsed.field, "invalid", parsed.reason, parsed.record)
                    continue
                if parsed.table not in allowed:
                    raise DataError(
                        f"source '{source.name}' is of kind '{source.kind}' but its format produced a "
                        f"'{parsed.table}' record",
                        file=label, line=parsed.line,
                    )
                yield _Record(parsed.table, dict(parsed.values), source, label, rel, parsed.line)
        except DataError as err:
            if err.file == label:
                raise
            raise DataError(f"source '{source.name}': {err.reason}", file=label, line=err.line, field=err.field) from err


def _check_reject_fraction(inputs: list[SourceInput], ledger: _Ledger, config: IngestConfig) -> None:
    for item in inputs:
        name = item.source.name
        bad = ledger.invalid(name)
        total = ledger.parsed[name]
        if total and len(bad) / total > config.max_reject_fraction:
            first = bad[0]
            examples = "; ".join(
                f"{r['file']}:{r['line']}: field '{r['field']}': {r['reason']}" for r in bad[:3]
            )
            raise DataError(
                f"source '{name}': {len(bad)} of {total} records are invalid "
                f"({len(bad) / total:.1%} > ingest.max_reject_fraction {config.max_reject_fraction:.1%}); "
                f"first: {examples}",
                file=first["file"], line=first["line"], field=first["field"],
            )


# --- tables -------------------------------------------------------------------------------------


def _documents(records: list[_Record], config: IngestConfig, ledger: _Ledger) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    origin: list[_Record] = []
    for rec in records:
        text = corpus.clean_text(str(rec.values.get("text", "")), config.unicode_form)
        parts = corpus.split_long(text, config.max_document_chars) if text else [""]
        base = _record_id(rec)
        for k, part in enumerate(parts):
            doc_id = f"{base}#{k}" if len(parts) > 1 else base
            if len(part) < config.min_document_chars:
                ledger.add(
                    rec.source.name, rec.file, rec.line, "text", "filtered",
                    f"shorter than ingest.min_document_chars ({len(part)} < {config.min_document_chars})",
                    part[:_RECORD_PREVIEW],
                )
                continue
            rows.append(
                {"doc_id": doc_id, "source": rec.source.name, "kind": rec.source.kind, "text": part,
                 "license": rec.source.license, "split": rec.values.get("split") or rec.source.split}
            )
            origin.append(rec)
    keep = _drop_duplicates(
        [r["text"] for r in rows], [r["doc_id"] for r in rows], origin, "text", config, ledger, near=True
    )
    rows = [rows[i] for i in keep]
    computed = corpus.document_splits(
        [r["doc_id"] for r in rows], [r["source"] for r in rows], config.val_fraction, config.salt
    )
    for row, split in zip(rows, computed):
        row["split"] = _checked_split(row["split"], ("train", "val"), row["source"]) or split
    return pd.DataFrame(rows, columns=list(schemas.Documents.to_schema().columns))


def _fielded(records: list[_Record], table: str, config: IngestConfig, ledger: _Ledger) -> pd.DataFrame:
    """demonstrations, comparisons, prompts: clean the text fields, filter, dedup, split by prompt."""
    fields = _TEXT_FIELDS[table]
    rows: list[dict[str, Any]] = []
    origin: list[_Record] = []
    for rec in records:
        row = {f: corpus.clean_text(str(rec.values.get(f) or ""), config.unicode_form) for f in fields}
        problem = _field_problem(row, fields, config)
        if problem:
            kind, fld, reason = problem
            ledger.add(rec.source.name, rec.file, rec.line, fld, kind, reason, _preview(rec.values))
            continue
        row["source"] = rec.source.name
        row["split"] = rec.values.get("split") or rec.source.split
        rows.append(row)
        origin.append(rec)
    keys = ["\x00".join(r[f] for f in fields) for r in rows]
    keep = _drop_duplicates(keys, _record_ids(origin), origin, fields[0], config, ledger, near=False)
    rows = [rows[i] for i in keep]
    for row in rows:
        row["split"] = _checked_split(row["split"], ("train", "val"), row["source"]) or _prompt_split(row["prompt"], config)
    columns = list(schemas.TABLE_SCHEMAS[table].to_schema().columns)
    return pd.DataFrame(rows, columns=columns)


def _field_problem(row: dict[str, str], fields: tuple[str, ...], config: IngestConfig) -> tuple[str, str, str] | None:
    for f in fields:
        if not row[f]:
            return ("invalid", f, "empty after cleaning")
        if len(row[f]) > config.max_field_chars:
            return ("filtered", f, f"longer than ingest.max_field_chars ({len(row[f])} > {config.max_field_chars})")
    if "chosen" in row and row["chosen"] == row["rejected"]:
        return ("invalid", "rejected", "identical to chosen after cleaning")
    return None


def _rankings(records: list[_Record], comparisons: pd.DataFrame, config: IngestConfig, ledger: _Ledger) -> pd.DataFrame:
    """Native ranked sets, then every imported pair as a ranked set of two."""
    rows: list[dict[str, Any]] = []
    origin: list[_Record] = []
    for rec in records:
        prompt = corpus.clean_text(str(rec.values.get("prompt") or ""), config.unicode_form)
        responses = [corpus.clean_text(str(r), config.unicode_form) for r in rec.values.get("responses") or []]
        ranking = [int(r) for r in rec.values.get("ranking") or []]
        if not prompt or any(not r for r in responses):
            ledger.add(rec.source.name, rec.file, rec.line, "prompt" if not prompt else "responses", "invalid",
                       "empty after cleaning", _preview(rec.values))
            continue
        rows.append({"prompt": prompt, "responses": responses, "ranking": ranking, "source": rec.source.name,
                     "split": rec.values.get("split") or rec.source.split})
        origin.append(rec)
    keys = [r["prompt"] + "\x00" + "\x00".join(r["responses"]) for r in rows]
    keep = _drop_duplicates(keys, _record_ids(origin), origin, "responses", config, ledger, near=False)
    rows = [rows[i] for i in keep]
    for row in rows:
        row["split"] = _checked_split(row["split"], ("train", "val"), row["source"]) or _prompt_split(row["prompt"], config)
    for pair in comparisons.itertuples(index=False):
        rows.append({"prompt": pair.prompt, "responses": [pair.chosen, pair.rejected], "ranking": [0, 1],
                     "source": pair.source, "split": pair.split})
    return pd.DataFrame(rows, columns=list(schemas.Rankings.to_schema().columns))


def _prompts(
    records: list[_Record],
    demonstrations: pd.DataFrame,
    comparisons: pd.DataFrame,
    rankings: pd.DataFrame,
    config: IngestConfig,
    ledger: _Ledger,
) -> pd.DataFrame:
    """Given prompt sources win; without any, prompts come from demonstrations and comparisons."""
    if records:
        return _fielded(records, "prompts", config, ledger)
    frames = [demonstrations, comparisons, rankings[~rankings["source"].isin(comparisons["source"])]]
    present = [f[["prompt", "source", "split"]] for f in frames if len(f)]
    if not present:
        return schemas.empty(schemas.Prompts)
    return pd.concat(present, ignore_index=True).drop_duplicates("prompt", keep="first").reset_index(drop=True)


def _assign_phases(demonstrations: pd.DataFrame, prompts: pd.DataFrame, rankings: pd.DataFrame, config: IngestConfig) -> None:
    """The `phase` column of demonstrations and prompts: one phase per distinct prompt, in both tables."""
    demonstrated, compared = set(demonstrations["prompt"]), set(rankings["prompt"])
    for frame in (demonstrations, prompts):
        frame["phase"] = phases.assign(frame["prompt"].tolist(), config.salt, config.phases, demonstrated, compared)


def _tasks(records: list[_Record], config: IngestConfig) -> pd.DataFrame:
    """Task examples keep their published text and splits (benchmarks are not deduplicated)."""
    rows = []
    for rec in records:
        v = rec.values
        clean = lambda s: corpus.clean_text(str(s), config.unicode_form) if s is not None else None  # noqa: E731
        suffix = v.get("task") or ""
        text_a, text_b = clean(v.get("text_a")), clean(v.get("text_b"))
        split = _checked_split(v.get("split") or rec.source.split, ("train", "dev", "test"), rec.source.name)
        if split is None:
            split = corpus.split_by_hash(
                f"{text_a}\x00{text_b or ''}", config.salt,
                [("dev", config.task_dev_fraction), ("test", config.task_test_fraction)], "train",
            )
        rows.append({
            "task": f"{rec.source.name}-{suffix}" if suffix else rec.source.name,
            "task_type": v.get("task_type"),
            "text_a": text_a,
            "text_b": text_b,
            "choices": [clean(c) for c in v["choices"]] if v.get("choices") is not None else None,
            "label": v.get("label"),
            "score": v.get("score"),
            "source": rec.source.name,
            "split": split,
        })
    frame = pd.DataFrame(rows, columns=list(schemas.Tasks.to_schema().columns))
    frame["label"] = frame["label"].astype("Int64")
    frame["score"] = frame["score"].astype("float64")
    return frame


# --- helpers ------------------------------------------------------------------------------------


def _drop_duplicates(
    texts: list[str], ids: list[str], origin: list[_Record], fld: str, config: IngestConfig, ledger: _Ledger, near: bool
) -> list[int]:
    """Indices to keep; every duplicate goes to the ledger naming the record it duplicates."""
    found = dedup.find_exact(texts)
    if near and config.near_duplicate_threshold > 0:
        found += dedup.find_near(
            texts, config.near_duplicate_threshold, config.minhash_permutations, config.shingle_words,
            skip=frozenset(d.index for d in found),
        )
    dropped = set()
    for dup in found:
        rec = origin[dup.index]
        what = "exact duplicate" if dup.kind == "exact" else f"near duplicate (Jaccard ~{dup.similarity:.2f})"
        ledger.add(rec.source.name, rec.file, rec.line, fld, "duplicate", f"{what} of {ids[dup.of]}",
                   texts[dup.index][:_RECORD_PREVIEW])
        dropped.add(dup.index)
    return [i for i in range(len(texts)) if i not in dropped]


def _record_id(rec: _Record) -> str:
    """`source/file:line`, stable across runs: a document's id and what duplicates point to."""
    return f"{rec.source.name}/{rec.rel}" + (f":{rec.line}" if rec.line is not None else "")


def _record_ids(records: list[_Record]) -> list[str]:
    return [_record_id(r) for r in records]


def _checked_split(split: str | None, allowed: tuple[str, ...], source: str) -> str | None:
    if split is None:
        return None
    if split not in allowed:
        raise ConfigError(f"source '{source}': split '{split}' is not one of {list(allowed)} for its table",
                          file="data/sources.yaml", field="split")
    return split


def _prompt_split(prompt: str, config: IngestConfig) -> str:
    """By prompt, so one prompt never sits on both sides of the train/val line."""
    return corpus.split_by_hash(prompt, config.salt, [("val", config.val_fraction)], "train")


def _preview(values: dict[str, Any]) -> str:
    return repr(values)[:_RECORD_PREVIEW]


def _metrics(inputs: list[SourceInput], tables: dict[str, pd.DataFrame], ledger: _Ledger) -> dict[str, Any]:
    per_source: dict[str, Any] = {}
    for item in inputs:
        name = item.source.name
        kept = {t: int((f["source"] == name).sum()) for t, f in tables.items() if t != "rejects" and len(f)}
        kept = {t: n for t, n in kept.items() if n}
        reasons = ledger.reasons.get(name, Counter())
        chars = 0
        if len(tables["documents"]):
            docs = tables["documents"]
            chars = int(docs.loc[docs["source"] == name, "text"].str.len().sum())
        invalid = sum(n for k, n in reasons.items() if k.startswith("invalid:"))
        per_source[name] = {
            "records": int(ledger.parsed[name]),
            "kept": kept,
            "characters": chars,
            "duplicates": sum(n for k, n in reasons.items() if k.startswith("duplicate:")),
            "filtered": sum(n for k, n in reasons.items() if k.startswith("filtered:")),
            "invalid": invalid,
            "reject_fraction": round(invalid / ledger.parsed[name], 6) if ledger.parsed[name] else 0.0,
            "rejects": dict(sorted(reasons.items())),
        }
    per_table = {
        name: {"rows": int(len(frame)), **{str(k): int(v) for k, v in frame.get("split", pd.Series()).value_counts().items()}}
        for name, frame in tables.items() if name != "rejects"
    }
    per_table["rejects"] = {"rows": int(len(tables["rejects"])),
                            **{str(k): int(v) for k, v in tables["rejects"]["kind"].value_counts().items()}}
    return {"sources": per_source, "tables": per_table}
