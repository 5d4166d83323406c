"""Instruction formats: alpaca (with history and system) and seed_tasks, on small files and the real pack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructgpt.conversation import parse_prompt
from instructgpt.errors import DataError
from instructgpt.formats import get_format
from instructgpt.formats.base import Reject, Row


def parse(fmt: str, path: Path) -> list[Row | Reject]:
    return list(get_format(fmt).parse(path, path.name))


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return path


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


# --- alpaca -------------------------------------------------------------------------------------------


def test_alpaca_prompt_is_instruction_then_input(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "a.json",
        [
            {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
            {"instruction": " Name a colour. ", "input": "", "output": "Blue."},
            {"instruction": "Say hi.", "output": "Hi!"},
        ],
    )
    items = parse("alpaca", path)
    assert all(isinstance(i, Row) and i.table == "demonstrations" for i in items)
    assert [i.values for i in items] == [
        {"prompt": "Translate to French.\n\nGood morning", "response": "Bonjour"},
        {"prompt": "Name a colour.", "response": "Blue."},
        {"prompt": "Say hi.", "response": "Hi!"},
    ]
    assert [i.line for i in items] == [2, 7, 12]  # each item's opening line in the JSON list


def test_alpaca_history_makes_a_transcript_ending_in_the_prompt(tmp_path: Path) -> None:
    record = {
        "instruction": "And in Spanish?",
        "input": "",
        "output": "Buenos días",
        "history": [["Translate 'good morning' to French.", "Bonjour"]],
    }
    (row,) = parse("alpaca", write_jsonl(tmp_path / "a.jsonl", [record]))
    assert row.values["prompt"] == (
        "Human: Translate 'good morning' to French.\n\nAssistant: Bonjour\n\nHuman: And in Spanish?"
    )
    assert [t.role for t in parse_prompt(row.values["prompt"])] == ["user", "assistant", "user"]


def test_alpaca_system_text_leads_the_first_turn(tmp_path: Path) -> None:
    record = {"system": "Answer briefly.", "instruction": "Why is the sky blue?", "output": "Scattering."}
    (row,) = parse("alpaca", write_jsonl(tmp_path / "a.jsonl", [record]))
    assert row.values["prompt"] == "Answer briefly.\n\nWhy is the sky blue?"


@pytest.mark.parametrize(
    ("record", "field", "reason"),
    [
        ({"instruction": "Hi", "input": ""}, "output", "missing"),
        ({"instruction": "  ", "output": "x"}, "instruction", "empty"),
        ({"instruction": "Hi", "input": 3, "output": "x"}, "input", "must be a string, got int"),
        (
            {"instruction": "Hi", "output": "x", "history": "no"},
            "history",
            "must be a list of [query, answer] pairs",
        ),
        (
            {"instruction": "Hi", "output": "x", "history": [["q"]]},
            "history",
            "item 0 must be a [query, answer] pair of non-empty strings",
        ),
        (["not", "an", "object"], None, "record must be a JSON object, got a list"),
    ],
)
def test_alpaca_bad_records_are_rejects(
    tmp_path: Path, record: object, field: str | None, reason: str
) -> None:
    good = {"instruction": "Fine", "output": "ok"}
    items = parse("alpaca", write_jsonl(tmp_path / "a.jsonl", [good, record]))
    assert isinstance(items[0], Row)
    assert items[1] == Reject("a.jsonl", 2, field, reason, json.dumps(record))


def test_alpaca_malformed_line_is_a_reject_and_broken_list_an_error(tmp_path: Path) -> None:
    items = parse(
        "alpaca", write_jsonl(tmp_path / "a.jsonl", ['{"instruction": "Hi", "output": "x"}', "{oops"])
    )
    assert isinstance(items[1], Reject) and (items[1].line, items[1].record) == (2, "{oops")
    broken = tmp_path / "b.json"
    broken.write_text('[\n  {"instruction": "Hi", "output": "x"},\n  {"instruction": "Hi" "output": "x"}\n]')
    with pytest.raises(DataError, match=r"^b\.json:3: not valid JSON"):
        parse("alpaca", broken)


def test_real_lima(data_pack: Path) -> None:
    items = parse("alpaca", data_pack / "instructions/lima.json")
    assert len(items) == 1029 and all(isinstance(i, Row) for i in items)
    multi_turn = [i for i in items if len(parse_prompt(i.values["prompt"])) > 1]
    assert len(multi_turn) == 29
    assert max(len(parse_prompt(i.values["prompt"])) for i in multi_turn) == 19  # 9 earlier exchanges


def test_real_alpaca_demo(data_pack: Path) -> None:
    items = parse("alpaca", data_pack / "instructions/alpaca_en_demo.json")
    assert len(items) == 999 and all(isinstance(i, Row) for i in items)
    assert sum("\n\n" in i.values["prompt"] for i in items) >= 412  # the records with an input


# --- seed_tasks -----------------------------------------------------------------------------------------


def test_seed_tasks_give_one_demonstration_per_instance(tmp_path: Path) -> None:
    task = {
        "id": "seed_task_0",
        "instruction": "Classify the sentiment.",
        "instances": [{"input": "I love it", "output": "positive"}, {"input": "", "output": "neutral"}],
    }
    items = parse("seed_tasks", write_jsonl(tmp_path / "seed.jsonl", [task]))
    assert [(i.line, i.values) for i in items] == [
        (1, {"prompt": "Classify the sentiment.\n\nI love it", "response": "positive"}),
        (1, {"prompt": "Classify the sentiment.", "response": "neutral"}),
    ]


def test_seed_tasks_reject_a_bad_instance_or_task(tmp_path: Path) -> None:
    tasks = [
        {
            "instruction": "Do it.",
            "instances": [{"input": "", "output": ""}, {"input": "", "output": "done"}],
        },
        {"instruction": "Do it.", "instances": []},
        {"instances": [{"input": "", "output": "x"}]},
    ]
    items = parse("seed_tasks", write_jsonl(tmp_path / "seed.jsonl", tasks))
    assert [(type(i).__name__, i.line) for i in items] == [
        ("Reject", 1),
        ("Row", 1),
        ("Reject", 2),
        ("Reject", 3),
    ]
    assert [(i.field, i.reason) for i in items if isinstance(i, Reject)] == [
        ("instances[0].output", "empty"),
        ("instances", "must be a non-empty list of {input, output} objects"),
        ("instruction", "missing"),
    ]


def test_real_seed_tasks(data_pack: Path) -> None:
    items = parse("seed_tasks", data_pack / "instructions/alpaca_seed_tasks.jsonl")
    assert len(items) == 175 and all(isinstance(i, Row) for i in items)
    assert sum("\n\n" in i.values["prompt"] for i in items) >= 125  # the instances with an input
