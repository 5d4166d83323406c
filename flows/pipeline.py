"""The pipeline as a Prefect flow: one task per dvc.yaml stage, each running DVC for that stage alone.

The stages and their order come from the DVC repo (`flows.dag`), so there is no second list of
stages, and DVC still decides what is up to date: a task runs `dvc repro -s <stage>`, which skips a
stage whose inputs did not change. Prefect adds retries, parallel branches, logs and a UI. Stages
run as soon as the stages they read from are done, at most `orchestration.max_parallel` at a time;
`dvc --wait-for-lock` lets several single-stage repros share the workspace (DVC holds its lock only
for bookkeeping, not while a stage command runs). All stages of one run log their MLflow runs under
one parent run, as under `dvc repro`. At the end a table artifact `pipeline-metrics` lists every
stage with its status, seconds and metrics.

Run once:   python -m flows.pipeline [STAGE ...] [--force] [--root DIR]
Without PREFECT_API_URL, Prefect 3 starts a temporary local server for the run (its database is
$PREFECT_HOME/prefect.db, ~/.prefect by default); set PREFECT_API_URL=http://127.0.0.1:4200/api to
record the run in a running `prefect server start` and see it in the UI.
Scheduled:  python -m flows.serve (see flows/serve.py).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

# Without PREFECT_API_URL a run starts a temporary Prefect server; with a fresh PREFECT_HOME it
# creates and migrates its database first, which takes longer than Prefect's 20 s default on a busy
# 2-core machine (seen in CI). Set before prefect is imported, so its settings see it.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import PrefectFuture  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from flows.dag import StageNode, find_repo_root, stage_graph  # noqa: E402
from instructgpt import tracking  # noqa: E402
from instructgpt.config import from_params  # noqa: E402
from instructgpt.errors import ConfigError  # noqa: E402

ARTIFACT_KEY = "pipeline-metrics"
TAIL_LINES = 30  # lines of a failed stage's output quoted in the error


@dataclass(frozen=True)
class Orchestration:
    """params.yaml:orchestration, how Prefect runs the pipeline (DVC decides what runs)."""

    retries: int = 1  # extra attempts for a failed stage
    retry_delay_seconds: float = 30.0
    cron: str = "0 3 * * *"  # the served deployment's schedule, in UTC
    deployment_name: str = "nightly"
    max_parallel: int = 2  # stages running at once; each stage may use every core itself

    def __post_init__(self) -> None:
        if self.retries < 0 or self.retry_delay_seconds < 0:
            raise ValueError("retries and retry_delay_seconds must be >= 0")
        if self.max_parallel < 1:
            raise ValueError("max_parallel must be >= 1")


def load_orchestration(root: Path) -> Orchestration:
    """The `orchestration` section of root/params.yaml; defaults when the file or section is absent."""
    path = root / "params.yaml"
    if not path.exists():
        return Orchestration()
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse params: {err}", file=path) from err
    return from_params(Orchestration, params.get("orchestration"), f"{path}:orchestration")


@dataclass(frozen=True)
class StageOutcome:
    """What one stage did: 'ran' or 'skipped' (DVC found it up to date), and how long it took."""

    status: str
    seconds: float


class StageFailed(RuntimeError):
    """`dvc repro` failed for a stage; the message ends with the tail of its output."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


def run_dvc_stage(
    stage: str, root: Path, *, force: bool, env: Mapping[str, str], log: Any
) -> StageOutcome:
    """Run `dvc repro -s <stage>` at `root`, sending each output line to `log.info` as it comes."""
    command = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage]
    if force:
        command.append("--force")
    bin_dir = str(Path(sys.executable).parent)  # so stage commands' `python` is this environment's
    child_env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONUNBUFFERED": "1",  # stage prints reach the log as they happen, not at exit
        **env,
    }
    log.info("$ %s", " ".join(command[2:]))
    started = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    skipped = False
    with subprocess.Popen(
        command,
        cwd=root,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
    ) as process:
        try:
            for raw in process.stdout:  # type: ignore[union-attr]
                line = raw.rstrip()
                if not line:
                    continue
                log.info("%s", line)
                tail.append(line)
                skipped = skipped or line.endswith("didn't change, skipping")
            returncode = process.wait()
        finally:
            if process.poll() is None:  # the task was interrupted: do not leave the stage running
                process.kill()
    seconds = round(time.perf_counter() - started, 3)
    if returncode != 0:
        output = "\n".join(tail) or "(no output)"
        message = f"stage '{stage}' failed: dvc repro exited with {returncode}; last lines:\n{output}"
        raise StageFailed(message, seconds)
    return StageOutcome(status="skipped" if skipped else "ran", seconds=seconds)


# NO_CACHE: DVC decides what is up to date; Prefect never skips a stage on its own.
@task(task_run_name="{stage}", cache_policy=NO_CACHE)
def run_stage(
    stage: str, root: str, force: bool = False, env: dict[str, str] | None = None
) -> StageOutcome:
    """One DVC stage, its output streamed into this task run's log."""
    return run_dvc_stage(stage, Path(root), force=force, env=env or {}, log=get_run_logger())


def submit_when_ready(
    nodes: Sequence[StageNode],
    submit: Callable[[StageNode, list[PrefectFuture]], PrefectFuture],
    max_parallel: int,
) -> dict[str, PrefectFuture]:
    """Submit each stage once its upstream stages are done, at most `max_parallel` in flight.

    Submitting everything at once with `wait_for` would also be correct, but each waiting task holds
    a worker thread, so a bounded pool would run fewer stages than it could. Upstream futures are
    still passed as `wait_for`: Prefect records the edges, and skips a stage whose upstream failed.
    """
    futures: dict[str, PrefectFuture] = {}
    waiting = list(nodes)  # dependency order, so the earliest ready stage goes first

    def thread_future(name: str) -> concurrent.futures.Future:
        return futures[name].wrapped_future  # type: ignore[attr-defined]

    def done(name: str) -> bool:
        return name in futures and thread_future(name).done()

    while waiting:
        in_flight = [thread_future(name) for name in futures if not done(name)]
        for node in [n for n in waiting if all(done(up) for up in n.upstream)]:
            if len(in_flight) >= max_parallel:
                break
            futures[node.name] = submit(node, [futures[up] for up in node.upstream])
            in_flight.append(thread_future(node.name))
            waiting.remove(node)
        if waiting:
            if not in_flight:
                missing = [n.name for n in waiting]
                raise RuntimeError(f"stages wait on stages that are not in the graph: {missing}")
            concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
    for future in futures.values():
        future.wait()  # keeps the final state in memory, results included
    return futures


def stage_row(node: StageNode, future: PrefectFuture, root: Path) -> dict[str, Any]:
    """One line of the run's table: stage, status, seconds and the stage's metrics."""
    state = future.state  # final, in memory: `submit_when_ready` waited on it
    if state.is_completed():
        outcome: StageOutcome = state.result()
        status, seconds = outcome.status, outcome.seconds
    elif state.is_failed():
        error = state.result(raise_on_failure=False)
        status, seconds = "failed", getattr(error, "seconds", None)
    else:  # an upstream stage failed, or the run was cancelled
        status, seconds = "not run", None
    # a stage that did not finish has only an earlier run's metrics, which would mislead here
    metrics = stage_metrics(root, node) if status in ("ran", "skipped") else {}
    return {
        "stage": node.name,
        "status": status,
        "seconds": seconds,
        "metrics": "  ".join(f"{key}={value:.6g}" for key, value in metrics.items()),
    }


def stage_metrics(root: Path, node: StageNode) -> dict[str, float]:
    """Numeric leaves of the stage's metrics: the files dvc.yaml declares, else metrics/<stage>.json."""
    paths = [root / p for p in node.metrics] or [root / "metrics" / f"{node.name}.json"]
    flat: dict[str, float] = {}
    for path in paths:
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            content = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError):
            continue  # the table is a summary; `dvc metrics show` reports unreadable files
        if isinstance(content, Mapping):
            flat.update(tracking.flatten_metrics(content))
    return flat


@flow(name="pipeline", task_runner=ThreadPoolTaskRunner())
def pipeline(
    targets: list[str] | None = None, force: bool = False, root: str | None = None
) -> list[dict[str, Any]]:
    """Reproduce the DVC pipeline (or `targets` and what they depend on), one task per stage."""
    logger = get_run_logger()
    repo = Path(root).resolve() if root else find_repo_root()
    settings = load_orchestration(repo)
    nodes = stage_graph(repo, targets or None)
    logger.info("%d stage(s) in %s: %s", len(nodes), repo, ", ".join(n.name for n in nodes))

    tags = {"prefect.flow_run_id": str(flow_run.get_id()), "targets": " ".join(targets or []) or "all"}
    parent = tracking.open_pipeline_run(repo, "prefect", tags=tags)  # '' when tracking is off
    env = {tracking.PIPELINE_RUN_ENV: parent} if parent else {}

    outcome = "FAILED"
    try:
        stage_task = run_stage.with_options(
            retries=settings.retries, retry_delay_seconds=settings.retry_delay_seconds
        )

        def submit(node: StageNode, upstream: list[PrefectFuture]) -> PrefectFuture:
            return stage_task.submit(node.name, str(repo), force, env, wait_for=upstream)

        futures = submit_when_ready(nodes, submit, settings.max_parallel)
        rows = [stage_row(node, futures[node.name], repo) for node in nodes]
        create_table_artifact(rows, key=ARTIFACT_KEY, description=f"Stages of this run ({repo})")
        failed = [row["stage"] for row in rows if row["status"] in ("failed", "not run")]
        if failed:
            raise RuntimeError(f"stages failed or not run: {', '.join(failed)}; see their task logs")
        outcome = "FINISHED"
        return rows
    except KeyboardInterrupt:
        outcome = "KILLED"
        raise
    finally:
        tracking.close_pipeline_run(repo, parent, status=outcome)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", help="stages to run, and what they read from (default: all)")
    parser.add_argument("--force", action="store_true", help="rerun stages DVC finds up to date")
    parser.add_argument("--root", help="the DVC repo (default: the one around the current directory)")
    args = parser.parse_args(argv)
    pipeline(targets=args.targets or None, force=args.force, root=args.root)


if __name__ == "__main__":
    main()
