"""The input formats a source in `data/sources.yaml` may declare, by name.

Each `Format` says which catalogue kinds may use it, which files of a directory source it reads,
and what it expects; the descriptions are the README's format table. To add a format: write a
parser (`parse(path, relname) -> Iterator[Row | Reject]`) in the module of its family and register
it here.
"""

from __future__ import annotations

from instructgpt.errors import ConfigError
from instructgpt.formats import instructions, preferences, tasks, text
from instructgpt.formats.base import Format

_DOCUMENT_KINDS = frozenset({"books", "web"})
_TASKS = frozenset({"tasks"})
_JSON_FILES = ("*.json", "*.jsonl", "*.jsonl.gz")

_ALL = [
    # --- documents (pretraining text) ---
    Format(
        "text",
        text.parse_text,
        _DOCUMENT_KINDS,
        "One file is one document. UTF-8 (a BOM is dropped; a file that is not valid UTF-8 is read as "
        "Latin-1). A Project Gutenberg licence header and footer are removed: everything up to the "
        "'*** START OF THE/THIS PROJECT GUTENBERG EBOOK … ***' line (or the older '*END*THE SMALL PRINT' "
        "line) and the producers' credit after it, and everything from 'End of the Project Gutenberg "
        "EBook …' or '*** END OF …' on. Files without the markers are kept whole.",
        ("*.txt",),
    ),
    Format(
        "lines",
        text.parse_lines,
        _DOCUMENT_KINDS,
        "One document per non-empty line (e.g. one article or paragraph a line). UTF-8, or Latin-1 "
        "when the file is not valid UTF-8.",
        ("*.txt",),
    ),
    Format(
        "jsonl",
        text.parse_jsonl,
        _DOCUMENT_KINDS,
        "JSON Lines (or a JSON list) of objects with a non-empty string field `text`, one document "
        "each; other fields are ignored. Gzipped files are read transparently.",
        _JSON_FILES,
    ),
    Format(
        "wikitext",
        text.parse_wikitext,
        _DOCUMENT_KINDS,
        "WikiText-2/103 token files: one document per article, split at the top-level ' = Title = ' "
        "lines. Section headings (' = = H = = ') become paragraphs of their own; the tokenisation is "
        "undone (' @-@ ' -> '-', ' @,@ ' -> ',', ' @.@ ' -> '.', no space before punctuation or "
        'inside brackets and quotes, split contractions such as "isn \'t" rejoined); `<unk>` is kept.',
        ("*.txt", "*.tokens"),
    ),
    # --- prompts (unlabelled, for PPO) ---
    Format(
        "prompts_lines",
        text.parse_prompt_lines,
        frozenset({"prompts"}),
        "One prompt per non-empty line, surrounding whitespace stripped. UTF-8, or Latin-1 when the "
        "file is not valid UTF-8.",
        ("*.txt",),
    ),
    Format(
        "prompts_jsonl",
        text.parse_prompt_jsonl,
        frozenset({"prompts"}),
        "JSON Lines (or a JSON list) of objects with a non-empty string field `prompt`: a single "
        "user message, or a transcript in the canonical "
        "'Human: …\\n\\nAssistant: …\\n\\nHuman: …' form.",
        _JSON_FILES,
    ),
    # --- demonstrations (SFT) ---
    Format(
        "alpaca",
        instructions.parse_alpaca,
        frozenset({"demonstrations"}),
        "Alpaca / LLaMA-Factory records {instruction, input, output, history?, system?} as a JSON list "
        "or JSON Lines. The prompt is the instruction, then a blank line and the input when it is "
        "non-empty; the response is `output`. `history` ([[query, answer], …], oldest first) makes the "
        "prompt a 'Human:/Assistant:' transcript ending in that prompt; a `system` text leads the first "
        "human turn, a blank line before it.",
        _JSON_FILES,
    ),
    Format(
        "seed_tasks",
        instructions.parse_seed_tasks,
        frozenset({"demonstrations"}),
        "Self-Instruct / Alpaca seed tasks: JSON Lines of {instruction, instances: [{input, output}]}. "
        "One demonstration per instance: prompt = instruction (+ a blank line and the input when "
        "non-empty), response = output. A bad instance rejects that instance only.",
        ("*.jsonl",),
    ),
    # --- comparisons and rankings (reward model) ---
    Format(
        "hh_rlhf",
        preferences.parse_hh_rlhf,
        frozenset({"comparisons"}),
        "Anthropic HH-RLHF: JSON Lines (gzipped or plain) of {chosen, rejected}, each a whole "
        "'\\n\\nHuman: …\\n\\nAssistant: …' transcript. The turns both share, up to the last shared "
        "human turn, are the prompt (multi-turn context kept); the assistant turns after it are the "
        "chosen and rejected replies (consecutive assistant turns joined by a blank line). Rejected: "
        "identical transcripts or replies, an empty reply, and transcripts that diverge at, or go on "
        "to, a human turn.",
        ("*.jsonl.gz", "*.jsonl"),
    ),
    Format(
        "conversation_pairs",
        preferences.parse_conversation_pairs,
        frozenset({"comparisons"}),
        "LLaMA-Factory / ShareGPT preference pairs, a JSON list or JSON Lines of {conversations: "
        "[{from, value}], chosen: {from, value}, rejected: {from, value}}; `from` is human, gpt or "
        "system (role/content and user/assistant are accepted too). The conversation, which must end "
        "with a human message, is the prompt; a leading system message is kept as the first part of "
        "the first human turn, a blank line before it (transcripts have no system role). chosen and "
        "rejected must come from gpt and differ.",
        _JSON_FILES,
    ),
    Format(
        "rankings_jsonl",
        preferences.parse_rankings_jsonl,
        frozenset({"comparisons"}),
        "Our format for ranked sets, as InstructGPT's labellers ranked K outputs at once: JSON Lines of "
        '{"prompt": str, "responses": [K >= 2 str], "ranking": [K ints]}, where ranking[i] is the '
        "rank of responses[i], 0 = best and ties share a rank. Ranks lie in 0..K-1 with 0 present; "
        "all-tied sets and a response repeated with different ranks are rejected.",
        ("*.jsonl",),
    ),
    # --- tasks (evaluation) ---
    Format(
        "sst2_tsv",
        tasks.parse_sst2_tsv,
        _TASKS,
        "SST-2 sentiment: TSV with the header 'label<TAB>sentence' (or 'label<TAB>content'), label 0 "
        "(negative) or 1 (positive). Classification; the split comes from the file name.",
        ("*.tsv",),
    ),
    Format(
        "rt_polarity",
        tasks.parse_rt_polarity,
        _TASKS,
        "Pang & Lee movie-review polarity: '*.pos' and '*.neg' files, one sentence a line (UTF-8, or "
        "Latin-1 as originally released). Classification, label 1 for .pos and 0 for .neg; no split.",
        ("*.pos", "*.neg"),
    ),
    Format(
        "sick_tsv",
        tasks.parse_sick_tsv,
        _TASKS,
        "SICK: TSV with header pair_ID, sentence_A, sentence_B, relatedness_score, "
        "entailment_judgment. Two rows a line: task 'entailment' (ENTAILMENT/NEUTRAL/CONTRADICTION -> "
        "0/1/2) and task 'relatedness' (similarity, score 1-5). The split comes from the file name "
        "(trial -> dev).",
        ("*.txt", "*.tsv"),
    ),
    Format(
        "msrp_tsv",
        tasks.parse_msrp_tsv,
        _TASKS,
        "Microsoft Research Paraphrase corpus: TSV (BOM and CRLF allowed, no quoting) with header "
        "Quality, #1 ID, #2 ID, #1 String, #2 String. Similarity with label 1 (paraphrase) or 0; the "
        "split comes from the file name (msr-para-val -> dev).",
        ("*.tsv",),
    ),
    Format(
        "sts_tsv",
        tasks.parse_sts_tsv,
        _TASKS,
        "SemEval STS: TSV 'score<TAB>sentence_a<TAB>sentence_b' without a header, score 0-5. "
        "Similarity; the split comes from the file name.",
        ("*.tsv",),
    ),
    Format(
        "classification_jsonl",
        tasks.parse_classification_jsonl,
        _TASKS,
        'JSON Lines (or a JSON list) of {"text": str, "label": int}. Classification; a split in the '
        "file name (train/dev/val/test) is kept.",
        _JSON_FILES,
    ),
    Format(
        "pairs_jsonl",
        tasks.parse_pairs_jsonl,
        _TASKS,
        'JSON Lines (or a JSON list) of sentence pairs {"a", "b"} with an integer `label` or a '
        "numeric `score` (one of them). task_type is 'similarity', or 'entailment' (which needs "
        '`label`) when the record says "task_type": "entailment".',
        _JSON_FILES,
    ),
    Format(
        "multiple_choice_jsonl",
        tasks.parse_multiple_choice_jsonl,
        _TASKS,
        'JSON Lines (or a JSON list) of {"context": str, "choices": [>= 2 str], "answer": int}, '
        "answer a 0-based index into choices. Multiple choice: text_a = context, label = answer.",
        _JSON_FILES,
    ),
]

FORMATS: dict[str, Format] = {fmt.name: fmt for fmt in _ALL}


def get_format(name: str) -> Format:
    """The format called `name`; a ConfigError listing the known names otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(
            f"unknown format {name!r}; known formats: {', '.join(sorted(FORMATS))}", field="format"
        ) from None
