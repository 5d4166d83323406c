"""flows.pipeline: one DVC stage per task, output streamed to the log, a metrics table, one parent run.

The fast tests call the pieces without Prefect; the slow one runs the flow function in-process
against Prefect's test harness (a temporary local server), with a stage that fails.
"""

from __future__ import annotations

import json
import os

import pytest

from dvc_diamond import QUIET_ENV, make_diamond_repo, parent_ids
from flows.dag import StageNode
from flows.pipeline import (
    Orchestration,
    StageFailed,
    load_orchestration,
    run_dvc_stage,
    stage_metrics,
)
from instructgpt import tracking
from instructgpt.errors import ConfigError


class ListLog:
    """Stands in for the task's run logger."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args: object) -> None:
        self.lines.append(message % args)


@pytest.fixture
def quiet_env(monkeypatch):
    for key, value in QUIET_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DIAMOND_FAIL", raising=False)
    monkeypatch.delenv("INSTRUCTGPT_TRACKING", raising=False)  # the parent-run checks need it on


def test_a_stage_runs_once_then_dvc_skips_it(tmp_path, quiet_env):
    repo = make_diamond_repo(tmp_path / "repo")
    log = ListLog()
    given = {"INSTRUCTGPT_PIPELINE_RUN_ID": "parent-1"}
    first = run_dvc_stage("a", repo, force=False, env=given, log=log)
    assert first.status == "ran"
    assert "hello from a" in log.lines  # the stage's own output, line by line
    assert parent_ids(repo, ["a"]) == {"a": "parent-1"}

    again = run_dvc_stage("a", repo, force=False, env={}, log=ListLog())
    assert again.status == "skipped"
    forced = run_dvc_stage("a", repo, force=True, env={}, log=ListLog())
    assert forced.status == "ran"


def test_a_failing_stage_raises_with_the_tail_of_its_output(tmp_path, quiet_env, monkeypatch):
    repo = make_diamond_repo(tmp_path / "repo")
    monkeypatch.setenv("DIAMOND_FAIL", "a")
    expected = r"stage 'a' failed: dvc repro exited with \d+; last lines:\n"
    with pytest.raises(StageFailed, match=expected) as err:
        run_dvc_stage("a", repo, force=False, env={}, log=ListLog())
    assert "failed to reproduce 'a'" in str(err.value)
    assert err.value.seconds > 0


def test_orchestration_defaults_apply_without_the_section(tmp_path):
    assert load_orchestration(tmp_path) == Orchestration()  # no params.yaml at all
    (tmp_path / "params.yaml").write_text("train: {lr: 0.1}\n")
    assert load_orchestration(tmp_path) == Orchestration()


def test_orchestration_reads_params_and_names_typos(tmp_path):
    (tmp_path / "params.yaml").write_text("orchestration: {retries: 3, cron: '*/5 * * * *'}\n")
    settings = load_orchestration(tmp_path)
    assert (settings.retries, settings.cron, settings.max_parallel) == (3, "*/5 * * * *", 2)
    (tmp_path / "params.yaml").write_text("orchestration: {retry: 3}\n")
    with pytest.raises(ConfigError, match="retry"):
        load_orchestration(tmp_path)


def test_metrics_are_the_numeric_leaves_of_the_declared_files_else_metrics_dir(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"score": {"value": 0.5, "name": "x"}, "ok": True}))
    assert stage_metrics(tmp_path, StageNode("d", (), metrics=("d.json",))) == {"score/value": 0.5}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "train.json").write_text(json.dumps({"loss": 2, "stage_seconds": 1.5}))
    assert stage_metrics(tmp_path, StageNode("train", ())) == {"loss": 2.0, "stage_seconds": 1.5}
    assert stage_metrics(tmp_path, StageNode("none", ())) == {}
    assert tracking.flatten_metrics({"a": {"b": {"c": 1}}, "flag": False}) == {"a/b/c": 1.0}


@pytest.mark.slow
def test_the_flow_runs_each_stage_once_and_stops_below_a_failure(tmp_path, quiet_env, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import ARTIFACT_KEY, pipeline

    orchestration = {"retries": 0, "retry_delay_seconds": 0, "max_parallel": 2}
    repo = make_diamond_repo(tmp_path / "repo", orchestration=orchestration)
    with prefect_test_harness():
        rows = pipeline(root=str(repo))
        assert [(r["stage"], r["status"]) for r in rows] == [(s, "ran") for s in "abcd"]
        assert rows[3]["metrics"] == "score/value=0.5"
        ids = set(parent_ids(repo).values())
        assert len(ids) == 1 and "" not in ids  # one MLflow parent run for the whole execution

        monkeypatch.setenv("DIAMOND_FAIL", "c")
        state = pipeline(root=str(repo), force=True, return_state=True)
        assert state.is_failed()
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(state.state_details.flow_run_id)
            of_this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            tasks = client.read_task_runs(flow_run_filter=of_this_run)
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])),
                flow_run_filter=of_this_run,
            )
        assert sorted(t.name for t in tasks if t.state.is_completed()) == ["a", "b"]
        assert [t.name for t in tasks if t.state.is_failed()] == ["c"]
        assert len(artifacts) == 1
        table = artifacts[0].data
        table = table if isinstance(table, list) else json.loads(table)
        statuses = {row["stage"]: row["status"] for row in table}
        assert statuses == {"a": "ran", "b": "ran", "c": "failed", "d": "not run"}

    from mlflow.tracking import MlflowClient

    from instructgpt import tracking

    parent = MlflowClient(tracking_uri=tracking.tracking_uri(repo)).get_run(parent_ids(repo, ["a"])["a"])
    assert parent.info.status == "FAILED"
    assert parent.data.tags["launcher"] == "prefect"
    assert parent.data.tags["prefect.flow_run_id"] == str(flow_run.id)
