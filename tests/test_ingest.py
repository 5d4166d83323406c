"""Ingest end to end in the library: sources in, validated tables and an account of every reject out."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from instructgpt.errors import DataError
from instructgpt.ingest import IngestConfig, SourceInput, ingest
from instructgpt.sources import Source

CONFIG = IngestConfig(min_document_chars=40, val_fraction=0.2)


def _source(name: str, kind: str, fmt: str, path: Path, **extra: object) -> SourceInput:
    source = Source(name=name, kind=kind, format=fmt, sha256="0" * 64, license=f"{name}-licence",
                    path=path.name, **extra)  # type: ignore[arg-type]
    return SourceInput(source, path, label=path.name)


def _sentence(rng: random.Random, words: int = 40) -> str:
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta", "eta", "rho"])
                    + str(rng.randint(0, 999)) for _ in range(words))


def test_documents_are_cleaned_deduplicated_filtered_and_split(tmp_path: Path) -> None:
    rng = random.Random(0)
    lines = [_sentence(rng, words=100) for _ in range(30)]
    near = lines[3].split()
    near[7] = "changed"
    (tmp_path / "a.txt").write_text("\n".join(lines) + "\nshort line\n")
    (tmp_path / "b.txt").write_text(lines[0].upper() + "\n" + " ".join(near) + "\n" + _sentence(rng) + "\n")
    result = ingest([_source("a", "web", "lines", tmp_path / "a.txt"),
                     _source("b", "web", "lines", tmp_path / "b.txt")], CONFIG)

    docs = result.tables["documents"]
    assert list(docs.columns) == ["doc_id", "source", "kind", "text", "license", "split"]
    assert (docs["source"] == "a").sum() == 30 and (docs["source"] == "b").sum() == 1
    assert docs["doc_id"].iloc[0] == "a/a.txt:1"
    assert set(docs["license"]) == {"a-licence", "b-licence"}
    assert set(docs["split"]) == {"train", "val"}

    rejects = result.tables["rejects"].set_index("line")
    assert rejects.loc[31, "kind"] == "filtered" and "min_document_chars" in rejects.loc[31, "reason"]
    b = result.tables["rejects"][result.tables["rejects"]["source"] == "b"].set_index("line")
    assert b.loc[1, "kind"] == "duplicate" and "exact duplicate of a/a.txt:1" in b.loc[1, "reason"]
    assert b.loc[2, "kind"] == "duplicate" and "near duplicate" in b.loc[2, "reason"] and "a/a.txt:4" in b.loc[2, "reason"]

    metrics = result.metrics["sources"]
    assert metrics["a"]["filtered"] == 1 and metrics["b"]["duplicates"] == 2
    assert metrics["a"]["characters"] == docs.loc[docs["source"] == "a", "text"].str.len().sum()


def test_a_few_bad_records_are_quarantined_with_line_and_field(tmp_path: Path) -> None:
    rng = random.Random(1)
    rows = [json.dumps({"text": _sentence(rng)}) for _ in range(40)]
    rows[9] = json.dumps({"body": "no text field"})
    (tmp_path / "web.jsonl").write_text("\n".join(rows) + "\n")
    result = ingest([_source("web", "web", "jsonl", tmp_path / "web.jsonl")], IngestConfig(max_reject_fraction=0.05))
    bad = result.tables["rejects"]
    assert len(bad) == 1
    assert (bad["kind"].iloc[0], bad["line"].iloc[0], bad["field"].iloc[0]) == ("invalid", 10, "text")
    assert "no text field" in bad["record"].iloc[0]
    assert result.metrics["sources"]["web"]["invalid"] == 1


def test_too_many_bad_records_fail_with_file_line_and_field(tmp_path: Path) -> None:
    rows = [json.dumps({"text": "fine " * 20})] * 3 + ['{"text": broken json'] + [json.dumps({"txt": "typo"})] * 2
    (tmp_path / "web.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        ingest([_source("web", "web", "jsonl", tmp_path / "web.jsonl")], IngestConfig(max_reject_fraction=0.2))
    message = str(err.value)
    assert message.startswith("web.jsonl:4")
    assert "source 'web': 3 of 6 records are invalid" in message
    assert "web.jsonl:5: field 'text'" in message


def test_an_unreadable_file_fails_naming_it(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('[{"instruction": "a", "output": "b"},')
    with pytest.raises(DataError, match=r"broken\.json"):
        ingest([_source("demo", "demonstrations", "alpaca", tmp_path / "broken.json")], CONFIG)


def test_instruction_tables_prompts_and_rankings(tmp_path: Path) -> None:
    demos = [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(20)]
    demos.append(dict(demos[0]))  # an exact duplicate
    (tmp_path / "demos.json").write_text(json.dumps(demos))
    pairs = [{"chosen": f"\n\nHuman: Say {i}\n\nAssistant: {i}", "rejected": f"\n\nHuman: Say {i}\n\nAssistant: no"}
             for i in range(5)] + [{"chosen": "\n\nHuman: new\n\nAssistant: yes", "rejected": "\n\nHuman: new\n\nAssistant: no"}]
    with gzip.open(tmp_path / "pairs.jsonl.gz", "wt") as handle:
        handle.write("\n".join(json.dumps(p) for p in pairs) + "\n")
    result = ingest([_source("demos", "demonstrations", "alpaca", tmp_path / "demos.json"),
                     _source("hh", "comparisons", "hh_rlhf", tmp_path / "pairs.jsonl.gz")], CONFIG)

    demonstrations, comparisons = result.tables["demonstrations"], result.tables["comparisons"]
    assert len(demonstrations) == 20 and len(comparisons) == 6
    assert comparisons.iloc[0][["prompt", "chosen", "rejected"]].tolist() == ["Say 0", "0", "no"]
    rankings = result.tables["rankings"]
    assert len(rankings) == 6 and [list(r) for r in rankings["ranking"]] == [[0, 1]] * 6
    prompts = result.tables["prompts"]
    assert len(prompts) == 21  # 20 demonstration prompts, "Say 0..4" shared, plus "new"
    assert prompts["prompt"].is_unique
    # one prompt, one split, in every table
    split_of = dict(zip(demonstrations["prompt"], demonstrations["split"]))
    assert all(split_of[p] == s for p, s in zip(comparisons["prompt"], comparisons["split"]) if p in split_of)
    assert result.tables["rejects"]["kind"].tolist() == ["duplicate"]
    # one prompt, one phase: compared prompts are reward data, in both tables that carry the phase
    phase_of = dict(zip(prompts["prompt"], prompts["phase"]))
    assert all(phase_of[p] == ph for p, ph in zip(demonstrations["prompt"], demonstrations["phase"]))
    assert {phase_of[f"Say {i}"] for i in range(5)} == {"reward"} and phase_of["new"] == "reward"


def test_a_catalogue_split_puts_a_whole_source_in_it(tmp_path: Path) -> None:
    rng = random.Random(2)
    (tmp_path / "held.txt").write_text("\n".join(_sentence(rng) for _ in range(10)) + "\n")
    result = ingest([_source("held", "web", "lines", tmp_path / "held.txt", split="val")], CONFIG)
    assert set(result.tables["documents"]["split"]) == {"val"}


def test_real_pack_tasks_keep_published_splits(data_pack: Path) -> None:
    sst2 = Source(name="sst2", kind="tasks", format="sst2_tsv", sha256="0" * 64, license="research", path="tasks/sst2")
    rt = Source(name="rt", kind="tasks", format="rt_polarity", sha256="0" * 64, license="research", path="tasks/rt_polarity")
    result = ingest([SourceInput(sst2, data_pack / "tasks/sst2", "tasks/sst2"),
                     SourceInput(rt, data_pack / "tasks/rt_polarity", "tasks/rt_polarity")], CONFIG)
    tasks = result.tables["tasks"]
    sst = tasks[tasks["task"] == "sst2"]
    assert sst["split"].value_counts().to_dict() == {"train": 67349, "dev": 872}
    rt_splits = tasks.loc[tasks["task"] == "rt", "split"].value_counts(normalize=True)
    assert len(tasks[tasks["task"] == "rt"]) == 10662
    assert 0.07 < rt_splits["dev"] < 0.13 and 0.07 < rt_splits["test"] < 0.13
