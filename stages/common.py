"""What every stage module shares: find the repo, read its params section, track the run, fail clearly.

A stage module is thin: it defines `main(ctx) -> metrics` and ends with
``if __name__ == "__main__": run_stage("name", main)``. `run_stage` opens the MLflow run (a child of
the pipeline execution's parent run), logs the stage's params and provenance tags, writes
`metrics/<name>.json` atomically, and turns a `DataError` into a one-line message and exit code 2.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import yaml

from instructgpt import atomic, tracking
from instructgpt.errors import ConfigError, DataError
from stages import provenance


@dataclass
class StageContext:
    """What a stage body gets: where it runs, its params, and the tracker to log to."""

    name: str
    root: Path
    params: Mapping[str, Any]
    tracker: tracking.Tracker

    @property
    def section(self) -> Mapping[str, Any]:
        return self.params.get(self.name) or {}

    def where(self, key: str | None = None) -> str:
        """Names a params location in errors: 'params.yaml:ingest' or 'params.yaml:ingest.key'."""
        return f"params.yaml:{self.name}" + (f".{key}" if key else "")

    def path(self, relative: str | Path) -> Path:
        return self.root / relative


def load_params(root: Path) -> dict[str, Any]:
    path = root / "params.yaml"
    try:
        with open(path, encoding="utf-8") as handle:
            params = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"cannot read params: {err}", file=path) from err
    if not isinstance(params, dict):
        raise DataError("params must be a mapping of stage sections", file=path)
    return params


def read_table(path: Path, what: str, stage: str) -> pd.DataFrame:
    """A parquet table another stage wrote; a missing or unreadable one names the stage that writes it."""
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read the {what} ({err}); run `dvc repro {stage}`", file=path) from err


def write_table(path: Path, table: pd.DataFrame) -> None:
    """A table as parquet, atomically: a crash leaves the previous file or none, never half of one."""
    with atomic.atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def select_sources(ctx: StageContext, table: pd.DataFrame, sources: list[str], key: str, what: str) -> pd.DataFrame:
    """The rows of `table` from `sources` (all when empty); a source it lacks is a config error at `key`."""
    if not sources:
        return table
    unknown = sorted(set(sources) - set(table["source"]))
    if unknown:
        raise ConfigError(f"no {what} from source(s) {unknown}; sources: {sorted(set(table['source']))}", file=ctx.where(key))
    return table[table["source"].isin(sources)]


def is_main_process() -> bool:
    """False on the other ranks of a torchrun job: only rank 0 tracks and writes outputs."""
    return os.environ.get("RANK", "0") == "0"


def run_stage(name: str, body: Callable[[StageContext], Mapping[str, Any]]) -> None:
    """Run a stage body under tracking; exit non-zero with a located message on bad input."""
    root = provenance.repo_root()
    started = time.perf_counter()
    if not is_main_process():
        os.environ[tracking.TRACKING_ENV] = "off"
    try:
        params = load_params(root)
        tags = provenance.stage_tags(root, name)
        with tracking.stage_run(name, root, params=params.get(name) or {}, tags=tags) as tracker:
            ctx = StageContext(name=name, root=root, params=params, tracker=tracker)
            metrics = dict(body(ctx))
            if not is_main_process():
                return
            metrics["stage_seconds"] = round(time.perf_counter() - started, 3)
            metrics_path = root / "metrics" / f"{name}.json"
            atomic.write_json(metrics_path, metrics)
            tracker.log_metrics(tracking.flatten_metrics(metrics))
            tracker.log_artifact(metrics_path)
    except DataError as err:
        print(f"[{name}] error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception:  # noqa: BLE001 - a crash still says which stage crashed
        traceback.print_exc()
        print(f"[{name}] failed; earlier outputs are untouched.", file=sys.stderr)
        sys.exit(1)
    print(f"[{name}] done in {time.perf_counter() - started:.1f}s")

