"""Prompting strategies: what each asks the model and how it reads the answer. A scripted completer
stands in for the model's continuations (the strategies are under test, not the model); one test
runs every strategy on a real model through the KV-cache sampler."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer

from instructgpt.arithmetic import make_problems
from instructgpt.model import GPT, preset
from instructgpt.prompting import (
    ANSWER_EXTRACTION,
    STRATEGIES,
    cot_prompt,
    greedy_completer,
    plain_prompt,
    run_strategy,
    stated_answer,
    sub_questions,
)
from instructgpt.tokenizer import SPECIAL, TokenizerConfig, special_token_ids, train_tokenizer

PROBLEMS = make_problems(6, seed=1)
EXEMPLARS, TEST = PROBLEMS[:2], PROBLEMS[2:]


def test_few_shot_prompts_show_the_exemplars_and_end_on_the_question() -> None:
    prompt = plain_prompt(TEST[0], EXEMPLARS)
    assert prompt.endswith(f"Q: {TEST[0].question}\nA:")
    assert all(f"The answer is {e.answer}." in prompt for e in EXEMPLARS)
    cot = cot_prompt(TEST[0], EXEMPLARS)
    assert all(e.chain_of_thought() in cot for e in EXEMPLARS) and TEST[0].chain_of_thought() not in cot


def test_answers_are_read_from_the_completion() -> None:
    assert stated_answer("4 + 3 = 7. 7 * 2 = 14. The answer is 14.") == 14
    assert stated_answer("5 - 2 = 3.") == 3
    assert stated_answer("no idea") is None
    assert sub_questions(' How many are left? How many now? ') == ["How many are left?", "How many now?"]


def test_zero_shot_cot_reasons_then_extracts() -> None:
    calls: list[list[str]] = []

    def complete(prompts: Sequence[str]) -> list[str]:
        calls.append(list(prompts))
        if len(calls) == 1:
            return [" First we add.\n\nQ: unrelated" for _ in prompts]
        return [f" {p.answer}." for p in TEST]

    attempts = run_strategy("zero_shot_cot", TEST, EXEMPLARS, complete)
    assert len(calls) == 2 and all(p.endswith("Let's think step by step.") for p in calls[0])
    assert all("Q: unrelated" not in p and p.endswith(f" First we add.\n{ANSWER_EXTRACTION}") for p in calls[1])
    assert [a.answer for a in attempts] == [p.answer for p in TEST]


def test_least_to_most_solves_sub_questions_in_turn() -> None:
    calls: list[list[str]] = []
    sub = {id(p): [s.sub_question for s in p.steps] for p in TEST}

    def complete(prompts: Sequence[str]) -> list[str]:
        calls.append(list(prompts))
        if len(calls) == 1:  # decomposition: the true sub-questions but the last
            return [" " + " ".join(sub[id(p)][:-1]) for p in TEST]
        out = []
        for prompt in prompts:
            problem = next(p for p in TEST if p.question.rsplit(". ", 1)[0] in prompt)
            asked = prompt.rsplit("Q: ", 1)[1].removesuffix("\nA:")
            step = next(s for s in problem.steps if s.sub_question == asked)
            out.append(f" {step.reasoning}")
        return out

    attempts = run_strategy("least_to_most", TEST, EXEMPLARS, complete)
    assert [a.answer for a in attempts] == [p.answer for p in TEST]
    rounds = max(len(p.steps) for p in TEST)
    assert len(calls) == 1 + rounds
    # every round's prompt holds the answers to the sub-questions before it
    for p, a in zip(TEST, attempts):
        final_context = a.transcript[-1]
        assert all(s.reasoning in final_context for s in p.steps)


def test_every_strategy_runs_on_a_real_model(data_pack: Path) -> None:
    text = (data_pack / "books/austen/emma.txt").read_text(encoding="utf-8")[:30_000]
    tokenizer: Tokenizer = train_tokenizer(text.split("\n\n"), TokenizerConfig(vocab_size=300))
    torch.manual_seed(0)
    model = GPT(preset("cpu-tiny", vocab_size=tokenizer.get_vocab_size(), context=512)).eval()
    ids = special_token_ids(tokenizer)
    complete = greedy_completer(model, tokenizer, max_new_tokens=8, context=512, pad_id=ids[SPECIAL.pad],
                                eos_id=ids[SPECIAL.end_of_text], batch_size=2)
    for strategy in STRATEGIES:
        attempts = run_strategy(strategy, TEST[:2], EXEMPLARS, complete)
        assert len(attempts) == 2 and all(a.transcript for a in attempts)
