"""Instruction formats: human-written (prompt, response) demonstrations for supervised fine-tuning.

Both produce `demonstrations` rows. The prompt follows the Alpaca convention: the instruction, then
a blank line and the input when there is one. Earlier turns of a conversation (`history`) make the
prompt a transcript in the canonical form of `instructgpt.conversation`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from instructgpt.conversation import Turn, format_prompt
from instructgpt.formats.base import Item, Reject, Row
from instructgpt.formats.reading import FieldError, as_object, iter_json_records, json_rows, text_field


def instruction_prompt(instruction: str, input_text: str) -> str:
    """Alpaca's prompt: the instruction, and the input a blank line below it when there is one."""
    return f"{instruction}\n\n{input_text}" if input_text else instruction


# --- alpaca: {instruction, input, output, history?, system?} ------------------------------------


def parse_alpaca(path: Path, relname: str) -> Iterator[Item]:
    return json_rows(path, relname, "demonstrations", _alpaca_row)


def _alpaca_row(record: dict[str, Any]) -> dict[str, Any]:
    prompt = instruction_prompt(text_field(record, "instruction"), text_field(record, "input", default=""))
    response = text_field(record, "output")
    turns = [*_history_turns(record.get("history")), Turn("user", prompt)]
    system = text_field(record, "system", default="")
    if system:  # LLaMA-Factory's optional system prompt: there is no system role, so it leads the first turn
        turns[0] = Turn("user", f"{system}\n\n{turns[0].text}")
    return {"prompt": format_prompt(turns), "response": response}


def _history_turns(history: Any) -> list[Turn]:
    """LLaMA-Factory's `history`: earlier [query, answer] pairs, oldest first."""
    if history is None:
        return []
    if not isinstance(history, list):
        raise FieldError("history", "must be a list of [query, answer] pairs")
    turns = []
    for index, pair in enumerate(history):
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) and t.strip() for t in pair)
        ):
            raise FieldError("history", f"item {index} must be a [query, answer] pair of non-empty strings")
        turns += [Turn("user", pair[0].strip()), Turn("assistant", pair[1].strip())]
    return turns


# --- seed_tasks: {instruction, instances: [{input, output}]} -> one row per instance ------------


def parse_seed_tasks(path: Path, relname: str) -> Iterator[Item]:
    """A bad instruction rejects the task; a bad instance rejects that instance only."""
    for record in iter_json_records(path, relname):
        if isinstance(record, Reject):
            yield record
            continue
        try:
            task = as_object(record.value)
            instruction = text_field(task, "instruction")
            instances = task.get("instances")
            if not isinstance(instances, list) or not instances:
                raise FieldError("instances", "must be a non-empty list of {input, output} objects")
        except FieldError as err:
            yield Reject(relname, record.line, err.field, err.reason, record.raw)
            continue
        for index, instance in enumerate(instances):
            try:
                values = _seed_instance_row(instruction, instance)
            except FieldError as err:
                field = f"instances[{index}]" + (f".{err.field}" if err.field else "")
                yield Reject(relname, record.line, field, err.reason, record.raw)
            else:
                yield Row("demonstrations", values, relname, record.line)


def _seed_instance_row(instruction: str, instance: Any) -> dict[str, Any]:
    instance = as_object(instance)
    prompt = instruction_prompt(instruction, text_field(instance, "input", default=""))
    return {"prompt": prompt, "response": text_field(instance, "output")}
