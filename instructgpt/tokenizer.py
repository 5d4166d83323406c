"""Byte-level BPE: train it on the prepared corpora, name its special tokens, and convert it to tiktoken.

The tokenizer is GPT-2's design trained on our text with Hugging Face `tokenizers`: text is split
by GPT-2's pre-tokenisation regex, each piece's UTF-8 bytes are mapped to 256 printable unicode
characters, and BPE merges those. There is no normalizer and every byte is in the base alphabet,
so `decode(encode(s)) == s` for any string, and no input is ever unknown.

Special tokens take the first ids, in the order of `SPECIAL_TOKENS` (end-of-text is 0), so their
ids are the same for every vocabulary size and every corpus.

`to_tiktoken` builds a `tiktoken.Encoding` from the same vocabulary and merges. It checks that the
conversion is exact (see its docstring) and raises `ValueError` otherwise; the encode stage uses it
only when it produces the same ids as the HF tokenizer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import tiktoken
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from instructgpt import atomic, mixture
from instructgpt.errors import DataError


@dataclass(frozen=True)
class SpecialTokens:
    """The control tokens every model in the pipeline shares.

    - `end_of_text` separates documents in the token shards and ends every generated answer.
    - `start`, `delim`, `extract` are GPT-1's task-formatting tokens: ``start text_a delim text_b extract``.
    - `user`, `assistant` mark the turns of a chat transcript (SFT, reward model, PPO).
    - `pad` fills batches; it is never a training target.
    """

    end_of_text: str = "<|endoftext|>"
    start: str = "<|start|>"
    delim: str = "<|delim|>"
    extract: str = "<|extract|>"
    user: str = "<|user|>"
    assistant: str = "<|assistant|>"
    pad: str = "<|pad|>"


SPECIAL = SpecialTokens()
SPECIAL_TOKENS: tuple[str, ...] = astuple(SPECIAL)  # id i is SPECIAL_TOKENS[i]

# GPT-2's pre-tokenisation regex as tiktoken writes it for r50k_base. It splits exactly like the
# original ``'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`` that
# HF's ByteLevel pre-tokenizer uses (possessive quantifiers and the final `\s` are a speed-up;
# `\s+` after a failed `\s+(?!\S)` can only ever match one character).
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)


@dataclass(frozen=True)
class TokenizerConfig:
    """How to train the BPE. Defaults suit the small corpora of the default pipeline.

    vocab_size: every token counted: 7 special tokens, 256 bytes, then merges.
    min_frequency: a pair seen fewer times than this is never merged.
    max_train_chars: train on at most this many characters (texts are taken in order and the
        last one is cut); None trains on everything. With a mixture, it is the mix's total.
    max_token_length: no token longer than this many characters; None means no limit.
    mixture: source -> share of the training text (see `instructgpt.mixture`); empty = natural.
    seed: the order in which the mixture takes each source's documents.
    """

    vocab_size: int = 8192
    min_frequency: int = 2
    max_train_chars: int | None = None
    max_token_length: int | None = None
    mixture: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        smallest = len(SPECIAL_TOKENS) + 256
        if self.vocab_size <= smallest:
            raise ValueError(f"vocab_size must be more than {smallest} (special tokens + 256 bytes)")
        if self.min_frequency < 1:
            raise ValueError("min_frequency must be at least 1")
        if self.max_train_chars is not None and self.max_train_chars < 1:
            raise ValueError("max_train_chars must be positive, or null for no cap")
        if self.max_token_length is not None and self.max_token_length < 2:
            raise ValueError("max_token_length must be at least 2, or null for no limit")


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    """Train a byte-level BPE on `texts` (deterministic for the same texts and config)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=config.max_token_length,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_capped(texts, config.max_train_chars), trainer)
    return tokenizer


def training_texts(texts: Sequence[str], sources: Sequence[str], config: TokenizerConfig) -> tuple[list[str], dict]:
    """The documents to train on, mixed by source as `config.mixture` says; and the mix record.

    Sizes are counted in characters, the tokenizer's own unit before it exists.
    """
    if not config.mixture and config.max_train_chars is None:
        return list(texts), {}
    sizes = np.fromiter(map(len, texts), np.int64, count=len(texts))
    picked, _, record = mixture.mix(
        np.asarray(sources, dtype=object), sizes, config.mixture, config.max_train_chars, config.seed
    )
    return [texts[i] for i in picked], record


def _capped(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
    if max_chars is None:
        yield from texts
        return
    left = max_chars
    for text in texts:
        if left <= 0:
            return
        yield text[:left]
        left -= len(text)


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> str:
    """Write `tokenizer` as JSON atomically; return its sha256 (the same as `tokenizer_sha256`)."""
    text = tokenizer.to_str(pretty=True)
    atomic.write_text(path, text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """The sha256 of the file `save_tokenizer` writes: what shards and checkpoints pin."""
    return hashlib.sha256(tokenizer.to_str(pretty=True).encode("utf-8")).hexdigest()


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer JSON written by `save_tokenizer`; fail if it lacks our special tokens."""
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for unreadable files
        raise DataError(f"cannot read tokenizer: {err}", file=path) from err
    special_token_ids(tokenizer, where=path)
    return tokenizer


def special_token_ids(tokenizer: Tokenizer, where: str | Path | None = None) -> dict[str, int]:
    """Map each special token's text (e.g. ``SPECIAL.end_of_text``) to its id."""
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, id_ in ids.items() if id_ is None]
    if missing:
        raise DataError(
            f"tokenizer lacks special token(s) {missing}; retrain it with train_tokenizer", file=where
        )
    return ids  # type: ignore[return-value]  # no None left


def decode(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The text of `ids`, special tokens included (HF's own `decode` drops them by default)."""
    return tokenizer.decode(list(ids), skip_special_tokens=False)


@contextmanager
def ordinary(tokenizer: Tokenizer) -> Iterator[Tokenizer]:
    """Within the block, special-token text in the input is encoded as plain text.

    Documents are encoded this way (like tiktoken's `encode_ordinary`): a corpus that quotes
    "<|endoftext|>" must not be able to end a document early. The switch is a setting of the
    tokenizer object, so do not share one object with a thread that encodes the other way.
    """
    before = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    try:
        yield tokenizer
    finally:
        tokenizer.encode_special_tokens = before


def encode_ordinary_batch(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, special-token text treated as plain text (threads: rayon's pool)."""
    with ordinary(tokenizer):
        return [encoding.ids for encoding in tokenizer.encode_batch_fast(list(texts))]


def bytes_per_token(tokenizer: Tokenizer, texts: Iterable[str]) -> float:
    """UTF-8 bytes per token over `texts` (higher compresses better; 1.0 is no compression)."""
    texts = list(texts)
    n_bytes = sum(len(text.encode("utf-8")) for text in texts)
    n_tokens = sum(len(ids) for ids in encode_ordinary_batch(tokenizer, texts))
    if n_tokens == 0:
        raise ValueError("bytes_per_token needs at least one non-empty text")
    return n_bytes / n_tokens


# ---------------------------------------------------------------------------------------------
# tiktoken


def to_tiktoken(tokenizer: Tokenizer) -> tiktoken.Encoding:
    """A `tiktoken.Encoding` that gives the same ids as `tokenizer`, token for token.

    The vocabulary is carried over as bytes (the byte-level characters mapped back to bytes),
    the mergeable rank of a token is its id, special tokens keep their ids, and the split
    pattern is GPT-2's. tiktoken merges the adjacent pair whose *concatenation* has the lowest
    rank; HF merges the pair with the lowest *merge* rank. The two agree when, for every merge
    ``(a, b) -> t``, tiktoken's own BPE of t's bytes using only ranks below t's stops at exactly
    ``[a, b]`` (and merges' results have increasing ids, no token is made twice). That is checked
    here for every merge (it is how `transformers` derives merges from tiktoken ranks), together
    with the tokenizer's layout; `ValueError` says what does not fit.
    """
    spec = json.loads(tokenizer.to_str())
    _check_layout(spec)
    byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}
    specials = {token.content: id_ for id_, token in tokenizer.get_added_tokens_decoder().items()}
    ranks: dict[bytes, int] = {}
    for token, id_ in spec["model"]["vocab"].items():
        if token in specials:
            continue
        if not set(token) <= byte_of.keys():
            raise ValueError(f"vocabulary token {token!r} is not made of byte-level characters")
        ranks[bytes(byte_of[char] for char in token)] = id_
    missing_bytes = [b for b in range(256) if bytes([b]) not in ranks]
    if missing_bytes:
        raise ValueError(f"vocabulary lacks byte(s) {missing_bytes[:8]}: train with the full byte alphabet")
    _check_merges(spec["model"]["merges"], ranks, byte_of)
    return tiktoken.Encoding(
        name=f"instructgpt-{tokenizer_sha256(tokenizer)[:12]}",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=specials,
    )


def _check_layout(spec: dict) -> None:
    model, pre, dec = spec.get("model") or {}, spec.get("pre_tokenizer") or {}, spec.get("decoder") or {}
    problems = []
    if spec.get("normalizer") is not None:
        problems.append("it has a normalizer")
    if model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback"):
        problems.append("its model is not a plain BPE (no dropout, no byte fallback)")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        problems.append("its BPE uses subword prefixes or suffixes")
    if pre != {**pre, "type": "ByteLevel", "add_prefix_space": False, "use_regex": True}:
        problems.append("its pre-tokenizer is not ByteLevel(add_prefix_space=False, use_regex=True)")
    if dec.get("type") != "ByteLevel":
        problems.append("its decoder is not ByteLevel")
    for added in spec.get("added_tokens") or []:
        if not added.get("special") or added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            problems.append(f"added token {added.get('content')!r} is not a plain special token")
    if problems:
        raise ValueError("cannot convert this tokenizer to tiktoken: " + "; ".join(problems))


def _check_merges(merges: list, ranks: dict[bytes, int], byte_of: dict[str, int]) -> None:
    previous = -1
    made = set()
    for index, merge in enumerate(merges):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        a = bytes(byte_of[c] for c in left)
        b = bytes(byte_of[c] for c in right)
        rank = ranks[a + b]
        if rank <= previous:
            raise ValueError(
                f"merge {index} ({left!r}, {right!r}) makes a token with a lower id than the merge "
                "before it: merge priorities must follow token ids"
            )
        previous = rank
        parts = _tiktoken_parts(ranks, a + b, max_rank=rank)
        if parts != [a, b]:
            raise ValueError(
                f"merge {index} ({left!r}, {right!r}): tiktoken would build that token from {parts}, "
                "so the two engines could disagree"
            )
        made.add(a + b)
    unmade = [t for t in ranks if len(t) > 1 and t not in made]
    if unmade:
        raise ValueError(f"token(s) {unmade[:4]} are in the vocabulary but no merge makes them")


def _tiktoken_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's BPE of `token`'s bytes, merging only pairs whose rank is below `max_rank`."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best_rank, best_at = max_rank, -1
        for i, pair in enumerate(itertools.pairwise(parts)):
            rank = ranks.get(pair[0] + pair[1])
            if rank is not None and rank < best_rank:  # strict: the leftmost of equal ranks wins
                best_rank, best_at = rank, i
        if best_at < 0:
            break
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable unicode character (HF ByteLevel uses the same)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1)]
    printable += range(ord("\xae"), ord("\xff") + 1)
    chars = list(printable)
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + shifted)
            shifted += 1
    return {byte: chr(char) for byte, char in zip(printable, chars)}
