"""The byte-level BPE: special tokens, lossless round trips, and tiktoken giving the same ids."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, normalizers

from instructgpt.config import from_params
from instructgpt.errors import ConfigError, DataError
from instructgpt.tokenizer import (
    SPECIAL,
    SPECIAL_TOKENS,
    TokenizerConfig,
    bytes_per_token,
    decode,
    encode_ordinary_batch,
    load_tokenizer,
    ordinary,
    save_tokenizer,
    special_token_ids,
    to_tiktoken,
    tokenizer_sha256,
    train_tokenizer,
)

VOCAB = 512

# any text, with special-token text spliced in anywhere
texts_with_specials = st.lists(st.one_of(st.text(), st.sampled_from(SPECIAL_TOKENS)), max_size=8).map("".join)


def small_corpus(data_pack: Path) -> list[str]:
    """About 200 KB: Austen for English prose, Wikipedia lines for names, numbers and accents."""
    emma = (data_pack / "books/austen/emma.txt").read_text(encoding="utf-8")[:150_000]
    wiki = (data_pack / "web/wiki_demo.txt").read_text(encoding="utf-8")[:50_000]
    return [emma, *wiki.splitlines()]


@pytest.fixture(scope="module")
def corpus(data_pack: Path) -> list[str]:
    return small_corpus(data_pack)


@pytest.fixture(scope="module")
def tokenizer(corpus: list[str]) -> Tokenizer:
    return train_tokenizer(corpus, TokenizerConfig(vocab_size=VOCAB))


@pytest.fixture(scope="module")
def encoding(tokenizer: Tokenizer):
    return to_tiktoken(tokenizer)


@pytest.fixture(scope="module")
def real_texts(data_pack: Path) -> list[str]:
    """Text the tokenizer was not trained on: web pages, demonstrations, chat transcripts."""
    c4_lines = (data_pack / "web/c4_demo.jsonl").read_text(encoding="utf-8").splitlines()
    c4 = [json.loads(line)["text"] for line in c4_lines]
    lima_rows = json.loads((data_pack / "instructions/lima.json").read_text(encoding="utf-8"))
    lima = [row["output"] for row in lima_rows]
    hh_path = data_pack / "preferences/hh_rlhf_harmless_base_test.jsonl.gz"
    with gzip.open(hh_path, "rt", encoding="utf-8") as handle:
        hh = [json.loads(line)["chosen"] for _, line in zip(range(300), handle)]
    return c4[:150] + lima[:300] + hh


# --- special tokens -----------------------------------------------------------------------------


def test_special_tokens_take_the_first_ids_in_a_fixed_order(tokenizer: Tokenizer) -> None:
    ids = special_token_ids(tokenizer)
    assert ids == {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    assert ids[SPECIAL.end_of_text] == 0
    assert decode(tokenizer, list(ids.values())) == "".join(SPECIAL_TOKENS)
    assert SPECIAL_TOKENS == (
        "<|endoftext|>", "<|start|>", "<|delim|>", "<|extract|>", "<|user|>", "<|assistant|>", "<|pad|>"
    )


def test_vocabulary_has_the_configured_size_and_all_256_bytes(tokenizer: Tokenizer, encoding) -> None:
    assert tokenizer.get_vocab_size() == VOCAB
    assert all(encoding.encode_single_token(bytes([b])) is not None for b in range(256))


def test_special_token_text_is_one_token_by_default_and_plain_text_when_ordinary(tokenizer) -> None:
    text = f"question{SPECIAL.delim}answer{SPECIAL.end_of_text}"
    assert SPECIAL_TOKENS.index(SPECIAL.delim) in tokenizer.encode(text).ids
    with ordinary(tokenizer):
        plain = tokenizer.encode(text).ids
    assert not set(plain) & set(range(len(SPECIAL_TOKENS)))
    assert tokenizer.encode_special_tokens is False  # `ordinary` restores the setting


def test_training_is_deterministic_and_honours_max_train_chars(corpus, tokenizer) -> None:
    assert train_tokenizer(corpus, TokenizerConfig(vocab_size=VOCAB)).to_str() == tokenizer.to_str()
    capped = train_tokenizer(corpus, TokenizerConfig(vocab_size=VOCAB, max_train_chars=60_000))
    first_60k = train_tokenizer([corpus[0][:60_000]], TokenizerConfig(vocab_size=VOCAB))
    assert capped.to_str() == first_60k.to_str()


# --- round trips --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_decode_inverts_encode_for_any_text(tokenizer: Tokenizer, text: str) -> None:
    assert decode(tokenizer, tokenizer.encode(text).ids) == text


@settings(max_examples=300, deadline=None)
@given(texts_with_specials)
def test_decode_keeps_special_tokens(tokenizer: Tokenizer, text: str) -> None:
    assert decode(tokenizer, tokenizer.encode(text).ids) == text
    with ordinary(tokenizer):
        assert decode(tokenizer, tokenizer.encode(text).ids) == text


def test_round_trip_on_real_text(tokenizer: Tokenizer, real_texts: list[str]) -> None:
    ids = encode_ordinary_batch(tokenizer, real_texts)
    assert tokenizer.decode_batch(ids, skip_special_tokens=False) == real_texts


# --- tiktoken -----------------------------------------------------------------------------------


def test_tiktoken_gives_the_same_ids_on_real_text(tokenizer, encoding, real_texts) -> None:
    assert encoding.encode_ordinary_batch(real_texts) == encode_ordinary_batch(tokenizer, real_texts)
    lines = [line for text in real_texts for line in text.split("\n")]
    assert encoding.encode_ordinary_batch(lines) == encode_ordinary_batch(tokenizer, lines)


def test_tiktoken_gives_the_same_ids_on_every_bmp_character(tokenizer: Tokenizer, encoding) -> None:
    """Each character beside letters, digits, a space and an apostrophe: both regexes class it alike.

    (Run once over all 1.1M code points in four such contexts: no difference; too slow to keep.)
    """
    chars = [chr(c) for c in range(0x10000) if not 0xD800 <= c < 0xE000]
    in_context = [f"{c}a{c} {c}1{c}{c}'s" for c in chars]
    texts = ["".join(in_context[i : i + 1000]) for i in range(0, len(in_context), 1000)]
    assert encoding.encode_ordinary_batch(texts) == encode_ordinary_batch(tokenizer, texts)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_tiktoken_gives_the_same_ids_on_any_text(tokenizer: Tokenizer, encoding, text: str) -> None:
    with ordinary(tokenizer):
        assert encoding.encode_ordinary(text) == tokenizer.encode(text).ids
    assert encoding.decode(encoding.encode_ordinary(text)) == text


@settings(max_examples=300, deadline=None)
@given(texts_with_specials)
def test_tiktoken_gives_the_same_ids_around_special_tokens(tokenizer: Tokenizer, encoding, text: str) -> None:
    assert encoding.encode(text, allowed_special="all") == tokenizer.encode(text).ids
    with ordinary(tokenizer):
        assert encoding.encode_ordinary(text) == tokenizer.encode(text).ids


def test_to_tiktoken_refuses_a_tokenizer_it_cannot_mirror(tokenizer: Tokenizer) -> None:
    normalized = Tokenizer.from_str(tokenizer.to_str())
    normalized.normalizer = normalizers.NFC()
    with pytest.raises(ValueError, match="normalizer"):
        to_tiktoken(normalized)


def test_to_tiktoken_refuses_merges_tiktoken_would_apply_differently(tokenizer: Tokenizer) -> None:
    spec = json.loads(tokenizer.to_str())
    merges = spec["model"]["merges"]
    merges[0], merges[1] = merges[1], merges[0]  # priorities no longer follow the ids
    with pytest.raises(ValueError, match="merge"):
        to_tiktoken(Tokenizer.from_str(json.dumps(spec)))


# --- compression, files, config -----------------------------------------------------------------


def test_bytes_per_token_is_plausible(tokenizer: Tokenizer, corpus: list[str], real_texts: list[str]) -> None:
    # a 512-token BPE on 200 KB: about 2.1 on its own text (GPT-2's 50k vocabulary gets about 4.5)
    in_domain = bytes_per_token(tokenizer, corpus)
    assert 1.8 < in_domain < 3.0
    assert 1.3 < bytes_per_token(tokenizer, real_texts) < in_domain  # unseen web and chat text compress less
    assert bytes_per_token(tokenizer, ["日本語"]) == 1.0  # unseen script: one token per byte


def test_save_and_load_round_trip_with_a_stable_hash(tokenizer: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    digest = save_tokenizer(tokenizer, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() == tokenizer_sha256(tokenizer)
    loaded = load_tokenizer(path)
    assert tokenizer_sha256(loaded) == digest
    assert loaded.encode("Emma Woodhouse").ids == tokenizer.encode("Emma Woodhouse").ids


def test_load_names_the_file_when_it_is_not_our_tokenizer(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(DataError, match="garbage.json"):
        load_tokenizer(garbage)
    foreign = tmp_path / "foreign.json"
    Tokenizer(__import__("tokenizers").models.BPE()).save(str(foreign))
    with pytest.raises(DataError, match="special token"):
        load_tokenizer(foreign)


def test_config_from_params_checks_keys_and_ranges() -> None:
    assert from_params(TokenizerConfig, {"vocab_size": 1024}, "params.yaml:tokenizer").vocab_size == 1024
    with pytest.raises(ConfigError, match="vocab_siz"):
        from_params(TokenizerConfig, {"vocab_siz": 1024}, "params.yaml:tokenizer")
    with pytest.raises(ConfigError, match="vocab_size"):
        from_params(TokenizerConfig, {"vocab_size": 100}, "params.yaml:tokenizer")
