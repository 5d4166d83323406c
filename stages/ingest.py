"""Stage `ingest`: parse every raw source into validated, normalised parquet tables.

Reads `data/raw/` (from `fetch`) and `data/sources.yaml`; writes `data/prepared/<table>.parquet`
for documents, demonstrations, comparisons, rankings, prompts, tasks and rejects, and
`metrics/ingest.json`. A file that cannot be parsed, or a source with more invalid records than
`ingest.max_reject_fraction`, fails the stage with the file, line and field named; tables are
written only after all of them validate, each atomically, so a failure leaves the previous
outputs as they were.

    python -m stages.ingest       (or: dvc repro ingest)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from instructgpt.config import from_params
from instructgpt.errors import DataError
from instructgpt.ingest import IngestConfig, SourceInput, ingest
from instructgpt.sources import load_catalogue
from stages.common import StageContext, run_stage, write_table
from stages.fetch import MANIFEST, RAW

PREPARED = Path("data/prepared")


def main(ctx: StageContext) -> dict[str, Any]:
    config = from_params(IngestConfig, ctx.section, ctx.where())
    catalogue = load_catalogue(ctx.path("data/sources.yaml"))
    manifest_path = ctx.path(RAW / MANIFEST)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read the fetch manifest ({err}); run `dvc repro fetch`", file=manifest_path) from err
    inputs = []
    for source in catalogue:
        entry = manifest.get(source.name)
        if entry is None or entry["sha256"] != source.sha256:
            raise DataError(f"source '{source.name}' is not fetched at its catalogued checksum; run `dvc repro fetch`",
                            file=manifest_path)
        root = ctx.path(RAW / source.name)
        path = root / entry["file"] if entry["layout"] == "file" else root
        inputs.append(SourceInput(source, path, label=source.path or source.url or source.name))

    result = ingest(inputs, config)
    for name, table in result.tables.items():
        write_table(ctx.path(PREPARED / f"{name}.parquet"), table)
    for name, table in result.tables.items():
        print(f"  {name:<15} {len(table):>8,} rows")
    rejects = result.tables["rejects"]
    if len(rejects):
        summary = rejects.groupby(["source", "kind", "field"], dropna=False).size().reset_index(name="count")
        ctx.tracker.log_text(summary.to_csv(index=False), "rejects_summary.csv")
    ctx.tracker.log_params({"sources": ",".join(s.name for s in catalogue)})
    return result.metrics


if __name__ == "__main__":
    run_stage("ingest", main)
