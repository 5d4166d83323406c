"""Stage `reward`: the reward model, trained on ranked sets with InstructGPT's loss (step 2).

Starts from the SFT model (`data/models/sft/`) with its unembedding removed and a scalar head
(`instructgpt.heads`); trains on the train split of `data/comparisons/ranked_sets.parquet` with the
loss over all C(K,2) pairs of each set in one batch (`instructgpt.reward`), for one epoch by
default (InstructGPT: more overfits); evaluates pairwise accuracy on the held-out sets per source.
Then sets the bias that makes the reference demonstrations (phase `reward`, the labelers'
references) score mean 0, and publishes `data/models/reward/` with it. Writes
`metrics/reward.json` and the curves `metrics/reward/{train,val}.csv` and `loss.png`.

    python -m stages.reward        (or: dvc repro reward)
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from instructgpt import checkpoint, hardware
from instructgpt.chat import ChatTemplate
from instructgpt.config import from_params
from instructgpt.errors import ConfigError, DataError
from instructgpt.heads import RewardModel
from instructgpt.reward import EncodedSet, RewardModelling, encode_sets, evaluate_sets, normalise, score_sequences
from instructgpt.phases import PHASES
from instructgpt.tokenizer import SPECIAL, load_tokenizer, special_token_ids, tokenizer_sha256
from instructgpt.train import TrainConfig, seed_everything, train
from stages import training
from stages.common import StageContext, is_main_process, read_table, run_stage, select_sources
from stages.comparisons import RANKED_SETS
from stages.sft import DEMONSTRATIONS, SFT_MODEL

REWARD_MODEL = Path("data/models/reward")


@dataclass(frozen=True)
class RewardParams:
    """params.yaml: reward."""

    model: dict[str, Any] = field(default_factory=lambda: {"dropout": 0.0})  # overrides that keep the SFT model's shapes
    epochs: float | None = 1.0  # sets train.max_steps over the train sets (InstructGPT: 1); null: train.max_steps
    sources: list[str] = field(default_factory=list)  # ranked-set sources to train on; [] = all (all are evaluated)
    max_len: int | None = None  # tokens per prompt + response (null: the model's context)
    min_prompt_tokens: int = 64  # a long response is cut so that its prompt keeps this many tokens
    margin: float = 0.0  # per step of rank: log sigmoid(r_w - r_l - margin x (rank_l - rank_w))
    normalise_on: str = "reward"  # the phase whose demonstrations score mean 0 after training
    eval_batch_size: int = 32  # sequences per scoring batch
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=8, lr=1e-4, warmup_steps=10, min_lr_ratio=0.0))
    launcher: str = "python"  # how dvc.yaml starts the stage, e.g. "torchrun --nproc_per_node 8"

    def __post_init__(self) -> None:
        if self.normalise_on not in PHASES:
            raise ValueError(f"normalise_on must be one of {PHASES}, got {self.normalise_on!r}")
        if self.margin < 0:
            raise ValueError("margin must be >= 0")


def build_model(sft: Path, params: RewardParams, where: str) -> RewardModel:
    """The SFT body with a fresh scalar head, drawn from the run's seed: a rerun builds the same model."""
    seed_everything(params.train.seed)
    return RewardModel(training.load_language_model(sft, params.model, where))


def main(ctx: StageContext) -> dict[str, Any]:
    params = from_params(RewardParams, ctx.section, ctx.where())
    sft = ctx.path(SFT_MODEL)
    tokenizer = load_tokenizer(sft / "tokenizer.json")
    model = build_model(sft, params, ctx.where("model"))
    max_len = params.max_len or model.config.context
    if max_len > model.config.context:
        raise ConfigError(f"max_len {max_len} exceeds the model's context {model.config.context}", file=ctx.where("max_len"))
    template = ChatTemplate(tokenizer)
    sets = read_table(ctx.path(RANKED_SETS), "ranked sets", "comparisons")
    encoded = {
        split: encode_sets(template, frame["prompt"].tolist(), frame["responses"].tolist(), frame["ranking"].tolist(),
                           frame["source"].tolist(), max_len, params.min_prompt_tokens)
        for split, frame in (("train", _train_sets(ctx, sets, params)), ("val", sets[sets["split"] == "val"]))
    }
    pad_id = special_token_ids(tokenizer)[SPECIAL.pad]
    train_config = training.with_epochs(params.train, params.epochs, len(encoded["train"]))
    task = RewardModelling(encoded["train"], encoded["val"], batch_size=train_config.batch_size, grad_accum=train_config.grad_accum,
                           seed=train_config.seed, pad_id=pad_id, margin=params.margin, eval_batch_size=params.eval_batch_size)

    run, recorder = training.start_run(ctx, params, [sft, ctx.path(RANKED_SETS)], task, model, train_config,
                                       {"sets.train": len(encoded["train"]), "sets.val": len(encoded["val"])})
    print(f"  reward model on {len(encoded['train']):,} ranked sets ({sum(len(s.pairs) for s in encoded['train']):,} pairs; "
          f"{len(encoded['val']):,} sets held out), {train_config.max_steps} steps = "
          f"{task.sampler.epochs(train_config.max_steps):.2f} epochs")
    result = train(
        model, task, train_config, run / "checkpoints",
        on_log=recorder.train, on_eval=recorder.val, peak_flops_cache=ctx.path(".runs/cpu_peak.json"),
        extra_state={"tokenizer_sha256": tokenizer_sha256(tokenizer), "stage": "reward", "model": "reward",
                     "sft_step": checkpoint.read_state(sft)["step"]},
    )
    if not is_main_process():
        return {}

    model.eval()
    references = _references(ctx, template, params, max_len)
    bias = normalise(model, references, pad_id, params.eval_batch_size)
    centred = score_sequences(model, references, pad_id, params.eval_batch_size)
    final = evaluate_sets(model, encoded["val"], pad_id, params.eval_batch_size, params.margin)  # with the bias
    model.to("cpu")
    training.publish_model(model, sft / "tokenizer.json", ctx.path(REWARD_MODEL), step=result.step,
                           extra={"model": "reward", "score_bias": bias, "normalised_on": f"demonstrations of phase {params.normalise_on}",
                                  "references": len(references), "tokenizer_sha256": tokenizer_sha256(tokenizer),
                                  "sft_step": checkpoint.read_state(sft)["step"], "val": final})
    ctx.tracker.log_artifact(ctx.path(REWARD_MODEL / checkpoint.STATE_FILE), "model")
    val_columns = sorted(c for c in recorder.log.frame("val").columns if c.endswith(("loss", "accuracy")))
    train_curve, _ = recorder.write(result.step, "reward: ranking loss", ["loss", "lr", "grad_norm", "tokens_per_s", "mfu"], val_columns)
    return _report(recorder, train_curve, result, train_config, task, encoded, final, bias, centred.tolist())


def _train_sets(ctx: StageContext, sets: pd.DataFrame, params: RewardParams) -> pd.DataFrame:
    train_sets = select_sources(ctx, sets[sets["split"] == "train"], params.sources, "sources", "ranked sets in the train split")
    if train_sets.empty:
        raise DataError("no ranked sets in the train split to train on", file=ctx.path(RANKED_SETS))
    return train_sets


def _references(ctx: StageContext, template: ChatTemplate, params: RewardParams, max_len: int) -> list[list[int]]:
    """The reference demonstrations of the normalisation phase, rendered as the reward model reads them."""
    table = read_table(ctx.path(DEMONSTRATIONS), "demonstrations", "ingest")
    table = table[table["phase"] == params.normalise_on]
    if table.empty:
        raise DataError(f"no demonstrations of phase {params.normalise_on!r} to normalise the reward model on",
                        file=ctx.path(DEMONSTRATIONS))
    return [template.render(p, r, max_len=max_len, min_prompt_tokens=params.min_prompt_tokens).ids
            for p, r in zip(table["prompt"], table["response"])]


def _report(recorder: training.CurveRecorder, train_curve: pd.DataFrame, result: Any, train_config: TrainConfig,
            task: RewardModelling, encoded: dict[str, list[EncodedSet]], final: dict[str, float], bias: float,
            reference_scores: list[float]) -> dict[str, Any]:
    initial = recorder.initial() or {}
    rounded = lambda v: round(float(v), 4) if v is not None else None  # noqa: E731
    sources = sorted({s.source for s in encoded["train"] + encoded["val"]})
    per_source = {
        source: {
            "train_sets": sum(s.source == source for s in encoded["train"]),
            "val_sets": sum(s.source == source for s in encoded["val"]),
            "val_pairs": int(final.get(f"val/{source}/pairs", 0)),
            "val_accuracy": rounded(final.get(f"val/{source}/accuracy")),
            "val_accuracy_before": rounded(initial.get(f"val/{source}/accuracy")),  # the untrained head
            "val_loss": rounded(final.get(f"val/{source}/loss")),
        }
        for source in sources
    }
    return {
        "sets": {split: len(rows) for split, rows in encoded.items()},
        "pairs": {split: sum(len(s.pairs) for s in rows) for split, rows in encoded.items()},
        "steps": result.step,
        "epochs": round(task.sampler.epochs(result.step), 3),
        "tokens_seen": result.tokens,
        "train_loss": rounded(result.metrics.get("loss")),
        "val_loss": rounded(final.get("val/loss")),
        "val_accuracy": rounded(final.get("val/accuracy")),  # pairwise, all held-out pairs; chance is 0.5
        "val_accuracy_before": rounded(initial.get("val/accuracy")),
        "per_source": per_source,
        "chosen": {"mean": rounded(final.get("val/chosen_mean")), "std": rounded(final.get("val/chosen_std"))},
        "rejected": {"mean": rounded(final.get("val/rejected_mean")), "std": rounded(final.get("val/rejected_std"))},
        "bias": round(bias, 6),
        "references": {"count": len(reference_scores), "mean": round(statistics.fmean(reference_scores), 6),
                       "std": round(statistics.pstdev(reference_scores), 4)},
        **training.speed(train_curve),
        "peak_memory_mb": round(float(result.metrics.get("peak_memory_mb", 0.0)), 1),
        "train_seconds": round(result.seconds, 1),
        "device": hardware.device_name(hardware.select_device(train_config.device)),
    }


if __name__ == "__main__":
    run_stage("reward", main)
