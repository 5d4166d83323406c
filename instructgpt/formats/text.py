"""Plain-text formats: whole files, one record a line, JSON Lines of text, and WikiText.

They produce `documents` rows (pretraining text), except `prompts_lines` and `prompts_jsonl`,
which produce `prompts` rows (the unlabelled prompts PPO samples from). Text is kept as written:
ingest normalises unicode and whitespace later; only what the format itself adds is removed
(Project Gutenberg's licence header and footer, WikiText's tokenisation).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from instructgpt.formats.base import Item, Reject, Row
from instructgpt.formats.reading import iter_lines, json_rows, read_text, text_field

# Plain text that is not valid UTF-8 is read as Latin-1 (e.g. Gutenberg's "-8.txt" files).
TEXT_FALLBACK = "latin-1"


# --- text: one file, one document --------------------------------------------------------------


def parse_text(path: Path, relname: str) -> Iterator[Item]:
    text = strip_gutenberg(read_text(path, relname, fallback=TEXT_FALLBACK)).strip()
    if not text:
        yield Reject(relname, None, "text", "empty document")
        return
    yield Row("documents", {"text": text}, relname, None)


_GUTENBERG_START = re.compile(
    r"^[ \t]*\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG[^\n]*"
    r"|^[ \t]*\*{3}[ \t]*START OF THE COPYRIGHTED[^\n]*"
    r"|^\*END\*?[ \t]*THE SMALL PRINT[^\n]*",  # the end of the pre-2000 "small print" header
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^[ \t]*\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG"
    r"|^[ \t]*\*{3}[ \t]*END OF THE COPYRIGHTED"
    r"|^[ \t]*End of (?:the |this )?Project Gutenberg",  # "End of the Project Gutenberg EBook of …"
    re.IGNORECASE | re.MULTILINE,
)
# The volunteers' credit that opens the text just after the header: one paragraph.
_GUTENBERG_CREDIT = re.compile(
    r"\A\s*(?:Produced by|(?:This )?e-?(?:text|book) (?:was )?(?:prepared|produced) by|Transcribed from)"
    r"[^\n]*(?:\n[ \t]*\S[^\n]*)*",
    re.IGNORECASE,
)


def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header (up to its START marker and the producers' credit) and
    footer (from "End of the Project Gutenberg EBook …" or its END marker). Text without the
    markers is returned unchanged."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
        text = _GUTENBERG_CREDIT.sub("", text, count=1)
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


# --- lines: one document (or prompt) a line ---------------------------------------------------


def parse_lines(path: Path, relname: str) -> Iterator[Item]:
    for lineno, line in iter_lines(path, relname, fallback=TEXT_FALLBACK):
        if line.strip():
            yield Row("documents", {"text": line}, relname, lineno)


def parse_prompt_lines(path: Path, relname: str) -> Iterator[Item]:
    for lineno, line in iter_lines(path, relname, fallback=TEXT_FALLBACK):
        if line.strip():
            yield Row("prompts", {"prompt": line.strip()}, relname, lineno)


# --- JSON Lines (or a JSON list) of {"text"} or {"prompt"} -------------------------------------


def parse_jsonl(path: Path, relname: str) -> Iterator[Item]:
    return json_rows(path, relname, "documents", lambda r: {"text": text_field(r, "text", strip=False)})


def parse_prompt_jsonl(path: Path, relname: str) -> Iterator[Item]:
    return json_rows(path, relname, "prompts", lambda r: {"prompt": text_field(r, "prompt")})


# --- WikiText: articles under " = Title = " headings, detokenised ------------------------------

_WIKI_TITLE = re.compile(r"^ ?= (?!= )(.+?) =\s*$")
_WIKI_HEADING = re.compile(r"^ ?(=(?: =)*) (.+?) \1\s*$")
_WIKI_FIXES = [
    (re.compile(r" @([-,.])@ "), r"\1"),  # 1 @,@ 000 -> 1,000; M @-@ 82 -> M-82
    (re.compile(r'" ([^"]*?) "'), r'"\1"'),  # quotes pair left to right within a paragraph
    (re.compile(r" ([.,;:!?%)\]}])"), r"\1"),
    (re.compile(r"([(\[{]) "), r"\1"),
    (re.compile(r" ('t|n't|'s|'re|'ve|'m|'ll|'d)\b", re.IGNORECASE), r"\1"),  # isn 't -> isn't
]


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText's word tokenisation in one paragraph; `<unk>` stays as it is."""
    text = text.strip()
    for pattern, replacement in _WIKI_FIXES:
        text = pattern.sub(replacement, text)
    return text


def parse_wikitext(path: Path, relname: str) -> Iterator[Item]:
    """One document per article: its title, then its paragraphs and section headings, a blank line apart."""
    start: int | None = None  # the line the current article starts on
    title: str | None = None
    body: list[str] = []
    for lineno, line in iter_lines(path, relname):
        match = _WIKI_TITLE.match(line)
        if match:
            yield from _wiki_article(relname, start, title, body)
            start, title, body = lineno, detokenize_wikitext(match.group(1)), []
        elif line.strip():
            heading = _WIKI_HEADING.match(line)
            body.append(detokenize_wikitext(heading.group(2) if heading else line))
            if start is None:  # text before the first title is a document of its own
                start = lineno
    yield from _wiki_article(relname, start, title, body)


def _wiki_article(relname: str, start: int | None, title: str | None, body: list[str]) -> Iterator[Item]:
    if start is None:
        return
    if not body:
        yield Reject(relname, start, "text", "article has a title but no text", title or "")
        return
    yield Row("documents", {"text": "\n\n".join([title, *body] if title else body)}, relname, start)
