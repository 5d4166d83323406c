"""What the training stages (pretrain, sft, reward) share around the loop: where a run's checkpoints
live, the evaluation before the first step, the curve files, and publishing the trained model.

- `run_dir`: `.runs/<stage>/<key>`, the key a hash of the stage's params, its input files and its
  code (the Python files dvc.yaml lists as its deps), so a killed run started again resumes, and a
  run with other params, data or code starts afresh instead of being read back as if new.
- `CurveRecorder`: every logged step goes to a JSON-lines log beside the checkpoints and to
  MLflow; at the end it becomes `metrics/<stage>/{train,val}.csv` (`dvc plots`) and a PNG.
- `publish`: the trained model as `data/models/<name>/`: weights, state (config, step, metrics and
  the caller's extras, but no timings) and the tokenizer, written atomically, without optimizer state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import yaml
from torch import nn

from instructgpt import atomic, checkpoint, curves, hardware
from instructgpt.errors import ConfigError
from instructgpt.sources import sha256_file
from instructgpt.train import TrainConfig, seed_everything
from stages.common import StageContext


def run_dir(ctx: StageContext, params: Any, inputs: Iterable[Path]) -> Path:
    """`.runs/<stage>/<hash of params, the inputs' contents and the stage's code>`."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(params), sort_keys=True, default=str).encode())
    _add_files(digest, inputs)
    digest.update(code_digest(ctx).encode())
    return ctx.path(Path(".runs") / ctx.name / digest.hexdigest()[:16])


def code_digest(ctx: StageContext) -> str:
    """sha256 over the Python files dvc.yaml lists as the stage's deps (a listed directory's `.py`
    files included); "" when the root has no dvc.yaml or does not define the stage.

    Without it, a run read back after a code change would be recorded in dvc.lock as the new code's.
    """
    try:
        with open(ctx.path("dvc.yaml"), encoding="utf-8") as handle:
            stage = (yaml.safe_load(handle) or {}).get("stages", {}).get(ctx.name) or {}
    except FileNotFoundError:
        return ""
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read the stage's deps: {err}", file=ctx.path("dvc.yaml")) from err
    code: list[Path] = []
    for dep in stage.get("deps", []):
        path = ctx.path(dep)
        if path.is_dir():
            code.extend(sorted(path.rglob("*.py")))
        elif path.suffix == ".py" and path.is_file():
            code.append(path)
    return files_digest(code) if code else ""


def files_digest(inputs: Iterable[Path]) -> str:
    """sha256 over the contents of files and of directories' files (sorted by path)."""
    return _add_files(hashlib.sha256(), inputs).hexdigest()


def _add_files(digest: Any, inputs: Iterable[Path]) -> Any:
    for path in inputs:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(sha256_file(file).encode())
    return digest


def load_language_model(path: Path, overrides: dict[str, Any], where: str) -> nn.Module:
    """The GPT of a model directory with config overrides (e.g. dropout); a bad override names `where`."""
    try:
        return checkpoint.load_model(path, **overrides)
    except checkpoint.CheckpointError as err:
        if overrides:  # an override the model cannot take (an unknown field, a shape change)
            raise ConfigError(f"cannot apply {overrides} to the model in {path}: {err}", file=where) from err
        raise


def with_epochs(train: TrainConfig, epochs: float | None, examples: int) -> TrainConfig:
    """`train` with max_steps = ceil(epochs x examples / global batch) when `epochs` is set."""
    if epochs is None:
        return train
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps = max(1, math.ceil(epochs * examples / (train.batch_size * train.grad_accum * world)))
    return dataclasses.replace(train, max_steps=steps, warmup_steps=min(train.warmup_steps, steps))


def evaluate_before_training(model: nn.Module, task: Any, train: TrainConfig) -> dict[str, float]:
    """The task's evaluation of the untrained (or not yet fine-tuned) model: the curve's step 0."""
    device = hardware.select_device(train.device)
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.no_grad(), hardware.autocast(device, hardware.select_dtype(train.dtype, device)):
            return {k: float(v) for k, v in task.evaluate(model).items()}
    finally:
        model.to("cpu").train(was_training)


def start_run(ctx: StageContext, params: Any, inputs: Iterable[Path], task: Any, model: nn.Module, train: TrainConfig,
              sizes: Mapping[str, int]) -> tuple[Path, "CurveRecorder"]:
    """The run directory and curve recorder of a training stage, seeded, with its step-0 evaluation
    (unless resuming) and the run's params (model config, run directory, steps, data sizes) tracked."""
    run = run_dir(ctx, params, inputs)
    recorder = CurveRecorder(ctx, run)
    seed_everything(train.seed)
    recorder.start(task, model, train)
    ctx.tracker.log_params({"model": model.config.to_dict(), "run_dir": str(run), "max_steps_used": train.max_steps, **sizes})
    return run, recorder


class CurveRecorder:
    """The train and val series of one run: appended as they come, tracked, and drawn at the end."""

    def __init__(self, ctx: StageContext, run: Path) -> None:
        self.ctx = ctx
        self.log = curves.CurveLog(run / "curve.jsonl")
        self.dir = ctx.path(Path("metrics") / ctx.name)

    def start(self, task: Any, model: nn.Module, train: TrainConfig) -> dict[str, float] | None:
        """Evaluate before the first step, unless the run resumes (then it already has step 0)."""
        if checkpoint.latest_checkpoint(self.log.path.parent / "checkpoints") is not None:
            return None
        initial = evaluate_before_training(model, task, train)
        self.val(0, initial)
        return initial

    def train(self, step: int, metrics: Mapping[str, float]) -> None:
        self.log.append("train", step, metrics)
        self.ctx.tracker.log_metrics(curves.finite(metrics), step=step)

    def val(self, step: int, metrics: Mapping[str, float]) -> None:
        self.log.append("val", step, metrics)
        self.ctx.tracker.log_metrics(curves.finite(metrics), step=step)

    def write(self, upto: int, title: str, train_columns: list[str], val_columns: list[str] | None = None) -> tuple[Any, Any]:
        """`train.csv`, `val.csv` and `loss.png` under `metrics/<stage>/`, logged to MLflow; the frames."""
        train_curve, val_curve = self.log.frame("train", upto=upto), self.log.frame("val", upto=upto)
        val_columns = val_columns or sorted(c for c in val_curve.columns if c.endswith("loss"))
        curves.write_csv(train_curve, self.dir / "train.csv", train_columns)
        curves.write_csv(val_curve, self.dir / "val.csv", val_columns)
        curves.plot_losses(train_curve, val_curve, self.dir / "loss.png", title)
        for name in ("train.csv", "val.csv", "loss.png"):
            self.ctx.tracker.log_artifact(self.dir / name, "curves")
        return train_curve, val_curve

    def initial(self) -> Mapping[str, float] | None:
        """The step-0 evaluation, from the log (also when this invocation resumed)."""
        val = self.log.frame("val")
        if len(val) and val["step"].iloc[0] == 0:
            return val.iloc[0].to_dict()
        return None


# What a checkpoint records about the host rather than the model: wall time, throughput, memory.
# Checkpoints keep them (a resumed run adds to its train_seconds); a published model leaves them
# out, and the stage's metrics report them. So the same training publishes the same bytes, and the
# stages whose run keys and DVC deps hash the model are not retrained for a timing.
HOST_DEPENDENT = frozenset({"train_seconds", "tokens_per_s", "mfu", "step_time_ms", "peak_memory_mb"})


def publish(step_dir: Path, tokenizer: Path, target: Path) -> None:
    """A trained checkpoint as a model directory: weights, state (without HOST_DEPENDENT figures)
    and tokenizer; no optimizer state."""
    state = checkpoint.read_state(step_dir)
    state["data"] = _without_host(state.get("data", {}))
    extra = state.get("extra", {})
    if "metrics" in extra:
        extra["metrics"] = _without_host(extra["metrics"])
    with atomic.atomic_dir(target) as out:
        shutil.copyfile(step_dir / checkpoint.MODEL_FILE, out / checkpoint.MODEL_FILE)
        checkpoint.write_state(out, state)
        shutil.copyfile(tokenizer, out / "tokenizer.json")


def _without_host(figures: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if k not in HOST_DEPENDENT}


def publish_model(model: nn.Module, tokenizer: Path, target: Path, *, step: int, extra: dict[str, Any]) -> None:
    """`model` as it is now (e.g. after a post-training change) as a model directory, atomically."""
    with atomic.atomic_dir(target) as out:
        checkpoint.save_checkpoint(out, model, step=step, extra=extra)
        shutil.copyfile(tokenizer, out / "tokenizer.json")


def speed(train_curve: Any) -> dict[str, float | None]:
    """Mean tokens/s and MFU over the second half of the logged steps (after warm-up)."""
    steady = train_curve.tail(max(1, len(train_curve) // 2))
    return {
        "tokens_per_s": round(float(steady["tokens_per_s"].mean()), 1) if "tokens_per_s" in steady else None,
        "mfu": round(float(steady["mfu"].mean()), 4) if "mfu" in steady else None,
    }
