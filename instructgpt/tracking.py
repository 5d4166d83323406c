"""Experiment tracking: the one module that talks to MLflow.

Every stage execution is one MLflow run named after its stage (tag `stage`), holding the stage's
params, its metrics (with steps where they are series), small artifacts, and the provenance tags
the caller passes (git commit, dirty flag, DVC dep hashes). Stage runs of one pipeline execution
are children of one parent run named "pipeline":
- an orchestrator (the Prefect flow) opens the parent with `open_pipeline_run` and hands its id to
  the stage processes in `INSTRUCTGPT_PIPELINE_RUN_ID`, then closes it with `close_pipeline_run`;
- under `dvc repro` / `dvc exp run` the parent is found from the process tree: the stage's nearest
  `dvc` ancestor process (host, pid, start time) is the pipeline execution, and the first stage it
  runs creates the parent, tagged `pipeline_execution=<that key>`, that later stages reuse;
- a stage run by hand has no parent.

The store is `sqlite:///<repo root>/mlflow.db` with artifacts in `<repo root>/mlartifacts/`, always
absolute (a temp experiment workspace logs to the repo that launched it); `MLFLOW_TRACKING_URI`
overrides it and `MLFLOW_EXPERIMENT_NAME` names the experiment (default "instructgpt").
`INSTRUCTGPT_TRACKING=off` swaps in a `NullTracker`, so stage code never branches on tracking.

mlflow is imported lazily: it takes about a second, which only runs that log pay.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import socket
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

PIPELINE_RUN_ENV = "INSTRUCTGPT_PIPELINE_RUN_ID"
TRACKING_ENV = "INSTRUCTGPT_TRACKING"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "instructgpt"
STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
PIPELINE_RUN_NAME = "pipeline"

# MLflow's limits (mlflow.utils.validation), repeated so this module imports without mlflow.
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_MAX_KEY = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

# `dvc exp run --temp` and queued experiments run in a git clone at <repo>/.dvc/tmp/exps/tmpXXXX/
# (dvc.repo.experiments.executor.local.TempDirExecutor); their runs belong to <repo>.
_TEMP_EXP_PARTS = (".dvc", "tmp", "exps")


# --------------------------------------------------------------------------- where runs go


def enabled() -> bool:
    return os.environ.get(TRACKING_ENV, "on").strip().lower() not in {"off", "0", "false", "no"}


def store_root(repo_root: Path) -> Path:
    """The repo whose store a run in `repo_root` logs to: itself, or a temp workspace's launcher."""
    parts = Path(repo_root).resolve().parts
    n = len(_TEMP_EXP_PARTS)
    for i in range(1, len(parts) - n):
        if parts[i : i + n] == _TEMP_EXP_PARTS:
            return Path(*parts[:i])
    return Path(repo_root).resolve()


def tracking_uri(repo_root: Path) -> str:
    """`MLFLOW_TRACKING_URI` if set (a relative sqlite path is anchored at the repo), else the
    SQLite store at the repo root; always absolute so every process logs to the same place."""
    root = store_root(repo_root)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return f"sqlite:///{root / STORE_FILE}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        relative = uri[len("sqlite:///") :]
        if relative and relative != ":memory:":
            return f"sqlite:///{root / relative}"
    return uri


def experiment_name() -> str:
    return os.environ.get(EXPERIMENT_ENV, "").strip() or DEFAULT_EXPERIMENT


def _artifact_location(uri: str, experiment: str) -> str | None:
    """`<dir of the sqlite db>/mlartifacts/<experiment>`; None (the server's choice) otherwise.

    MLflow would derive it from its default root `./mlruns`, resolved against whatever the cwd of
    the first process was, so it is set explicitly when the experiment is created.
    """
    if not uri.startswith("sqlite:////"):
        return None
    db_path = Path(uri[len("sqlite:///") :].split("?", 1)[0])
    slug = re.sub(r"[^\w.-]+", "_", experiment)
    return (db_path.parent / ARTIFACT_DIR / slug).as_uri()


# --------------------------------------------------------------------------- trackers


class Tracker:
    """What a stage logs to. This base does nothing; `MlflowTracker` records."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested params as flat 'a.b' keys, values as strings (truncated to MLflow's limit)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Numeric metrics at `step` (a series) or once (step None is step 0)."""

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        self.log_metrics({name: value}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a directory's contents (under its own name unless `artifact_path`)."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """`text` as the artifact `artifact_file` (e.g. 'samples/step_100.txt')."""

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """`obj` as a JSON (or YAML, by extension) artifact."""

    def log_table(self, rows: Sequence[Mapping[str, Any]], artifact_file: str) -> None:
        """Rows of one table as an MLflow table artifact (`artifact_file` ends in .json), which the
        UI shows as a table and `mlflow.load_table` reads back."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """String tags on the run (values truncated to MLflow's limit)."""

    @contextmanager
    def child(self, name: str, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, Any] | None = None) -> Iterator["Tracker"]:
        """A nested run under this one (e.g. one per task of a stage that runs several), ending
        FINISHED, or FAILED when the body raises."""
        yield NullTracker()


class NullTracker(Tracker):
    """Tracking switched off: every call is accepted and forgotten."""


class MlflowTracker(Tracker):
    """Logs to one MLflow run through an `MlflowClient` (no global active-run state)."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(key, value) for key, value in flatten_params(params).items()]
        for start in range(0, len(flat), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=flat[start : start + _PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
        for start in range(0, len(batch), _METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start : start + _METRICS_PER_BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, os.fspath(path), artifact_path or path.name)
        else:
            self.client.log_artifact(self.run_id, os.fspath(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_table(self, rows: Sequence[Mapping[str, Any]], artifact_file: str) -> None:
        import pandas as pd

        self.client.log_table(self.run_id, pd.DataFrame(list(rows)), artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(key, value) for key, value in _clip_tags(tags).items()]
        for start in range(0, len(batch), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=batch[start : start + _PARAMS_PER_BATCH])

    @contextmanager
    def child(self, name: str, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, Any] | None = None) -> Iterator[Tracker]:
        parent = self.client.get_run(self.run_id)
        inherited = {k: v for k, v in parent.data.tags.items() if not k.startswith("mlflow.")}
        run_tags = {**inherited, **(tags or {}), "mlflow.parentRunId": self.run_id}
        run = self.client.create_run(parent.info.experiment_id, run_name=name, tags=_clip_tags(run_tags))
        with _tracked_run(self.client, run.info.run_id, params) as tracker:
            yield tracker


def flatten_metrics(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested metrics as 'a/b/c' keys (MLflow groups metrics by '/')."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}, 'c': [1, 2]} -> {'a.b': '1', 'c': '[1, 2]'}, clipped to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        flat[name[:_MAX_KEY]] = _clip(text, _MAX_PARAM_VALUE)
    return flat


def _clip_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {key: _clip(str(value), _MAX_TAG_VALUE) for key, value in tags.items()}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- stage runs


@contextmanager
def stage_run(
    stage: str,
    repo_root: Path,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Tracker]:
    """One MLflow run for one stage execution, a child of its pipeline execution's parent run.

    The run ends FINISHED, or FAILED when the body raises (a `SystemExit` with a non-zero code
    included; the exception propagates). A parent found from a `dvc` ancestor is marked RUNNING
    while a stage runs and FINISHED (FAILED once any stage failed) after each, so it reads
    finished after the last one.
    """
    if not enabled():
        yield NullTracker()
        return
    store = _store(tracking_uri(repo_root), experiment_name())
    parent = _pipeline_parent(store)
    run_tags = {"stage": stage, **_user_tag(), **(tags or {})}
    if re.fullmatch(r"[0-9a-f]{40}", str(run_tags.get("git_commit", ""))):
        run_tags.setdefault("mlflow.source.git.commit", run_tags["git_commit"])  # shown by the UI
    if parent is not None:
        run_tags["mlflow.parentRunId"] = parent.run_id
        if parent.owned:
            _mark_parent(store.client, parent.run_id, running=True)
    run = store.client.create_run(store.experiment_id, run_name=stage, tags=_clip_tags(run_tags))
    ended: list[str] = []
    try:
        with _tracked_run(store.client, run.info.run_id, params, on_end=ended.append) as tracker:
            yield tracker
    finally:
        if parent is not None and parent.owned:
            _mark_parent(store.client, parent.run_id, failed=ended != ["FINISHED"])


@contextmanager
def _tracked_run(client: MlflowClient, run_id: str, params: Mapping[str, Any] | None,
                 on_end: Callable[[str], None] | None = None) -> Iterator[Tracker]:
    """A created run with its params logged, ended with the body's outcome (then `on_end(status)`):
    FINISHED, also on a clean `SystemExit`; KILLED on Ctrl-C; FAILED on any other exception."""
    tracker = MlflowTracker(client, run_id)
    status = "FAILED"
    try:
        tracker.log_params(params or {})
        yield tracker
        status = "FINISHED"
    except SystemExit as stop:
        status = "FINISHED" if stop.code in (None, 0) else "FAILED"
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(run_id, status)
        if on_end is not None:
            on_end(status)


def open_pipeline_run(
    repo_root: Path, launcher: str, tags: Mapping[str, str] | None = None
) -> str:
    """Create the parent run of one pipeline execution; return its id ('' when tracking is off).

    The caller passes the id to stage processes in `INSTRUCTGPT_PIPELINE_RUN_ID` and ends the run
    with `close_pipeline_run`.
    """
    if not enabled():
        return ""
    store = _store(tracking_uri(repo_root), experiment_name())
    key = f"{launcher}:{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
    return _create_pipeline_run(store, launcher, key, tags)


def close_pipeline_run(repo_root: Path, run_id: str, status: str = "FINISHED") -> None:
    """End a parent run opened by `open_pipeline_run` with status FINISHED, FAILED or KILLED."""
    if not enabled() or not run_id:
        return
    store = _store(tracking_uri(repo_root), experiment_name())
    store.client.set_terminated(run_id, status)


# --------------------------------------------------------------------------- pipeline parents


@dataclass(frozen=True)
class _Store:
    client: MlflowClient
    experiment_id: str


@dataclass(frozen=True)
class _Parent:
    run_id: str
    owned: bool  # found from the process tree, so stage runs keep its status; else the caller's


@lru_cache(maxsize=8)
def _store(uri: str, experiment: str) -> _Store:
    """A client on `uri` and the id of `experiment`, created (with its artifact root) if new."""
    # MLflow 3 phones usage telemetry home from every process; pipelines run offline and quietly.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    _quiet_mlflow()  # after the import, which sets mlflow's own level

    with warnings.catch_warnings():  # SQLAlchemy deprecations in MLflow's own store code
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="mlflow|sqlalchemy")
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
    if found is not None:
        return _Store(client, found.experiment_id)
    try:
        experiment_id = client.create_experiment(
            experiment, artifact_location=_artifact_location(uri, experiment)
        )
    except MlflowException:  # another process created it first
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        experiment_id = found.experiment_id
    return _Store(client, experiment_id)


def _quiet_mlflow() -> None:
    """Keep MLflow's and alembic's INFO lines (store creation, migrations) out of stage output."""
    if os.environ.get("MLFLOW_LOGGING_LEVEL"):
        return
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _pipeline_parent(store: _Store) -> _Parent | None:
    if run_id := os.environ.get(PIPELINE_RUN_ENV, "").strip():
        return _Parent(run_id, owned=False)
    found = dvc_execution()
    if found is None:
        return None
    launcher, key = found
    runs = store.client.search_runs(
        [store.experiment_id],
        filter_string=f"tags.pipeline_execution = '{_quote(key)}'",
        max_results=1,
    )
    if runs:
        return _Parent(runs[0].info.run_id, owned=True)
    tags = {"dvc.exp_name": os.environ["DVC_EXP_NAME"]} if "DVC_EXP_NAME" in os.environ else {}
    return _Parent(_create_pipeline_run(store, launcher, key, tags), owned=True)


def _create_pipeline_run(
    store: _Store, launcher: str, key: str, tags: Mapping[str, str] | None
) -> str:
    tags = {"launcher": launcher, "pipeline_execution": key, **_user_tag(), **(tags or {})}
    run = store.client.create_run(
        store.experiment_id, run_name=PIPELINE_RUN_NAME, tags=_clip_tags(tags)
    )
    return run.info.run_id


def _mark_parent(
    client: MlflowClient, run_id: str, running: bool = False, failed: bool = False
) -> None:
    """RUNNING while a stage runs, then FINISHED with an end time; FAILED sticks once set."""
    current = client.get_run(run_id).info.status
    if current == "FAILED":
        return
    if running:
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def dvc_execution() -> tuple[str, str] | None:
    """(launcher, key) of the nearest `dvc repro` / `dvc exp` ancestor process, else None.

    The key (host:pid:start time) names one pipeline execution: every stage that one dvc process
    runs sees the same key, and no other process ever will.
    """
    import psutil

    try:
        ancestors = psutil.Process().parents()
    except psutil.Error:
        return None
    for proc in ancestors:
        try:
            launcher = dvc_launcher(proc.cmdline())
            if launcher is None:
                continue
            started = proc.create_time()
        except psutil.Error:
            continue
        return launcher, f"{socket.gethostname()}:{proc.pid}:{started:.3f}"
    return None


def dvc_launcher(cmdline: Sequence[str]) -> str | None:
    """'dvc repro' or 'dvc exp run' if `cmdline` runs dvc's repro or exp command, else None."""
    for i, arg in enumerate(cmdline):
        is_dvc = Path(arg).name in {"dvc", "dvc.exe"} or (
            arg == "-m" and i + 1 < len(cmdline) and cmdline[i + 1] == "dvc"
        )
        if not is_dvc:
            continue
        rest = cmdline[i + 1 :]
        if "repro" in rest:
            return "dvc repro"
        if "exp" in rest:
            return "dvc exp run"
        return None
    return None


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _user_tag() -> dict[str, str]:
    try:
        return {"mlflow.user": getpass.getuser()}
    except (KeyError, OSError):
        return {}
