"""Task formats: the pack's TSVs (SST-2, rt-polarity, SICK, MSRP, STS) and the JSONL task formats."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from instructgpt.errors import DataError
from instructgpt.formats import get_format
from instructgpt.formats.base import Reject, Row
from instructgpt.formats.tasks import split_from_name


def parse(fmt: str, path: Path) -> list[Row | Reject]:
    return list(get_format(fmt).parse(path, path.name))


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def write_jsonl(path: Path, records: list) -> Path:
    return write(path, "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("train.tsv", "train"),
        ("dev.tsv", "dev"),
        ("msr-para-val.tsv", "dev"),
        ("SICK_trial.txt", "dev"),
        ("2015.train.tsv", "train"),
        ("msr-para-test.tsv", "test"),
        ("rt-polarity.pos", None),
        ("contest.tsv", None),  # a word, not a substring
        ("train_test.tsv", None),  # names two splits: none is taken
    ],
)
def test_split_from_file_name(name: str, split: str | None) -> None:
    assert split_from_name(f"some/dir/{name}") == split


# --- sst2_tsv --------------------------------------------------------------------------------------------


def test_sst2_rows(tmp_path: Path) -> None:
    items = parse(
        "sst2_tsv", write(tmp_path / "dev.tsv", 'label\tcontent\n0\tit \'s a " mess " .\n1\tgreat fun\n')
    )
    assert items == [
        Row(
            "tasks",
            {
                "task": "",
                "task_type": "classification",
                "text_a": 'it \'s a " mess " .',
                "label": 0,
                "split": "dev",
            },
            "dev.tsv",
            2,
        ),
        Row(
            "tasks",
            {"task": "", "task_type": "classification", "text_a": "great fun", "label": 1, "split": "dev"},
            "dev.tsv",
            3,
        ),
    ]


def test_sst2_bad_lines_are_rejects(tmp_path: Path) -> None:
    items = parse(
        "sst2_tsv",
        write(
            tmp_path / "train.tsv",
            "label\tsentence\n1\tfine\npositive\tbad label\n2\tout of range\n1\t \n1\ta\tb\n",
        ),
    )
    assert [(r.line, r.field, r.reason) for r in items if isinstance(r, Reject)] == [
        (3, "label", "not an integer: 'positive'"),
        (4, "label", "must be one of [0, 1], got 2"),
        (5, "sentence", "empty"),
        (6, None, "expected 2 tab-separated columns (label, sentence), got 3"),
    ]
    assert items[3].record == "1\t "


def test_sst2_wrong_header_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        parse("sst2_tsv", write(tmp_path / "dev.tsv", "sentence\tlabel\nfine\t1\n"))
    assert str(err.value).startswith("dev.tsv:1: field 'header': expected the header 'label<TAB>sentence'")


def test_real_sst2(data_pack: Path) -> None:
    dev = parse("sst2_tsv", data_pack / "tasks/sst2/dev.tsv")
    assert len(dev) == 872 and all(isinstance(r, Row) and r.values["split"] == "dev" for r in dev)
    assert Counter(r.values["label"] for r in dev) == {1: 444, 0: 428}
    train = parse("sst2_tsv", data_pack / "tasks/sst2/train.tsv")
    assert len(train) == 67349 and all(isinstance(r, Row) for r in train)


# --- rt_polarity ---------------------------------------------------------------------------------------


def test_rt_polarity_label_from_suffix_and_latin1(tmp_path: Path) -> None:
    items = parse(
        "rt_polarity", write(tmp_path / "rt.neg", "a dull , clich\xe9d film . \n\n".encode("latin-1"))
    )
    assert items == [
        Row(
            "tasks",
            {"task": "", "task_type": "classification", "text_a": "a dull , clichéd film .", "label": 0},
            "rt.neg",
            1,
        )
    ]
    (pos,) = parse("rt_polarity", write(tmp_path / "rt.pos", "fun\n"))
    assert pos.values["label"] == 1 and "split" not in pos.values


def test_rt_polarity_other_suffix_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^rt\.txt: rt_polarity reads"):
        parse("rt_polarity", write(tmp_path / "rt.txt", "fun\n"))


def test_real_rt_polarity(data_pack: Path) -> None:
    pos = parse("rt_polarity", data_pack / "tasks/rt_polarity/rt-polarity.pos")
    neg = parse("rt_polarity", data_pack / "tasks/rt_polarity/rt-polarity.neg")
    assert (len(pos), len(neg)) == (5331, 5331)
    assert {r.values["label"] for r in pos} == {1} and {r.values["label"] for r in neg} == {0}
    assert any("é" in r.values["text_a"] for r in pos + neg)  # the pack's copy is UTF-8, not mojibake


# --- sick_tsv --------------------------------------------------------------------------------------------

SICK_HEADER = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"


def test_sick_gives_an_entailment_and_a_relatedness_row_per_line(tmp_path: Path) -> None:
    items = parse(
        "sick_tsv",
        write(tmp_path / "SICK_trial.txt", SICK_HEADER + "4\tBoys play\tNo boy plays\t3.6\tCONTRADICTION\n"),
    )
    pair = {"text_a": "Boys play", "text_b": "No boy plays", "split": "dev"}
    assert [r.values for r in items] == [
        {"task": "entailment", "task_type": "entailment", "label": 2, **pair},
        {"task": "relatedness", "task_type": "similarity", "score": 3.6, **pair},
    ]


def test_sick_a_bad_label_rejects_only_its_task(tmp_path: Path) -> None:
    body = "1\ta\tb\t4.5\tMAYBE\n2\ta\tb\tn/a\tNEUTRAL\n3\ta\tb\t7\tNEUTRAL\n"
    items = parse("sick_tsv", write(tmp_path / "SICK_train.txt", SICK_HEADER + body))
    assert [(type(r).__name__, r.line) for r in items] == [
        ("Reject", 2),
        ("Row", 2),
        ("Row", 3),
        ("Reject", 3),
        ("Row", 4),
        ("Reject", 4),
    ]
    assert [(r.field, r.reason) for r in items if isinstance(r, Reject)] == [
        ("entailment_judgment", "must be one of ['ENTAILMENT', 'NEUTRAL', 'CONTRADICTION'], got 'MAYBE'"),
        ("relatedness_score", "not a number: 'n/a'"),
        ("relatedness_score", "must be within [1.0, 5.0], got 7.0"),
    ]


def test_real_sick(data_pack: Path) -> None:
    train = parse("sick_tsv", data_pack / "tasks/sick/SICK_train.txt")
    trial = parse("sick_tsv", data_pack / "tasks/sick/SICK_trial.txt")
    assert (len(train), len(trial)) == (9000, 1000) and all(isinstance(r, Row) for r in train + trial)
    labels = Counter(r.values["label"] for r in train if r.values["task"] == "entailment")
    assert labels == {1: 2536, 0: 1299, 2: 665}
    assert {r.values["split"] for r in trial} == {"dev"}


# --- msrp_tsv ----------------------------------------------------------------------------------------------


def test_msrp_bom_crlf_and_quotes(tmp_path: Path) -> None:
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
    text = header + '1\t7\t8\tHe called him "the witness".\t"The witness", he said.\r\n'
    (row,) = parse("msrp_tsv", write(tmp_path / "msr-para-train.tsv", text))
    assert row.values == {
        "task": "",
        "task_type": "similarity",
        "text_a": 'He called him "the witness".',
        "text_b": '"The witness", he said.',
        "label": 1,
        "split": "train",
    }


def test_real_msrp(data_pack: Path) -> None:
    counts = {}
    for split in ("train", "val", "test"):
        items = parse("msrp_tsv", data_pack / f"tasks/msrp/msr-para-{split}.tsv")
        assert all(isinstance(r, Row) for r in items)
        counts[items[0].values["split"]] = len(items)
    assert counts == {"train": 3576, "dev": 500, "test": 1725}


# --- sts_tsv ------------------------------------------------------------------------------------------------


def test_sts_rows_and_rejects(tmp_path: Path) -> None:
    items = parse(
        "sts_tsv", write(tmp_path / "2015.val.tsv", "4.2\ta cat\ta kitten\n5.5\ta\tb\nhigh\ta\tb\n")
    )
    assert items[0].values == {
        "task": "",
        "task_type": "similarity",
        "text_a": "a cat",
        "text_b": "a kitten",
        "score": 4.2,
        "split": "dev",
    }
    assert [(r.line, r.field) for r in items[1:]] == [(2, "score"), (3, "score")]


def test_real_sts(data_pack: Path) -> None:
    train = parse("sts_tsv", data_pack / "tasks/sts/2015.train.tsv")
    val = parse("sts_tsv", data_pack / "tasks/sts/2015.val.tsv")
    assert (len(train), len(val)) == (3000, 750) and all(isinstance(r, Row) for r in train + val)


# --- JSONL task formats -------------------------------------------------------------------------------------


def test_classification_jsonl(tmp_path: Path) -> None:
    records = [{"text": "great", "label": 1}, {"text": "meh", "label": "1"}, {"text": "", "label": 0}]
    items = parse("classification_jsonl", write_jsonl(tmp_path / "reviews_test.jsonl", records))
    assert items[0].values == {
        "task": "",
        "task_type": "classification",
        "text_a": "great",
        "label": 1,
        "split": "test",
    }
    assert [(r.line, r.field, r.reason) for r in items[1:]] == [
        (2, "label", "must be an integer, got '1'"),
        (3, "text", "empty"),
    ]


def test_pairs_jsonl(tmp_path: Path) -> None:
    records = [
        {"a": "x", "b": "y", "score": 3.5},
        {"a": "x", "b": "y", "label": 1},
        {"a": "x", "b": "y", "label": 2, "task_type": "entailment"},
        {"a": "x", "b": "y", "label": 1, "score": 2.0},
        {"a": "x", "b": "y"},
        {"a": "x", "b": "y", "score": 2.0, "task_type": "entailment"},
        {"a": "x", "b": "y", "label": 1, "task_type": "nli"},
    ]
    items = parse("pairs_jsonl", write_jsonl(tmp_path / "pairs.jsonl", records))
    assert [r.values for r in items[:3]] == [
        {"task": "", "task_type": "similarity", "text_a": "x", "text_b": "y", "score": 3.5},
        {"task": "", "task_type": "similarity", "text_a": "x", "text_b": "y", "label": 1},
        {"task": "", "task_type": "entailment", "text_a": "x", "text_b": "y", "label": 2},
    ]
    assert [(r.line, r.field, r.reason) for r in items[3:]] == [
        (4, "label", "give either 'label' (an integer) or 'score' (a number), not both"),
        (5, "label", "give either 'label' (an integer) or 'score' (a number)"),
        (6, "label", "missing"),
        (7, "task_type", "must be 'similarity' or 'entailment', got 'nli'"),
    ]


def test_multiple_choice_jsonl(tmp_path: Path) -> None:
    records = [
        {"context": "The sky is", "choices": ["blue", "green"], "answer": 0},
        {"context": "The sky is", "choices": ["blue", "green"], "answer": 2},
        {"context": "The sky is", "choices": ["blue"], "answer": 0},
    ]
    items = parse("multiple_choice_jsonl", write_jsonl(tmp_path / "mc.jsonl", records))
    assert items[0].values == {
        "task": "",
        "task_type": "multiple_choice",
        "text_a": "The sky is",
        "choices": ["blue", "green"],
        "label": 0,
    }
    assert [(r.line, r.field, r.reason) for r in items[1:]] == [
        (2, "answer", "must be a 0-based index into the 2 choices, got 2"),
        (3, "choices", "must have at least 2 items, got 1"),
    ]
