"""Preference formats: human judgements between responses, for the reward model.

`hh_rlhf` and `conversation_pairs` produce `comparisons` rows (prompt, chosen, rejected);
`rankings_jsonl` produces `rankings` rows (a prompt, K responses, and their ranking), as the
InstructGPT labellers ranked K outputs at once. Multi-turn context stays in the prompt, rendered by
`instructgpt.conversation.format_prompt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from instructgpt.conversation import Turn, format_prompt, parse_hh_transcript
from instructgpt.formats.base import Item
from instructgpt.formats.reading import FieldError, json_rows, text_field, text_list_field

# --- hh_rlhf: {"chosen": transcript, "rejected": transcript} -----------------------------------


def parse_hh_rlhf(path: Path, relname: str) -> Iterator[Item]:
    return json_rows(path, relname, "comparisons", _hh_row)


def _hh_row(record: dict[str, Any]) -> dict[str, Any]:
    chosen_text = text_field(record, "chosen", strip=False)
    rejected_text = text_field(record, "rejected", strip=False)
    if chosen_text == rejected_text:
        raise FieldError("rejected", "identical to chosen")
    prompt, chosen, rejected = split_comparison(
        _transcript(chosen_text, "chosen"), _transcript(rejected_text, "rejected")
    )
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _transcript(text: str, field: str) -> list[Turn]:
    try:
        return parse_hh_transcript(text)
    except ValueError as err:
        raise FieldError(field, str(err)) from None


def split_comparison(chosen: list[Turn], rejected: list[Turn]) -> tuple[str, str, str]:
    """Split two transcripts of one conversation into (prompt, chosen reply, rejected reply).

    The prompt is the shared turns up to the last shared human turn. What follows it in each
    transcript must be assistant turns only: that is the reply (consecutive assistant turns, which
    HH-RLHF has a few of, are joined by a blank line). Transcripts that diverge at a human turn, or
    that go on to a human turn after diverging, raise FieldError: their replies would not answer
    the same prompt, or would contain the human's words.
    """
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    users = [i for i in range(shared) if chosen[i].role == "user"]
    if not users:
        raise FieldError("rejected", "the transcripts differ before the first human turn")
    start = users[-1] + 1
    replies = []
    for field, turns in (("chosen", chosen), ("rejected", rejected)):
        tail = turns[start:]
        if not tail:
            raise FieldError(field, "no assistant turn after the last human turn")
        human = next((start + i for i, turn in enumerate(tail) if turn.role == "user"), None)
        if human == shared:
            raise FieldError(field, f"the transcripts diverge at a human turn (turn {shared + 1})")
        if human is not None:
            raise FieldError(
                field, f"a human turn (turn {human + 1}) follows the divergence at turn {shared + 1}"
            )
        reply = "\n\n".join(turn.text for turn in tail if turn.text)
        if not reply:
            raise FieldError(field, "empty final assistant turn")
        replies.append(reply)
    if replies[0] == replies[1]:
        raise FieldError("rejected", "same reply as chosen")
    return format_prompt(chosen[:start]), replies[0], replies[1]


# --- conversation_pairs: LLaMA-Factory's {conversations, chosen, rejected} --------------------

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def parse_conversation_pairs(path: Path, relname: str) -> Iterator[Item]:
    return json_rows(path, relname, "comparisons", _pair_row)


def _pair_row(record: dict[str, Any]) -> dict[str, Any]:
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise FieldError("conversations", "must be a non-empty list of {from, value} messages")
    turns: list[Turn] = []
    system = ""
    for index, message in enumerate(conversations):
        role, text = _message(message, f"conversations[{index}]")
        if role == "system":
            if index != 0:
                raise FieldError(f"conversations[{index}].from", "a system message may only come first")
            system = text
        else:
            turns.append(Turn(role, text))  # type: ignore[arg-type]
    if not turns or turns[-1].role != "user":
        raise FieldError("conversations", "must end with a human message")
    if system:  # there is no system role in a transcript: it leads the first human turn
        turns[0] = Turn("user", f"{system}\n\n{turns[0].text}")
    replies = []
    for field in ("chosen", "rejected"):
        role, text = _message(record.get(field), field)
        if role != "assistant":
            raise FieldError(f"{field}.from", f"must be the assistant ('gpt'), got {role!r}")
        replies.append(text)
    if replies[0] == replies[1]:
        raise FieldError("rejected", "same reply as chosen")
    return {"prompt": format_prompt(turns), "chosen": replies[0], "rejected": replies[1]}


def _message(message: Any, where: str) -> tuple[str, str]:
    """(role, text) of a ShareGPT message: {"from", "value"} (or {"role", "content"})."""
    if not isinstance(message, dict):
        raise FieldError(where, "must be an object with 'from' and 'value'")
    speaker = message.get("from", message.get("role"))
    if speaker not in _ROLES:
        raise FieldError(f"{where}.from", f"must be one of {sorted(_ROLES)}, got {speaker!r}")
    key = "value" if "value" in message else "content"
    try:
        return _ROLES[speaker], text_field(message, key)
    except FieldError as err:
        raise FieldError(f"{where}.{err.field}", err.reason) from None


# --- rankings_jsonl: {"prompt", "responses": [K >= 2], "ranking": [K ints, 0 = best]} -----------


def parse_rankings_jsonl(path: Path, relname: str) -> Iterator[Item]:
    return json_rows(path, relname, "rankings", _ranking_row)


def _ranking_row(record: dict[str, Any]) -> dict[str, Any]:
    prompt = text_field(record, "prompt")
    responses = text_list_field(record, "responses", min_items=2)
    ranking = record.get("ranking")
    if not isinstance(ranking, list) or not all(
        isinstance(r, int) and not isinstance(r, bool) for r in ranking
    ):
        raise FieldError("ranking", "must be a list of integers, one rank per response (0 = best)")
    if len(ranking) != len(responses):
        raise FieldError("ranking", f"has {len(ranking)} ranks for {len(responses)} responses")
    if min(ranking) != 0 or max(ranking) >= len(ranking):
        raise FieldError(
            "ranking", f"ranks must lie in 0..{len(ranking) - 1} with 0 (best) present, got {ranking}"
        )
    if len(set(ranking)) == 1:
        raise FieldError("ranking", "all responses tie: no preference to learn")
    seen: dict[str, int] = {}
    for response, rank in zip(responses, ranking):
        if seen.setdefault(response, rank) != rank:
            raise FieldError("responses", "the same response appears twice with different ranks")
    return {"prompt": prompt, "responses": responses, "ranking": ranking}
