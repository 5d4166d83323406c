"""Task scores against hand computations: accuracy, F1 of the positive class, Pearson and Spearman
(ties take their mean rank), and the chance baselines."""

from __future__ import annotations

import math

import pytest

from instructgpt.task_metrics import accuracy, binary_f1, chance, correlations


def test_accuracy_and_f1() -> None:
    predicted, gold = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    assert accuracy(predicted, gold) == pytest.approx(3 / 5)
    # tp 2, fp 1, fn 1: precision 2/3, recall 2/3
    assert binary_f1(predicted, gold) == pytest.approx(2 / 3)
    assert binary_f1([0, 0], [0, 0]) == 0.0


def test_correlations_match_the_formulas() -> None:
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0]
    mx, my = sum(x) / 4, sum(y) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    pearson = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    out = correlations(x, y)
    assert out["pearson"] == pytest.approx(pearson)
    assert out["spearman"] == pytest.approx(pearson)  # already ranks
    # ties: [1, 1, 2] ranks as [1.5, 1.5, 3]
    tied = correlations([1.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    ranks, other = [1.5, 1.5, 3.0], [1.0, 2.0, 3.0]
    mr, mo = sum(ranks) / 3, 2.0
    rho = sum((a - mr) * (b - mo) for a, b in zip(ranks, other)) / math.sqrt(
        sum((a - mr) ** 2 for a in ranks) * sum((b - mo) ** 2 for b in other))
    assert tied["spearman"] == pytest.approx(rho)
    assert math.isnan(correlations([1.0, 1.0], [1.0, 2.0])["pearson"])


def test_chance() -> None:
    assert chance("classification", [0, 1, 1, 0]) == 0.5
    assert chance("entailment", [0, 1, 2]) == pytest.approx(1 / 3)
    assert chance("multiple_choice", choices=[2, 4]) == pytest.approx((0.5 + 0.25) / 2)
    assert chance("similarity") is None
