"""A chat model answering prompts: K sampled responses per prompt, batched, decoded to text.

The SFT stage's sample table, the comparisons stage's K responses per prompt (InstructGPT's
rankings), PPO's rollouts and the final evaluation all ask the same thing: render each prompt in
the chat template up to the assistant marker, continue it with the KV-cache sampler until
end-of-text, and read the response back. Prompts are sorted by length before batching (less left
padding) and each is repeated K times in its batch, so its K samples share one prefill of the
batch and differ by their own random draws. The result is deterministic for a given seed, model,
prompt list and batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from instructgpt.chat import ChatTemplate
from instructgpt.generate import SamplingConfig, generate
from instructgpt.model import GPT
from instructgpt.tokenizer import SPECIAL, decode, special_token_ids


@dataclass(frozen=True)
class Answer:
    """One sampled response: its text (without the end-of-text), its new token ids, and whether it ended."""

    text: str
    tokens: list[int]  # as generated, the end-of-text included when it ended
    ended: bool  # False when max_new_tokens cut it


def answer(
    model: GPT,
    template: ChatTemplate,
    prompts: Sequence[str],
    sampling: SamplingConfig,
    *,
    samples: int = 1,
    batch_rows: int = 32,
) -> list[list[Answer]]:
    """`samples` answers to every prompt, in the order of `prompts`.

    batch_rows: sequences per generate call (prompts x samples), at least one prompt's samples.
    Prompts are cut from the left to leave room for `sampling.max_new_tokens` in the context.
    """
    if samples < 1:
        raise ValueError("samples must be at least 1")
    ids = special_token_ids(template.tokenizer)
    room = model.config.context - sampling.max_new_tokens + 1
    if room < 3:
        raise ValueError(f"max_new_tokens ({sampling.max_new_tokens}) leaves no room for a prompt in the context of {model.config.context}")
    encoded = [template.prompt_ids(p, max_len=room) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    per_batch = max(1, batch_rows // samples)
    generator = torch.Generator(device=model.lm_head.weight.device)
    generator.manual_seed(sampling.seed if sampling.seed is not None else torch.initial_seed())
    unseeded = replace(sampling, seed=None)  # one stream across batches, seeded once
    results: list[list[Answer]] = [[] for _ in prompts]
    for start in range(0, len(order), per_batch):
        chunk = order[start : start + per_batch]
        rows = [encoded[i] for i in chunk for _ in range(samples)]
        out = generate(model, rows, unseeded, eos_id=ids[SPECIAL.end_of_text], pad_id=ids[SPECIAL.pad], generator=generator)
        for row, (tokens, ended) in enumerate(zip(out.sequences(), out.ended.tolist())):
            text_ids = tokens[:-1] if ended else tokens
            results[chunk[row // samples]].append(Answer(decode(template.tokenizer, text_ids), tokens, bool(ended)))
    return results
