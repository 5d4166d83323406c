"""Stage `pretrain`: train the GPT on the token shards; the base model every later stage starts from.

Reads `data/shards/` and `data/tokenizer/tokenizer.json`; trains a preset (with overrides) with the
shared loop (`instructgpt.train`); writes the base model to `data/models/base/` (weights, config,
tokenizer), `metrics/pretrain.json`, and the loss curves `metrics/pretrain/{train,val}.csv`
(`dvc plots show`) and `metrics/pretrain/loss.png`; logs params, per-step metrics, the curve and
the model's config to MLflow.

Resumable: checkpoints go to `.runs/pretrain/<run key>/`, the key being a hash of this stage's
params and its input data, so a killed run started again (`dvc repro pretrain`) continues from its
last checkpoint, and a run with other params or data starts afresh.

    python -m stages.pretrain                                     (or: dvc repro pretrain)
    torchrun --standalone --nproc_per_node 8 -m stages.pretrain   (params pretrain.launcher)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructgpt import atomic, checkpoint, curves, hardware
from instructgpt.config import from_params
from instructgpt.errors import ConfigError
from instructgpt.model import GPT, preset
from instructgpt.pretraining import Pretraining
from instructgpt.shards import read_meta
from instructgpt.sources import sha256_file
from instructgpt.tokenizer import load_tokenizer, tokenizer_sha256
from instructgpt.train import TrainConfig, seed_everything, train
from stages.common import StageContext, is_main_process, run_stage
from stages.encode import SHARDS
from stages.tokenizer import TOKENIZER

BASE_MODEL = Path("data/models/base")
CURVES = Path("metrics/pretrain")
RUNS = Path(".runs/pretrain")


@dataclass(frozen=True)
class PretrainParams:
    """params.yaml: pretrain."""

    preset: str = "cpu-small"
    model: dict[str, Any] = field(default_factory=dict)  # GPTConfig fields overriding the preset
    train: TrainConfig = field(default_factory=TrainConfig)
    val_tokens_per_source: int | None = 8192  # None: every val token
    eval_batch_size: int = 16
    launcher: str = "python"  # how dvc.yaml starts the stage, e.g. "torchrun --nproc_per_node 8"


def main(ctx: StageContext) -> dict[str, Any]:
    params = from_params(PretrainParams, ctx.section, ctx.where())
    shards, meta = ctx.path(SHARDS), read_meta(ctx.path(SHARDS))
    tokenizer = load_tokenizer(ctx.path(TOKENIZER))
    if meta["tokenizer_sha256"] != tokenizer_sha256(tokenizer):
        raise ConfigError("the shards were encoded with another tokenizer; run `dvc repro encode`", file=str(SHARDS))
    config = build_config(params, vocab_size=meta["vocab_size"], where=ctx.where("model"))

    run_dir = ctx.path(RUNS / run_key(params, shards))
    log = curves.CurveLog(run_dir / "curve.jsonl")
    seed_everything(params.train.seed)
    model = GPT(config)
    task = Pretraining(shards, config.context, params.train.batch_size, params.train.seed,
                       val_tokens_per_source=params.val_tokens_per_source, eval_batch_size=params.eval_batch_size)
    if checkpoint.latest_checkpoint(run_dir / "checkpoints") is None:
        initial = _evaluate_untrained(model, task, params)  # the starting point of the val curve
        log.append("val", 0, initial)
        ctx.tracker.log_metrics(initial, step=0)
    ctx.tracker.log_params({"model": config.to_dict(), "parameters": model.num_params(), "run_dir": str(run_dir)})
    print(f"  {params.preset}: {model.num_params() / 1e6:.2f}M parameters, {meta['tokens']['train']['total']:,} train tokens")

    def on_log(step: int, metrics: dict[str, float]) -> None:
        log.append("train", step, metrics)
        ctx.tracker.log_metrics(curves.finite(metrics), step=step)

    def on_eval(step: int, metrics: dict[str, float]) -> None:
        log.append("val", step, metrics)
        ctx.tracker.log_metrics(curves.finite(metrics), step=step)

    result = train(
        model, task, params.train, run_dir / "checkpoints",
        on_log=on_log, on_eval=on_eval, peak_flops_cache=ctx.path(".runs/cpu_peak.json"),
        extra_state={"tokenizer_sha256": meta["tokenizer_sha256"], "stage": "pretrain"},
    )
    if not is_main_process():
        return {}
    publish_model(result.checkpoint, ctx.path(TOKENIZER), ctx.path(BASE_MODEL))
    return _report(ctx, log, result, params, model, meta)


def build_config(params: PretrainParams, vocab_size: int, where: str):
    try:
        return preset(params.preset, **{**params.model, "vocab_size": vocab_size})
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(str(err).strip("'\""), file=where) from err


def run_key(params: PretrainParams, shards: Path) -> str:
    """Identifies a training run: these params and this data. Resume only ever continues the same run."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(params), sort_keys=True, default=str).encode())
    for name in ("train.bin", "val.bin", "meta.json"):
        digest.update(sha256_file(shards / name).encode())
    return digest.hexdigest()[:16]


def publish_model(step_dir: Path, tokenizer: Path, target: Path) -> None:
    """The base model: weights, state (config, step, metrics) and the tokenizer; no optimizer state."""
    with atomic.atomic_dir(target) as out:
        for name in (checkpoint.MODEL_FILE, checkpoint.STATE_FILE):
            shutil.copyfile(step_dir / name, out / name)
        shutil.copyfile(tokenizer, out / "tokenizer.json")


def _evaluate_untrained(model: GPT, task: Pretraining, params: PretrainParams) -> dict[str, float]:
    device = hardware.select_device(params.train.device)
    model.to(device).eval()
    metrics = task.evaluate(model)
    model.to("cpu").train()
    return metrics


def _report(ctx: StageContext, log: curves.CurveLog, result: Any, params: PretrainParams, model: GPT, meta: dict) -> dict[str, Any]:
    train_curve, val_curve = log.frame("train", upto=result.step), log.frame("val", upto=result.step)
    curves.write_csv(train_curve, ctx.path(CURVES / "train.csv"), ["loss", "lr", "grad_norm", "tokens_per_s", "mfu"])
    curves.write_csv(val_curve, ctx.path(CURVES / "val.csv"), sorted(c for c in val_curve.columns if c.endswith("loss")))
    curves.plot_losses(train_curve, val_curve, ctx.path(CURVES / "loss.png"), f"pretrain: {params.preset}")
    for name in ("train.csv", "val.csv", "loss.png"):
        ctx.tracker.log_artifact(ctx.path(CURVES / name), "curves")
    ctx.tracker.log_artifact(ctx.path(BASE_MODEL / checkpoint.STATE_FILE), "model")

    final_eval = result.eval
    initial = val_curve.iloc[0] if len(val_curve) and val_curve["step"].iloc[0] == 0 else None
    sources = sorted({k.split("/")[1] for k in final_eval if k.count("/") == 2})
    steady = train_curve.tail(max(1, len(train_curve) // 2))  # skip warm-up in speed figures
    return {
        "parameters": model.num_params(),
        "steps": result.step,
        "tokens_seen": result.tokens,
        "train_loss": round(float(result.metrics.get("loss", float("nan"))), 4),
        "val_loss": round(final_eval.get("val/loss", float("nan")), 4),
        "val_ppl": round(final_eval.get("val/ppl", float("nan")), 3),
        "val_loss_initial": round(float(initial["val/loss"]), 4) if initial is not None else None,
        "val_ppl_per_source": {s: round(final_eval[f"val/{s}/ppl"], 3) for s in sources},
        "val_loss_per_source": {s: round(final_eval[f"val/{s}/loss"], 4) for s in sources},
        "tokens_per_s": round(float(steady["tokens_per_s"].mean()), 1) if "tokens_per_s" in steady else None,
        "mfu": round(float(steady["mfu"].mean()), 4) if "mfu" in steady else None,
        "peak_memory_mb": round(float(result.metrics.get("peak_memory_mb", 0.0)), 1),
        "train_seconds": round(result.seconds, 1),
        "device": hardware.device_name(hardware.select_device(params.train.device)),
        "vocab_size": meta["vocab_size"],
    }


if __name__ == "__main__":
    run_stage("pretrain", main)
