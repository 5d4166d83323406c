"""Generated multi-step arithmetic word problems whose answers, and every intermediate step, are known.

"Mia has 4 shells. She finds 7 more shells. Then she gives 3 shells to Ben. How many shells does
Mia have now?" Each problem is a start amount and 1 to `max_steps` operations (gaining, losing,
doubling), kept non-negative. Every step has a sub-question ("How many shells does Mia have after
she finds 7 more?"), its one-line reasoning ("4 + 7 = 11.") and its value, so the same problems
serve plain prompting, chain-of-thought exemplars and least-to-most decomposition. A seed fixes
the problems.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_PEOPLE = (("Mia", "She", "she"), ("Tom", "He", "he"), ("Ava", "She", "she"), ("Sam", "He", "he"),
           ("Lily", "She", "she"), ("Ben", "He", "he"), ("Zoe", "She", "she"), ("Leo", "He", "he"))
_THINGS = ("apples", "shells", "books", "marbles", "stamps", "coins", "pencils", "cards")


@dataclass(frozen=True)
class Step:
    sub_question: str
    reasoning: str
    value: int


@dataclass(frozen=True)
class Problem:
    question: str
    steps: tuple[Step, ...]

    @property
    def answer(self) -> int:
        return self.steps[-1].value

    def chain_of_thought(self) -> str:
        return " ".join(step.reasoning for step in self.steps) + f" The answer is {self.answer}."


def make_problems(n: int, seed: int, min_steps: int = 2, max_steps: int = 3) -> list[Problem]:
    if not 1 <= min_steps <= max_steps:
        raise ValueError("need 1 <= min_steps <= max_steps")
    rng = np.random.default_rng(seed)
    return [_problem(rng, int(rng.integers(min_steps, max_steps + 1))) for _ in range(n)]


def _problem(rng: np.random.Generator, n_steps: int) -> Problem:
    name, pronoun, lower = _PEOPLE[int(rng.integers(len(_PEOPLE)))]
    other = _PEOPLE[int(rng.integers(len(_PEOPLE)))][0]
    other = other if other != name else "Kim"
    thing = _THINGS[int(rng.integers(len(_THINGS)))]
    value = int(rng.integers(2, 10))
    sentences = [f"{name} has {value} {thing}."]
    steps = []
    for i in range(n_steps):
        lead = pronoun if i == 0 else f"Then {lower}"
        kind = int(rng.integers(3)) if value > 1 else 0
        if kind == 0:
            amount = int(rng.integers(2, 10))
            verb = "buys" if rng.integers(2) else "finds"
            sentences.append(f"{lead} {verb} {amount} more {thing}.")
            after, reasoning, value = f"{verb} {amount} more", f"{value} + {amount} = {value + amount}.", value + amount
        elif kind == 1:
            amount = int(rng.integers(1, value))
            sentences.append(f"{lead} gives {amount} {thing} to {other}.")
            after, reasoning, value = f"gives {amount} to {other}", f"{value} - {amount} = {value - amount}.", value - amount
        else:
            sentences.append(f"{lead} doubles the {thing} {lower} has.")
            after, reasoning, value = "doubles them", f"{value} * 2 = {value * 2}.", value * 2
        steps.append(Step(f"How many {thing} does {name} have after {lower} {after}?", reasoning, value))
    final = f"How many {thing} does {name} have now?"
    steps[-1] = Step(final, steps[-1].reasoning, steps[-1].value)  # least-to-most ends on the question itself
    return Problem(" ".join(sentences) + " " + final, tuple(steps))
