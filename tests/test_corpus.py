"""Cleaning and splits: normalisation, whitespace repair, cutting long text, deterministic splits."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from instructgpt.corpus import clean_text, document_splits, hash_unit, split_by_hash, split_long


def test_clean_text_normalises_and_repairs_whitespace() -> None:
    raw = "Cafe\u0301\r\nline  \t\r\n\n\n\n\nnext\u00a0word\u200b\x07 end  "
    assert clean_text(raw) == "Caf\u00e9\nline\n\nnext word end"


def test_nfkc_is_opt_in() -> None:
    assert clean_text("\ufb01ne") == "\ufb01ne"  # the fi ligature survives NFC
    assert clean_text("\ufb01ne", "NFKC") == "fine"


@given(st.text())
def test_clean_text_is_idempotent_and_nfc(text: str) -> None:
    once = clean_text(text)
    assert clean_text(once) == once
    assert unicodedata.is_normalized("NFC", once)


def test_split_long_cuts_at_paragraphs_and_keeps_every_word() -> None:
    paragraphs = [f"paragraph {i} " + "word " * 30 for i in range(40)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    parts = split_long(text, 1000)
    assert len(parts) > 1
    assert all(len(p) <= 1000 for p in parts)
    assert all(p.startswith("paragraph") for p in parts)  # never mid-paragraph here
    assert " ".join(" ".join(parts).split()) == " ".join(text.split())


def test_split_long_cuts_an_endless_line_too() -> None:
    parts = split_long("x" * 2500, 1000)
    assert [len(p) for p in parts] == [1000, 1000, 500]


def test_hash_split_is_deterministic_and_close_to_its_fraction() -> None:
    keys = [f"doc-{i}" for i in range(20000)]
    first = [split_by_hash(k, "salt", [("val", 0.1)], "train") for k in keys]
    assert first == [split_by_hash(k, "salt", [("val", 0.1)], "train") for k in keys]
    assert 0.09 < first.count("val") / len(keys) < 0.11
    assert first != [split_by_hash(k, "other", [("val", 0.1)], "train") for k in keys]
    assert 0.0 <= hash_unit("a", "b") < 1.0


def test_every_group_of_two_or_more_gets_a_val_document() -> None:
    keys = [f"book-{i}" for i in range(3)] + ["lonely"]
    groups = ["books"] * 3 + ["single"]
    splits = document_splits(keys, groups, val_fraction=1e-9, salt="s")
    assert splits[:3].count("val") == 1
    assert splits[3] == "train"  # a group of one keeps its only document for training
    # a document under the threshold is val however many documents are added
    keys = [f"doc-{i}" for i in range(50)]
    small = document_splits(keys[:10], ["g"] * 10, 0.3, "s")
    large = document_splits(keys, ["g"] * 50, 0.3, "s")
    for i, key in enumerate(keys[:10]):
        if hash_unit(key, "s") < 0.3:
            assert small[i] == large[i] == "val"
