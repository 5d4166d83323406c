"""A training stage's run directory is keyed by its params, its input data and its code, so a
changed stage trains afresh instead of reading an old run back (and dvc.lock recording it as new)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from instructgpt.errors import ConfigError
from instructgpt.tracking import Tracker
from stages.common import StageContext
from stages.training import code_digest, run_dir


@dataclasses.dataclass
class Params:
    lr: float = 1e-3


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "train.py").write_text("STEP = 1\n")
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "model.py").write_text("WIDTH = 64\n")
    (tmp_path / "pkg" / "notes.md").write_text("not code\n")
    (tmp_path / "data.txt").write_text("corpus\n")
    (tmp_path / "other.py").write_text("UNLISTED = 1\n")
    dvc_yaml = {"stages": {"train": {"cmd": "python -m stages.train", "deps": ["stages/train.py", "pkg", "data.txt"]}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    return tmp_path


def key(root: Path, params: Params | None = None) -> Path:
    ctx = StageContext(name="train", root=root, params={}, tracker=Tracker())
    return run_dir(ctx, params or Params(), [root / "data.txt"])


def test_the_key_is_stable_and_lives_under_the_stage(root: Path) -> None:
    assert key(root) == key(root)
    assert key(root).parent == root / ".runs" / "train"


def test_a_change_to_a_listed_code_file_changes_the_key(root: Path) -> None:
    before = key(root)
    (root / "stages" / "train.py").write_text("STEP = 2\n")
    assert key(root) != before


def test_a_change_to_a_python_file_inside_a_listed_directory_changes_the_key(root: Path) -> None:
    before = key(root)
    (root / "pkg" / "sub" / "model.py").write_text("WIDTH = 128\n")
    assert key(root) != before


def test_params_and_input_data_change_the_key(root: Path) -> None:
    before = key(root)
    assert key(root, Params(lr=2e-3)) != before
    (root / "data.txt").write_text("another corpus\n")
    assert key(root) != before


def test_files_that_are_not_the_stages_code_leave_the_key_alone(root: Path) -> None:
    before = key(root)
    (root / "pkg" / "notes.md").write_text("edited prose\n")
    (root / "other.py").write_text("UNLISTED = 2\n")
    assert key(root) == before


def test_without_a_dvc_yaml_the_key_is_params_and_data_only(root: Path) -> None:
    (root / "dvc.yaml").unlink()
    ctx = StageContext(name="train", root=root, params={}, tracker=Tracker())
    assert code_digest(ctx) == ""
    assert key(root) == key(root)


def test_an_unreadable_dvc_yaml_is_a_config_error_naming_it(root: Path) -> None:
    (root / "dvc.yaml").write_text("stages: [unclosed\n")
    with pytest.raises(ConfigError, match="dvc.yaml"):
        key(root)
