"""Shared reading for the format parsers: open a file, stream its lines or JSON records, check fields.

Every parser reads through here, so the file-level failures read the same everywhere: a file that
cannot be opened, decoded or decompressed, or JSON that does not parse, raises `DataError` naming
the file (its path relative to the source root) and the line. Record-level problems raise
`FieldError`, which `json_rows` (and the TSV parsers) turn into a `Reject` for that record.

Encodings: files are UTF-8 (a leading BOM is dropped). A parser may declare a `fallback` encoding
(e.g. Latin-1) used when the whole file is not valid UTF-8; the check streams the bytes once
before the lines are read. Only ASCII-compatible encodings are supported (lines split on b"\\n").
Gzip is recognised by its magic bytes, not by the file name.
"""

from __future__ import annotations

import codecs
import gzip
import json
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from instructgpt.errors import DataError
from instructgpt.formats.base import Item, Reject, Row, Table

GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_READ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


def open_binary(path: Path, relname: str) -> IO[bytes]:
    """Open `path` for reading bytes, decompressing it when it starts with the gzip magic bytes."""
    try:
        handle: IO[bytes] = open(path, "rb")
        if handle.read(2) == GZIP_MAGIC:
            handle.seek(0)
            return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]
        handle.seek(0)
        return handle
    except OSError as err:
        raise DataError(f"cannot open: {err.strerror or err}", file=relname) from err


def choose_encoding(path: Path, relname: str, encoding: str = "utf-8", fallback: str | None = None) -> str:
    """`encoding` if the whole file decodes with it, else `fallback` (or `encoding` if none is given)."""
    if fallback is None:
        return encoding
    decoder = codecs.getincrementaldecoder(encoding)()
    with open_binary(path, relname) as handle:
        try:
            while chunk := handle.read(_CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return fallback
        except _READ_ERRORS as err:
            raise DataError(f"cannot read: {err}", file=relname) from err
    return encoding


def iter_lines(
    path: Path, relname: str, *, encoding: str = "utf-8", fallback: str | None = None
) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without its line ending); CRLF and LF both end a line."""
    encoding = choose_encoding(path, relname, encoding, fallback)
    strip_bom = codecs.lookup(encoding).name == "utf-8"
    lineno = 0
    with open_binary(path, relname) as handle:
        try:
            for lineno, raw in enumerate(handle, 1):
                if raw.endswith(b"\n"):
                    raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
                try:
                    line = raw.decode(encoding)
                except UnicodeDecodeError as err:
                    raise DataError(
                        f"not valid {encoding}: byte {raw[err.start : err.start + 1]!r} at column "
                        f"{err.start + 1}; convert the file to UTF-8",
                        file=relname,
                        line=lineno,
                    ) from err
                if strip_bom and lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                yield lineno, line
        except _READ_ERRORS as err:
            raise DataError(
                f"cannot read (corrupt or truncated?): {err}", file=relname, line=lineno + 1
            ) from err


def read_text(path: Path, relname: str, *, encoding: str = "utf-8", fallback: str | None = None) -> str:
    """The whole file as one string, with "\\n" line endings (for formats whose record is the file)."""
    with open_binary(path, relname) as handle:
        try:
            data = handle.read()
        except _READ_ERRORS as err:
            raise DataError(f"cannot read (corrupt or truncated?): {err}", file=relname) from err
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        if fallback is None:
            line = data.count(b"\n", 0, err.start) + 1
            raise DataError(
                f"not valid {encoding}; convert the file to UTF-8", file=relname, line=line
            ) from err
        text = data.decode(fallback)
    else:
        if codecs.lookup(encoding).name == "utf-8" and text.startswith("\ufeff"):
            text = text[1:]
    return text.replace("\r\n", "\n")


# --- JSON: a list of records, or JSON Lines --------------------------------------------------


@dataclass(frozen=True)
class JsonRecord:
    """One record of a JSON list or JSON Lines file, with the line it starts on."""

    line: int
    value: Any
    text: str | None = None  # the raw line, for JSON Lines

    @property
    def raw(self) -> str:
        """The record as text, for the rejects table."""
        return self.text if self.text is not None else json.dumps(self.value, ensure_ascii=False)


def iter_json_records(path: Path, relname: str) -> Iterator[JsonRecord | Reject]:
    """Records of a JSON list (the file starts with '[') or of JSON Lines (starts with '{').

    In JSON Lines a line that does not parse is a `Reject`; in a JSON list nothing after a syntax
    error can be trusted, so it raises `DataError`, as does any other top-level value.
    """
    first, line = _first_char(path, relname)
    if first == "[":
        yield from _json_list(read_text(path, relname), relname)
    elif first == "{":
        yield from _json_lines(iter_lines(path, relname), relname)
    elif first:
        raise DataError(
            f"expected a JSON list ('[') or JSON Lines ('{{'), found {first!r}", file=relname, line=line
        )


def _first_char(path: Path, relname: str) -> tuple[str, int]:
    """The first non-whitespace character of the file (after a BOM) and its line; '' if none."""
    line = 1
    with open_binary(path, relname) as handle:
        try:
            head = handle.read(3)
            if head != b"\xef\xbb\xbf":
                handle.seek(0)
            while chunk := handle.read(4096):
                stripped = chunk.lstrip()
                if stripped:
                    line += chunk.count(b"\n", 0, len(chunk) - len(stripped))
                    return chr(stripped[0]), line
                line += chunk.count(b"\n")
        except _READ_ERRORS as err:
            raise DataError(f"cannot read (corrupt or truncated?): {err}", file=relname) from err
    return "", line


def _json_list(text: str, relname: str) -> Iterator[JsonRecord]:
    """Items of a top-level JSON list one at a time, each with the line it starts on."""
    decoder = json.JSONDecoder()
    counted, line = 0, 1

    def line_at(pos: int) -> int:  # counts newlines incrementally: linear over the whole file
        nonlocal counted, line
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    def fail(reason: str, pos: int) -> DataError:
        return DataError(f"not valid JSON: {reason}", file=relname, line=line_at(pos))

    pos = _skip_space(text, _skip_space(text, 0) + 1)  # past the '['
    closed = text.startswith("]", pos)
    while not closed:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise fail(err.msg, err.pos) from err
        yield JsonRecord(line_at(pos), value)
        pos = _skip_space(text, end)
        closed = text.startswith("]", pos)
        if not closed:
            if not text.startswith(",", pos):
                raise fail("expected ',' or ']' after a list item", pos)
            pos = _skip_space(text, pos + 1)
    pos = _skip_space(text, pos + 1)
    if pos < len(text):
        raise fail("extra data after the top-level list", pos)


def _skip_space(text: str, pos: int) -> int:
    return _JSON_SPACE.match(text, pos).end()  # type: ignore[union-attr]  # the pattern matches ''


def _json_lines(lines: Iterator[tuple[int, str]], relname: str) -> Iterator[JsonRecord | Reject]:
    records = ((lineno, line) for lineno, line in lines if line.strip())
    first = next(records, None)
    if first is None:
        return
    item = _json_line(relname, *first)
    if isinstance(item, Reject):  # one bad line of JSON Lines, or a pretty-printed JSON object?
        records = _unless_one_object(*first, records, relname)
    yield item
    for lineno, line in records:
        yield _json_line(relname, lineno, line)


def _json_line(relname: str, lineno: int, line: str) -> JsonRecord | Reject:
    try:
        return JsonRecord(lineno, json.loads(line), line)
    except json.JSONDecodeError as err:
        return Reject(relname, lineno, None, f"malformed JSON: {err.msg} (column {err.colno})", line)


def _unless_one_object(
    lineno: int, line: str, lines: Iterator[tuple[int, str]], relname: str
) -> Iterator[tuple[int, str]]:
    """The first line is broken: raise if the file is one pretty-printed object, else go on with the rest."""
    rest = list(lines)
    try:
        json.loads("\n".join([line, *(text for _, text in rest)]))
    except json.JSONDecodeError:
        return iter(rest)
    raise DataError(
        "top-level JSON is an object; expected a list of records or JSON Lines", file=relname, line=lineno
    )


# --- fields of a record ------------------------------------------------------------------------


class FieldError(ValueError):
    """A record whose field is missing, empty, of the wrong type or out of range."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


def as_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldError(None, f"record must be a JSON object, got {_type_name(value)}")
    return value


def text_field(record: dict[str, Any], name: str, *, strip: bool = True, default: str | None = None) -> str:
    """A non-empty string field (surrounding whitespace stripped unless `strip=False`).

    With `default`, a missing or null field gives the default (which may be empty).
    """
    value = record.get(name)
    if value is None:
        if default is not None:
            return default
        raise FieldError(name, "missing")
    if not isinstance(value, str):
        raise FieldError(name, f"must be a string, got {_type_name(value)}")
    if default is None and not value.strip():
        raise FieldError(name, "empty")
    return value.strip() if strip else value


def int_field(record: dict[str, Any], name: str) -> int:
    value = record.get(name)
    if value is None:
        raise FieldError(name, "missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(name, f"must be an integer, got {value!r}")
    return value


def float_field(record: dict[str, Any], name: str) -> float:
    value = record.get(name)
    if value is None:
        raise FieldError(name, "missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FieldError(name, f"must be a finite number, got {value!r}")
    return float(value)


def text_list_field(record: dict[str, Any], name: str, *, min_items: int = 1) -> list[str]:
    """A list of at least `min_items` non-empty strings, each stripped."""
    value = record.get(name)
    if value is None:
        raise FieldError(name, "missing")
    if not isinstance(value, list):
        raise FieldError(name, f"must be a list of strings, got {_type_name(value)}")
    if len(value) < min_items:
        raise FieldError(name, f"must have at least {min_items} items, got {len(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise FieldError(name, f"item {index} must be a string, got {_type_name(item)}")
        if not item.strip():
            raise FieldError(name, f"item {index} is empty")
    return [item.strip() for item in value]


def parse_int(text: str, name: str, allowed: frozenset[int] | None = None) -> int:
    """An integer written in a text column (e.g. a TSV label)."""
    try:
        value = int(text.strip())
    except ValueError:
        raise FieldError(name, f"not an integer: {text!r}") from None
    if allowed is not None and value not in allowed:
        raise FieldError(name, f"must be one of {sorted(allowed)}, got {value}")
    return value


def parse_float(text: str, name: str, low: float | None = None, high: float | None = None) -> float:
    """A finite number written in a text column, optionally within [low, high]."""
    try:
        value = float(text.strip())
    except ValueError:
        raise FieldError(name, f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise FieldError(name, f"not a finite number: {text!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise FieldError(name, f"must be within [{low}, {high}], got {value}")
    return value


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


# --- JSON records to rows ----------------------------------------------------------------------


def json_rows(
    path: Path, relname: str, table: Table, build: Callable[[dict[str, Any]], dict[str, Any]]
) -> Iterator[Item]:
    """Rows of `table` from each JSON record through `build`; a FieldError becomes a Reject."""
    for record in iter_json_records(path, relname):
        if isinstance(record, Reject):
            yield record
            continue
        try:
            values = build(as_object(record.value))
        except FieldError as err:
            yield Reject(relname, record.line, err.field, err.reason, record.raw)
        else:
            yield Row(table, values, relname, record.line)
