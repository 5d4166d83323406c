"""Training curves: a resumable log of per-step metrics, and the files `dvc plots` and MLflow show.

During training every logged step is appended to a JSON-lines file beside the checkpoints; a
resumed run appends again from its checkpoint, so a step can appear twice and the last record of
a step wins. At the end the log becomes CSV files (one per series, for `dvc plots`) and a PNG.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from instructgpt import atomic  # noqa: E402


class CurveLog:
    """Append-only per-step metrics, one JSON object per line: {"step": n, "series": name, ...}."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, series: str, step: int, metrics: Mapping[str, float]) -> None:
        record = {"series": series, "step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def frame(self, series: str, upto: int | None = None) -> pd.DataFrame:
        """The series' rows by step (the last record of a step wins), at most step `upto`."""
        if not self.path.exists():
            return pd.DataFrame({"step": []})
        rows = []
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
        frame = pd.DataFrame([r for r in rows if r.get("series") == series])
        if frame.empty:
            return pd.DataFrame({"step": []})
        frame = frame.drop(columns="series").drop_duplicates("step", keep="last").sort_values("step")
        if upto is not None:
            frame = frame[frame["step"] <= upto]
        return frame.dropna(axis=1, how="all").reset_index(drop=True)


def write_csv(frame: pd.DataFrame, path: str | Path, columns: list[str]) -> None:
    keep = ["step"] + [c for c in columns if c in frame.columns]
    with atomic.atomic_path(path) as tmp:
        frame[keep].to_csv(tmp, index=False)


def plot_losses(train: pd.DataFrame, val: pd.DataFrame, path: str | Path, title: str) -> None:
    """Train loss per logged step and validation loss (overall and per source) per evaluation."""
    fig, ax = plt.subplots(figsize=(8, 5))
    if "loss" in train:
        ax.plot(train["step"], train["loss"], label="train", color="black", linewidth=1.5)
    if "val/loss" in val:
        ax.plot(val["step"], val["val/loss"], label="val", color="tab:red", linewidth=2, marker="o")
    for column in sorted(c for c in val.columns if c.startswith("val/") and c.endswith("/loss") and c != "val/loss"):
        ax.plot(val["step"], val[column], label=column[4:-5], linewidth=0.8, alpha=0.7, linestyle="--")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_panels(frame: pd.DataFrame, path: str | Path, title: str, panels: Mapping[str, list[str]]) -> None:
    """One small plot per panel, each drawing its columns of `frame` against `step` (missing ones skipped)."""
    names = list(panels)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for column in panels[name]:
            if column in frame:
                ax.plot(frame["step"], frame[column], label=column, linewidth=1.3)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
