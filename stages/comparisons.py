"""Stage `comparisons`: the reward model's training data, as one validated table of ranked sets.

Two kinds of source, both on by default:

- imported: ingest's ranked sets (`data/prepared/rankings.parquet`: HH-RLHF and the pack's other
  preference pairs, each a set of two ranked by its dataset's people), the train split of each
  source capped at `imported.max_train_sets` (a deterministic choice), the val split whole;
- sampled (InstructGPT's rankings): for each prompt of the demonstrations of phase `reward` (held
  out from SFT, see `instructgpt.phases`), the SFT model samples K responses with the KV-cache
  sampler and the configured labelers rank them (`instructgpt.labelers`): a labels file's ranks
  where a person ranked that very set, else the programmatic rubric against the prompt's reference.
  Sets of labels files that rank no sampled set enter as sets of their own (source `labels`).

Writes `data/comparisons/ranked_sets.parquet` (schema `RankedSets`), `data/comparisons/sampled.jsonl`
(every sampled set with every labeler's ranks: the file to hand to people who label, see
`data/labels/README.md`), `data/comparisons/rejects.parquet` (bad label lines and dropped sets, with
their reasons) and `metrics/comparisons.json`. Too large a share of bad label lines fails the stage,
naming the first bad line's file, line and field.

    python -m stages.comparisons        (or: dvc repro comparisons)
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from instructgpt import atomic, checkpoint, hardware, schemas
from instructgpt.answers import answer
from instructgpt.chat import ChatTemplate
from instructgpt.comparisons import COLUMNS, SAMPLED, imported_sets, label_file_sets, pair_count, rank_sampled
from instructgpt.config import from_params
from instructgpt.errors import DataError
from instructgpt.generate import SamplingConfig
from instructgpt.labelers import BadLabel, FileLabeler, Labeler, ProgrammaticLabeler, RubricWeights, read_label_files, words
from instructgpt.tokenizer import load_tokenizer
from stages.common import StageContext, read_table, run_stage, select_sources, write_table
from stages.sft import DEMONSTRATIONS, SFT_MODEL

RANKINGS = Path("data/prepared/rankings.parquet")
OUT = Path("data/comparisons")
RANKED_SETS = OUT / "ranked_sets.parquet"
SAMPLED_FILE = OUT / "sampled.jsonl"
REJECTS = OUT / "rejects.parquet"
LABELERS = ("file", "programmatic")


@dataclass(frozen=True)
class ImportedParams:
    """params.yaml: comparisons.imported."""

    enabled: bool = True
    sources: list[str] = field(default_factory=list)  # ingest's ranked-set sources; [] = all
    max_train_sets: int | None = 600  # per source, of the train split; None = all


@dataclass(frozen=True)
class SampledParams:
    """params.yaml: comparisons.sampled."""

    enabled: bool = True
    prompts: int | None = None  # how many of the phase-`reward` demonstrations' prompts; None = all
    sources: list[str] = field(default_factory=list)  # demonstration sources to take prompts from; [] = all
    responses: int = 4  # K responses per prompt (InstructGPT: 4 to 9)
    batch_rows: int = 32  # sequences per generate call (prompts x K)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=64, temperature=1.0, top_k=50, seed=0))
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 4 <= self.responses <= 9:
            raise ValueError(f"responses (K) must be 4 to 9 as in InstructGPT, got {self.responses}")
        if self.prompts is not None and self.prompts < 1:
            raise ValueError("prompts must be at least 1, or null for all")


@dataclass(frozen=True)
class ComparisonsParams:
    """params.yaml: comparisons."""

    imported: ImportedParams = field(default_factory=ImportedParams)
    sampled: SampledParams = field(default_factory=SampledParams)
    labelers: list[str] = field(default_factory=lambda: list(LABELERS))  # in order of precedence
    labels_dir: str = "data/labels"  # *.jsonl files of rankings people made (data/labels/README.md)
    max_bad_label_fraction: float = 0.05  # of the labels files' lines; more fails the stage
    rubric: RubricWeights = field(default_factory=RubricWeights)
    val_fraction: float = 0.25  # of the sampled and labels-file sets, held out by a hash of the prompt
    salt: str = "comparisons"

    def __post_init__(self) -> None:
        unknown = [name for name in self.labelers if name not in LABELERS]
        if unknown or not self.labelers:
            raise ValueError(f"labelers must be some of {list(LABELERS)}, got {self.labelers}")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be between 0 and 1")
        if not 0 <= self.max_bad_label_fraction <= 1:
            raise ValueError("max_bad_label_fraction must be between 0 and 1")


def main(ctx: StageContext) -> dict[str, Any]:
    params = from_params(ComparisonsParams, ctx.section, ctx.where())
    records, bad, label_lines, label_files = _labels(ctx, params)
    tables: list[pd.DataFrame] = []
    rejects: list[dict] = [_bad_label_row(b) for b in bad]
    report: dict[str, Any] = {"label_files": label_files, "label_lines": label_lines, "bad_label_lines": len(bad)}

    if params.imported.enabled:
        tables.append(imported_sets(read_table(ctx.path(RANKINGS), "rankings", "ingest"), params.imported.sources,
                                    params.imported.max_train_sets, params.salt))
    used: set[tuple[str, tuple[str, ...]]] = set()
    if params.sampled.enabled:
        sampled, sampled_report = _sample_and_rank(ctx, params, records)
        tables.append(pd.DataFrame(sampled.rows, columns=COLUMNS))
        rejects += [{"source": SAMPLED, "file": str(SAMPLED_FILE), "line": None, "field": "responses", "kind": "filtered",
                     "reason": d["reason"], "record": d["prompt"][:500]} for d in sampled.dropped]
        used = {(r["prompt"], tuple(sorted(r["responses"]))) for r in sampled.rows}
        report.update(sampled_report)
    if "file" in params.labelers:
        tables.append(pd.DataFrame(label_file_sets(records, used, params.val_fraction, params.salt), columns=COLUMNS))

    table = pd.concat([t for t in tables if len(t)], ignore_index=True) if any(len(t) for t in tables) else schemas.empty(schemas.RankedSets)
    if table.empty:
        raise DataError("no ranked sets: enable comparisons.imported or comparisons.sampled, or add labels files",
                        file=ctx.where())
    table = schemas.validate(table[COLUMNS], schemas.RankedSets, str(RANKED_SETS))
    write_table(ctx.path(RANKED_SETS), table)
    write_table(ctx.path(REJECTS), schemas.validate(schemas.rejects_table(rejects), schemas.Rejects, str(REJECTS)))
    ctx.tracker.log_artifact(ctx.path(REJECTS), "comparisons")
    return {**_table_report(table), **report}


def _labels(ctx: StageContext, params: ComparisonsParams) -> tuple[list, list[BadLabel], int, int]:
    """The labels files' records and bad lines; too many bad lines fail the stage here, first."""
    if "file" not in params.labelers:
        return [], [], 0, 0
    files = sorted(ctx.path(params.labels_dir).glob("*.jsonl"))
    records, bad, lines = read_label_files(files)
    if bad and len(bad) > params.max_bad_label_fraction * lines:
        first = bad[0]
        raise DataError(f"{first.reason} ({len(bad)} of {lines} label lines are bad, more than "
                        f"comparisons.max_bad_label_fraction = {params.max_bad_label_fraction}; fix them or remove the file)",
                        file=_relative(ctx, first.file), line=first.line, field=first.field)
    for b in bad:
        print(f"  quarantined {_relative(ctx, b.file)}:{b.line}: {b.field or 'line'}: {b.reason}")
    return records, bad, lines, len(files)


def _relative(ctx: StageContext, path: str) -> str:
    try:
        return str(Path(path).relative_to(ctx.root))
    except ValueError:
        return path


def _bad_label_row(bad: BadLabel) -> dict:
    return {"source": "labels", "file": bad.file, "line": bad.line, "field": bad.field, "kind": "invalid",
            "reason": bad.reason, "record": bad.record}


def _sample_and_rank(ctx: StageContext, params: ComparisonsParams, records: list) -> tuple[Any, dict[str, Any]]:
    """K responses of the SFT model per held-out prompt, ranked; the samples file and its figures."""
    sampled = params.sampled
    prompts = _reward_prompts(ctx, sampled)
    model_dir = ctx.path(SFT_MODEL)
    model = checkpoint.load_model(model_dir).eval()
    device = hardware.select_device(sampled.device)
    model.to(device)
    template = ChatTemplate(load_tokenizer(model_dir / "tokenizer.json"))
    print(f"  sampling {sampled.responses} responses to each of {len(prompts):,} held-out prompts on {device}")
    started = time.perf_counter()
    answers = answer(model, template, prompts["prompt"].tolist(), sampled.sampling, samples=sampled.responses,
                     batch_rows=sampled.batch_rows)
    seconds = time.perf_counter() - started
    labelers = _labelers(params, records)
    out = rank_sampled(prompts["prompt"].tolist(), prompts["response"].tolist(), [[a.text for a in group] for group in answers],
                       labelers, val_fraction=params.val_fraction, salt=params.salt)
    _write_samples(ctx, out, prompts, answers)
    flat = [a for group in answers for a in group]
    agreement = out.agreement
    return out, {
        "prompts": len(prompts),
        "responses_sampled": len(flat),
        "sampled_ended_rate": round(sum(a.ended for a in flat) / max(len(flat), 1), 4),
        "sampled_tokens_mean": round(statistics.fmean(len(a.tokens) for a in flat), 2) if flat else None,
        "generation_seconds": round(seconds, 1),
        "dropped_sets": dict(Counter(_reason_kind(d["reason"]) for d in out.dropped)),
        "labeler_agreement": round(agreement, 4) if agreement is not None else None,
        "labeler_agreement_pairs": out.compared_pairs,
        "labeler_agreement_sets": out.sets_with_two_labelers,
        **({} if agreement is not None else
           {"labeler_agreement_note": "no sampled set was ranked by two labelers (a labels file ranks none of them)"}),
    }


def _reason_kind(reason: str) -> str:
    return "ties" if reason.startswith("all ") else "unlabelled" if reason.startswith("no labeler") else "too_few_responses"


def _reward_prompts(ctx: StageContext, sampled: SampledParams) -> pd.DataFrame:
    """One demonstration per distinct prompt of phase `reward`, the first `prompts` by a stable order."""
    table = select_sources(ctx, read_table(ctx.path(DEMONSTRATIONS), "demonstrations", "ingest"), sampled.sources,
                           "sampled.sources", "demonstrations")
    table = table[table["phase"] == "reward"].drop_duplicates("prompt").sort_values("prompt", kind="stable")
    if table.empty:
        raise DataError("no demonstrations of phase 'reward' to sample prompts from: check ingest.phases",
                        file=ctx.path(DEMONSTRATIONS))
    if sampled.prompts is not None:
        table = table.head(sampled.prompts)
    return table.reset_index(drop=True)


def _labelers(params: ComparisonsParams, records: list) -> list[Labeler]:
    built: dict[str, Labeler] = {"file": FileLabeler(records), "programmatic": ProgrammaticLabeler(params.rubric)}
    return [built[name] for name in params.labelers]


def _write_samples(ctx: StageContext, out: Any, prompts: pd.DataFrame, answers: list) -> None:
    """Every sampled set with every labeler's ranks, one JSON line per prompt (the file people label)."""
    judged = {row["prompt"]: row for row in out.judged}
    lines = []
    for prompt, reference, source, group in zip(prompts["prompt"], prompts["response"], prompts["source"], answers):
        row = judged.get(prompt)
        responses = row["responses"] if row else [a.text for a in group]
        ended = {a.text: a.ended for a in group}
        lines.append({"prompt": prompt, "reference": reference,
                      "source": source, "responses": responses, "ended": [ended[r] for r in responses],
                      "rankings": row["rankings"] if row else {}})
    atomic.write_text(ctx.path(SAMPLED_FILE), "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    ctx.tracker.log_artifact(ctx.path(SAMPLED_FILE), "comparisons")


def _table_report(table: pd.DataFrame) -> dict[str, Any]:
    """Sets, pairs, responses, ties and response length, per source and split."""
    per_source: dict[str, Any] = {}
    for source, group in table.groupby("source", sort=True):
        lengths = [len(words(r)) for responses in group["responses"] for r in responses]
        per_source[str(source)] = {
            "sets": {split: int((group["split"] == split).sum()) for split in ("train", "val")},
            "pairs": int(sum(pair_count(r) for r in group["ranking"])),
            "responses": len(lengths),
            "sets_with_ties": int(sum(len(set(r)) < len(r) for r in group["ranking"])),
            "response_words_mean": round(statistics.fmean(lengths), 2) if lengths else None,
            "labelers": sorted(set(group["labeler"])),
        }
    return {
        "sets": len(table),
        "pairs": sum(s["pairs"] for s in per_source.values()),
        "responses": sum(s["responses"] for s in per_source.values()),
        "sets_with_ties": sum(s["sets_with_ties"] for s in per_source.values()),
        "per_source": per_source,
    }


if __name__ == "__main__":
    run_stage("comparisons", main)
