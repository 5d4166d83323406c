"""Preference formats: hh_rlhf, conversation_pairs and rankings_jsonl, on small files and the real pack."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from instructgpt.conversation import parse_prompt
from instructgpt.formats import get_format
from instructgpt.formats.base import Reject, Row


def parse(fmt: str, path: Path) -> list[Row | Reject]:
    return list(get_format(fmt).parse(path, path.name))


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def hh(*turns: str) -> str:
    """A raw HH-RLHF transcript from alternating 'H:'/'A:' prefixed turns."""
    speaker = {"H": "Human", "A": "Assistant"}
    return "".join(f"\n\n{speaker[t[0]]}: {t[2:].strip()}" for t in turns)


# --- hh_rlhf -----------------------------------------------------------------------------------------


def test_hh_single_turn(tmp_path: Path) -> None:
    record = {
        "chosen": hh("H: How do I pick a lock?", "A: I can't help with that."),
        "rejected": hh("H: How do I pick a lock?", "A: Use a pin."),
    }
    (row,) = parse("hh_rlhf", write_jsonl(tmp_path / "hh.jsonl", [record]))
    assert row == Row(
        "comparisons",
        {"prompt": "How do I pick a lock?", "chosen": "I can't help with that.", "rejected": "Use a pin."},
        "hh.jsonl",
        1,
    )


def test_hh_keeps_the_multi_turn_context_in_the_prompt(tmp_path: Path) -> None:
    shared = ("H: pranks with a pen?", "A: Practical jokes?", "H: yep")
    record = {"chosen": hh(*shared, "A: Draw a moustache."), "rejected": hh(*shared, "A: Stab someone.")}
    (row,) = parse("hh_rlhf", write_jsonl(tmp_path / "hh.jsonl", [record]))
    assert row.values["prompt"] == "Human: pranks with a pen?\n\nAssistant: Practical jokes?\n\nHuman: yep"
    assert (row.values["chosen"], row.values["rejected"]) == ("Draw a moustache.", "Stab someone.")


def test_hh_consecutive_assistant_turns_are_one_reply(tmp_path: Path) -> None:
    record = {"chosen": hh("H: q", "A: part one", "A: part two"), "rejected": hh("H: q", "A: other")}
    (row,) = parse("hh_rlhf", write_jsonl(tmp_path / "hh.jsonl", [record]))
    assert row.values == {"prompt": "q", "chosen": "part one\n\npart two", "rejected": "other"}


def test_hh_divergence_before_the_last_assistant_turn_keeps_the_rest(tmp_path: Path) -> None:
    # the transcripts differ from the assistant turn after "q" on, both continuing with assistant text only
    record = {"chosen": hh("H: q", "A: same", "A: more"), "rejected": hh("H: q", "A: same")}
    (row,) = parse("hh_rlhf", write_jsonl(tmp_path / "hh.jsonl", [record]))
    assert row.values == {"prompt": "q", "chosen": "same\n\nmore", "rejected": "same"}


@pytest.mark.parametrize(
    ("chosen", "rejected", "field", "reason"),
    [
        (hh("H: q", "A: a"), hh("H: q", "A: a"), "rejected", "identical to chosen"),
        (hh("H: q", "A: a"), hh("H: q", "A: a") + " ", "rejected", "same reply as chosen"),
        (hh("H: q", "A:"), hh("H: q", "A: a"), "chosen", "empty final assistant turn"),
        (
            hh("H: q", "A: a", "H: x", "A: b"),
            hh("H: q", "A: a", "H: y", "A: c"),
            "chosen",
            "the transcripts diverge at a human turn (turn 3)",
        ),
        (
            hh("H: q", "A: a", "H: x", "A: b"),
            hh("H: q", "A: z"),
            "chosen",
            "a human turn (turn 3) follows the divergence at turn 2",
        ),
        (
            hh("H: q", "A: a", "H: x"),
            hh("H: q", "A: a", "H: x", "A: b"),
            "chosen",
            "no assistant turn after the last human turn",
        ),
        (
            hh("H: q1", "A: a"),
            hh("H: q2", "A: a"),
            "rejected",
            "the transcripts differ before the first human turn",
        ),
        (
            "preamble" + hh("H: q", "A: a"),
            hh("H: q", "A: b"),
            "chosen",
            "text before the first turn marker: 'preamble'",
        ),
        (3, hh("H: q", "A: b"), "chosen", "must be a string, got int"),
    ],
)
def test_hh_bad_pairs_are_rejects(
    tmp_path: Path, chosen: object, rejected: str, field: str, reason: str
) -> None:
    record = {"chosen": chosen, "rejected": rejected}
    items = parse("hh_rlhf", write_jsonl(tmp_path / "hh.jsonl", ["{broken", record]))
    assert (
        isinstance(items[0], Reject) and items[0].line == 1 and items[0].reason.startswith("malformed JSON")
    )
    assert items[1] == Reject("hh.jsonl", 2, field, reason, json.dumps(record))


def test_hh_reads_gzip(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl.gz"
    path.write_bytes(
        gzip.compress(json.dumps({"chosen": hh("H: q", "A: a"), "rejected": hh("H: q", "A: b")}).encode())
    )
    assert [r.values["chosen"] for r in parse("hh_rlhf", path)] == ["a"]


def test_real_hh_rlhf_harmless_test(data_pack: Path) -> None:
    items = parse("hh_rlhf", data_pack / "preferences/hh_rlhf_harmless_base_test.jsonl.gz")
    rows = [i for i in items if isinstance(i, Row)]
    rejects = [i for i in items if isinstance(i, Reject)]
    assert len(items) == 2312 and len(rows) == 2308
    # the only rejects: four pairs whose chosen transcript ends in an empty assistant turn
    assert [(r.line, r.field, r.reason) for r in rejects] == [
        (line, "chosen", "empty final assistant turn") for line in (87, 517, 926, 1104)
    ]
    multi_turn = [r for r in rows if len(parse_prompt(r.values["prompt"])) > 1]
    assert len(multi_turn) == 1649
    assert all(parse_prompt(r.values["prompt"])[-1].role == "user" for r in rows)
    assert all(r.values["chosen"] != r.values["rejected"] for r in rows)


# --- conversation_pairs -----------------------------------------------------------------------------


def pair(conversations: list, chosen: str = "good", rejected: str = "bad", chosen_from: str = "gpt") -> dict:
    return {
        "conversations": [{"from": f, "value": v} for f, v in conversations],
        "chosen": {"from": chosen_from, "value": chosen},
        "rejected": {"from": "gpt", "value": rejected},
    }


def test_conversation_pairs_single_and_multi_turn(tmp_path: Path) -> None:
    records = [pair([("human", "q")]), pair([("human", "q1"), ("gpt", "a1"), ("human", "q2")])]
    path = tmp_path / "dpo.json"
    path.write_text(json.dumps(records, indent=2))
    items = parse("conversation_pairs", path)
    assert [i.values for i in items] == [
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"prompt": "Human: q1\n\nAssistant: a1\n\nHuman: q2", "chosen": "good", "rejected": "bad"},
    ]


def test_conversation_pairs_system_message_leads_the_first_human_turn(tmp_path: Path) -> None:
    (row,) = parse(
        "conversation_pairs",
        write_jsonl(tmp_path / "d.jsonl", [pair([("system", "Be brief."), ("human", "q")])]),
    )
    assert row.values["prompt"] == "Be brief.\n\nq"


@pytest.mark.parametrize(
    ("record", "field", "reason"),
    [
        (pair([("human", "q"), ("gpt", "a")]), "conversations", "must end with a human message"),
        (
            pair([("human", "q"), ("system", "s"), ("human", "q")]),
            "conversations[1].from",
            "a system message may only come first",
        ),
        (
            pair([("robot", "q")]),
            "conversations[0].from",
            "must be one of ['assistant', 'gpt', 'human', 'system', 'user'], got 'robot'",
        ),
        (pair([("human", " ")]), "conversations[0].value", "empty"),
        (
            pair([("human", "q")], chosen_from="human"),
            "chosen.from",
            "must be the assistant ('gpt'), got 'user'",
        ),
        (pair([("human", "q")], chosen="same", rejected="same"), "rejected", "same reply as chosen"),
        (
            {"conversations": [], "chosen": {}, "rejected": {}},
            "conversations",
            "must be a non-empty list of {from, value} messages",
        ),
        (
            {**pair([("human", "q")]), "rejected": "bad"},
            "rejected",
            "must be an object with 'from' and 'value'",
        ),
    ],
)
def test_conversation_pairs_bad_records_are_rejects(
    tmp_path: Path, record: dict, field: str, reason: str
) -> None:
    items = parse("conversation_pairs", write_jsonl(tmp_path / "d.jsonl", [pair([("human", "ok")]), record]))
    assert isinstance(items[0], Row) and items[1] == Reject("d.jsonl", 2, field, reason, json.dumps(record))


def test_real_llamafactory_dpo_demo(data_pack: Path) -> None:
    items = parse("conversation_pairs", data_pack / "preferences/llamafactory_dpo_en_demo.json")
    assert len(items) == 300 and all(isinstance(i, Row) for i in items)
    turns = [parse_prompt(i.values["prompt"]) for i in items]
    assert sum(len(t) > 1 for t in turns) == 106  # multi-turn conversations
    assert (
        sum(i.values["prompt"].startswith("You are an AI assistant") for i in items) >= 25
    )  # system texts kept


# --- rankings_jsonl ---------------------------------------------------------------------------------


def test_rankings_with_ties(tmp_path: Path) -> None:
    record = {"prompt": "Write a haiku.", "responses": ["a", "b", "c"], "ranking": [1, 0, 1]}
    (row,) = parse("rankings_jsonl", write_jsonl(tmp_path / "r.jsonl", [record]))
    assert row == Row("rankings", record, "r.jsonl", 1)


@pytest.mark.parametrize(
    ("responses", "ranking", "field", "reason"),
    [
        (["a"], [0], "responses", "must have at least 2 items, got 1"),
        (["a", "b"], [0], "ranking", "has 1 ranks for 2 responses"),
        (["a", "b"], [0, "1"], "ranking", "must be a list of integers, one rank per response (0 = best)"),
        (["a", "b"], [1, 2], "ranking", "ranks must lie in 0..1 with 0 (best) present, got [1, 2]"),
        (
            ["a", "b", "c"],
            [0, 3, 1],
            "ranking",
            "ranks must lie in 0..2 with 0 (best) present, got [0, 3, 1]",
        ),
        (["a", "b"], [0, 0], "ranking", "all responses tie: no preference to learn"),
        (["a", "a"], [0, 1], "responses", "the same response appears twice with different ranks"),
        (["a", 2], [0, 1], "responses", "item 1 must be a string, got int"),
    ],
)
def test_rankings_bad_records_name_the_field(
    tmp_path: Path, responses: list, ranking: list, field: str, reason: str
) -> None:
    record = {"prompt": "p", "responses": responses, "ranking": ranking}
    (reject,) = parse("rankings_jsonl", write_jsonl(tmp_path / "r.jsonl", [record]))
    assert reject == Reject("r.jsonl", 1, field, reason, json.dumps(record))
