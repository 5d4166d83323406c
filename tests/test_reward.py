"""The reward model and its task: the loss is InstructGPT's over explicit pairs, every pair of a set
lands in one batch with each response encoded once, the head reads the last real token, a
separable set is learnt to accuracy 1.0, and the normalisation bias centres the references on 0
and survives a save and a load."""

from __future__ import annotations

import math
import random
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from instructgpt import checkpoint
from instructgpt.chat import ChatTemplate
from instructgpt.heads import RewardModel, load_reward_model
from instructgpt.model import GPT, preset
from instructgpt.reward import (
    EncodedSet,
    RewardModelling,
    collate_sets,
    encode_sets,
    evaluate_sets,
    normalise,
    ranking_loss,
    score_sequences,
)
from instructgpt.tokenizer import SPECIAL, TokenizerConfig, special_token_ids, train_tokenizer
from instructgpt.train import TrainConfig, train


@pytest.fixture(scope="module")
def tokenizer(data_pack: Path) -> Tokenizer:
    text = (data_pack / "books/austen/emma.txt").read_text(encoding="utf-8")[:60_000]
    return train_tokenizer(text.split("\n\n"), TokenizerConfig(vocab_size=400))


def pad_id(tokenizer: Tokenizer) -> int:
    return special_token_ids(tokenizer)[SPECIAL.pad]


def reward_model(tokenizer: Tokenizer, seed: int = 0) -> RewardModel:
    torch.manual_seed(seed)
    return RewardModel(GPT(preset("cpu-tiny", vocab_size=tokenizer.get_vocab_size())))


@pytest.fixture(scope="module")
def sets(tokenizer: Tokenizer) -> list[EncodedSet]:
    return encode_sets(
        ChatTemplate(tokenizer),
        ["Who is Emma?", "Name a village.", "What is a ball?"],
        [["A young woman.", "Nobody.", "A lady of Highbury.", "Emma."], ["Highbury.", "Paris."], ["A dance.", "Round.", "Music and dancing."]],
        [[1, 3, 0, 1], [0, 1], [2, 1, 0]],
        ["sampled", "hh_rlhf", "sampled"],
        max_len=64,
    )


def brute_force_loss(scores: list[list[float]], rankings: list[list[int]], margin: float = 0.0) -> float:
    """-1/C(K,2) sum log sigmoid(r_w - r_l - margin x gap) per set over its untied pairs, mean over sets."""
    per_set = []
    for r, ranks in zip(scores, rankings):
        terms = []
        for i, j in combinations(range(len(r)), 2):
            if ranks[i] == ranks[j]:
                continue
            w, l = (i, j) if ranks[i] < ranks[j] else (j, i)
            terms.append(-math.log(1 / (1 + math.exp(-(r[w] - r[l] - margin * (ranks[l] - ranks[w]))))))
        per_set.append(sum(terms) / len(terms))
    return sum(per_set) / len(per_set)


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_the_loss_equals_a_brute_force_over_explicit_pairs(tokenizer: Tokenizer, sets: list[EncodedSet], margin: float) -> None:
    model = reward_model(tokenizer).eval()
    batch = collate_sets(sets, pad_id(tokenizer))
    with torch.no_grad():
        loss = ranking_loss(model(batch["input_ids"], batch["lengths"]), batch, margin).item()
        alone = [[model(torch.tensor([s]), torch.tensor([len(s)])).item() for s in ranked.sequences] for ranked in sets]
    assert len(batch["better"]) == 5 + 1 + 3  # the first set's tie (ranks 1, 1) makes no pair
    assert loss == pytest.approx(brute_force_loss(alone, [s.ranking for s in sets], margin), rel=1e-5)


def test_every_pair_of_a_set_lands_in_its_batch_and_each_response_is_encoded_once(tokenizer: Tokenizer, sets: list[EncodedSet]) -> None:
    task = RewardModelling(sets, [], batch_size=2, grad_accum=1, seed=3, pad_id=pad_id(tokenizer))
    seen = []
    for step in range(3):
        batch = task.batch(step, 0, 0, 1)
        members = [sets[i] for i in task.sampler.indices(step)]
        rows = [row[:n].tolist() for row, n in zip(batch["input_ids"], batch["lengths"])]
        assert rows == [seq for ranked in members for seq in ranked.sequences]  # each response once per set
        offset = 0
        for s, ranked in enumerate(members):
            mine = batch["set_index"] == s
            pairs = {(b - offset, w - offset) for b, w in zip(batch["better"][mine].tolist(), batch["worse"][mine].tolist())}
            assert pairs == set(ranked.pairs) and len(ranked.pairs) == mine.sum()  # all of its pairs, here
            offset += len(ranked.sequences)
        assert batch["weight"].sum().item() == pytest.approx(1.0)
        seen += [id(m) for m in members]
    assert sorted(seen[:3]) == sorted(id(s) for s in sets)  # the first epoch sees every set once


def test_the_head_reads_the_last_real_token_of_a_right_padded_row(tokenizer: Tokenizer, sets: list[EncodedSet]) -> None:
    model = reward_model(tokenizer).eval()
    sequences = [s for ranked in sets for s in ranked.sequences]
    with torch.no_grad():
        batched = score_sequences(model, sequences, pad_id(tokenizer), batch_size=4)
        alone = [model(torch.tensor([s]), torch.tensor([len(s)])).item() for s in sequences]
        per_token = model.token_scores(torch.tensor([sequences[0]]))[0]
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-6)
    assert per_token[-1].item() == pytest.approx(alone[0], rel=1e-5)


def test_the_unembedding_is_removed_and_a_scalar_head_added(tokenizer: Tokenizer) -> None:
    gpt = GPT(preset("cpu-tiny", vocab_size=tokenizer.get_vocab_size()))
    n_gpt = gpt.num_params()
    model = RewardModel(gpt)
    assert not hasattr(model.body, "lm_head")
    assert sum(p.numel() for p in model.parameters()) == n_gpt + gpt.config.n_embd  # the tied unembedding had no weights of its own


def separable_sets(tokenizer: Tokenizer, n: int, seed: int) -> list[EncodedSet]:
    """K = 3 responses of random words; the rank is set by the quality word each one ends with."""
    rng = random.Random(seed)
    vocabulary = "the house was quiet and the garden wide with trees by the road near a village".split()
    prompts, responses, rankings = [], [], []
    for i in range(n):
        prompts.append(f"Say something, {i}.")
        body = [" ".join(rng.choices(vocabulary, k=rng.randint(2, 6))) for _ in range(3)]
        order = rng.sample(range(3), 3)
        responses.append([f"{body[k]} {['superb', 'ordinary', 'dreadful'][order[k]]}." for k in range(3)])
        rankings.append(order)
    return encode_sets(ChatTemplate(tokenizer), prompts, responses, rankings, ["constructed"] * n, max_len=64)


def test_a_separable_set_is_learnt_to_full_held_out_accuracy(tokenizer: Tokenizer, tmp_path: Path, single_thread: None) -> None:
    model = reward_model(tokenizer, seed=1)
    task = RewardModelling(separable_sets(tokenizer, 64, seed=0), separable_sets(tokenizer, 16, seed=1),
                           batch_size=8, grad_accum=1, seed=0, pad_id=pad_id(tokenizer))
    before = task.evaluate(model.eval())
    config = TrainConfig(max_steps=80, batch_size=8, lr=3e-3, warmup_steps=5, min_lr_ratio=0.1, weight_decay=0.0,
                         device="cpu", log_every=20, eval_every=0, checkpoint_every=0)
    result = train(model, task, config, tmp_path / "checkpoints")
    assert before["val/accuracy"] < 0.9
    assert result.eval["val/accuracy"] == 1.0
    assert result.eval["val/constructed/accuracy"] == 1.0
    assert result.eval["val/chosen_mean"] > result.eval["val/rejected_mean"]


def test_held_out_metrics_are_per_source_and_count_a_score_tie_as_half(tokenizer: Tokenizer, sets: list[EncodedSet]) -> None:
    model = reward_model(tokenizer).eval()
    with torch.no_grad():
        model.head.weight.zero_()  # every response scores the same: every pair is a tie
        metrics = evaluate_sets(model, sets, pad_id(tokenizer), batch_size=4)
    assert metrics["val/accuracy"] == 0.5
    assert metrics["val/sampled/pairs"] == 8 and metrics["val/hh_rlhf/pairs"] == 1
    assert metrics["val/loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert metrics["val/chosen_mean"] == metrics["val/rejected_mean"] == 0.0


def test_the_bias_centres_the_references_and_is_saved_with_the_model(tokenizer: Tokenizer, sets: list[EncodedSet], tmp_path: Path) -> None:
    model = reward_model(tokenizer).eval()
    references = [ranked.sequences[0] for ranked in sets] + [ranked.sequences[1] for ranked in sets]
    raw = score_sequences(model, references, pad_id(tokenizer), batch_size=4)
    bias = normalise(model, references, pad_id(tokenizer), batch_size=4)
    assert bias == pytest.approx(-raw.mean(), rel=1e-5)
    centred = score_sequences(model, references, pad_id(tokenizer), batch_size=2)
    assert abs(centred.mean()) < 1e-5
    np.testing.assert_allclose(centred - raw, bias, rtol=1e-5)
    assert normalise(model, references, pad_id(tokenizer), batch_size=4) == pytest.approx(bias, abs=1e-5)  # idempotent

    checkpoint.save_checkpoint(tmp_path / "reward", model, step=1, extra={"model": "reward"})
    loaded = load_reward_model(tmp_path / "reward").eval()
    assert float(loaded.score_bias) == pytest.approx(bias)
    np.testing.assert_allclose(score_sequences(loaded, references, pad_id(tokenizer), 4), centred, rtol=1e-5, atol=1e-6)


def test_a_language_model_checkpoint_is_not_loaded_as_a_reward_model(tokenizer: Tokenizer, tmp_path: Path) -> None:
    checkpoint.save_checkpoint(tmp_path / "lm", GPT(preset("cpu-tiny", vocab_size=tokenizer.get_vocab_size())), step=1)
    with pytest.raises(checkpoint.CheckpointError, match="not a reward model"):
        load_reward_model(tmp_path / "lm")


def test_the_pair_loss_matches_torch_logsigmoid_on_extreme_scores() -> None:
    batch = {"better": torch.tensor([0, 2]), "worse": torch.tensor([1, 3]), "gap": torch.ones(2), "weight": torch.tensor([0.5, 0.5])}
    scores = torch.tensor([60.0, -60.0, -60.0, 60.0])
    loss = ranking_loss(scores, batch)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(0.5 * (-F.logsigmoid(torch.tensor(120.0)) - F.logsigmoid(torch.tensor(-120.0))).item())


def test_a_batch_holds_sets_of_similar_length() -> None:
    # 128 pair sets, a set's longest response 4 to 200 tokens: grouped batches pad little.
    longest = np.random.default_rng(0).integers(4, 200, size=128)
    sets = [EncodedSet([[5] * int(n), [6] * max(2, int(n) // 2)], [0, 1], [(0, 1)], "a") for n in longest]
    task = RewardModelling(sets, sets[:2], batch_size=4, grad_accum=1, seed=1, pad_id=0)
    batches = [task.batch(step, 0, 0, 1) for step in range(len(sets) // 4)]
    widths = [b["input_ids"].shape[1] for b in batches]
    shuffled = np.split(np.random.default_rng(1).permutation(128), 32)
    assert np.mean(widths) < 0.7 * np.mean([longest[rows].max() for rows in shuffled])
    seen = [n for b in batches for n in b["lengths"][0::2].tolist()]  # each set's first (longest) response
    assert sorted(seen) == sorted(longest.tolist())  # one epoch, every set once


def test_the_stage_draws_the_fresh_head_from_its_seed(tokenizer: Tokenizer, tmp_path: Path) -> None:
    # Whatever the global generator's state, the same params build the same reward model, so
    # a rerun of the stage (or another clone) reproduces the run; another seed draws another head.
    from stages.reward import RewardParams, build_model

    checkpoint.save_checkpoint(tmp_path / "sft", GPT(preset("cpu-tiny", vocab_size=tokenizer.get_vocab_size())), step=1)
    torch.manual_seed(1)
    first = build_model(tmp_path / "sft", RewardParams(), "params.yaml:reward.model").head.weight.detach().clone()
    torch.manual_seed(2)
    again = build_model(tmp_path / "sft", RewardParams(), "params.yaml:reward.model").head.weight
    other_seed = RewardParams(train=TrainConfig(seed=RewardParams().train.seed + 1))
    other = build_model(tmp_path / "sft", other_seed, "params.yaml:reward.model").head.weight
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
