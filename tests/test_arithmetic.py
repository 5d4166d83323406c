"""Generated word problems: every step's reasoning is true arithmetic, the answer is the last step's
value, the question states every operation, and a seed fixes the problems."""

from __future__ import annotations

import re

from instructgpt.arithmetic import make_problems


def test_steps_are_true_and_chain_to_the_answer() -> None:
    problems = make_problems(200, seed=0, min_steps=2, max_steps=3)
    for p in problems:
        assert 2 <= len(p.steps) <= 3
        previous = int(re.search(r"has (\d+)", p.question).group(1))
        for step in p.steps:
            a, op, b, c = re.fullmatch(r"(\d+) ([-+*]) (\d+) = (\d+)\.", step.reasoning).groups()
            assert int(a) == previous and int(c) == step.value >= 0
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == step.value
            previous = step.value
        assert p.answer == p.steps[-1].value
        assert p.question.endswith(p.steps[-1].sub_question)  # least-to-most's last question is the problem's
        assert p.question.count(".") == len(p.steps) + 1  # the start and one sentence per operation
        assert p.chain_of_thought().endswith(f"The answer is {p.answer}.")
    assert make_problems(20, seed=3) == make_problems(20, seed=3)
    assert make_problems(20, seed=3) != make_problems(20, seed=4)
