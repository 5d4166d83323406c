"""Prompting strategies for generative tasks, scored by exact match of the final number.

- `plain`: few-shot question → answer exemplars ("A: The answer is 6.").
- `cot`: few-shot chain of thought (Wei et al. 2022): the exemplars show their reasoning first.
- `zero_shot_cot` (Kojima et al. 2022): "Let's think step by step." and no exemplars; the
  reasoning the model writes is then followed by an answer-extraction prompt, "Therefore, the
  answer (arabic numerals) is", and the number it completes is the answer.
- `least_to_most` (Zhou et al. 2023): first decompose (exemplars turn a problem into the
  sub-questions to answer first), then solve the sub-questions in turn, each answer appended to
  the context before the next; the answer to the last, the problem's own question, counts.

A `Complete` function turns prompts into greedy continuations; completions are cut at the first
blank line (the exemplars' separator). Everything a strategy asked and got is kept in its
transcript.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tokenizers import Tokenizer

from instructgpt.arithmetic import Problem
from instructgpt.generate import SamplingConfig, generate
from instructgpt.tokenizer import decode, encode_ordinary_batch

Complete = Callable[[Sequence[str]], list[str]]
STRATEGIES = ("plain", "cot", "zero_shot_cot", "least_to_most")
ANSWER_EXTRACTION = "Therefore, the answer (arabic numerals) is"
_NUMBER = re.compile(r"-?\d+")


@dataclass
class Attempt:
    answer: int | None
    transcript: list[str] = field(default_factory=list)  # prompt + completion of every call


def first_number(text: str) -> int | None:
    match = _NUMBER.search(text)
    return int(match.group()) if match else None


def stated_answer(text: str) -> int | None:
    """The number after "the answer is", else the last number in the text."""
    match = re.search(r"answer is\s*(-?\d+)", text)
    if match:
        return int(match.group(1))
    numbers = _NUMBER.findall(text)
    return int(numbers[-1]) if numbers else None


def cut(completion: str) -> str:
    return completion.split("\n\n", 1)[0]


def plain_prompt(problem: Problem, exemplars: Sequence[Problem]) -> str:
    shots = "".join(f"Q: {e.question}\nA: The answer is {e.answer}.\n\n" for e in exemplars)
    return shots + f"Q: {problem.question}\nA:"


def cot_prompt(problem: Problem, exemplars: Sequence[Problem]) -> str:
    shots = "".join(f"Q: {e.question}\nA: {e.chain_of_thought()}\n\n" for e in exemplars)
    return shots + f"Q: {problem.question}\nA:"


def zero_shot_cot_prompt(problem: Problem) -> str:
    return f"Q: {problem.question}\nA: Let's think step by step."


def decomposition_prompt(problem: Problem, exemplars: Sequence[Problem]) -> str:
    shots = "".join(f"Q: {e.question}\nA: To answer this, we first answer: "
                    + " ".join(s.sub_question for s in e.steps[:-1]) + "\n\n" for e in exemplars)
    return shots + f"Q: {problem.question}\nA: To answer this, we first answer:"


def solving_context(problem: Problem, exemplars: Sequence[Problem]) -> str:
    shots = "".join(_statement(e) + "\n" + "".join(f"Q: {s.sub_question}\nA: {s.reasoning}\n" for s in e.steps) + "\n"
                    for e in exemplars)
    return shots + _statement(problem) + "\n"


def sub_questions(decomposition: str) -> list[str]:
    """The questions a decomposition lists (each ends with '?')."""
    return [q.strip() + "?" for q in decomposition.split("?")[:-1] if q.strip()]


def run_strategy(strategy: str, problems: Sequence[Problem], exemplars: Sequence[Problem], complete: Complete,
                 max_sub_questions: int = 4) -> list[Attempt]:
    """Every problem attempted with `strategy`; batched: one `complete` call per round for all problems."""
    if strategy == "plain":
        return _one_round([plain_prompt(p, exemplars) for p in problems], complete, first_number)
    if strategy == "cot":
        return _one_round([cot_prompt(p, exemplars) for p in problems], complete, stated_answer)
    if strategy == "zero_shot_cot":
        prompts = [zero_shot_cot_prompt(p) for p in problems]
        reasoning = [cut(c) for c in complete(prompts)]
        extraction = [f"{p}{r}\n{ANSWER_EXTRACTION}" for p, r in zip(prompts, reasoning)]
        answers = [cut(c) for c in complete(extraction)]
        return [Attempt(first_number(a), [e + a]) for e, a in zip(extraction, answers)]
    if strategy == "least_to_most":
        return _least_to_most(problems, exemplars, complete, max_sub_questions)
    raise ValueError(f"unknown strategy {strategy!r}; strategies: {STRATEGIES}")


def _one_round(prompts: list[str], complete: Complete, parse: Callable[[str], int | None]) -> list[Attempt]:
    completions = [cut(c) for c in complete(prompts)]
    return [Attempt(parse(c), [p + c]) for p, c in zip(prompts, completions)]


def _least_to_most(problems: Sequence[Problem], exemplars: Sequence[Problem], complete: Complete,
                   max_sub_questions: int) -> list[Attempt]:
    decomposing = [decomposition_prompt(p, exemplars) for p in problems]
    decompositions = [cut(c).split("\n", 1)[0] for c in complete(decomposing)]
    # the model's sub-questions, then the problem's own question last
    questions = [sub_questions(d)[:max_sub_questions] + [p.question.rsplit(". ", 1)[-1]] for d, p in zip(decompositions, problems)]
    contexts = [solving_context(p, exemplars) for p in problems]
    attempts = [Attempt(None, [q + d]) for q, d in zip(decomposing, decompositions)]
    for round_ in range(max(len(q) for q in questions)):
        active = [i for i, q in enumerate(questions) if round_ < len(q)]
        prompts = [contexts[i] + f"Q: {questions[i][round_]}\nA:" for i in active]
        for i, prompt, completion in zip(active, prompts, complete(prompts)):
            line = cut(completion).split("\n", 1)[0]
            contexts[i] = prompt + line + "\n"
            attempts[i].answer = stated_answer(line)  # the last sub-question's answer is the one that counts
    for attempt, context in zip(attempts, contexts):
        attempt.transcript.append(context)
    return attempts


def _statement(problem: Problem) -> str:
    """The problem without its final question (least-to-most asks the questions one at a time)."""
    return problem.question.rsplit(". ", 1)[0] + "."


def greedy_completer(model: torch.nn.Module, tokenizer: Tokenizer, *, max_new_tokens: int, context: int, pad_id: int,
                     eos_id: int, batch_size: int = 32) -> Complete:
    """Greedy continuations of text prompts with the KV-cache sampler; a prompt too long for the
    context keeps its end."""
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    keep = context - max_new_tokens

    def complete(prompts: Sequence[str]) -> list[str]:
        ids = [p[-keep:] for p in encode_ordinary_batch(tokenizer, list(prompts))]
        out: list[str] = []
        for start in range(0, len(ids), batch_size):
            generation = generate(model, ids[start : start + batch_size], config, eos_id=eos_id, pad_id=pad_id)
            out += [decode(tokenizer, [t for t in row if t != eos_id]) for row in generation.sequences()]
        return out

    return complete
