"""Which InstructGPT step a prompt belongs to: `sft`, `reward`, `ppo` or `eval`, disjoint by design.

InstructGPT trains SFT, the reward model and PPO on separate prompt sets and evaluates on prompts
none of them saw. Here every distinct prompt gets one phase, a pure function of its text, so the
same prompt has the same phase in every table (demonstrations, prompts) and no prompt can sit in
two phases:

- a prompt that imported comparisons or ranked sets use is `reward`: those are reward-model data;
- a prompt with a demonstration is hashed into the four phases by `shares` (the demonstration is
  then SFT data, a labeler's reference for reward-model rankings, or a reference answer for PPO
  and evaluation);
- any other prompt (a prompt source without responses) is hashed into `ppo` and `eval` only, by
  their shares renormalised: without a response it can serve neither SFT nor the labeler.

Ingest writes the phase as a column of the `demonstrations` and `prompts` tables, so the split is
recorded with the data and every later stage filters on it.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

from instructgpt.corpus import split_by_hash

Phase = Literal["sft", "reward", "ppo", "eval"]
PHASES: tuple[Phase, ...] = ("sft", "reward", "ppo", "eval")
PROMPT_ONLY: tuple[Phase, ...] = ("ppo", "eval")
DEFAULT_SHARES: dict[str, float] = {"sft": 0.6, "reward": 0.15, "ppo": 0.15, "eval": 0.1}
_SALT_SUFFIX = "/phase"  # a different hash from the train/val split of the same prompt


def check_shares(shares: Mapping[str, float]) -> None:
    """Shares name every phase once, are non-negative and sum to 1 (ValueError otherwise)."""
    if set(shares) != set(PHASES):
        raise ValueError(f"phase shares must name exactly {list(PHASES)}, got {sorted(shares)}")
    if any(share < 0 for share in shares.values()):
        raise ValueError(f"phase shares must be >= 0, got {dict(shares)}")
    if abs(sum(shares.values()) - 1.0) > 1e-6:
        raise ValueError(f"phase shares must sum to 1, got {sum(shares.values()):.6f}")
    if sum(shares[p] for p in PROMPT_ONLY) <= 0:
        raise ValueError("the ppo and eval shares cannot both be 0: prompts without a response need one of them")


def phase_of(
    prompt: str,
    salt: str,
    shares: Mapping[str, float],
    *,
    has_demonstration: bool,
    in_comparisons: bool,
) -> Phase:
    """The phase of one prompt (see the module docstring for the rule)."""
    if in_comparisons:
        return "reward"
    candidates = PHASES if has_demonstration else PROMPT_ONLY
    total = sum(shares[p] for p in candidates)
    fractions = [(p, shares[p] / total) for p in candidates[:-1]]
    return split_by_hash(prompt, salt + _SALT_SUFFIX, fractions, candidates[-1])  # type: ignore[return-value]


def assign(
    prompts: Sequence[str],
    salt: str,
    shares: Mapping[str, float],
    demonstrated: set[str],
    compared: set[str],
) -> list[Phase]:
    """Phases of `prompts`, given the prompts that have demonstrations and those in comparisons."""
    check_shares(shares)
    return [
        phase_of(p, salt, shares, has_demonstration=p in demonstrated, in_comparisons=p in compared)
        for p in prompts
    ]
