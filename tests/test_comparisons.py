"""Ranked sets for the reward model: sampled sets are cleaned and ranked by the first labeler that
can judge them (every labeler's judgement counted for agreement), dropped sets say why, imported
pairs keep their val split whole and are capped deterministically, and the table validates."""

from __future__ import annotations

import pandas as pd
import pytest

from instructgpt import schemas
from instructgpt.comparisons import (
    COLUMNS,
    IMPORTED,
    LABELS,
    SAMPLED,
    held_out_split,
    imported_sets,
    label_file_sets,
    pair_count,
    rank_sampled,
)
from instructgpt.errors import DataError
from instructgpt.labelers import FileLabeler, LabelRecord, ProgrammaticLabeler

REFERENCE = "Paris is the capital of France. It sits on the river Seine."
GOOD = "The capital of France is Paris, on the Seine."
CUT = "The capital of France is Paris, on the"
LOOP = "paris paris paris paris paris paris paris paris"


def test_sampled_sets_are_cleaned_ranked_and_split() -> None:
    out = rank_sampled(
        ["capital?", "empty?", "same?"],
        [REFERENCE, REFERENCE, REFERENCE],
        [[GOOD, CUT, " ", GOOD, LOOP], ["", " "], ["Paris.", "Paris."]],
        [ProgrammaticLabeler()],
        val_fraction=0.5, salt="s",
    )
    (row,) = out.rows
    assert row["responses"] == [GOOD, CUT, LOOP]  # the blank dropped, the repeat kept once, order kept
    assert row["ranking"][0] == 0 and len(set(row["ranking"])) == 3
    assert (row["labeler"], row["source"]) == ("programmatic", SAMPLED)
    assert row["split"] == held_out_split("capital?", 0.5, "s")
    reasons = {d["prompt"]: d["reason"] for d in out.dropped}
    assert reasons == {"empty?": "0 distinct non-blank response(s) of 2", "same?": "1 distinct non-blank response(s) of 2"}
    assert out.agreement is None  # one labeler: nothing to agree on


def test_a_set_whose_ranks_all_tie_is_dropped_with_its_reason() -> None:
    out = rank_sampled(["p"], [REFERENCE], [["x y z.", "z y x."]], [ProgrammaticLabeler()], val_fraction=0.0, salt="s")
    assert out.rows == []
    assert out.dropped == [{"prompt": "p", "reason": "all 2 responses tie under programmatic"}]


def test_the_first_labeler_with_a_judgement_wins_and_agreement_is_counted() -> None:
    # the person in the file ranks the cut-off answer first: they disagree with the rubric on one pair of three
    person = FileLabeler([LabelRecord("capital?", (CUT, GOOD, LOOP), (0, 1, 2), "ann", "f.jsonl", 1)])
    out = rank_sampled(["capital?", "other?"], [REFERENCE, REFERENCE], [[GOOD, CUT, LOOP], [GOOD, LOOP]],
                       [person, ProgrammaticLabeler()], val_fraction=0.0, salt="s")
    first, second = out.rows
    assert (first["labeler"], first["ranking"]) == ("ann", [1, 0, 2])  # the file's ranks, in the sampled order
    assert second["labeler"] == "programmatic"  # the file has no judgement for this set
    assert out.judged[0]["rankings"].keys() == {"ann", "programmatic"}
    assert out.sets_with_two_labelers == 1
    assert (out.agreed_pairs, out.compared_pairs) == (2, 3)
    assert out.agreement == pytest.approx(2 / 3)


def rankings_table() -> pd.DataFrame:
    rows = [{"prompt": f"hh {i}", "responses": [f"good {i}", f"bad {i}"], "ranking": [0, 1], "source": "hh_rlhf",
             "split": "val" if i < 3 else "train"} for i in range(20)]
    rows += [{"prompt": f"dpo {i}", "responses": [f"yes {i}", f"no {i}"], "ranking": [0, 1], "source": "dpo_demo",
              "split": "train"} for i in range(4)]
    return pd.DataFrame(rows)


def test_imported_sets_cap_each_source_train_split_deterministically_and_keep_val_whole() -> None:
    table = imported_sets(rankings_table(), [], max_train_sets=5, salt="s")
    assert list(table.columns) == COLUMNS
    counts = table.groupby(["source", "split"]).size().to_dict()
    assert counts == {("dpo_demo", "train"): 4, ("hh_rlhf", "train"): 5, ("hh_rlhf", "val"): 3}
    assert set(table["labeler"]) == {IMPORTED}
    again = imported_sets(rankings_table().sample(frac=1, random_state=1), [], max_train_sets=5, salt="s")
    assert sorted(again["prompt"]) == sorted(table["prompt"])  # the same sets whatever the input order
    other_salt = imported_sets(rankings_table(), [], max_train_sets=5, salt="t")
    assert sorted(other_salt["prompt"]) != sorted(table["prompt"])
    only = imported_sets(rankings_table(), ["dpo_demo"], max_train_sets=None, salt="s")
    assert set(only["source"]) == {"dpo_demo"} and len(only) == 4
    assert imported_sets(rankings_table(), ["none"], None, "s").empty


def test_label_file_records_stand_as_sets_unless_they_ranked_a_sampled_set() -> None:
    used = LabelRecord("p1", ("a", "b"), (0, 1), "ann", "f", 1)
    own = LabelRecord("p2", ("c", "d", "e"), (2, 0, 1), "bob", "f", 2)
    rows = label_file_sets([used, own], {("p1", ("a", "b"))}, val_fraction=0.0, salt="s")
    assert rows == [{"prompt": "p2", "responses": ["c", "d", "e"], "ranking": [2, 0, 1], "labeler": "bob",
                     "source": LABELS, "split": "train"}]


def test_the_ranked_sets_table_validates_and_refuses_repeated_responses() -> None:
    sampled = rank_sampled(["capital?"], [REFERENCE], [[GOOD, CUT, LOOP]], [ProgrammaticLabeler()], val_fraction=0.0, salt="s")
    table = pd.concat([imported_sets(rankings_table(), [], 5, "s"), pd.DataFrame(sampled.rows)], ignore_index=True)
    schemas.validate(table, schemas.RankedSets, "ranked_sets.parquet")
    bad = table.copy()
    bad.at[0, "responses"] = ["same", "same"]
    with pytest.raises(DataError, match="responses_are_distinct"):
        schemas.validate(bad, schemas.RankedSets, "ranked_sets.parquet")


def test_pair_count_is_the_untied_pairs_of_a_ranking() -> None:
    assert pair_count([0, 1, 2, 3]) == 6  # C(4, 2)
    assert pair_count([0, 1, 1]) == 2
    assert pair_count([0, 1]) == 1
