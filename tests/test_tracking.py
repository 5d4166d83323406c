"""instructgpt.tracking on a real SQLite MLflow store: runs, parents, failures, the null tracker.

The store is created once per module (its schema migrations take seconds); each test logs to an
experiment of its own, so tests do not see each other's runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from instructgpt import tracking


# MLflow's own store code trips a SQLAlchemy deprecation when a test opens a client on it.
pytestmark = pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repo")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """One experiment per test, no orchestrator parent, no dvc ancestor, tracking on."""
    for name in (tracking.PIPELINE_RUN_ENV, tracking.TRACKING_ENV, "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(tracking.EXPERIMENT_ENV, request.node.name)
    monkeypatch.setattr(tracking, "dvc_execution", lambda: None)


def runs(root: Path) -> dict[str, list]:
    """The current experiment's runs by name, oldest first."""
    client = MlflowClient(tracking.tracking_uri(root))
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    found = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time ASC"]
    )
    by_name: dict[str, list] = {}
    for run in found:
        by_name.setdefault(run.info.run_name, []).append(run)
    return by_name


def test_stage_run_records_params_metrics_series_tags_and_artifacts(root: Path) -> None:
    metrics_file = root / "metrics.json"
    metrics_file.write_text(json.dumps({"loss": 0.5}))
    params = {"lr": 3e-4, "model": {"n_layer": 2, "presets": [1, 2]}, "note": "x" * 7000}

    with tracking.stage_run("pretrain", root, params=params, tags={"dvc.dep.data/a": "abc"}) as t:
        for step in range(3):
            t.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        t.log_metric("val/loss", 0.7, step=2)
        t.log_artifact(metrics_file)
        t.log_text("once upon a time", "samples/step_2.txt")
        t.log_dict({"vocab": 256}, "tokenizer.json")
        t.set_tags({"device": "cpu"})

    (run,) = runs(root)["pretrain"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "pretrain"
    assert run.data.tags["dvc.dep.data/a"] == "abc"
    assert run.data.tags["device"] == "cpu"
    assert "mlflow.parentRunId" not in run.data.tags  # run by hand: no pipeline execution
    assert run.data.params["lr"] == "0.0003"
    assert run.data.params["model.n_layer"] == "2"
    assert run.data.params["model.presets"] == "[1, 2]"
    assert len(run.data.params["note"]) == 6000  # clipped to MLflow's limit, not rejected

    client = MlflowClient(tracking.tracking_uri(root))
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    listed = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert listed == {"metrics.json", "samples", "tokenizer.json"}
    # Artifacts live beside the SQLite store, inside the repo root, at an absolute location.
    artifact_dir = root / "mlartifacts"
    assert run.info.artifact_uri.startswith(artifact_dir.as_uri() + "/")
    assert (artifact_dir / tracking.experiment_name() / run.info.run_id).is_dir()


def test_orchestrator_parent_groups_stage_runs(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent_id = tracking.open_pipeline_run(root, launcher="prefect", tags={"flow_run": "f1"})
    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, parent_id)
    for stage in ("tokenizer", "encode"):
        with tracking.stage_run(stage, root, params={}) as t:
            t.log_metrics({"seconds": 1.0})
    tracking.close_pipeline_run(root, parent_id, status="FINISHED")

    by_name = runs(root)
    (parent,) = by_name["pipeline"]
    assert parent.info.run_id == parent_id
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["launcher"] == "prefect"
    assert parent.data.tags["flow_run"] == "f1"
    for stage in ("tokenizer", "encode"):
        (child,) = by_name[stage]
        assert child.data.tags["mlflow.parentRunId"] == parent_id


def test_stages_under_one_dvc_process_share_a_parent_that_ends_finished(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "dvc_execution", lambda: ("dvc repro", "host:101:1.000"))
    for stage in ("ingest", "tokenizer"):
        with tracking.stage_run(stage, root, params={"seed": 1}):
            pass
    monkeypatch.setattr(tracking, "dvc_execution", lambda: ("dvc repro", "host:202:2.000"))
    with tracking.stage_run("ingest", root, params={"seed": 1}):
        pass

    by_name = runs(root)
    first, second = by_name["pipeline"]
    assert first.data.tags["pipeline_execution"] == "host:101:1.000"
    assert first.data.tags["launcher"] == "dvc repro"
    assert first.info.status == "FINISHED" and first.info.end_time is not None
    assert [r.data.tags["mlflow.parentRunId"] for r in by_name["ingest"]] == [
        first.info.run_id,
        second.info.run_id,
    ]
    assert by_name["tokenizer"][0].data.tags["mlflow.parentRunId"] == first.info.run_id


def test_a_failing_stage_is_failed_and_so_is_its_dvc_parent(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "dvc_execution", lambda: ("dvc repro", "host:303:3.000"))
    with pytest.raises(ValueError, match="bad batch"):
        with tracking.stage_run("sft", root, params={}):
            raise ValueError("bad batch")
    with pytest.raises(SystemExit):
        with tracking.stage_run("rm", root, params={}):
            raise SystemExit(2)
    with pytest.raises(SystemExit):
        with tracking.stage_run("ppo", root, params={}):
            raise SystemExit(0)  # a clean exit is a finished run

    by_name = runs(root)
    assert by_name["sft"][0].info.status == "FAILED"
    assert by_name["rm"][0].info.status == "FAILED"
    assert by_name["ppo"][0].info.status == "FINISHED"
    (parent,) = by_name["pipeline"]
    assert parent.info.status == "FAILED"  # sticks although a later stage finished


def test_a_child_run_ends_as_its_body_does_and_inherits_the_stage_tags(root: Path) -> None:
    with tracking.stage_run("finetune_tasks", root, params={}, tags={"git_commit": "c" * 40}) as stage:
        with stage.child("sst2/finished", {"lr": 1e-4}, {"task": "sst2"}) as child:
            child.log_metrics({"val/acc": 0.8}, step=1)
        with pytest.raises(SystemExit):
            with stage.child("sst2/exited", {}):
                raise SystemExit(0)
        with pytest.raises(ValueError):
            with stage.child("sst2/failed", {}):
                raise ValueError("bad row")
        with pytest.raises(KeyboardInterrupt):
            with stage.child("sst2/killed", {}):
                raise KeyboardInterrupt

    by_name = runs(root)
    (stage_run,) = by_name["finetune_tasks"]
    statuses = {name: by_name[f"sst2/{name}"][0].info.status for name in ("finished", "exited", "failed", "killed")}
    assert statuses == {"finished": "FINISHED", "exited": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
    finished = by_name["sst2/finished"][0]
    assert finished.data.tags["mlflow.parentRunId"] == stage_run.info.run_id
    assert finished.data.tags["git_commit"] == "c" * 40 and finished.data.tags["task"] == "sst2"
    assert finished.data.params == {"lr": "0.0001"} and finished.data.metrics == {"val/acc": 0.8}


def test_tracking_off_gives_a_null_tracker_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tracking.TRACKING_ENV, "off")
    with tracking.stage_run("evaluate", tmp_path, params={"k": 1}) as t:
        assert isinstance(t, tracking.NullTracker)
        t.log_params({"a": 1})
        t.log_metrics({"x": 1.0}, step=3)
        t.log_metric("y", 2.0, step=1)
        t.log_artifact(tmp_path / "missing.txt")
        t.log_text("t", "a.txt")
        t.log_dict({}, "b.json")
        t.set_tags({"c": "d"})
    assert tracking.open_pipeline_run(tmp_path, launcher="prefect") == ""
    tracking.close_pipeline_run(tmp_path, "")
    assert list(tmp_path.iterdir()) == []


def test_tracking_uri_is_absolute_and_overridable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/store.db")
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/runs/store.db"


def test_a_temp_experiment_workspace_logs_to_the_repo_that_launched_it(tmp_path: Path) -> None:
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "standalone" / "tmpab12cd34"
    assert tracking.store_root(workspace) == tmp_path.resolve()
    assert tracking.store_root(tmp_path) == tmp_path.resolve()
    assert tracking.tracking_uri(workspace) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


@pytest.mark.parametrize(
    ("cmdline", "launcher"),
    [
        (["/repo/.venv/bin/python", "/repo/.venv/bin/dvc", "repro"], "dvc repro"),
        (["dvc", "repro", "-s", "encode"], "dvc repro"),
        (["python3", "-m", "dvc", "exp", "run", "--temp", "-S", "a=1"], "dvc exp run"),
        (["python", "/repo/.venv/bin/dvc", "exp", "exec-run", "--infofile", "x"], "dvc exp run"),
        (["dvc", "status"], None),
        (["/bin/sh", "-c", "python -m stages.encode"], None),
        (["python", "-m", "pytest", "tests/test_tracking_dvc.py"], None),
    ],
)
def test_dvc_launcher_recognises_pipeline_commands(
    cmdline: list[str], launcher: str | None
) -> None:
    assert tracking.dvc_launcher(cmdline) == launcher


def test_flatten_params_uses_dotted_keys_and_json_values() -> None:
    flat = tracking.flatten_params({"a": {"b": {"c": True}}, "d": None, "e": "text", "f": {}})
    assert flat == {"a.b.c": "true", "d": "null", "e": "text", "f": "{}"}


def test_a_logged_table_reads_back_with_mlflow(root: Path) -> None:
    import mlflow

    rows = [{"prompt": "Hi?", "reference": "Hello.", "response": "Hey."}, {"prompt": "2+2?", "reference": "4", "response": "5"}]
    with tracking.stage_run("sft", root) as t:
        t.log_table(rows, "samples.json")
    (run,) = runs(root)["sft"]
    mlflow.set_tracking_uri(tracking.tracking_uri(root))
    table = mlflow.load_table("samples.json", run_ids=[run.info.run_id])
    assert table[["prompt", "reference", "response"]].to_dict("records") == rows
