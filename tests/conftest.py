"""Shared fixtures: where the repo and the real data pack are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def data_pack() -> Path:
    """The real data pack (../shared/data beside the repo, or INSTRUCTGPT_DATA_MIRROR)."""
    path = Path(os.environ.get("INSTRUCTGPT_DATA_MIRROR", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"the data pack is missing at {path}: put ../shared beside the repo")
    return path
