"""The catalogue of raw sources (`data/sources.yaml`): parse it, find each source, verify its checksum.

A source is found in the mirror directory first (default `../shared/data`, the read-only data
pack), else fetched from its public `url` when a network is there; either way its sha256 must
match the catalogue. A directory source's sha256 is that of its manifest: the sorted lines
``"<sha256 of file>  <path relative to the directory>\\n"`` for every file in it, exactly what
``(cd DIR && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum) | sha256sum``
prints; `python -m instructgpt.sources hash PATH` prints it too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from instructgpt.errors import ConfigError, SourceError

KINDS = ("books", "web", "demonstrations", "comparisons", "prompts", "tasks")
SPLITS = ("train", "val", "dev", "test")
MIRROR_ENV = "INSTRUCTGPT_DATA_MIRROR"
DEFAULT_MIRROR = "../shared/data"
_REQUIRED = ("name", "kind", "format", "sha256", "license")
_OPTIONAL = ("path", "url", "split", "weight", "description", "origin", "encoding")


@dataclass(frozen=True)
class Source:
    """One catalogue entry. `path` is relative to the mirror (or absolute); `url` is its public origin."""

    name: str
    kind: str
    format: str
    sha256: str
    license: str
    path: str | None = None
    url: str | None = None
    split: str | None = None
    weight: float | None = None
    description: str = ""
    origin: str = ""
    encoding: str | None = None


def load_catalogue(path: str | Path) -> list[Source]:
    """Parse and check `sources.yaml`; errors name the file, the entry's line and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        entries = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read the source catalogue: {err}", file=path) from err
    if not isinstance(entries, list) or node is None:
        raise ConfigError("the catalogue must be a YAML list of source entries", file=path, line=1)
    sources: list[Source] = []
    seen: set[str] = set()
    for entry, entry_node in zip(entries, node.value):
        lines = _field_lines(entry_node)
        source = _parse_entry(entry, path, lines)
        if source.name in seen:
            raise ConfigError(f"duplicate source name '{source.name}'", file=path, line=lines["name"], field="name")
        seen.add(source.name)
        sources.append(source)
    return sources


def _field_lines(entry_node: yaml.Node) -> dict[str, int]:
    """1-based line of each field of an entry; missing fields point at the entry's first line."""
    start = entry_node.start_mark.line + 1
    lines: dict[str, int] = defaultdict(lambda: start)
    if isinstance(entry_node, yaml.MappingNode):
        for key_node, _ in entry_node.value:
            lines[str(key_node.value)] = key_node.start_mark.line + 1
    return lines


def _parse_entry(entry: Any, path: Path, lines: dict[str, int]) -> Source:
    def fail(message: str, key: str | None) -> ConfigError:
        return ConfigError(message, file=path, line=lines[key or ""], field=key)

    if not isinstance(entry, dict):
        raise fail("each entry must be a mapping", None)
    for key in _REQUIRED:
        if not entry.get(key):
            raise fail(f"missing required field '{key}'", key)
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise fail(f"unknown field(s) {unknown}", unknown[0])
    if not entry.get("path") and not entry.get("url"):
        raise fail("an entry needs a 'path' or a 'url'", "path")
    if entry["kind"] not in KINDS:
        raise fail(f"kind must be one of {list(KINDS)}", "kind")
    sha = str(entry["sha256"]).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise fail("sha256 must be 64 hex digits", "sha256")
    if entry.get("split") is not None and entry["split"] not in SPLITS:
        raise fail(f"split must be one of {list(SPLITS)}", "split")
    weight = entry.get("weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0):
        raise fail("weight must be a non-negative number", "weight")
    from instructgpt.formats import get_format  # late: formats import nothing from here

    try:
        fmt = get_format(entry["format"])
    except ConfigError as err:
        raise fail(err.reason, "format") from err
    if entry["kind"] not in fmt.kinds:
        raise fail(f"format '{fmt.name}' does not produce kind '{entry['kind']}' (it serves {sorted(fmt.kinds)})", "format")
    return Source(
        name=str(entry["name"]),
        kind=entry["kind"],
        format=entry["format"],
        sha256=sha,
        license=str(entry["license"]),
        path=entry.get("path"),
        url=entry.get("url"),
        split=entry.get("split"),
        weight=float(weight) if weight is not None else None,
        description=str(entry.get("description") or ""),
        origin=str(entry.get("origin") or ""),
        encoding=entry.get("encoding"),
    )


def mirror_dir(root: Path, configured: str | None = None) -> Path:
    """The mirror: $INSTRUCTGPT_DATA_MIRROR, else the params value, else ../shared/data (relative to `root`)."""
    chosen = os.environ.get(MIRROR_ENV) or configured or DEFAULT_MIRROR
    path = Path(chosen)
    return (path if path.is_absolute() else root / path).resolve()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_files(directory: Path) -> list[Path]:
    """Every regular file under `directory`, as relative paths in byte order (hidden files skipped)."""
    files = [
        p.relative_to(directory)
        for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    ]
    return sorted(files, key=lambda p: p.as_posix().encode())


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's manifest (see the module docstring)."""
    if path.is_file():
        return sha256_file(path)
    manifest = "".join(f"{sha256_file(path / rel)}  {rel.as_posix()}\n" for rel in list_files(path))
    return hashlib.sha256(manifest.encode()).hexdigest()


def resolve(source: Source, mirror: Path, download_dir: Path) -> Path:
    """Return a local path holding the source, verified against its sha256.

    Looks in the mirror (or at the absolute path); if absent, downloads `url` into `download_dir`.
    """
    candidates: list[Path] = []
    if source.path:
        local = Path(source.path)
        candidates.append(local if local.is_absolute() else mirror / local)
    for candidate in candidates:
        if candidate.exists():
            _verify(source, candidate)
            return candidate
    if not source.url:
        raise SourceError(
            f"source '{source.name}' is not at {candidates[0]} and has no url to fetch it from; "
            f"set {MIRROR_ENV} or params fetch.mirror to the directory that holds it",
            field="path",
        )
    fetched = _download(source, download_dir)
    _verify(source, fetched)
    return fetched


def _verify(source: Source, path: Path) -> None:
    actual = sha256_path(path)
    if actual != source.sha256:
        raise SourceError(
            f"source '{source.name}': checksum mismatch for {path}: expected {source.sha256}, got {actual}. "
            "The file changed, or the catalogue is out of date.",
            field="sha256",
        )


def _download(source: Source, download_dir: Path) -> Path:
    """Fetch `source.url`; archives (.tar.gz, .tgz, .zip) are unpacked into a directory."""
    assert source.url
    download_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.request.urlparse(source.url).path).name or source.name
    try:
        with urllib.request.urlopen(source.url, timeout=60) as response, tempfile.NamedTemporaryFile(
            dir=download_dir, delete=False
        ) as out:
            shutil.copyfileobj(response, out)
            tmp = Path(out.name)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise SourceError(
            f"source '{source.name}' is not in the mirror and fetching {source.url} failed: {err}",
            field="url",
        ) from err
    target = download_dir / source.name
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    if name.endswith((".tar.gz", ".tgz", ".tar")) or name.endswith(".zip"):
        target.mkdir()
        if name.endswith(".zip"):
            with zipfile.ZipFile(tmp) as archive:
                archive.extractall(target)
        else:
            with tarfile.open(tmp) as archive:
                archive.extractall(target, filter="data")
        tmp.unlink()
        return target
    target.mkdir()
    final = target / name
    os.replace(tmp, final)
    return final


def iter_source_files(path: Path, patterns: tuple[str, ...]) -> Iterator[tuple[Path, str]]:
    """(absolute file, name relative to the source root) for a file source or a directory source.

    A single file is always read, whatever its name; in a directory only files matching the
    format's patterns are.
    """
    if path.is_file():
        yield path, path.name
        return
    for rel in list_files(path):
        if any(rel.match(p) for p in patterns):
            yield path / rel, rel.as_posix()


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "hash":
        print(sha256_path(Path(argv[1])))
        return 0
    print("usage: python -m instructgpt.sources hash PATH", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
