"""flows.dag reads the stage graph from a real DVC repo: order, upstream stages, targets."""

from __future__ import annotations

import os
import subprocess

import pytest

from dvc_diamond import DVC, QUIET_ENV, make_diamond_repo
from flows.dag import StageNode, find_repo_root, stage_graph
from instructgpt.errors import ConfigError


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The diamond, plus a `foreach` stage reading from `a` and a `dvc add`-ed data file read by `d`."""
    extra = {
        "tasks": {
            "foreach": ["sst2", "rte"],
            "do": {
                "cmd": "echo ${item} > task_${item}.txt",
                "deps": ["a.txt"],
                "outs": ["task_${item}.txt"],
            },
        }
    }
    path = make_diamond_repo(tmp_path_factory.mktemp("dag") / "repo", extra_stages=extra)
    (path / "raw.txt").write_text("raw\n")
    env = {**os.environ, **QUIET_ENV}
    subprocess.run([DVC, "add", "-q", "raw.txt"], cwd=path, check=True, env=env)
    return path


def names(nodes: list[StageNode]) -> list[str]:
    return [node.name for node in nodes]


def test_stages_come_after_the_stages_they_read_from(repo):
    nodes = stage_graph(repo)
    assert names(nodes) == ["a", "b", "c", "d", "tasks@sst2", "tasks@rte"]  # ties follow dvc.yaml
    upstream = {node.name: node.upstream for node in nodes}
    assert upstream == {
        "a": (),
        "b": ("a",),
        "c": ("a",),
        "d": ("b", "c"),
        "tasks@sst2": ("a",),
        "tasks@rte": ("a",),
    }


def test_data_tracked_with_dvc_add_is_not_a_stage(repo):
    assert "raw.txt.dvc" not in names(stage_graph(repo))


def test_declared_metrics_files_come_with_the_stage(repo):
    by_name = {node.name: node for node in stage_graph(repo)}
    assert by_name["d"].metrics == ("d.json",)
    assert by_name["a"].metrics == ()


def test_targets_keep_only_themselves_and_their_ancestors(repo):
    assert names(stage_graph(repo, ["b"])) == ["a", "b"]
    assert names(stage_graph(repo, ["c", "b"])) == ["a", "b", "c"]
    assert names(stage_graph(repo, ["d"])) == ["a", "b", "c", "d"]
    assert names(stage_graph(repo, ["tasks@rte"])) == ["a", "tasks@rte"]


def test_a_foreach_group_name_targets_all_its_items(repo):
    assert names(stage_graph(repo, ["tasks"])) == ["a", "tasks@sst2", "tasks@rte"]


def test_names_do_not_depend_on_the_working_directory(repo, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert names(stage_graph(repo, ["b"])) == ["a", "b"]


def test_an_unknown_target_is_named_in_the_error(repo):
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        stage_graph(repo, ["nope"])


def test_the_repo_root_is_found_from_below(repo, tmp_path):
    below = repo / "some" / "dir"
    below.mkdir(parents=True, exist_ok=True)
    assert find_repo_root(below) == repo.resolve()
    with pytest.raises(ConfigError, match="no DVC repo"):
        find_repo_root(tmp_path)
