"""Stage `evaluate_icl`: GPT-2/GPT-3 zero-, one- and few-shot evaluation of every model the pipeline has made.

Two kinds of task, one table:

- Scored tasks (every task of `data/prepared/tasks.parquet` and `book_cloze.parquet` with a label,
  on the split `finetune_tasks` scores): each example rendered by its natural-language template
  (`instructgpt.icl`; `templates` overrides or adds one per task), after k demonstrations from the
  train split for each k of `shots`; the candidate answers scored by their log-likelihood, summed
  and per token (GPT-3's normalisation). Scored-regression tasks (STS, SICK relatedness) have no
  candidate answers and are listed as skipped.
- Generated multi-step arithmetic word problems (`instructgpt.arithmetic`), answered by greedy
  generation under each prompting strategy (`instructgpt.prompting`: plain, few-shot chain of
  thought, zero-shot chain of thought, least-to-most), scored by exact match.

The models are `models` under `data/models/` (base, sft, policy by default). Only the base model is
a DVC dependency, so `dvc repro evaluate_icl` needs no more than pretraining; the SFT and PPO models
are scored when they exist, and each scored model's checkpoint hash is in the metrics. After
`dvc repro ppo`, `dvc repro -f -s evaluate_icl` scores them; `make run` does that by itself when
`python -m stages.evaluate_icl --stale` finds the models on disk differ from those last scored.

Writes `metrics/evaluate_icl.json` (rows: task x model x k x strategy, with the chance baseline per
task), `metrics/evaluate_icl/table.md` and `table.csv`, and `metrics/evaluate_icl/arithmetic.jsonl`
(every strategy's transcript of the first problems); one MLflow child run per model.

    python -m stages.evaluate_icl        (or: dvc repro evaluate_icl)
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from instructgpt import atomic, checkpoint, hardware
from instructgpt.arithmetic import make_problems
from instructgpt.config import from_params
from instructgpt.errors import ConfigError
from instructgpt.icl import BUILTIN_TEMPLATES, Item, Template, accuracies, default_template, render, score_items
from instructgpt.prompting import STRATEGIES, greedy_completer, run_strategy
from instructgpt.task_metrics import chance
from instructgpt.tokenizer import SPECIAL, encode_ordinary_batch, load_tokenizer, special_token_ids
from stages import provenance, training
from stages.common import StageContext, load_params, run_stage
from stages.finetune_tasks import nullable, sample_rows, split_for_scoring, task_table

OUT = Path("metrics/evaluate_icl")


@dataclass(frozen=True)
class ArithmeticParams:
    problems: int = 60  # scored problems
    exemplars: int = 2  # worked problems in few-shot prompts (plain, cot, least_to_most)
    min_steps: int = 2
    max_steps: int = 3
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    max_new_tokens: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.strategies) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; strategies: {list(STRATEGIES)}")


@dataclass(frozen=True)
class EvaluateIclParams:
    """params.yaml: evaluate_icl."""

    models: list[str] = field(default_factory=lambda: ["base", "sft", "policy"])  # under data/models/; missing ones skipped
    tasks: list[str] = field(default_factory=list)  # [] = every task with labels
    shots: list[int] = field(default_factory=lambda: [0, 1, 4])  # k demonstrations
    max_examples: int | None = 200  # scored per task (null: the whole split)
    pool_examples: int = 1000  # train examples the demonstrations are drawn from
    templates: dict[str, Template] = field(default_factory=dict)  # task -> template, over the built-in ones
    arithmetic: ArithmeticParams = field(default_factory=ArithmeticParams)
    batch_size: int = 32
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if any(k < 0 for k in self.shots) or not self.shots:
            raise ValueError("shots must be a non-empty list of k >= 0")


def main(ctx: StageContext) -> dict[str, Any]:
    params = from_params(EvaluateIclParams, ctx.section, ctx.where())
    device = hardware.select_device(params.device)
    present = [name for name in params.models if (ctx.path("data/models") / name / checkpoint.MODEL_FILE).is_file()]
    skipped_models = [name for name in params.models if name not in present]
    if "base" in params.models and "base" not in present:
        raise ConfigError("the base model is missing; run `dvc repro pretrain`", file=ctx.where("models"))
    tokenizer = load_tokenizer(ctx.path("data/models") / present[0] / "tokenizer.json")
    tasks, skipped_tasks = _scored_tasks(ctx, params)
    problems = make_problems(params.arithmetic.problems + params.arithmetic.exemplars, params.arithmetic.seed,
                             params.arithmetic.min_steps, params.arithmetic.max_steps)
    exemplars, problems = problems[: params.arithmetic.exemplars], problems[params.arithmetic.exemplars :]

    rows: list[dict[str, Any]] = []
    transcripts: list[dict[str, Any]] = []
    hashes: dict[str, str] = {}
    started = time.perf_counter()
    for name in present:
        path = ctx.path("data/models") / name
        hashes[name] = model_hash(path)
        model = checkpoint.load_model(path).to(device).eval()
        with ctx.tracker.child(f"icl/{name}", {"model": name, "checkpoint_sha256": hashes[name]}, {"model": name}) as tracker:
            model_rows = _score_tasks(model, tokenizer, tasks, params, name) + \
                _arithmetic(model, tokenizer, problems, exemplars, params, name, transcripts)
            tracker.log_metrics({f"{r['task']}/k{r['k']}/{r['strategy']}/{m}": r[m] for r in model_rows
                                 for m in ("accuracy", "accuracy_per_token") if r.get(m) is not None})
        rows += model_rows
        del model
    frame = pd.DataFrame(rows)
    atomic.write_text(ctx.path(OUT / "table.csv"), frame.to_csv(index=False))
    atomic.write_text(ctx.path(OUT / "table.md"), markdown_table(frame))
    atomic.write_text(ctx.path(OUT / "arithmetic.jsonl"), "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in transcripts))
    for file in ("table.csv", "table.md", "arithmetic.jsonl"):
        ctx.tracker.log_artifact(ctx.path(OUT / file), "icl")
    return {"rows": rows, "models": hashes, "skipped_models": skipped_models, "skipped_tasks": skipped_tasks,
            "seconds": round(time.perf_counter() - started, 1)}


def model_hash(path: Path) -> str:
    return training.files_digest([path / checkpoint.MODEL_FILE])[:16]


def is_stale(root: Path) -> bool:
    """Whether the models on disk (of params `evaluate_icl.models`) differ from those last scored."""
    params = from_params(EvaluateIclParams, load_params(root).get("evaluate_icl"), "params.yaml:evaluate_icl")
    present = {name: model_hash(root / "data/models" / name) for name in params.models
               if (root / "data/models" / name / checkpoint.MODEL_FILE).is_file()}
    try:
        scored = json.loads((root / "metrics/evaluate_icl.json").read_text(encoding="utf-8"))["models"]
    except (OSError, ValueError, KeyError):
        return True
    return scored != present


@dataclass
class ScoredTask:
    name: str
    template: Template
    queries: list[Item]
    pool: list[Item]
    split: str
    chance: float


def _scored_tasks(ctx: StageContext, params: EvaluateIclParams) -> tuple[list[ScoredTask], dict[str, str]]:
    table = task_table(ctx)
    names = sorted(table["task"].unique())
    unknown = sorted(set(params.tasks) - set(names))
    if unknown:
        raise ConfigError(f"no task(s) {unknown}; tasks: {names}", file=ctx.where("tasks"))
    tasks, skipped = [], {}
    for name in names:
        if params.tasks and name not in params.tasks:
            continue
        rows = table[table["task"] == name]
        if rows["label"].isna().all():
            skipped[name] = "scored (regression): no candidate answers to rank"
            continue
        task_type = str(rows["task_type"].iloc[0])
        classes = int(rows["label"].max()) + 1
        template = params.templates.get(name) or BUILTIN_TEMPLATES.get(name) or default_template(task_type, classes)
        train_rows, split, eval_rows = split_for_scoring(rows, name)
        to_items = lambda frame: [render(template, a, b, c, int(label)) for a, b, c, label in  # noqa: E731
                                  zip(frame["text_a"], nullable(frame["text_b"]), nullable(frame["choices"]), frame["label"])]
        queries = to_items(sample_rows(eval_rows, params.max_examples, params.seed))
        pool = to_items(sample_rows(train_rows, params.pool_examples, params.seed + 1))
        choices = [len(q.candidates) for q in queries] if task_type == "multiple_choice" else None
        baseline = chance(task_type, rows["label"].dropna().astype(int).tolist(), choices)
        tasks.append(ScoredTask(name, template, queries, pool, split, float(baseline or 0.0)))
    return tasks, skipped


def _score_tasks(model: torch.nn.Module, tokenizer: Any, tasks: list[ScoredTask], params: EvaluateIclParams,
                 model_name: str) -> list[dict[str, Any]]:
    pad_id = special_token_ids(tokenizer)[SPECIAL.pad]
    encode = lambda text: encode_ordinary_batch(tokenizer, [text])[0]  # noqa: E731
    rows = []
    for task in tasks:
        for k in params.shots:
            scored = score_items(model, encode, task.queries, task.pool, k, separator=task.template.separator,
                                 context_limit=model.config.context, pad_id=pad_id, seed=params.seed, batch_size=params.batch_size)
            result = accuracies(scored, task.queries)
            rows.append({"task": task.name, "model": model_name, "k": k, "strategy": "likelihood", "split": task.split,
                         "accuracy": round(result["accuracy"], 4), "accuracy_per_token": round(result["accuracy_per_token"], 4),
                         "chance": round(task.chance, 4), "top_pick_share": round(result["top_pick_share"], 4),
                         "examples": int(result["examples"]),
                         "shots_mean": round(result["shots_mean"], 2)})
            print(f"  {model_name:<7} {task.name:<16} k={k}  accuracy {result['accuracy']:.3f}  per token "
                  f"{result['accuracy_per_token']:.3f}  (chance {task.chance:.3f}, top pick {result['top_pick_share']:.2f}, "
                  f"{result['shots_mean']:.1f} shots kept)")
    return rows


def _arithmetic(model: torch.nn.Module, tokenizer: Any, problems: list, exemplars: list, params: EvaluateIclParams,
                model_name: str, transcripts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = special_token_ids(tokenizer)
    complete = greedy_completer(model, tokenizer, max_new_tokens=params.arithmetic.max_new_tokens, context=model.config.context,
                                pad_id=ids[SPECIAL.pad], eos_id=ids[SPECIAL.end_of_text], batch_size=params.batch_size)
    rows = []
    for strategy in params.arithmetic.strategies:
        attempts = run_strategy(strategy, problems, exemplars, complete)
        correct = [a.answer == p.answer for a, p in zip(attempts, problems)]
        k = 0 if strategy == "zero_shot_cot" else len(exemplars)
        accuracy = sum(correct) / len(problems)
        rows.append({"task": "arithmetic", "model": model_name, "k": k, "strategy": strategy, "split": "generated",
                     "accuracy": round(accuracy, 4), "accuracy_per_token": None, "chance": 0.0, "top_pick_share": None,
                     "examples": len(problems), "shots_mean": float(k),
                     "answered": round(sum(a.answer is not None for a in attempts) / len(problems), 4)})
        print(f"  {model_name:<7} arithmetic       {strategy:<14} exact match {accuracy:.3f}")
        for problem, attempt in list(zip(problems, attempts))[:3]:
            transcripts.append({"model": model_name, "strategy": strategy, "question": problem.question,
                                "answer": problem.answer, "predicted": attempt.answer, "transcript": attempt.transcript})
    return rows


def markdown_table(frame: pd.DataFrame) -> str:
    """task x k x strategy rows, one column per model (accuracy; per-token accuracy in brackets)."""
    models = list(dict.fromkeys(frame["model"]))
    header = ["task", "k", "strategy", "chance", *models]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (task, k, strategy), group in frame.groupby(["task", "k", "strategy"], sort=False):
        cells = [str(task), str(k), str(strategy), f"{group['chance'].iloc[0]:.3f}"]
        for model in models:
            row = group[group["model"] == model]
            if row.empty:
                cells.append("n/a")
                continue
            r = row.iloc[0]
            cell = f"{r['accuracy']:.3f}"
            if pd.notna(r["accuracy_per_token"]):
                cell += f" ({r['accuracy_per_token']:.3f})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    legend = ("Accuracy of the candidate with the highest summed log-likelihood (per-token log-likelihood in "
              "brackets); arithmetic: exact match of the generated answer, k = exemplars in the prompt.")
    return "\n".join(lines) + "\n\n" + legend + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--stale"]:  # exit 0 when the table is behind the models on disk
        sys.exit(0 if is_stale(provenance.repo_root()) else 1)
    run_stage("evaluate_icl", main)
