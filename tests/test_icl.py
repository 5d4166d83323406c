"""Likelihood scoring for zero/few-shot evaluation: candidate log-likelihoods equal a token-by-token
hand computation, length normalisation can change the pick, k-shot prompts never hold the example
being scored, and demonstrations that do not fit the context are dropped from the front."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from instructgpt.icl import (
    BUILTIN_TEMPLATES,
    Item,
    Scored,
    Template,
    accuracies,
    candidate_loglikelihoods,
    demonstrations,
    fit,
    k_shot_context,
    render,
    score_items,
)
from instructgpt.model import GPT, preset


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(preset("cpu-tiny", vocab_size=50)).eval()


def encode(text: str) -> list[int]:  # one token per character, within the tiny vocabulary
    return [7 + (ord(c) % 40) for c in text]


def test_candidate_loglikelihood_is_the_sum_over_its_tokens() -> None:
    model = tiny_model()
    context, answer = [3, 9, 12, 5], [20, 21, 22]
    [(total, n)] = candidate_loglikelihoods(model, [(context, answer)], pad_id=0, batch_size=4)
    expected, prefix = 0.0, list(context)
    with torch.no_grad():
        for token in answer:  # one forward per token: P(token | everything before it)
            logits = model(torch.tensor([prefix])).logits[0, -1]
            expected += float(F.log_softmax(logits, dim=-1)[token])
            prefix.append(token)
    assert n == 3 and total == pytest.approx(expected, abs=1e-4)
    # batched with a longer row (padding after it) gives the same figure
    batched = candidate_loglikelihoods(model, [(context, answer), ([4] * 30, [8])], pad_id=0, batch_size=4)
    assert batched[0][0] == pytest.approx(total, abs=1e-4)


def test_length_normalisation_can_change_the_choice() -> None:
    scored = Scored(sums=(-3.0, -4.0), tokens=(1, 4), shots=0)
    assert scored.choice(normalise=False) == 0  # -3 > -4
    assert scored.choice(normalise=True) == 1  # -1 per token > -3 per token
    queries = [Item("q", ("a", "b"), 1)]
    assert accuracies([scored], queries) == {"top_pick_share": 1.0, "accuracy": 0.0, "accuracy_per_token": 1.0,
                                             "shots_mean": 0.0, "examples": 1.0}


def test_k_shot_prompts_never_contain_the_example_being_scored() -> None:
    template = BUILTIN_TEMPLATES["sst2"]
    pool = [render(template, f"film number {i} was fine", None, None, i % 2) for i in range(30)]
    for index, query in enumerate(pool[:10]):  # the queries are in the pool, and a copy of one is too
        demos = demonstrations(index, query, pool + [query], 4, seed=0)
        assert len(demos) == 4 and all(d.prompt != query.prompt for d in demos)
        context = k_shot_context(demos, query, template.separator)
        assert context.count(query.prompt) == 1 and context.endswith(query.prompt)
        assert all(d.solved() in context for d in demos)
    assert demonstrations(0, pool[0], pool, 0, seed=0) == []
    with pytest.raises(ValueError, match="available"):
        demonstrations(0, pool[0], pool[:3], 3, seed=0)


def test_demonstrations_are_dropped_from_the_front_to_fit() -> None:
    query = Item("Q?", (" yes", " no"), 0)
    demos = [Item(f"D{i}?", (" yes", " no"), 0) for i in range(5)]
    context, candidates, kept = fit(encode, demos, query, "\n\n", limit=40)
    assert kept < 5 and len(context) + max(len(c) for c in candidates) <= 40
    assert context == encode(k_shot_context(demos[5 - kept :], query, "\n\n"))  # the last ones kept
    _, _, all_kept = fit(encode, demos, query, "\n\n", limit=1000)
    assert all_kept == 5


def test_score_items_picks_by_likelihood_and_reports_shots() -> None:
    model = tiny_model()
    template = Template("{a} ->", (" x", " yy"))
    pool = [render(template, f"item {i}", None, None, i % 2) for i in range(8)]
    scored = score_items(model, encode, pool[:4], pool, 2, separator="\n", context_limit=model.config.context,
                         pad_id=0, seed=0)
    assert [s.shots for s in scored] == [2, 2, 2, 2]
    assert all(len(s.sums) == 2 and s.tokens == (2, 3) for s in scored)


def test_multiple_choice_candidates_are_the_choices() -> None:
    item = render(BUILTIN_TEMPLATES["book_cloze"], "It rained.", None, ["He left.", "She sang."], 1)
    assert item.prompt == "It rained." and item.candidates == (" He left.", " She sang.") and item.answer == 1
    with pytest.raises(ValueError, match="no answer"):
        render(BUILTIN_TEMPLATES["sst2"], "ok", None, None, 2)
