"""Prompt phases: one per distinct prompt, deterministic, disjoint, in the configured proportions."""

from __future__ import annotations

import pytest

from instructgpt.phases import DEFAULT_SHARES, PHASES, assign, check_shares, phase_of


def test_phases_are_a_pure_function_of_the_prompt_and_follow_the_shares() -> None:
    prompts = [f"prompt number {i}" for i in range(20_000)]
    first = assign(prompts, "salt", DEFAULT_SHARES, demonstrated=set(prompts), compared=set())
    assert first == assign(list(reversed(prompts)), "salt", DEFAULT_SHARES, set(prompts), set())[::-1]
    for phase in PHASES:
        assert first.count(phase) / len(prompts) == pytest.approx(DEFAULT_SHARES[phase], abs=0.01)
    assert assign(prompts, "other salt", DEFAULT_SHARES, set(prompts), set()) != first


def test_compared_prompts_are_reward_data_and_undemonstrated_prompts_only_ppo_or_eval() -> None:
    prompts = [f"p{i}" for i in range(2000)]
    compared = set(prompts[:100])
    phases = assign(prompts, "s", DEFAULT_SHARES, demonstrated=set(prompts[:1000]), compared=compared)
    assert set(phases[:100]) == {"reward"}
    assert set(phases[1000:]) == {"ppo", "eval"}
    ppo = phases[1000:].count("ppo") / 1000
    assert ppo == pytest.approx(0.15 / 0.25, abs=0.05)  # the ppo and eval shares, renormalised
    assert set(phases[100:1000]) == set(PHASES)


def test_one_prompt_has_one_phase_whatever_table_it_is_in() -> None:
    shares = {"sft": 0.25, "reward": 0.25, "ppo": 0.25, "eval": 0.25}
    for i in range(200):
        a = phase_of(f"q{i}", "s", shares, has_demonstration=True, in_comparisons=False)
        assert a == phase_of(f"q{i}", "s", shares, has_demonstration=True, in_comparisons=False)


@pytest.mark.parametrize(
    "shares, message",
    [
        ({"sft": 1.0}, "must name exactly"),
        ({"sft": 0.5, "reward": 0.5, "ppo": 0.5, "eval": -0.5}, ">= 0"),
        ({"sft": 0.5, "reward": 0.2, "ppo": 0.2, "eval": 0.2}, "sum to 1"),
        ({"sft": 0.5, "reward": 0.5, "ppo": 0.0, "eval": 0.0}, "cannot both be 0"),
    ],
)
def test_bad_shares_are_refused(shares: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_shares(shares)
