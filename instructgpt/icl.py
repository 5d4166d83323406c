"""Zero-, one- and few-shot evaluation by likelihood (GPT-2 / GPT-3): P(answer | task, examples, input).

A task is rendered as text by a natural-language `Template`: its prompt for one input and the
candidate answers (a label's words, or a multiple-choice question's choices). A k-shot prompt is k
solved examples drawn from the train split, each its prompt followed by its right answer, then the
example to score, separated by blank lines (GPT-3, section 2). Demonstrations that do not fit the
model's context are dropped from the front, and the number kept is reported.

Each candidate is scored by the log-likelihood of its tokens after the prompt: the prediction is
the candidate with the highest sum, or with the highest mean per token (GPT-3's length
normalisation, which stops long answers being penalised for their length). Both accuracies are
reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instructgpt.batches import pad_right


@dataclass(frozen=True)
class Template:
    """How one task reads as text. `prompt` formats {a} (the text, premise or context) and {b}
    (the second text); `answers[label]` is a label's answer text; without `answers` the candidates
    are the example's own choices, each after `choice_prefix`."""

    prompt: str
    answers: tuple[str, ...] | None = None
    choice_prefix: str = " "
    separator: str = "\n\n"


# Natural-language templates for the pack's tasks, in the style of the GPT-2 and GPT-3 papers.
BUILTIN_TEMPLATES: dict[str, Template] = {
    "sst2": Template("Review: {a}\nSentiment:", (" negative", " positive")),
    "rt_polarity": Template("Review: {a}\nSentiment:", (" negative", " positive")),
    # SICK's labels: 0 entailment, 1 neutral, 2 contradiction (GPT-3's RTE/CB wording)
    "sick-entailment": Template("{a}\nQuestion: {b} True, False or Neither?\nAnswer:", (" True", " Neither", " False")),
    "msrp": Template("Sentence 1: {a}\nSentence 2: {b}\nQuestion: Do both sentences mean the same thing?\nAnswer:",
                     (" No", " Yes")),
    "book_cloze": Template("{a}"),
}


def default_template(task_type: str, classes: int) -> Template:
    """A plain template for a task without its own: the label's number is the answer."""
    labels = tuple(f" {i}" for i in range(classes))
    if task_type == "classification":
        return Template("Text: {a}\nLabel:", labels)
    if task_type in ("entailment", "similarity"):
        return Template("Text A: {a}\nText B: {b}\nLabel:", labels)
    if task_type == "multiple_choice":
        return Template("{a}")
    raise ValueError(f"no template for task type {task_type!r}")


@dataclass(frozen=True)
class Item:
    """One example as text: its prompt, its candidate answers, the right one's index."""

    prompt: str
    candidates: tuple[str, ...]
    answer: int

    def solved(self) -> str:
        return self.prompt + self.candidates[self.answer]


def render(template: Template, a: str, b: str | None, choices: Sequence[str] | None, label: int) -> Item:
    prompt = template.prompt.format(a=a, b=b or "")
    if template.answers is not None:
        candidates = template.answers
    elif choices is not None:
        candidates = tuple(template.choice_prefix + c for c in choices)
    else:
        raise ValueError("a template without answers needs the example's choices")
    if not 0 <= label < len(candidates):
        raise ValueError(f"label {label} has no answer among {len(candidates)} candidates")
    return Item(prompt, tuple(candidates), int(label))


def demonstrations(query_index: int, query: Item, pool: Sequence[Item], k: int, seed: int) -> list[Item]:
    """k solved examples for the query, drawn without replacement from `pool` with a generator seeded
    by (seed, query index); never the query itself, nor any example with its prompt."""
    if k == 0:
        return []
    allowed = [i for i, item in enumerate(pool) if item.prompt != query.prompt]
    if len(allowed) < k:
        raise ValueError(f"{k} demonstrations asked for, {len(allowed)} available")
    rng = np.random.default_rng([seed, query_index])
    return [pool[i] for i in rng.choice(allowed, size=k, replace=False)]


def k_shot_context(demos: Sequence[Item], query: Item, separator: str) -> str:
    return "".join(d.solved() + separator for d in demos) + query.prompt


@dataclass(frozen=True)
class Scored:
    """A query's candidates: log-likelihood sums and token counts, and the demonstrations used."""

    sums: tuple[float, ...]
    tokens: tuple[int, ...]
    shots: int

    def choice(self, normalise: bool) -> int:
        values = [s / max(n, 1) for s, n in zip(self.sums, self.tokens)] if normalise else list(self.sums)
        return int(np.argmax(values))


def fit(encode: Any, demos: list[Item], query: Item, separator: str, limit: int) -> tuple[list[int], list[list[int]], int]:
    """The context's and each candidate's token ids, with demonstrations dropped from the front until
    the longest candidate fits within `limit` tokens after the context; the demonstrations kept."""
    candidates = [encode(c) for c in query.candidates]
    longest = max(len(c) for c in candidates)
    while True:
        context = encode(k_shot_context(demos, query, separator))
        if len(context) + longest <= limit or not demos:
            break
        demos = demos[1:]
    context = context[-(limit - longest) :]  # a lone query that is still too long keeps its end
    return context, candidates, len(demos)


@torch.no_grad()
def candidate_loglikelihoods(model: nn.Module, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
                             batch_size: int) -> list[tuple[float, int]]:
    """Σ log P(candidate tokens | context) and the candidate's length, for every (context, candidate)."""
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    order = np.argsort([len(c) + len(a) for c, a in pairs], kind="stable")
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = [list(pairs[i][0]) + list(pairs[i][1]) for i in chunk]
        ids = torch.from_numpy(pad_right(rows, pad_id)).to(device)
        hidden = model.hidden_states(ids)
        # the unembedding only where a candidate token is predicted: most positions are the prompt
        row_index, positions, targets = [], [], []
        for row, i in enumerate(chunk):
            context, answer = pairs[i]
            row_index += [row] * len(answer)
            positions += range(len(context) - 1, len(context) + len(answer) - 1)
            targets += list(answer)
        logits = model.lm_head(hidden[torch.tensor(row_index, device=device), torch.tensor(positions, device=device)])
        picked = F.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(targets, device=device)[:, None]).squeeze(1)
        sums = torch.zeros(len(chunk), device=device).index_add_(0, torch.tensor(row_index, device=device), picked)
        for row, i in enumerate(chunk):
            out[i] = (float(sums[row]), len(pairs[i][1]))
    return out


def score_items(model: nn.Module, encode: Any, queries: Sequence[Item], pool: Sequence[Item], k: int, *,
                separator: str, context_limit: int, pad_id: int, seed: int, batch_size: int = 32) -> list[Scored]:
    """Every query's candidates scored after k demonstrations from `pool`."""
    pairs: list[tuple[list[int], list[int]]] = []
    spans, shots = [], []
    for index, query in enumerate(queries):
        demos = demonstrations(index, query, pool, k, seed)
        context, candidates, kept = fit(encode, demos, query, separator, context_limit)
        spans.append((len(pairs), len(candidates)))
        shots.append(kept)
        pairs += [(context, c) for c in candidates]
    results = candidate_loglikelihoods(model, pairs, pad_id, batch_size)
    return [Scored(tuple(r[0] for r in results[s : s + n]), tuple(r[1] for r in results[s : s + n]), kept)
            for (s, n), kept in zip(spans, shots)]


def accuracies(scored: Sequence[Scored], queries: Sequence[Item]) -> Mapping[str, float]:
    """Accuracy by the summed and by the per-token log-likelihood, the share of the most picked
    candidate, and the mean demonstrations kept."""
    gold = np.array([q.answer for q in queries])
    picks = np.array([s.choice(False) for s in scored])
    return {
        # how often the most picked candidate is picked: 1.0 means the model answers the same whatever the input
        "top_pick_share": float(np.bincount(picks).max() / len(picks)) if len(picks) else float("nan"),
        "accuracy": float(np.mean(np.array([s.choice(False) for s in scored]) == gold)),
        "accuracy_per_token": float(np.mean(np.array([s.choice(True) for s in scored]) == gold)),
        "shots_mean": float(np.mean([s.shots for s in scored])),
        "examples": float(len(queries)),
    }
