"""flows.serve end to end: a real Prefect server, the served deployment, one triggered run.

`prefect server start` runs on a free port of 127.0.0.1 with its own PREFECT_HOME and SQLite file;
`python -m flows.serve` serves the deployment of a temp DVC repo (the diamond a -> (b, c) -> d, each
stage sleeping 2 s); the test triggers a run and checks it through the Prefect API, DVC and MLflow.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dvc_diamond import BIN, DIAMOND, DVC, QUIET_ENV, make_diamond_repo, parent_ids

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
DEPLOYMENT = "diamond"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """A child in its own process group, so stopping it also stops what it started."""
    return subprocess.Popen(
        command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, **kwargs
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_until(check, timeout: float, what: str, log: Path, process: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what}: the process exited with {process.returncode}:\n{tail(log)}")
        try:
            found = check()
        except Exception:  # noqa: BLE001 - not up yet
            found = None
        if found:
            return found
        time.sleep(0.25)
    pytest.fail(f"{what}: not after {timeout:.0f}s:\n{tail(log)}")


@pytest.fixture
def prefect_server(tmp_path):
    """(API URL, env for clients of it): a real `prefect server start`, stopped after the test."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("INSTRUCTGPT_TRACKING", None)  # the parent-run checks need tracking on
    env.update(QUIET_ENV)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = tmp_path / "prefect-server.log"
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    started = time.monotonic()
    server = start(command, log, env=env)

    def healthy() -> bool:
        return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200

    try:
        wait_until(healthy, 90, "prefect server", log, server)
        print(f"prefect server up in {time.monotonic() - started:.1f}s")
        yield url, {**env, "PREFECT_API_URL": url}
    finally:
        stop(server)


def test_a_served_deployment_runs_every_stage_once(tmp_path, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterTaskRunId,
    )
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import ARTIFACT_KEY

    url, env = prefect_server
    orchestration = {
        "retries": 0,
        "retry_delay_seconds": 0,
        "cron": "0 0 1 1 *",  # not during the test
        "deployment_name": DEPLOYMENT,
        "max_parallel": 2,
    }
    repo = make_diamond_repo(tmp_path / "repo", sleep=2, orchestration=orchestration)
    serve_log = tmp_path / "serve.log"
    serve_env = {**env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}  # pick the run up within a second
    serve_env.pop("DIAMOND_FAIL", None)
    command = [sys.executable, "-m", "flows.serve", "--root", str(repo)]
    served = start(command, serve_log, env=serve_env, cwd=PROJECT)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            deployment = wait_until(
                lambda: client.read_deployment_by_name(f"pipeline/{DEPLOYMENT}"),
                60,
                "the deployment",
                serve_log,
                served,
            )
            assert [s.schedule.cron for s in deployment.schedules] == [orchestration["cron"]]
            assert deployment.parameters == {"root": str(repo)}
            flow_run = run_deployment(f"pipeline/{DEPLOYMENT}", timeout=90, poll_interval=1)
            assert flow_run.state is not None and flow_run.state.is_completed(), tail(serve_log)

            of_this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            tasks = client.read_task_runs(flow_run_filter=of_this_run)
            assert sorted(t.name for t in tasks) == sorted(DIAMOND)  # one task run per stage
            assert all(t.state.is_completed() for t in tasks)
            by_name = {t.name: t for t in tasks}
            b, c = by_name["b"], by_name["c"]
            assert b.start_time < c.end_time and c.start_time < b.end_time, "b and c did not overlap"
            assert by_name["a"].end_time <= min(b.start_time, c.start_time)
            assert max(b.end_time, c.end_time) <= by_name["d"].start_time

            def b_logged():  # logs reach the server in batches, possibly after the run ends
                of_b = LogFilter(task_run_id=LogFilterTaskRunId(any_=[b.id]))
                logs = client.read_logs(log_filter=of_b)
                return [log.message for log in logs if "hello from b" in log.message]

            wait_until(b_logged, 15, "b's output in its task log", serve_log, served)

            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])),
                flow_run_filter=of_this_run,
            )
    finally:
        stop(served)

    assert len(artifacts) == 1
    table = artifacts[0].data
    table = table if isinstance(table, list) else json.loads(table)
    assert [(row["stage"], row["status"]) for row in table] == [(s, "ran") for s in DIAMOND]
    assert all(row["seconds"] >= 2 for row in table)

    status = subprocess.run([DVC, "status"], cwd=repo, env=env, capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    assert "up to date" in status.stdout, status.stdout

    ids = set(parent_ids(repo).values())
    assert len(ids) == 1 and "" not in ids, ids  # every stage got the same MLflow parent run
    from mlflow.tracking import MlflowClient

    from instructgpt import tracking

    parent = MlflowClient(tracking_uri=tracking.tracking_uri(repo)).get_run(ids.pop())
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"] == str(flow_run.id)
