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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructgpt import checkpoint, hardware
from instructgpt.config import from_params
from instructgpt.errors import ConfigError
from instructgpt.model import GPT, preset
from instructgpt.pretraining import Pretraining
from instructgpt.shards import read_meta
from instructgpt.tokenizer import load_tokenizer, tokenizer_sha256
from instructgpt.train import TrainConfig, seed_everything, train
from stages import training
from stages.common import StageContext, is_main_process, run_stage
from stages.encode import SHARDS
from stages.tokenizer import TOKENIZER

BASE_MODEL = Path("data/models/base")


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

    run = training.run_dir(ctx, params, [shards / name for name in ("train.bin", "val.bin", "meta.json")])
    recorder = training.CurveRecorder(ctx, run)
    seed_everything(params.train.seed)
    model = GPT(config)
    task = Pretraining(shards, config.context, params.train.batch_size, params.train.seed,
                       val_tokens_per_source=params.val_tokens_per_source, eval_batch_size=params.eval_batch_size)
    recorder.start(task, model, params.train)
    ctx.tracker.log_params({"model": config.to_dict(), "parameters": model.num_params(), "run_dir": str(run)})
    print(f"  {params.preset}: {model.num_params() / 1e6:.2f}M parameters, {meta['tokens']['train']['total']:,} train tokens")

    result = train(
        model, task, params.train, run / "checkpoints",
        on_log=recorder.train, on_eval=recorder.val, peak_flops_cache=ctx.path(".runs/cpu_peak.json"),
        extra_state={"tokenizer_sha256": meta["tokenizer_sha256"], "stage": "pretrain"},
    )
    if not is_main_process():
        return {}
    training.publish(result.checkpoint, ctx.path(TOKENIZER), ctx.path(BASE_MODEL))
    ctx.tracker.log_artifact(ctx.path(BASE_MODEL / checkpoint.STATE_FILE), "model")
    train_curve, _ = recorder.write(result.step, f"pretrain: {params.preset}", ["loss", "lr", "grad_norm", "tokens_per_s", "mfu"])
    return _report(recorder, train_curve, result, params, model, meta)


def build_config(params: PretrainParams, vocab_size: int, where: str):
    try:
        return preset(params.preset, **{**params.model, "vocab_size": vocab_size})
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(str(err).strip("'\""), file=where) from err


def _report(recorder: training.CurveRecorder, train_curve: Any, result: Any, params: PretrainParams, model: GPT, meta: dict) -> dict[str, Any]:
    final_eval = result.eval
    initial = recorder.initial()
    sources = sorted({k.split("/")[1] for k in final_eval if k.count("/") == 2})
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
        **training.speed(train_curve),
        "peak_memory_mb": round(float(result.metrics.get("peak_memory_mb", 0.0)), 1),
        "train_seconds": round(result.seconds, 1),
        "device": hardware.device_name(hardware.select_device(params.train.device)),
        "vocab_size": meta["vocab_size"],
    }


if __name__ == "__main__":
    run_stage("pretrain", main)
