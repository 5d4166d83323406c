"""Duplicate removal: exact (after normalising case and whitespace) and near (MinHash LSH).

Near duplicates are found with MinHash signatures over word shingles and locality-sensitive
hashing (`datasketch`), the standard approach for web-scale corpora (as in GPT-3's fuzzy
deduplication); the first occurrence in catalogue order is kept and the rest are reported with
the id of the document they duplicate.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Sequence

from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Duplicate:
    index: int  # position of the duplicate in the input
    of: int  # position of the kept record it duplicates
    kind: str  # "exact" or "near"
    similarity: float


def exact_key(text: str) -> str:
    return hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()


def find_exact(texts: Sequence[str]) -> list[Duplicate]:
    first: dict[str, int] = {}
    found = []
    for i, text in enumerate(texts):
        key = exact_key(text)
        if key in first:
            found.append(Duplicate(i, first[key], "exact", 1.0))
        else:
            first[key] = i
    return found


def shingles(text: str, n: int) -> list[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return [" ".join(words).encode()] if words else []
    return [" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)]


def find_near(
    texts: Sequence[str],
    threshold: float,
    num_perm: int = 128,
    shingle_words: int = 5,
    seed: int = 1,
    skip: frozenset[int] = frozenset(),
) -> list[Duplicate]:
    """Near duplicates of earlier texts: estimated Jaccard similarity of shingle sets >= threshold."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    signatures: dict[int, MinHash] = {}
    found = []
    for i, text in enumerate(texts):
        if i in skip:
            continue
        grams = shingles(text, shingle_words)
        if not grams:
            continue
        signature = MinHash(num_perm=num_perm, seed=seed)
        signature.update_batch(grams)
        candidates = lsh.query(signature)
        if candidates:
            best = max(candidates, key=lambda j: (signature.jaccard(signatures[j]), -j))
            similarity = signature.jaccard(signatures[best])
            if similarity >= threshold:
                found.append(Duplicate(i, best, "near", float(similarity)))
                continue
        lsh.insert(i, signature)
        signatures[i] = signature
    return found

