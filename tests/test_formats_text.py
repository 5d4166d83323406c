"""Text formats (text, lines, jsonl, wikitext, prompts_*), the shared reading helpers, and the registry."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from instructgpt.errors import ConfigError, DataError
from instructgpt.formats import FORMATS, get_format
from instructgpt.formats.base import Reject, Row
from instructgpt.formats.reading import iter_json_records, iter_lines
from instructgpt.formats.text import detokenize_wikitext, strip_gutenberg


def parse(fmt: str, path: Path) -> list[Row | Reject]:
    return list(get_format(fmt).parse(path, path.name))


def rows(items: list[Row | Reject]) -> list[Row]:
    return [item for item in items if isinstance(item, Row)]


def rejects(items: list[Row | Reject]) -> list[Reject]:
    return [item for item in items if isinstance(item, Reject)]


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


# --- the registry --------------------------------------------------------------------------------


def test_every_format_says_what_it_serves_and_reads() -> None:
    kinds = {"books", "web", "demonstrations", "comparisons", "prompts", "tasks"}
    assert {kind for fmt in FORMATS.values() for kind in fmt.kinds} == kinds
    for name, fmt in FORMATS.items():
        assert fmt.name == name and fmt.kinds <= kinds
        assert fmt.patterns and len(fmt.description) > 40, name


def test_an_unknown_format_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        get_format("jsonlines")
    assert "unknown format 'jsonlines'" in str(err.value)
    assert "alpaca" in str(err.value) and "sst2_tsv" in str(err.value)


# --- reading ----------------------------------------------------------------------------------------


def test_lines_drop_the_bom_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", b"\xef\xbb\xbfone\r\ntwo\n\nthree")
    assert list(iter_lines(path, "a.txt")) == [(1, "one"), (2, "two"), (3, ""), (4, "three")]


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"^a\.jsonl:2: not valid utf-8"):
        list(get_format("jsonl").parse(path, "a.jsonl"))


def test_a_declared_fallback_encoding_reads_latin1(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "café\nnaïve\n".encode("latin-1"))
    assert [line for _, line in iter_lines(path, "a.txt", fallback="latin-1")] == ["café", "naïve"]


def test_a_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^gone\.txt: cannot open"):
        parse("lines", tmp_path / "gone.txt")


def test_gzip_is_recognised_by_its_magic_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "docs.data", gzip.compress(b'{"text": "zipped"}\n'))
    assert [row.values["text"] for row in rows(parse("jsonl", path))] == ["zipped"]


def test_a_corrupt_gzip_is_a_data_error(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(b'{"text": "line %d"}\n' % i for i in range(2000)))
    path = write(tmp_path / "docs.jsonl.gz", data[: len(data) // 2])
    with pytest.raises(DataError, match=r"^docs\.jsonl\.gz:\d+: cannot read"):
        parse("jsonl", path)


def test_a_json_list_gives_each_item_its_starting_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", '\n[\n  {"text": "one"},\n  {\n    "text": "two"\n  }\n]\n')
    records = list(iter_json_records(path, "a.json"))
    assert [(r.line, r.value["text"]) for r in records] == [(3, "one"), (4, "two")]


def test_a_json_list_may_start_with_a_bom_and_use_crlf(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", b'\xef\xbb\xbf[\r\n {"text": "one"},\r\n {"text": "two"}\r\n]\r\n')
    assert [(r.line, r.value["text"]) for r in iter_json_records(path, "a.json")] == [(2, "one"), (3, "two")]


def test_an_empty_json_file_has_no_records(tmp_path: Path) -> None:
    assert list(iter_json_records(write(tmp_path / "a.jsonl", "\n \n"), "a.jsonl")) == []
    assert list(iter_json_records(write(tmp_path / "b.json", " [ ] "), "b.json")) == []


def test_invalid_utf8_in_a_json_list_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", b'[\n  {"text": "one"},\n  {"text": "caf\xe9"}\n]')
    with pytest.raises(DataError, match=r"^a\.json:3: not valid utf-8"):
        parse("jsonl", path)


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ('[\n  {"text": "one"},\n  {"text": "two",}\n]', 3, "not valid JSON"),
        ('[\n  {"text": "one"}\n  {"text": "two"}\n]', 3, "expected ',' or ']'"),
        ('[{"text": "one"}]\n[]', 2, "extra data"),
        ('{\n  "text": "one object"\n}\n', 1, "top-level JSON is an object"),
        ('"a string"\n', 1, "expected a JSON list"),
    ],
)
def test_a_json_file_that_does_not_parse_names_the_line(
    tmp_path: Path, content: str, line: int, reason: str
) -> None:
    path = write(tmp_path / "bad.json", content)
    with pytest.raises(DataError) as err:
        parse("jsonl", path)
    assert str(err.value).startswith(f"bad.json:{line}: ") and reason in str(err.value)


# --- text: one file, one document ---------------------------------------------------------------

GUTENBERG = """\ufeffThe Project Gutenberg EBook of A Tale, by Someone\r
\r
Character set encoding: UTF-8\r
\r
*** START OF THIS PROJECT GUTENBERG EBOOK A TALE ***\r
\r
\r
Produced by Some Volunteer, and\r
Another One\r
\r
\r
A TALE\r
\r
Chapter 1. It began at the end of the project.\r
\r
\r
End of the Project Gutenberg EBook of A Tale, by Someone\r
\r
*** END OF THIS PROJECT GUTENBERG EBOOK A TALE ***\r
\r
This file should be named 1.txt\r
"""


def test_text_drops_the_gutenberg_header_credit_and_footer(tmp_path: Path) -> None:
    items = parse("text", write(tmp_path / "tale.txt", GUTENBERG))
    assert items == [
        Row("documents", {"text": "A TALE\n\nChapter 1. It began at the end of the project."}, "tale.txt")
    ]


def test_text_understands_the_old_small_print_header() -> None:
    old = (
        "**The Project Gutenberg Etext of X**\nlegal\n"
        "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n"
        "The book.\n\nEnd of The Project Gutenberg Etext of X\n"
    )
    assert strip_gutenberg(old).strip() == "The book."


def test_text_without_markers_is_kept_whole(tmp_path: Path) -> None:
    path = write(tmp_path / "poem.txt", "  A poem\n\nin two stanzas.\n")
    assert rows(parse("text", path))[0].values["text"] == "A poem\n\nin two stanzas."


def test_an_empty_text_file_is_a_reject(tmp_path: Path) -> None:
    assert parse("text", write(tmp_path / "empty.txt", "\n \n")) == [
        Reject("empty.txt", None, "text", "empty document")
    ]


@pytest.mark.parametrize(
    ("name", "begins", "ends"),
    [
        (
            "frankenstein_84.txt",
            "Frankenstein;\n\n\nor, the Modern Prometheus",
            "lost in darkness and distance.",
        ),
        ("moby_dick_2701.txt", "MOBY-DICK;\n\nor, THE WHALE.", "only found another orphan."),
        (
            "sherlock_holmes_1661.txt",
            "THE ADVENTURES OF SHERLOCK HOLMES",
            "has met with considerable success.",
        ),
    ],
)
def test_real_gutenberg_books_keep_only_the_book(data_pack: Path, name: str, begins: str, ends: str) -> None:
    (row,) = parse("text", data_pack / "books/gutenberg" / name)
    text = row.values["text"]
    assert text.startswith(begins) and text.endswith(ends)
    assert "Gutenberg" not in text[:2000] + text[-2000:] and "Produced by" not in text[:2000]


def test_real_latin1_gutenberg_book_is_decoded(data_pack: Path) -> None:
    (row,) = parse("text", data_pack / "books/gutenberg/sherlock_holmes_1661.txt")
    assert "IRENE NORTON, née ADLER" in row.values["text"]


def test_real_austen_novel_is_one_document(data_pack: Path) -> None:
    (row,) = parse("text", data_pack / "books/austen/emma.txt")
    assert row.values["text"].startswith("EMMA\n\nBy Jane Austen") and row.values["text"].endswith("FINIS")


# --- lines and jsonl ----------------------------------------------------------------------------------


def test_lines_gives_one_document_per_non_empty_line(tmp_path: Path) -> None:
    items = parse("lines", write(tmp_path / "a.txt", "first doc\n\n  \nsecond doc\n"))
    assert [(r.line, r.values["text"]) for r in rows(items)] == [(1, "first doc"), (4, "second doc")]


def test_real_line_corpora(data_pack: Path) -> None:
    assert len(rows(parse("lines", data_pack / "web/lee_background.cor"))) == 300
    assert len(rows(parse("lines", data_pack / "web/wiki_demo.txt"))) == 30


def test_jsonl_reads_the_text_field(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"text": "one", "url": "x"}\n\n{"text": "two"}\n')
    assert [(r.line, r.values) for r in rows(parse("jsonl", path))] == [
        (1, {"text": "one"}),
        (3, {"text": "two"}),
    ]


def test_jsonl_bad_records_are_rejects_with_line_field_and_reason(tmp_path: Path) -> None:
    lines = [
        '{"text": "fine"}',
        '{"text": broken',
        '{"body": "no text"}',
        '{"text": 3}',
        '{"text": "  "}',
        "[1, 2]",
    ]
    items = parse("jsonl", write(tmp_path / "a.jsonl", "\n".join(lines) + "\n"))
    assert len(rows(items)) == 1
    got = [(r.line, r.field, r.reason) for r in rejects(items)]
    assert got[0][:2] == (2, None) and got[0][2].startswith("malformed JSON")
    assert got[1:] == [
        (3, "text", "missing"),
        (4, "text", "must be a string, got int"),
        (5, "text", "empty"),
        (6, None, "record must be a JSON object, got a list"),
    ]
    assert rejects(items)[1].record == '{"body": "no text"}'


def test_jsonl_whose_first_line_is_broken_is_still_jsonl(tmp_path: Path) -> None:
    items = parse("jsonl", write(tmp_path / "a.jsonl", '{"text": oops}\n{"text": "fine"}\n'))
    assert [type(i).__name__ for i in items] == ["Reject", "Row"] and items[1].line == 2


def test_real_c4_demo(data_pack: Path) -> None:
    items = parse("jsonl", data_pack / "web/c4_demo.jsonl")
    assert len(rows(items)) == 300 and not rejects(items)


def test_prompt_formats_produce_prompts(tmp_path: Path) -> None:
    lines = parse("prompts_lines", write(tmp_path / "p.txt", " Tell me a joke. \n\nHuman: hi\n"))
    assert [(r.table, r.values["prompt"]) for r in lines] == [
        ("prompts", "Tell me a joke."),
        ("prompts", "Human: hi"),
    ]
    items = parse(
        "prompts_jsonl", write(tmp_path / "p.jsonl", '{"prompt": "Why?"}\n{"text": "wrong field"}\n')
    )
    assert rows(items)[0].values == {"prompt": "Why?"}
    assert (rejects(items)[0].line, rejects(items)[0].field) == (2, "prompt")


# --- wikitext --------------------------------------------------------------------------------------

# WikiText's own layout: every line starts with a space and ends with one.
WIKITEXT = "\n".join(
    [
        " ",
        " = Homarus gammarus = ",
        " ",
        " Homarus gammarus , known as the European lobster , is a <unk> species . "
        "It weighs 0 @.@ 7 – 2 @.@ 2 kg ( 1 @,@ 500 g ) . ",
        " ",
        " = = Description = = ",
        " ",
        ' The " cutter " has sharp edges ; it isn \'t blunt . ',
        " ",
        " = M @-@ 82 ( Michigan highway ) = ",
        " ",
        " M @-@ 82 is a state trunkline . ",
        "",
    ]
)


def test_wikitext_detokenises() -> None:
    assert detokenize_wikitext(' a 1 @,@ 000 @-@ strong ( <unk> ) force , it \'s " big " ; ok . ') == (
        'a 1,000-strong (<unk>) force, it\'s "big"; ok.'
    )


def test_wikitext_gives_one_document_per_article(tmp_path: Path) -> None:
    items = parse("wikitext", write(tmp_path / "wiki.tokens", WIKITEXT))
    assert [(r.line, r.values["text"]) for r in rows(items)] == [
        (
            2,
            "Homarus gammarus\n\n"
            "Homarus gammarus, known as the European lobster, is a <unk> species. "
            "It weighs 0.7 – 2.2 kg (1,500 g).\n\n"
            "Description\n\n"
            'The "cutter" has sharp edges; it isn\'t blunt.',
        ),
        (10, "M-82 (Michigan highway)\n\nM-82 is a state trunkline."),
    ]


def test_wikitext_article_without_text_is_a_reject(tmp_path: Path) -> None:
    items = parse("wikitext", write(tmp_path / "w.txt", " = Empty = \n \n = Full = \n text . \n"))
    assert [(r.line, r.field) for r in rejects(items)] == [(1, "text")]
    assert rows(items)[0].values["text"] == "Full\n\ntext."


def test_real_wikitext2_valid(data_pack: Path) -> None:
    items = parse("wikitext", data_pack / "web/wikitext2_valid.txt")
    docs = [r.values["text"] for r in rows(items)]
    assert len(docs) == 60 and not rejects(items)
    assert docs[0].startswith("Homarus gammarus\n\nHomarus gammarus, known as the European lobster")
    assert docs[2].startswith("M-82 (Michigan highway)")
    assert not any(" @-@ " in d or " @,@ " in d or " , " in d for d in docs)
    assert sum(d.count("<unk>") for d in docs) > 1000
