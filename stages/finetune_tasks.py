"""Stage `finetune_tasks`: GPT-1 transfer by fine-tuning, every task, with the paper's ablations.

For every task in `data/prepared/tasks.parquet` (ingest: SST-2, rt-polarity, SICK, MSRP, STS and any
source of kind `tasks`) and `data/prepared/book_cloze.parquet` (stage `cloze`), or those named in
`tasks`: the task's input transformation (`instructgpt.task_inputs`), a linear head on the extract
token (`instructgpt.task_model`) and L = L_task + λ·L_lm, trained with the shared loop on a seeded
sample of the train split and scored on the test split where the task has one, else dev.

Each `variants` entry is one run per task: by default GPT-1's recipe (pretrained, λ = 0.5) and its
two ablations, the same fine-tuning without the auxiliary LM loss (λ = 0) and from a randomly
initialised model (what pretraining transferred). Every run is an MLflow child run of the stage's
run; its checkpoints live under `.runs/finetune_tasks/<key>/`, the key a hash of what the run
depends on (its examples, variant, training params and, when pretrained, the base model), so a run
killed midway resumes, and a task added later trains alone while the others are read back.

Writes `metrics/finetune_tasks.json` (per task: type, split scored, sizes, chance and majority-class
baselines, each variant's scores) and the table `metrics/finetune_tasks/table.md`.

    python -m stages.finetune_tasks        (or: dvc repro finetune_tasks)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from instructgpt import atomic, checkpoint
from instructgpt.config import from_params
from instructgpt.errors import ConfigError, DataError
from instructgpt.finetune import TaskFineTuning
from instructgpt.model import GPT
from instructgpt.task_inputs import TaskExample, TaskTokens, encode_examples
from instructgpt.task_metrics import chance
from instructgpt.task_model import TaskModel, TaskSpec
from instructgpt.tokenizer import SPECIAL, load_tokenizer, special_token_ids
from instructgpt.train import TrainConfig, train
from stages import training
from stages.cloze import BOOK_CLOZE
from stages.common import StageContext, is_main_process, read_table, run_stage
from stages.pretrain import BASE_MODEL

TASKS = Path("data/prepared/tasks.parquet")
TABLE = Path("metrics/finetune_tasks/table.md")


@dataclass(frozen=True)
class Variant:
    init: Literal["pretrained", "random"] = "pretrained"
    lm_coef: float = 0.5  # λ of the auxiliary LM loss (GPT-1: 0.5); 0: off


def _default_variants() -> dict[str, Variant]:
    return {"gpt1": Variant("pretrained", 0.5), "no_aux_lm": Variant("pretrained", 0.0),
            "no_pretraining": Variant("random", 0.5)}


@dataclass(frozen=True)
class FinetuneTasksParams:
    """params.yaml: finetune_tasks."""

    tasks: list[str] = field(default_factory=list)  # task names to fine-tune; [] = every task
    variants: dict[str, Variant] = field(default_factory=_default_variants)
    max_train_examples: int | None = 800  # a seeded sample of each train split (null: all)
    max_eval_examples: int | None = 400  # of the split scored (null: all)
    max_len: int = 64  # tokens per sequence, task tokens included
    epochs: float | None = 2.0  # GPT-1: 3; sets train.max_steps per task; null: train.max_steps
    head_dropout: float = 0.1  # GPT-1: 0.1 on the classifier
    model: dict[str, Any] = field(default_factory=lambda: {"dropout": 0.1})  # overrides keeping the base model's shapes
    eval_batch_size: int = 64
    seed: int = 0  # the train and eval samples
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        batch_size=16, lr=5e-4, warmup_steps=10, min_lr_ratio=0.0, weight_decay=0.01, eval_every=0,
        checkpoint_every=0, keep_checkpoints=1, log_every=10))
    launcher: str = "python"  # how dvc.yaml starts the stage, e.g. "torchrun --nproc_per_node 8"

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("variants must name at least one run per task")
        if self.max_len < 8:
            raise ValueError("max_len must be at least 8")


@dataclass
class PreparedTask:
    name: str
    spec: TaskSpec
    split: str  # the split scored
    train: list[TaskExample]
    eval: list[TaskExample]
    majority: float | None
    chance: float | None

    def digest(self) -> str:
        payload = json.dumps([dataclasses.asdict(self.spec), self.split,
                              [dataclasses.asdict(e) for e in self.train], [dataclasses.asdict(e) for e in self.eval]])
        return hashlib.sha256(payload.encode()).hexdigest()


def main(ctx: StageContext) -> dict[str, Any]:
    params = from_params(FinetuneTasksParams, ctx.section, ctx.where())
    base = ctx.path(BASE_MODEL)
    tokenizer = load_tokenizer(base / "tokenizer.json")
    context = checkpoint.model_config(base).context
    max_len = min(params.max_len, context)
    table = task_table(ctx)
    names = _selected(ctx, table, params.tasks)
    ids = special_token_ids(tokenizer)
    pad_id, task_tokens = ids[SPECIAL.pad], TaskTokens.of(tokenizer).all()
    base_digest, code_digest = training.files_digest([base]), training.code_digest(ctx)  # once, not per run

    results: dict[str, Any] = {}
    started = time.perf_counter()
    for name in names:
        task = prepare(table[table["task"] == name], name, tokenizer, max_len, params)
        print(f"  {name}: {task.spec.task_type}, {len(task.train):,} train, {len(task.eval):,} {task.split}")
        scores = {}
        for variant_name, variant in params.variants.items():
            scores[variant_name] = run_variant(ctx, params, task, variant_name, variant, base, base_digest, code_digest,
                                                  pad_id, task_tokens)
        results[name] = {
            "task_type": task.spec.task_type, "regression": task.spec.is_regression, "split": task.split,
            "train_examples": len(task.train), "eval_examples": len(task.eval),
            "chance": _round(task.chance), "majority": _round(task.majority), "variants": scores,
        }
    if not is_main_process():  # under torchrun every process trained; one writes
        return {}
    atomic.write_text(ctx.path(TABLE), markdown_table(results, list(params.variants)))
    ctx.tracker.log_artifact(ctx.path(TABLE), "tables")
    return {"tasks": results, "seconds": round(time.perf_counter() - started, 1), "max_len": max_len}


def task_table(ctx: StageContext) -> pd.DataFrame:
    """Ingest's tasks and the book cloze task, one table."""
    return pd.concat([read_table(ctx.path(TASKS), "tasks", "ingest"), read_table(ctx.path(BOOK_CLOZE), "cloze task", "cloze")],
                     ignore_index=True)


def _selected(ctx: StageContext, table: pd.DataFrame, wanted: list[str]) -> list[str]:
    present = sorted(table["task"].unique())
    unknown = sorted(set(wanted) - set(present))
    if unknown:
        raise ConfigError(f"no task(s) {unknown}; tasks: {present}", file=ctx.where("tasks"))
    return [name for name in present if not wanted or name in wanted]


def prepare(rows: pd.DataFrame, name: str, tokenizer: Any, max_len: int, params: FinetuneTasksParams) -> PreparedTask:
    """The task's head, its train sample and the split it is scored on, transformed."""
    task_type = str(rows["task_type"].iloc[0])
    if rows["task_type"].nunique() != 1:
        raise DataError(f"task {name!r} mixes task types {sorted(rows['task_type'].unique())}", file=str(TASKS))
    train_rows, split, eval_rows = split_for_scoring(rows, name)
    train_rows = sample_rows(train_rows, params.max_train_examples, params.seed)
    eval_rows = sample_rows(eval_rows, params.max_eval_examples, params.seed + 1)
    regression = bool(rows["label"].isna().all())
    if regression:
        scores = train_rows["score"].astype(float)
        spec = TaskSpec(task_type, 0, (float(scores.min()), float(scores.max())))
    elif task_type == "multiple_choice":
        spec = TaskSpec(task_type)
    else:
        spec = TaskSpec(task_type, int(rows["label"].max()) + 1)

    def encode(frame: pd.DataFrame) -> list[TaskExample]:
        return encode_examples(tokenizer, task_type, frame["text_a"].tolist(), nullable(frame["text_b"]),
                               nullable(frame["choices"]), frame["label"].tolist(), frame["score"].tolist(), max_len)

    train_examples, eval_examples = encode(train_rows), encode(eval_rows)
    majority = None
    if not regression and task_type != "multiple_choice":
        most = train_rows["label"].astype(int).mode().iloc[0]
        majority = float((eval_rows["label"].astype(int) == most).mean())
    n_choices = [len(c) for c in eval_rows["choices"]] if task_type == "multiple_choice" else None
    baseline = None if regression else chance(task_type, rows["label"].dropna().astype(int).tolist(), n_choices)
    return PreparedTask(name, spec, split, train_examples, eval_examples, majority, baseline)


def run_variant(ctx: StageContext, params: FinetuneTasksParams, task: PreparedTask, name: str, variant: Variant,
                base: Path, base_digest: str, code_digest: str, pad_id: int, task_tokens: frozenset[int]) -> dict[str, float]:
    """One fine-tuning run, resumed (or read back, when finished) from its run directory."""
    config = training.with_epochs(params.train, params.epochs, len(task.train))
    key_parts = {"task": task.digest(), "variant": dataclasses.asdict(variant), "train": dataclasses.asdict(config),
                 "head_dropout": params.head_dropout, "model": params.model, "code": code_digest,
                 "base": base_digest if variant.init == "pretrained" else checkpoint.model_config(base).to_dict()}
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    run = ctx.path(Path(".runs") / ctx.name / key)
    torch.manual_seed(config.seed)
    if variant.init == "pretrained":
        body = training.load_language_model(base, params.model, ctx.where("model"))
    else:
        body = GPT(checkpoint.model_config(base, **params.model))  # the same shapes, random weights
    model = TaskModel(body, task.spec, params.head_dropout)
    fine_tuning = TaskFineTuning(task.spec, task.train, task.eval, lm_coef=variant.lm_coef, batch_size=config.batch_size,
                                 grad_accum=config.grad_accum, seed=config.seed, pad_id=pad_id, task_tokens=task_tokens,
                                 eval_batch_size=params.eval_batch_size)
    child_params = {"task": task.name, "variant": name, **dataclasses.asdict(variant), "split": task.split,
                    "train_examples": len(task.train), "eval_examples": len(task.eval), "max_steps_used": config.max_steps,
                    "run_dir": str(run)}
    with ctx.tracker.child(f"{task.name}/{name}", child_params, {"task": task.name, "variant": name}) as tracker:
        result = train(model, fine_tuning, config, run / "checkpoints",
                       on_log=lambda step, m: tracker.log_metrics(m, step=step),
                       on_eval=lambda step, m: tracker.log_metrics(m, step=step),
                       peak_flops_cache=ctx.path(".runs/cpu_peak.json"),
                       extra_state={"stage": "finetune_tasks", "task": task.name, "variant": name})
    seconds = result.train_seconds  # a run read back reports the time it took when it trained
    scores = {k.removeprefix("eval/"): _round(v) for k, v in result.eval.items() if k != "eval/examples"}
    print(f"    {name:<16} {_headline(task.spec, scores)}  ({result.step} steps, {seconds:.0f}s)")
    return {**scores, "steps": result.step, "seconds": round(seconds, 1)}


def markdown_table(results: dict[str, Any], variants: list[str]) -> str:
    """One row per task: its headline figure under every variant, beside chance and the majority class."""
    header = ["task", "type", "metric", "split", "train", "eval", "chance", "majority", *variants]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        metric = "pearson" if r["regression"] else "accuracy"
        cells = [name, r["task_type"] + (" (scored)" if r["regression"] else ""), metric, r["split"],
                 str(r["train_examples"]), str(r["eval_examples"]), _cell(r["chance"]), _cell(r["majority"])]
        for variant in variants:
            scores = r["variants"][variant]
            cell = _cell(scores.get(metric))
            if "f1" in scores:
                cell += f" (F1 {_cell(scores['f1'])})"
            if r["regression"]:
                cell += f" (Spearman {_cell(scores.get('spearman'))})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _headline(spec: TaskSpec, scores: dict[str, float | None]) -> str:
    if spec.is_regression:
        return f"pearson {_cell(scores.get('pearson'))} spearman {_cell(scores.get('spearman'))}"
    return f"accuracy {_cell(scores.get('accuracy'))}" + (f" f1 {_cell(scores['f1'])}" if "f1" in scores else "")


def split_for_scoring(rows: pd.DataFrame, name: str) -> tuple[pd.DataFrame, str, pd.DataFrame]:
    """A task's train rows, and the split it is scored on (test where it has one, else dev) with its rows."""
    train_rows = rows[rows["split"] == "train"]
    split = "test" if (rows["split"] == "test").any() else "dev"
    eval_rows = rows[rows["split"] == split]
    if train_rows.empty or eval_rows.empty:
        raise DataError(f"task {name!r} needs train and dev (or test) examples; it has {rows['split'].value_counts().to_dict()}",
                        file=str(TASKS))
    return train_rows, split, eval_rows


def sample_rows(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """At most `limit` rows, a seeded choice kept in table order (all of them when fewer)."""
    if limit is None or len(frame) <= limit:
        return frame
    rows = np.sort(np.random.default_rng(seed).choice(len(frame), size=limit, replace=False))
    return frame.iloc[rows]


def nullable(series: pd.Series) -> list[Any]:
    """Values with missing ones as None (parquet gives NaN or None) and lists as lists (it gives arrays)."""
    return [list(v) if isinstance(v, (list, np.ndarray)) else None if v is None or v != v else v for v in series.tolist()]


def _round(value: float | None) -> float | None:
    return None if value is None or value != value else round(float(value), 4)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    run_stage("finetune_tasks", main)
