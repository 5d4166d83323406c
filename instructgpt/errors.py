"""Errors that name where bad input is: the file, the line and the field, and what to do about it."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """Input that cannot be used: an unreadable file, a file in the wrong format, a bad config entry.

    The message always starts with the location (``file:line: field:``) so a person can jump to it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.reason = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file + (f":{self.line}" if self.line is not None else "")
        if self.field is not None:
            where = f"{where}: field '{self.field}'" if where else f"field '{self.field}'"
        return f"{where}: {self.reason}" if where else self.reason


class SourceError(DataError):
    """A catalogued source that cannot be resolved: missing everywhere, or its checksum differs."""


class ConfigError(DataError):
    """A params or catalogue entry that is missing, of the wrong type or out of range."""
