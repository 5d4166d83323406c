"""Tracking under real DVC: stages/provenance.py and instructgpt/tracking.py end to end.

A throwaway git + DVC repo with two chained stages that run through `stages.common.run_stage`;
`dvc repro` must leave two stage runs under one parent, tagged with the dep hashes that dvc.lock
records, and a second `dvc repro` (nothing changed) must add no runs. `dvc exp run --temp` runs in
a workspace under .dvc/tmp/exps/ yet logs to the launching repo's store, with its own params.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from instructgpt import tracking
from stages import provenance

# MLflow's own store code trips a SQLAlchemy deprecation when a test opens a client on it.
pytestmark = pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")

DVC = Path(sys.executable).with_name("dvc")

STAGE_SCRIPT = """\
import sys
from pathlib import Path

from stages.common import run_stage

name = sys.argv[1]


def body(ctx):
    source, target = ("data/raw.txt", "out1.txt") if name == "first" else ("out1.txt", "out2.txt")
    text = Path(source).read_text() * ctx.section["repeat"]
    Path(target).write_text(text)
    for step in range(3):
        ctx.tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    return {"chars": len(text)}


run_stage(name, body)
"""

DVC_YAML = {
    "stages": {
        "first": {
            "cmd": f"{sys.executable} stage.py first",
            "deps": ["stage.py", "data/raw.txt", "data/extra"],
            "params": ["first"],
            "outs": ["out1.txt"],
            "metrics": [{"metrics/first.json": {"cache": False}}],
        },
        "second": {
            "cmd": f"{sys.executable} stage.py second",
            "deps": ["stage.py", "out1.txt"],
            "params": ["second"],
            "outs": ["out2.txt"],
            "metrics": [{"metrics/second.json": {"cache": False}}],
        },
    }
}


def _env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            tracking.PIPELINE_RUN_ENV,
            tracking.TRACKING_ENV,
            tracking.EXPERIMENT_ENV,
            "MLFLOW_TRACKING_URI",
        }
    }
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
        PATH=f"{DVC.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
    )
    return env


def _sh(repo: Path, *args: str | Path) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=repo, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _sh(tmp_path, "git", "init", "-q")
    _sh(tmp_path, DVC, "init", "-q")
    (tmp_path / "data" / "extra").mkdir(parents=True)
    (tmp_path / "data" / "raw.txt").write_text("hello\n")
    (tmp_path / "data" / "extra" / "a.txt").write_text("a\n")
    (tmp_path / "stage.py").write_text(STAGE_SCRIPT)
    params = {"first": {"repeat": 2}, "second": {"repeat": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (tmp_path / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n")
    _sh(tmp_path, "git", "add", "-A")
    _sh(tmp_path, "git", "commit", "-qm", "pipeline")
    return tmp_path


def _runs(repo: Path) -> list:
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def _lock_deps(repo: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {f"dvc.dep.{dep['path']}": dep["md5"] for dep in lock["stages"][stage]["deps"]}


@pytest.mark.slow
def test_dvc_repro_logs_one_parent_with_a_run_per_stage_and_lock_hashes(repo: Path) -> None:
    _sh(repo, DVC, "repro")

    runs = _runs(repo)
    assert [r.info.run_name for r in runs] == ["pipeline", "first", "second"]
    parent, first, second = runs
    assert parent.data.tags["launcher"] == "dvc repro"
    assert parent.info.status == "FINISHED" and parent.info.end_time is not None
    commit = _sh(repo, "git", "rev-parse", "HEAD").strip()
    for run, stage in ((first, "first"), (second, "second")):
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["stage"] == stage
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["git_commit"] == commit
        assert tags["git_dirty"] == "false"  # dvc.lock and outs the pipeline wrote are not code
        dep_tags = {k: v for k, v in tags.items() if k.startswith("dvc.dep.")}
        assert dep_tags == _lock_deps(repo, stage)
        assert "dvc.params.params.yaml" in tags
    assert first.data.tags["dvc.dep.data/extra"].endswith(".dir")
    assert first.data.params == {"repeat": "2"}
    assert first.data.metrics["chars"] == len("hello\n") * 2
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    assert [m.step for m in client.get_metric_history(first.info.run_id, "loss")] == [0, 1, 2]
    assert [f.path for f in client.list_artifacts(first.info.run_id)] == ["first.json"]
    assert first.info.artifact_uri.startswith((repo / "mlartifacts").as_uri())

    _sh(repo, DVC, "repro")  # nothing changed: DVC runs no stage, so no run is logged
    assert len(_runs(repo)) == 3


@pytest.mark.slow
def test_dvc_exp_run_temp_logs_to_the_launching_repo_with_the_experiments_params(
    repo: Path,
) -> None:
    _sh(repo, DVC, "exp", "run", "--temp", "-S", "first.repeat=3", "-n", "triple")

    runs = _runs(repo)
    assert [r.info.run_name for r in runs] == ["pipeline", "first", "second"]
    parent, first, second = runs
    assert parent.data.tags["launcher"] == "dvc exp run"
    assert parent.data.tags["dvc.exp_name"] == "triple"
    assert first.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert second.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert first.data.params == {"repeat": "3"}  # read in the temp workspace, where -S applied
    assert first.data.metrics["chars"] == len("hello\n") * 3
    assert not (repo / "out1.txt").exists()  # outs went to the temp workspace, not here


def test_repo_root_is_the_dvc_repo_around_the_cwd(tmp_path: Path) -> None:
    (tmp_path / ".dvc").mkdir()
    nested = tmp_path / "stages" / "deep"
    nested.mkdir(parents=True)
    assert provenance.repo_root(nested) == tmp_path.resolve()
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "standalone" / "tmpab12cd34"
    (workspace / ".dvc").mkdir(parents=True)
    assert provenance.repo_root(workspace) == workspace.resolve()  # its params, its outs
    with pytest.raises(FileNotFoundError, match="not inside a DVC repository"):
        provenance.repo_root(Path("/"))


def test_git_tags_are_unknown_without_commits(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    tags = provenance.stage_tags(tmp_path, "any")
    assert tags == {"git_commit": "unknown", "git_dirty": "unknown"}
