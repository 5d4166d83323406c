"""What a format parser produces: rows for the normalised tables, or rejects that say why.

A parser reads one file of a source and yields, in file order, either a `Row` (a record for one
of the output tables) or a `Reject` (a record that could not be used, with its line, field and
reason). A file that cannot be read at all, or that is not in the format its source declares,
raises `DataError` instead: that fails the stage, while rejects are counted and quarantined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

Table = Literal["documents", "demonstrations", "comparisons", "rankings", "prompts", "tasks"]
TABLES: tuple[Table, ...] = ("documents", "demonstrations", "comparisons", "rankings", "prompts", "tasks")


@dataclass(frozen=True)
class Row:
    """One record for `table`.

    `values` holds the table's own fields, before cleaning:
    - documents: ``text``
    - demonstrations: ``prompt``, ``response``
    - comparisons: ``prompt``, ``chosen``, ``rejected``
    - rankings: ``prompt``, ``responses`` (list[str]), ``ranking`` (list[int], 0 = best; ties share a rank)
    - prompts: ``prompt``
    - tasks: ``task``, ``task_type``, ``text_a``, and as the task needs ``text_b``, ``choices`` (list[str]),
      ``label`` (int) or ``score`` (float)
    Any table may also carry ``split`` when the file itself says which split it is (e.g. SST-2's
    ``dev.tsv``); otherwise ingest assigns one deterministically by hash.
    `file` is relative to the source's root; `line` is 1-based, or None when the record is the file.
    """

    table: Table
    values: dict[str, Any]
    file: str
    line: int | None = None


@dataclass(frozen=True)
class Reject:
    """A record that could not be used. `record` is the raw text of it (for the rejects table)."""

    file: str
    line: int | None
    field: str | None
    reason: str
    record: str = ""


Item = Row | Reject
Parser = Callable[[Path, str], Iterator[Item]]
"""A parser takes the absolute path of one file and its path relative to the source root."""


@dataclass(frozen=True)
class Format:
    """A named input format, as written in `data/sources.yaml`."""

    name: str
    parse: Parser
    kinds: frozenset[str]
    description: str
    # Which files of a directory source this format reads (glob patterns, matched on file names).
    patterns: tuple[str, ...] = ("*",)
    extra: dict[str, Any] = field(default_factory=dict)
