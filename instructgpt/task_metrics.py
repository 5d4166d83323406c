"""The scores the GPT papers report per task: accuracy, F1 (MSRP), Pearson and Spearman (similarity)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats


def accuracy(predicted: Sequence[int], gold: Sequence[int]) -> float:
    predicted, gold = np.asarray(predicted), np.asarray(gold)
    return float((predicted == gold).mean()) if len(gold) else float("nan")


def binary_f1(predicted: Sequence[int], gold: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (MSRP: 'is a paraphrase'); 0 when nothing is predicted or gold positive."""
    predicted, gold = np.asarray(predicted) == positive, np.asarray(gold) == positive
    true_positive = float((predicted & gold).sum())
    denominator = float(predicted.sum() + gold.sum())
    return 2 * true_positive / denominator if denominator else 0.0


def correlations(predicted: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman (ties take their mean rank); nan when either side is constant."""
    predicted, gold = np.asarray(predicted, dtype=float), np.asarray(gold, dtype=float)
    if len(gold) < 2 or np.ptp(predicted) == 0 or np.ptp(gold) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": float(stats.pearsonr(predicted, gold).statistic),
            "spearman": float(stats.spearmanr(predicted, gold).statistic)}


def chance(task_type: str, labels: Sequence[int] | None = None, choices: Sequence[int] | None = None) -> float | None:
    """The random-guess baseline: uniform over the classes (or over each question's choices);
    None for a regression (its chance correlation is 0)."""
    if task_type == "multiple_choice" and choices is not None and len(choices):
        return float(np.mean([1.0 / n for n in choices]))
    if labels is not None and len(labels):
        return 1.0 / len(set(int(label) for label in labels))
    return None
