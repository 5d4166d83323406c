"""A tiny real DVC repo for the flow tests: the diamond a -> (b, c) -> d of shell stages.

Each stage prints "hello from <stage>" and writes `<stage>.txt` holding its name and the MLflow
parent run id it was given (`INSTRUCTGPT_PIPELINE_RUN_ID`), so a test can see that every stage of
one execution shared one parent. `d` also writes `d.json`, declared as its metrics. Setting
`DIAMOND_FAIL=<stage>` in the environment makes that stage fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
QUIET_ENV = {"DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def diamond_stage(name: str, upstream: list[str], sleep: float) -> dict[str, Any]:
    # $VAR, not ${VAR}: DVC reads ${...} in dvc.yaml as its own params interpolation
    cmd = (
        f'test "$DIAMOND_FAIL" != {name} && sleep {sleep} && echo "hello from {name}" && '
        f'echo "{name} $INSTRUCTGPT_PIPELINE_RUN_ID" > {name}.txt'
    )
    stage: dict[str, Any] = {"cmd": cmd, "outs": [f"{name}.txt"]}
    if upstream:
        stage["deps"] = [f"{up}.txt" for up in upstream]
    if name == "d":
        stage["cmd"] += """ && echo '{"score": {"value": 0.5}, "ok": true}' > d.json"""
        stage["metrics"] = [{"d.json": {"cache": False}}]
    return stage


def make_diamond_repo(
    path: Path,
    *,
    sleep: float = 0,
    orchestration: dict[str, Any] | None = None,
    extra_stages: dict[str, Any] | None = None,
) -> Path:
    """git init + dvc init at `path`, with the diamond in dvc.yaml and params.yaml:orchestration."""
    path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **QUIET_ENV}
    subprocess.run(["git", "init", "-q"], cwd=path, check=True, env=env)
    subprocess.run([DVC, "init", "-q"], cwd=path, check=True, env=env)
    stages = {name: diamond_stage(name, up, sleep) for name, up in DIAMOND.items()}
    stages.update(extra_stages or {})
    dvc_yaml = yaml.safe_dump({"stages": stages}, sort_keys=False, width=1000)
    (path / "dvc.yaml").write_text(dvc_yaml, encoding="utf-8")
    params = {"orchestration": orchestration} if orchestration is not None else {}
    (path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def parent_ids(repo: Path, stages=DIAMOND) -> dict[str, str]:
    """The parent run id each stage wrote into its out ('' when it was given none)."""
    return {name: (repo / f"{name}.txt").read_text().split(" ", 1)[1].strip() for name in stages}
