"""GPT-1's task model: the head reads the extract token, a similarity pair scores the same in either
order, a multiple-choice question is a softmax across its choices (missing ones masked), the LM
targets skip padding and task tokens, and the whole thing learns a separable task through the loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from instructgpt.finetune import TaskFineTuning, score
from instructgpt.model import GPT, preset
from instructgpt.task_inputs import TaskExample, TaskTokens, transform
from instructgpt.task_model import TaskModel, TaskSpec, collate, predictions, task_loss
from instructgpt.train import TrainConfig, train

T = TaskTokens(start=1, delim=2, extract=3)
PAD = 0
VOCAB = 64


def model(spec: TaskSpec, seed: int = 0) -> TaskModel:
    torch.manual_seed(seed)
    return TaskModel(GPT(preset("cpu-tiny", vocab_size=VOCAB)), spec, head_dropout=0.0).eval()


def example(task_type: str, a: list[int], b: list[int] | None = None, choices: list[list[int]] | None = None,
            label: int | None = None, score_: float | None = None) -> TaskExample:
    return TaskExample(transform(task_type, a, b, choices, T, 64), label, score_)


def test_collate_pads_groups_and_marks_lm_targets() -> None:
    batch = collate([example("multiple_choice", [10, 11], None, [[20], [21, 22], [23]], label=1),
                     example("multiple_choice", [12], None, [[24], [25]], label=0)], PAD, T.all())
    assert batch["input_ids"].shape == (2, 3, 7)
    assert batch["lengths"].tolist() == [[6, 7, 6], [5, 5, 0]]  # the second question has no third choice
    row = batch["input_ids"][0, 1].tolist()
    assert row == [1, 10, 11, 2, 21, 22, 3]
    # next-token targets for text only: not the delimiter, not the extract token, nothing past the end
    assert batch["lm_targets"][0, 1].tolist() == [10, 11, -100, 21, 22, -100, -100]
    assert (batch["lm_targets"][1, 2] == -100).all()
    assert batch["label"].tolist() == [1, 0]


def test_head_reads_the_extract_token_whatever_the_padding() -> None:
    m = model(TaskSpec("classification", 2))
    alone = collate([example("classification", [10, 11, 12], label=0)], PAD, T.all())
    padded = collate([example("classification", [10, 11, 12], label=0), example("classification", list(range(10, 30)), label=1)],
                     PAD, T.all())
    with torch.no_grad():
        assert torch.allclose(m(alone)[0][0], m(padded)[0][0], atol=1e-5)


def test_similarity_is_invariant_to_the_order_of_the_pair() -> None:
    for spec in (TaskSpec("similarity", 2), TaskSpec("similarity", 0, (0.0, 5.0))):
        m = model(spec)
        a, b = [10, 11, 12, 13], [20, 21]
        forward = collate([example("similarity", a, b, label=1, score_=None)], PAD, T.all())
        backward = collate([example("similarity", b, a, label=1, score_=None)], PAD, T.all())
        with torch.no_grad():
            assert torch.allclose(m(forward)[0], m(backward)[0], atol=1e-5)
        # while a single order's state does depend on the order
        first_only = dict(forward, input_ids=forward["input_ids"][:, :1], lengths=forward["lengths"][:, :1])
        second_only = dict(forward, input_ids=forward["input_ids"][:, 1:], lengths=forward["lengths"][:, 1:])
        with torch.no_grad():
            assert not torch.allclose(m(first_only)[0], m(second_only)[0], atol=1e-4)


def test_multiple_choice_is_a_softmax_across_the_choices() -> None:
    spec = TaskSpec("multiple_choice")
    m = model(spec)
    batch = collate([example("multiple_choice", [10, 11], None, [[20], [21, 22], [23]], label=2),
                     example("multiple_choice", [12], None, [[24], [25]], label=0)], PAD, T.all())
    with torch.no_grad():
        logits, _ = m(batch)
        assert logits.shape == (2, 3) and torch.isinf(logits[1, 2])
        # each choice's logit is the head on that choice's own sequence, alone
        for g in range(3):
            alone = {"input_ids": batch["input_ids"][:1, g : g + 1], "lengths": batch["lengths"][:1, g : g + 1]}
            hidden = m.body.hidden_states(alone["input_ids"][:, 0])
            expected = m.head(hidden[0, alone["lengths"][0, 0] - 1])
            assert torch.allclose(logits[0, g], expected.squeeze(), atol=1e-5)
        probs = logits.softmax(dim=-1)
        loss = task_loss(spec, logits, batch)
    assert torch.allclose(probs.sum(dim=-1), torch.ones(2)) and probs[1, 2] == 0
    expected_loss = -(torch.log(probs[0, 2]) + torch.log(probs[1, 0])) / 2
    assert torch.allclose(loss, expected_loss, atol=1e-6)
    assert predictions(spec, logits).tolist() == logits.argmax(-1).tolist()


def test_regression_trains_on_the_scaled_score_and_predicts_in_the_tasks_units() -> None:
    spec = TaskSpec("similarity", 0, (1.0, 5.0))
    assert spec.is_regression and spec.outputs == 1
    output = torch.tensor([0.0, 0.5, 1.0])
    assert predictions(spec, output).tolist() == [1.0, 3.0, 5.0]
    batch = {"score": torch.tensor([1.0, 3.0, 5.0])}
    assert float(task_loss(spec, output, batch)) == pytest.approx(0.0)


def test_lm_loss_is_the_cross_entropy_of_the_text_tokens() -> None:
    m = model(TaskSpec("classification", 2))
    batch = collate([example("classification", [10, 11, 12], label=0)], PAD, T.all())
    with torch.no_grad():
        _, lm = m(batch, lm=True)
        logits = m.body(batch["input_ids"][:, 0]).logits[0]
    # predicted: 11 after 10, 12 after 11 (10 after start is a text token too); not extract after 12
    expected = F.cross_entropy(logits[:3], torch.tensor([10, 11, 12]))
    assert torch.allclose(lm, expected, atol=1e-5)


def test_fine_tuning_learns_a_separable_task(tmp_path) -> None:
    torch.manual_seed(0)
    rows = [example("classification", [10 + (i % 7), 40 if i % 2 else 41, 12 + (i % 5)], label=i % 2) for i in range(64)]
    spec = TaskSpec("classification", 2)
    m = TaskModel(GPT(preset("cpu-tiny", vocab_size=VOCAB)), spec)
    config = TrainConfig(max_steps=60, batch_size=16, lr=3e-3, warmup_steps=5, min_lr_ratio=0.0, eval_every=0,
                         checkpoint_every=0, log_every=10, device="cpu")
    task = TaskFineTuning(spec, rows[:48], rows[48:], lm_coef=0.5, batch_size=16, grad_accum=1, seed=0, pad_id=PAD,
                          task_tokens=T.all())
    before = score(m.eval(), spec, rows[48:], PAD, T.all(), 64)["accuracy"]
    result = train(m, task, config, tmp_path / "ckpt")
    assert result.eval["eval/accuracy"] == 1.0 and before < 1.0
    assert result.eval["eval/f1"] == 1.0
