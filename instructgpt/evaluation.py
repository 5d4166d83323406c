"""Head to head: does a policy answer held-out prompts better than a baseline (PPO against SFT)?

Both models answer the same prompts with the same sampling. Reported, per model and between them:

- the reward model's mean score (what PPO optimised: it must rise, but it is not the judge);
- the programmatic labeler's mean rubric score against each prompt's reference (the stand-in for
  the human judge, which PPO never saw) and the policy's win rate against the baseline under it
  (a tie counts a half, as in InstructGPT's preference comparisons);
- the KL from the reference model of each model's own samples, per response (k1, summed over
  its tokens), the response length and the end-of-text rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from instructgpt import ppo
from instructgpt.answers import Answer, answer
from instructgpt.batches import IGNORE, pad_right
from instructgpt.chat import ChatTemplate
from instructgpt.generate import SamplingConfig
from instructgpt.labelers import ProgrammaticLabeler
from instructgpt.reward import score_sequences


@dataclass(frozen=True)
class Answers:
    """One model's answers to the prompts, as the reward model and the KL read them."""

    texts: list[str]
    sequences: list[list[int]]  # prompt ids + response tokens (the end-of-text included where it ended)
    prompt_lengths: list[int]
    ended: list[bool]


def answers_of(model: nn.Module, template: ChatTemplate, prompts: Sequence[str], sampling: SamplingConfig,
               batch_rows: int = 32) -> Answers:
    """`model`'s answer to each prompt, kept with the exact token ids it continued."""
    context = model.config.context
    encoded = [template.prompt_ids(p, max_len=context - sampling.max_new_tokens + 1) for p in prompts]  # as `answer` cuts them
    answered: list[Answer] = [group[0] for group in answer(model, template, prompts, sampling, batch_rows=batch_rows)]
    # a full-length answer to a full-length prompt is one token over the context: its first prompt token goes
    sequences = [(e + a.tokens)[-context:] for e, a in zip(encoded, answered)]
    prompt_lengths = [len(s) - len(a.tokens) for s, a in zip(sequences, answered)]
    return Answers([a.text for a in answered], sequences, prompt_lengths, [a.ended for a in answered])


@torch.no_grad()
def response_logprob_sums(model: nn.Module, answers: Answers, pad_id: int, temperature: float = 1.0, batch_size: int = 16) -> np.ndarray:
    """Σ log p(y_t) over each response's tokens under `model` (logits / temperature)."""
    device = next(model.parameters()).device
    sums = np.zeros(len(answers.sequences))
    for start in range(0, len(sums), batch_size):
        rows = range(start, min(start + batch_size, len(sums)))
        ids = torch.from_numpy(pad_right([answers.sequences[i] for i in rows], pad_id)).to(device)
        targets = torch.full_like(ids, IGNORE)
        for k, i in enumerate(rows):
            seq, p = answers.sequences[i], answers.prompt_lengths[i]
            targets[k, p - 1 : len(seq) - 1] = torch.as_tensor(seq[p:], device=device)
        logp = ppo.token_logprobs(model(ids).logits, targets.clamp(min=0), temperature)
        sums[start : start + len(rows)] = (logp * (targets != IGNORE)).sum(dim=1).cpu().numpy()
    return sums


@dataclass(frozen=True)
class HeadToHead:
    """`compare`'s figures, and the answers they were computed from (per prompt, in order)."""

    figures: dict[str, float]
    texts: dict[str, list[str]]  # "policy" and "baseline"


def compare(
    policy: nn.Module,
    baseline: nn.Module,
    reference: nn.Module,
    reward_model: nn.Module,
    template: ChatTemplate,
    prompts: Sequence[str],
    references: Sequence[str],
    sampling: SamplingConfig,
    *,
    pad_id: int,
    labeler: ProgrammaticLabeler | None = None,
    batch_rows: int = 32,
) -> HeadToHead:
    """The head-to-head figures (see the module docstring), keyed `policy/...`, `baseline/...`, `win_rate`."""
    labeler = labeler or ProgrammaticLabeler()
    out: dict[str, float] = {"prompts": float(len(prompts))}
    texts = {}
    for name, model in (("policy", policy), ("baseline", baseline)):
        answers = answers_of(model, template, prompts, sampling, batch_rows)
        texts[name] = answers.texts
        scores = score_sequences(reward_model, answers.sequences, pad_id, batch_rows)
        if model is reference:  # its own samples are at KL 0 from it: no need for two identical forwards
            kl = np.zeros(len(answers.sequences))
        else:
            kl = (response_logprob_sums(model, answers, pad_id, sampling.temperature)
                  - response_logprob_sums(reference, answers, pad_id, sampling.temperature))
        rubric = [labeler.score(ref, text) for ref, text in zip(references, answers.texts)]
        out.update({
            f"{name}/reward_score": float(np.mean(scores)),
            f"{name}/labeler_score": float(np.mean(rubric)),
            f"{name}/kl_to_reference": float(np.mean(kl)),
            f"{name}/response_tokens": float(np.mean([len(s) - p for s, p in zip(answers.sequences, answers.prompt_lengths)])),
            f"{name}/eos_rate": float(np.mean(answers.ended)),
        })
    wins = []
    for prompt, ref, mine, theirs in zip(prompts, references, texts["policy"], texts["baseline"]):
        ranks = labeler.rank(prompt, ref, [mine, theirs])
        wins.append(1.0 if ranks[0] < ranks[1] else 0.5 if ranks[0] == ranks[1] else 0.0)
    out["win_rate"] = float(np.mean(wins)) if wins else float("nan")
    out["ties"] = float(sum(w == 0.5 for w in wins))
    return HeadToHead(out, texts)
