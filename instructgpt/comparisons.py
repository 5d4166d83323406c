"""The reward model's training data as one table of ranked sets, from imported pairs and sampled rankings.

A ranked set is a prompt, K >= 2 distinct responses and their ranks (0 = best, ties share a
rank), who ranked it (`labeler`), where it came from (`source`) and its `split`. Imported
preference pairs (HH-RLHF and the other pack pairs) are sets of two ranked by their dataset's
people (`labeler` "imported"); InstructGPT-style sets hold K responses the SFT model sampled for a
held-out demonstration's prompt, ranked by the configured labelers (`instructgpt.labelers`),
with source `sampled`; sets from labels files keep the labeler id the file gives, with source
`labels`.

A sampled set is cleaned before it is ranked: blank responses are dropped and repeated ones kept
once (a pair of identical texts teaches nothing); a set left with fewer than two responses, or
whose ranks all tie, is dropped with its reason, so the counts add up.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from instructgpt.corpus import split_by_hash
from instructgpt.labelers import Labeler, LabelRecord, agreement, ordered_pairs
from instructgpt.schemas import RankedSets

COLUMNS = list(RankedSets.to_schema().columns)  # prompt, responses, ranking, source, split, labeler
SAMPLED, LABELS, IMPORTED = "sampled", "labels", "imported"
_SALT_SUFFIX = "/reward-split"


@dataclass
class SampledSets:
    """The ranked sets built from sampled responses, what was dropped and how labelers agreed."""

    rows: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)  # {prompt, reason}
    judged: list[dict] = field(default_factory=list)  # per set: every labeler's ranks (the samples file)
    agreed_pairs: int = 0
    compared_pairs: int = 0
    sets_with_two_labelers: int = 0

    @property
    def agreement(self) -> float | None:
        return self.agreed_pairs / self.compared_pairs if self.compared_pairs else None


def held_out_split(prompt: str, val_fraction: float, salt: str) -> str:
    """train or val for a sampled set, by a hash of its prompt (its own salt: not ingest's split)."""
    return split_by_hash(prompt, salt + _SALT_SUFFIX, [("val", val_fraction)], "train")


def rank_sampled(
    prompts: Sequence[str],
    references: Sequence[str],
    responses: Sequence[Sequence[str]],
    labelers: Sequence[Labeler],
    *,
    val_fraction: float,
    salt: str,
) -> SampledSets:
    """Ranked sets of the sampled responses; the first labeler with a judgement ranks each set.

    Every labeler that can judge a set does, so where two did their pairwise agreement is counted.
    """
    out = SampledSets()
    for prompt, reference, answers in zip(prompts, references, responses):
        kept = list(dict.fromkeys(r for r in answers if r.strip()))
        if len(kept) < 2:
            out.dropped.append({"prompt": prompt, "reason": f"{len(kept)} distinct non-blank response(s) of {len(answers)}"})
            continue
        ranks = {}
        for labeler in labelers:
            ranking = labeler.rank(prompt, reference, kept)
            if ranking is not None:
                ranks[labeler.labeler_of(prompt, kept)] = list(ranking)
        out.judged.append({"prompt": prompt, "reference": reference, "responses": kept, "rankings": ranks})
        _count_agreement(out, list(ranks.values()))
        if not ranks:
            out.dropped.append({"prompt": prompt, "reason": "no labeler ranked the set"})
            continue
        labeler, ranking = next(iter(ranks.items()))
        if len(set(ranking)) < 2:
            out.dropped.append({"prompt": prompt, "reason": f"all {len(kept)} responses tie under {labeler}"})
            continue
        out.rows.append({"prompt": prompt, "responses": kept, "ranking": ranking, "labeler": labeler,
                         "source": SAMPLED, "split": held_out_split(prompt, val_fraction, salt)})
    return out


def _count_agreement(out: SampledSets, rankings: list[list[int]]) -> None:
    if len(rankings) < 2:
        return
    out.sets_with_two_labelers += 1
    for other in rankings[1:]:
        agreed, total = agreement(rankings[0], other)
        out.agreed_pairs += agreed
        out.compared_pairs += total


def imported_sets(rankings: pd.DataFrame, sources: Sequence[str], max_train_sets: int | None, salt: str) -> pd.DataFrame:
    """Ingest's ranked sets of the chosen sources (all when empty), labelled `imported`.

    max_train_sets caps each source's train split (a deterministic choice by hash); val is kept whole.
    """
    table = rankings if not sources else rankings[rankings["source"].isin(sources)]
    parts = []
    for _, group in table.groupby("source", sort=True):
        train, val = group[group["split"] == "train"], group[group["split"] == "val"]
        if max_train_sets is not None and len(train) > max_train_sets:
            order = train["prompt"].map(lambda p: _digest(p, salt)).sort_values(kind="stable")
            train = train.loc[order.index[:max_train_sets]]
        parts += [train, val]
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    out["labeler"] = IMPORTED
    out["responses"] = out["responses"].map(list)
    out["ranking"] = out["ranking"].map(lambda r: [int(x) for x in r])
    return out[COLUMNS]


def _digest(prompt: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}/cap/{prompt}".encode()).hexdigest()


def label_file_sets(records: Sequence[LabelRecord], used: set[tuple[str, tuple[str, ...]]], val_fraction: float, salt: str) -> list[dict]:
    """Ranked sets of the labels files' records that ranked no sampled set (those are in already)."""
    rows = []
    for r in records:
        if (r.prompt, tuple(sorted(r.responses))) in used:
            continue
        rows.append({"prompt": r.prompt, "responses": list(r.responses), "ranking": list(r.ranking), "labeler": r.labeler,
                     "source": LABELS, "split": held_out_split(r.prompt, val_fraction, salt)})
    return rows


def pair_count(ranking: Sequence[int]) -> int:
    """Ordered pairs a ranking yields (tied responses make none)."""
    return len(ordered_pairs(ranking))
