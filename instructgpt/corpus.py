"""Cleaning text and assigning splits: unicode normalisation, whitespace repair, cutting long
documents at paragraph boundaries, and a deterministic split by hash.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable, Sequence

# Zero-width and byte-order characters carry no text; other C0/C1 controls are noise from
# conversions. Tabs and newlines are kept.
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ODD_SPACE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_RUN = re.compile(r"\n{3,}")


def clean_text(text: str, unicode_form: str = "NFC") -> str:
    """Normalise unicode and repair whitespace, keeping line and paragraph structure.

    NFC (the default) composes characters without changing what they are; NFKC also folds
    compatibility forms (ligatures, full-width letters), which loses information, so it is opt-in.
    """
    if unicode_form != "none":
        text = unicodedata.normalize(unicode_form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    text = _CONTROL.sub("", text)
    text = _ODD_SPACE.sub(" ", text)
    text = _TRAILING.sub("\n", text + "\n")
    text = _BLANK_RUN.sub("\n\n", text)
    return text.strip()


def split_long(text: str, max_chars: int) -> list[str]:
    """Cut `text` into parts of at most `max_chars`, at paragraph, then line, then word boundaries.

    Long books become several documents so that the train/val split can hold some of every book
    source out; each part is still long contiguous text.
    """
    if len(text) <= max_chars:
        return [text]
    parts: list[str] = []
    current = ""
    for piece in _pieces(text, max_chars):
        if current and len(current) + 2 + len(piece) > max_chars:
            parts.append(current)
            current = piece
        else:
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        parts.append(current)
    return parts


def _pieces(text: str, max_chars: int) -> Iterable[str]:
    for paragraph in text.split("\n\n"):
        if len(paragraph) <= max_chars:
            yield paragraph
            continue
        for line in _chunks(paragraph.split("\n"), "\n", max_chars):
            if len(line) <= max_chars:
                yield line
            else:
                yield from _chunks(line.split(" "), " ", max_chars, hard=True)


def _chunks(items: Sequence[str], sep: str, max_chars: int, hard: bool = False) -> Iterable[str]:
    current = ""
    for item in items:
        while hard and len(item) > max_chars:  # a "word" longer than a part: cut it
            if current:
                yield current
                current = ""
            yield item[:max_chars]
            item = item[max_chars:]
        if current and len(current) + len(sep) + len(item) > max_chars:
            yield current
            current = item
        else:
            current = f"{current}{sep}{item}" if current else item
    if current:
        yield current


def hash_unit(key: str, salt: str) -> float:
    """A number in [0, 1) fixed by `key` and `salt`: the same record always lands in the same split."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_by_hash(key: str, salt: str, fractions: Sequence[tuple[str, float]], default: str) -> str:
    """Assign `key` to the first split whose cumulative fraction its hash falls under, else `default`."""
    u = hash_unit(key, salt)
    total = 0.0
    for name, fraction in fractions:
        total += fraction
        if u < total:
            return name
    return default


def document_splits(keys: Sequence[str], groups: Sequence[str], val_fraction: float, salt: str) -> list[str]:
    """train/val per document by hash, with at least one val document per group of two or more.

    Pure thresholding keeps a document's split stable when others are added; the per-group
    minimum makes sure every source can report a validation loss (the lowest-hash document of a
    group that would otherwise have none goes to val).
    """
    units = [hash_unit(k, salt) for k in keys]
    splits = ["val" if u < val_fraction else "train" for u in units]
    if val_fraction <= 0:
        return splits
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    for indices in members.values():
        if len(indices) >= 2 and all(splits[i] == "train" for i in indices):
            splits[min(indices, key=lambda i: units[i])] = "val"
    return splits
