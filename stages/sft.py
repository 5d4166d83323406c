"""Stage `sft`: supervised fine-tuning of the base model on demonstrations (InstructGPT step 1).

Reads `data/models/base/` and `data/prepared/demonstrations.parquet`; trains on the demonstrations
of phase `sft` (see `instructgpt.phases`) in the train split, rendered in the chat template with
the loss on response tokens only (`instructgpt.sft`), with the shared loop (resume, DDP,
tracking); validates on the phase's val split. Writes the SFT model to `data/models/sft/`,
`metrics/sft.json`, the curves `metrics/sft/{train,val}.csv` and `loss.png`, and a table of the
SFT model's answers to held-out prompts beside their references (`metrics/sft/samples.jsonl`, and
the MLflow table `samples.json`).

    python -m stages.sft        (or: dvc repro sft)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from instructgpt import atomic, checkpoint, hardware
from instructgpt.answers import answer
from instructgpt.chat import ChatTemplate
from instructgpt.config import from_params
from instructgpt.errors import ConfigError, DataError
from instructgpt.generate import SamplingConfig
from instructgpt.sft import SupervisedFineTuning, render_examples
from instructgpt.tokenizer import SPECIAL, load_tokenizer, special_token_ids, tokenizer_sha256
from instructgpt.train import TrainConfig, train
from stages import training
from stages.common import StageContext, is_main_process, read_table, run_stage, select_sources
from stages.pretrain import BASE_MODEL

DEMONSTRATIONS = Path("data/prepared/demonstrations.parquet")
SFT_MODEL = Path("data/models/sft")
SAMPLES = Path("metrics/sft/samples.jsonl")


@dataclass(frozen=True)
class SftParams:
    """params.yaml: sft."""

    model: dict[str, Any] = field(default_factory=lambda: {"dropout": 0.2, "attn_dropout": 0.0})  # InstructGPT: residual dropout 0.2
    epochs: float | None = None  # set: max_steps = ceil(epochs x train examples / global batch)
    sources: list[str] = field(default_factory=list)  # demonstration sources to train on; [] = all
    max_len: int | None = None  # tokens per example; None: the model's context
    min_prompt_tokens: int = 64  # a long response is cut so that the prompt keeps this many tokens
    eval_batch_size: int = 16
    sample_prompts: int = 8  # held-out prompts answered for the samples table
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=96, temperature=0.7, top_k=50, seed=0))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-4, warmup_steps=20, min_lr_ratio=0.0))
    launcher: str = "python"  # how dvc.yaml starts the stage, e.g. "torchrun --nproc_per_node 8"


def main(ctx: StageContext) -> dict[str, Any]:
    params = from_params(SftParams, ctx.section, ctx.where())
    base = ctx.path(BASE_MODEL)
    tokenizer = load_tokenizer(base / "tokenizer.json")
    model = training.load_language_model(base, params.model, ctx.where("model"))
    max_len = params.max_len or model.config.context
    if max_len > model.config.context:
        raise ConfigError(f"max_len {max_len} exceeds the model's context {model.config.context}", file=ctx.where("max_len"))

    demonstrations = _sft_demonstrations(ctx, params)
    template = ChatTemplate(tokenizer)
    splits = {name: demonstrations[demonstrations["split"] == name] for name in ("train", "val")}
    examples = {
        name: render_examples(template, frame["prompt"].tolist(), frame["response"].tolist(), frame["source"].tolist(),
                              max_len, params.min_prompt_tokens)
        for name, frame in splits.items()
    }
    pad_id = special_token_ids(tokenizer)[SPECIAL.pad]
    train_config = training.with_epochs(params.train, params.epochs, len(examples["train"]))
    task = SupervisedFineTuning(examples["train"], examples["val"], batch_size=train_config.batch_size,
                                grad_accum=train_config.grad_accum, seed=train_config.seed, pad_id=pad_id,
                                eval_batch_size=params.eval_batch_size)

    run, recorder = training.start_run(ctx, params, [base, ctx.path(DEMONSTRATIONS)], task, model, train_config,
                                       {"examples.train": len(examples["train"]), "examples.val": len(examples["val"])})
    print(f"  SFT on {len(examples['train']):,} demonstrations ({len(examples['val']):,} held out), "
          f"{train_config.max_steps} steps = {task.sampler.epochs(train_config.max_steps):.2f} epochs")

    result = train(
        model, task, train_config, run / "checkpoints",
        on_log=recorder.train, on_eval=recorder.val, peak_flops_cache=ctx.path(".runs/cpu_peak.json"),
        extra_state={"tokenizer_sha256": tokenizer_sha256(tokenizer), "stage": "sft",
                     "base_step": checkpoint.read_state(base)["step"]},
    )
    if not is_main_process():
        return {}
    training.publish(result.checkpoint, base / "tokenizer.json", ctx.path(SFT_MODEL))
    ctx.tracker.log_artifact(ctx.path(SFT_MODEL / checkpoint.STATE_FILE), "model")
    train_curve, _ = recorder.write(result.step, "sft: loss on response tokens",
                                    ["loss", "lr", "grad_norm", "tokens_per_s", "mfu"])
    samples = _sample_table(ctx, model, template, splits["val"], params)
    return _report(recorder, train_curve, result, train_config, task, examples, samples, params)


def _sft_demonstrations(ctx: StageContext, params: SftParams) -> pd.DataFrame:
    path = ctx.path(DEMONSTRATIONS)
    table = select_sources(ctx, read_table(path, "demonstrations", "ingest"), params.sources, "sources", "demonstrations")
    table = table[table["phase"] == "sft"]
    if not (table["split"] == "train").any():
        raise DataError("no demonstrations of phase 'sft' in the train split: check ingest.phases", file=path)
    return table.reset_index(drop=True)


def _sample_table(ctx: StageContext, model: Any, template: ChatTemplate, val: pd.DataFrame, params: SftParams) -> list[dict]:
    """The SFT model's answers to the first held-out prompts, beside the references."""
    held_out = val.drop_duplicates("prompt").head(params.sample_prompts)
    if held_out.empty or params.sample_prompts == 0:
        return []
    device = hardware.select_device(params.train.device)
    model.to(device)
    answers = answer(model, template, held_out["prompt"].tolist(), params.sampling)
    rows = [
        {"prompt": p, "reference": r, "sft_response": a[0].text, "ended": a[0].ended, "source": s}
        for p, r, s, a in zip(held_out["prompt"], held_out["response"], held_out["source"], answers)
    ]
    atomic.write_text(ctx.path(SAMPLES), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    ctx.tracker.log_table(rows, "samples.json")
    return rows


def _report(recorder: training.CurveRecorder, train_curve: pd.DataFrame, result: Any, train_config: TrainConfig,
            task: SupervisedFineTuning, examples: dict[str, list], samples: list[dict], params: SftParams) -> dict[str, Any]:
    final, initial = result.eval, recorder.initial() or {}
    sources = sorted({k.split("/")[1] for k in final if k.count("/") == 2})
    rounded = lambda v: round(float(v), 4) if v is not None else None  # noqa: E731
    return {
        "examples": {name: len(rows) for name, rows in examples.items()},
        "response_tokens": {name: sum(e.response_tokens for e in rows) for name, rows in examples.items()},
        "steps": result.step,
        "epochs": round(task.sampler.epochs(result.step), 3),
        "tokens_seen": result.tokens,
        "train_loss": rounded(result.metrics.get("loss")),
        "val_loss": rounded(final.get("val/loss")),
        "val_ppl": round(final.get("val/ppl", float("nan")), 3),
        "val_loss_base": rounded(initial.get("val/loss")),  # the base model on the same responses
        "val_loss_per_source": {s: rounded(final[f"val/{s}/loss"]) for s in sources},
        "samples_ended": sum(row["ended"] for row in samples),
        "samples": len(samples),
        **training.speed(train_curve),
        "peak_memory_mb": round(float(result.metrics.get("peak_memory_mb", 0.0)), 1),
        "train_seconds": round(result.seconds, 1),
        "device": hardware.device_name(hardware.select_device(train_config.device)),
    }


if __name__ == "__main__":
    run_stage("sft", main)
