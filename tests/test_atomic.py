"""Atomic writes: the target is either the old or the new content, never a partial one."""

from __future__ import annotations

from pathlib import Path

import pytest

from instructgpt.atomic import atomic_dir, atomic_path, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "table.parquet"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_a_successful_write_replaces_the_file(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_directories_are_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "shards"
    with atomic_dir(target) as out:
        (out / "a.bin").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as out:
            (out / "b.bin").write_text("2")
            raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["a.bin"]
    with atomic_dir(target) as out:
        (out / "c.bin").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_a_crash_between_the_two_renames_is_recovered(tmp_path: Path) -> None:
    target = tmp_path / "shards"
    backup = tmp_path / ".shards.old"
    backup.mkdir()
    (backup / "a.bin").write_text("1")  # as if the process died after moving the old dir aside
    with pytest.raises(RuntimeError):
        with atomic_dir(target):
            raise RuntimeError("crash")
    assert (target / "a.bin").read_text() == "1"


def test_outputs_get_the_usual_permissions(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {})
    with atomic_dir(tmp_path / "d") as out:
        (out / "x").write_text("1")
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~_current_umask()
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~_current_umask()


def _current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
