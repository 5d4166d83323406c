"""The catalogue: parsing with located errors, mirror resolution, checksums of files and directories."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from instructgpt.errors import ConfigError, SourceError
from instructgpt.sources import Source, load_catalogue, mirror_dir, resolve, sha256_path


def _entry(**overrides: object) -> str:
    fields = {"name": "notes", "kind": "web", "format": "lines", "path": "notes.txt", "sha256": "0" * 64, "license": "CC0"}
    fields.update(overrides)
    return "- " + "\n  ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items()) + "\n"


def test_the_project_catalogue_covers_the_whole_data_pack(repo_root: Path, data_pack: Path) -> None:
    sources = load_catalogue(repo_root / "data" / "sources.yaml")
    covered: set[Path] = set()
    for source in sources:
        path = data_pack / source.path
        assert path.exists(), source.name
        covered |= {path} if path.is_file() else {p for p in path.rglob("*") if p.is_file()}
        assert resolve(source, data_pack, data_pack / "unused") == path  # checksums match the pack
    pack_files = {p for p in data_pack.rglob("*") if p.is_file() and p.name not in ("README.md", "SHA256SUMS")}
    assert pack_files == covered


def test_directory_checksum_equals_the_documented_shell_pipeline(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee\n")
    (tmp_path / "sub" / "a.txt").write_text("ay\n")
    shell = subprocess.run(
        "(find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum) | sha256sum",
        shell=True, cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.split()[0]
    assert sha256_path(tmp_path) == shell


def test_a_checksum_mismatch_names_the_source(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    source = Source(name="notes", kind="web", format="lines", sha256="0" * 64, license="CC0", path="notes.txt")
    with pytest.raises(SourceError, match="source 'notes': checksum mismatch"):
        resolve(source, tmp_path, tmp_path / "dl")


def test_a_missing_source_without_url_names_the_source_and_the_fix(tmp_path: Path) -> None:
    source = Source(name="gone", kind="web", format="lines", sha256="0" * 64, license="CC0", path="gone.txt")
    with pytest.raises(SourceError, match="source 'gone' is not at .*INSTRUCTGPT_DATA_MIRROR"):
        resolve(source, tmp_path, tmp_path / "dl")


def test_an_unreachable_url_is_a_clear_error(tmp_path: Path) -> None:
    source = Source(name="remote", kind="web", format="lines", sha256="0" * 64, license="CC0",
                    url="http://127.0.0.1:9/nothing.txt")
    with pytest.raises(SourceError, match="source 'remote' is not in the mirror and fetching"):
        resolve(source, tmp_path, tmp_path / "dl")


def test_a_file_url_is_fetched_and_verified(tmp_path: Path) -> None:
    origin = tmp_path / "origin.txt"
    origin.write_text("one line\n")
    digest = hashlib.sha256(origin.read_bytes()).hexdigest()
    source = Source(name="remote", kind="web", format="lines", sha256=digest, license="CC0", url=origin.as_uri())
    fetched = resolve(source, tmp_path / "empty-mirror", tmp_path / "dl")
    assert fetched.read_text() == "one line\n"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"kind": "novels"}, "kind"),
        ({"sha256": "abc"}, "sha256"),
        ({"format": "nonsense"}, "format"),
        ({"format": "alpaca"}, "format"),  # alpaca makes demonstrations, not web documents
        ({"split": "holdout"}, "split"),
        ({"weight": -1}, "weight"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_a_bad_entry_names_file_line_and_field(tmp_path: Path, override: dict, field: str) -> None:
    catalogue = tmp_path / "sources.yaml"
    text = "# header\n" + _entry(name="ok") + _entry(**override)
    catalogue.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_catalogue(catalogue)
    line = max(i for i, row in enumerate(text.splitlines(), 1) if f"{field}:" in row)  # the bad field's own line
    assert f"{catalogue}:{line}: field '{field}'" in str(err.value)


def test_missing_required_field_and_duplicate_names(tmp_path: Path) -> None:
    catalogue = tmp_path / "sources.yaml"
    catalogue.write_text("- name: x\n  kind: web\n  format: lines\n  path: a\n  license: CC0\n")
    with pytest.raises(ConfigError, match=r":1: field 'sha256': missing required field"):
        load_catalogue(catalogue)
    catalogue.write_text(_entry() + _entry())
    with pytest.raises(ConfigError, match="duplicate source name 'notes'"):
        load_catalogue(catalogue)


def test_mirror_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INSTRUCTGPT_DATA_MIRROR", raising=False)
    assert mirror_dir(tmp_path) == (tmp_path / "../shared/data").resolve()
    assert mirror_dir(tmp_path, "elsewhere") == tmp_path / "elsewhere"
    monkeypatch.setenv("INSTRUCTGPT_DATA_MIRROR", "/abs/mirror")
    assert mirror_dir(tmp_path, "elsewhere") == Path("/abs/mirror")
