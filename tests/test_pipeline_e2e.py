"""End to end: a temporary clone of the project runs `fetch -> ingest -> tokenizer -> encode` on a
slice of the real data pack with `dvc repro`, then as a Prefect flow, and meets a malformed source;
then `pretrain`, `sft -> comparisons -> reward` (which meets a malformed labels file) and `ppo`; last
`finetune_tasks` and `evaluate_icl` with a user-defined task registered in the catalogue.

The clone is the project's files as they are in this working tree (tracked and untracked, not
ignored), committed in a fresh git repo, with a small catalogue and params so it runs in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from instructgpt import schemas, shards
from instructgpt.checkpoint import load_model, read_state
from instructgpt.heads import load_reward_model
from instructgpt.sources import sha256_file
from instructgpt.tokenizer import load_tokenizer, tokenizer_sha256

pytestmark = pytest.mark.slow

DATA_STAGES = ["fetch", "ingest", "tokenizer", "encode"]
SLICE = ["tinyshakespeare", "c4", "wikitext2", "alpaca_seed", "dpo_demo", "sts"]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory, repo_root: Path, data_pack: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("clone") / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo_root, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (repo_root / rel).is_file() and not rel.startswith("metrics/") and rel != "dvc.lock":
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo_root / rel, root / rel)
    catalogue = yaml.safe_load((root / "data/sources.yaml").read_text())
    (root / "data/sources.yaml").write_text(yaml.safe_dump([s for s in catalogue if s["name"] in SLICE], sort_keys=False))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tokenizer"]["vocab_size"] = 1024
    params["encode"]["mixture"] = {"c4": 0.5}  # c4 is a quarter of the slice: seen twice
    params["pretrain"].update(preset="cpu-tiny", val_tokens_per_source=512, eval_batch_size=8)
    params["pretrain"]["train"].update(max_steps=6, batch_size=4, warmup_steps=2, log_every=2, eval_every=3,
                                       checkpoint_every=3)
    params["sft"].update(epochs=None, sample_prompts=2, sampling={"max_new_tokens": 8, "temperature": 0.7, "top_k": 50, "seed": 0})
    params["sft"]["train"].update(max_steps=4, batch_size=4, warmup_steps=1, log_every=2, eval_every=2, checkpoint_every=2)
    params["comparisons"]["imported"]["max_train_sets"] = 16
    params["comparisons"]["sampled"].update(prompts=8, batch_rows=16,
                                            sampling={"max_new_tokens": 16, "temperature": 1.0, "top_k": 50, "seed": 0})
    params["reward"].update(epochs=None)
    params["reward"]["train"].update(max_steps=4, batch_size=4, warmup_steps=1, log_every=2, eval_every=2, checkpoint_every=2)
    params["ppo"].update(iterations=2, batch_prompts=4, sampling={"max_new_tokens": 8, "temperature": 1.0, "seed": 0},
                         eval={"prompts": 4, "sampling": {"max_new_tokens": 8, "temperature": 0.7, "top_k": 50, "seed": 1}})
    params["ppo"]["ppo"].update(ppo_epochs=2, minibatches=2, ptx_coef=0.5)  # PPO-ptx on, to run that path too
    params["finetune_tasks"].update(max_train_examples=24, max_eval_examples=12, epochs=1, max_len=48)
    params["finetune_tasks"]["train"].update(batch_size=8, warmup_steps=1, log_every=1)
    params["evaluate_icl"].update(shots=[0, 1], max_examples=6, pool_examples=20,
                                  arithmetic={"problems": 3, "exemplars": 1, "max_new_tokens": 6})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "INSTRUCTGPT_", "PREFECT_API"))},
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "INSTRUCTGPT_DATA_MIRROR": str(data_pack),  # the clone has no ../shared beside it
        "DVC_NO_ANALYTICS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(root.parent / "prefect-home"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    _run(["git", "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"], root, env)
    return root, env


def _locked_out(root: Path, stage: str, path: str) -> dict:
    """What dvc.lock records for one out of a stage (its md5, size, files)."""
    outs = yaml.safe_load((root / "dvc.lock").read_text())["stages"][stage]["outs"]
    return next(out for out in outs if out["path"] == path)


def _runs(root: Path) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    return mlflow.search_runs(experiment_names=["instructgpt"], output_format="pandas")


def test_dvc_repro_builds_validated_outputs_and_tracks_each_stage(clone: tuple[Path, dict[str, str]]) -> None:
    root, env = clone
    first = _run([str(BIN / "dvc"), "repro", "encode"], root, env)
    for stage in DATA_STAGES:
        assert f"Running stage '{stage}'" in first.stdout

    prepared = root / "data/prepared"
    for name, model in schemas.TABLE_SCHEMAS.items():
        schemas.validate(pd.read_parquet(prepared / f"{name}.parquet"), model, name)
    documents = pd.read_parquet(prepared / "documents.parquet")
    assert set(documents["source"]) == {"tinyshakespeare", "c4", "wikitext2"}
    assert set(documents["split"]) == {"train", "val"}
    assert len(pd.read_parquet(prepared / "comparisons.parquet")) == 295
    assert set(pd.read_parquet(prepared / "tasks.parquet")["split"]) == {"train", "dev"}

    tokenizer = load_tokenizer(root / "data/tokenizer/tokenizer.json")
    meta = shards.read_meta(root / "data/shards")
    assert meta["tokenizer_sha256"] == tokenizer_sha256(tokenizer) == sha256_file(root / "data/tokenizer/tokenizer.json")
    train = shards.read_shard(root / "data/shards", "train")
    index = shards.read_index(root / "data/shards")
    assert len(train) == index.loc[index["split"] == "train", "n_tokens"].sum() + (index["split"] == "train").sum()
    # c4 is half the mix, about twice its natural share: it is seen about twice
    natural = meta["mixture"]["natural_shares"]["c4"]
    assert meta["mixture"]["shares"]["c4"] == 0.5
    assert natural < 0.5 and meta["mixture"]["epochs"]["c4"] == pytest.approx(0.5 / natural, rel=0.05)

    metrics = {s: json.loads((root / f"metrics/{s}.json").read_text()) for s in DATA_STAGES}
    assert metrics["ingest"]["sources"]["c4"]["kept"]["documents"] > 250
    assert set(metrics["tokenizer"]["val_bytes_per_token"]) == {"tinyshakespeare", "c4", "wikitext2"}
    assert metrics["encode"]["tokens_total"]["train"] == len(train)

    runs = _runs(root)
    stage_runs = runs[runs["tags.stage"].notna()]
    assert sorted(stage_runs["tags.stage"]) == sorted(DATA_STAGES)
    assert set(stage_runs["status"]) == {"FINISHED"}
    parents = set(stage_runs["tags.mlflow.parentRunId"])
    assert len(parents) == 1
    parent = runs[runs["run_id"] == parents.pop()].iloc[0]
    assert parent["tags.launcher"] == "dvc repro"
    by_stage = stage_runs.set_index("tags.stage")
    assert by_stage.loc["tokenizer", "params.vocab_size"] == "1024"
    assert by_stage.loc["encode", "metrics.tokens_total/train"] == len(train)
    assert by_stage.loc["ingest", "tags.git_dirty"] == "false"
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    dep_md5 = {d["path"]: d["md5"] for d in lock["stages"]["encode"]["deps"]}
    assert by_stage.loc["encode", "tags.dvc.dep.data/tokenizer/tokenizer.json"] == dep_md5["data/tokenizer/tokenizer.json"]

    second = _run([str(BIN / "dvc"), "repro", "encode"], root, env)
    assert "Running stage" not in second.stdout
    assert len(_runs(root)) == len(runs)  # nothing ran, nothing was logged


def test_the_prefect_flow_runs_the_same_stages(clone: tuple[Path, dict[str, str]]) -> None:
    root, env = clone
    before = len(_runs(root))
    result = _run([str(BIN / "python"), "-m", "flows.pipeline", "encode", "--force", "--root", str(root)], root, env)
    runs = _runs(root)
    new = runs.iloc[: len(runs) - before]  # newest first
    stage_runs = new[new["tags.stage"].notna()]
    assert sorted(stage_runs["tags.stage"]) == sorted(DATA_STAGES), result.stdout[-3000:]
    parent = new[new["tags.mlflow.runName"] == "pipeline"].iloc[0]
    assert parent["tags.launcher"] == "prefect" and parent["status"] == "FINISHED"
    assert set(stage_runs["tags.mlflow.parentRunId"]) == {parent["run_id"]}
    assert "Running stage 'encode'" in result.stdout + result.stderr
    assert "Running stage" not in _run([str(BIN / "dvc"), "repro", "encode"], root, env).stdout


def test_a_malformed_source_fails_ingest_naming_file_line_and_field(
    clone: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, env = clone
    prepared = root / "data/prepared"
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in prepared.glob("*.parquet")}
    bad = tmp_path / "scraped.jsonl"
    bad.write_text("\n".join([json.dumps({"text": "A fine web page. " * 20})] * 3 + [json.dumps({"body": "oops"})] * 2) + "\n")
    catalogue = yaml.safe_load((root / "data/sources.yaml").read_text())
    catalogue.append({"name": "scraped", "kind": "web", "format": "jsonl", "path": str(bad),
                      "sha256": sha256_file(bad), "license": "unknown"})
    (root / "data/sources.yaml").write_text(yaml.safe_dump(catalogue, sort_keys=False))
    try:
        failed = _run([str(BIN / "dvc"), "repro", "encode"], root, env, check=False)
        assert failed.returncode != 0
        assert f"{bad}:4: field 'text'" in failed.stderr or f"{bad}:4: field 'text'" in failed.stdout, failed.stderr
        assert "source 'scraped': 2 of 5 records are invalid" in failed.stderr + failed.stdout
        after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in prepared.glob("*.parquet")}
        assert after == before  # the failed run left the earlier outputs as they were
        assert not list(prepared.glob("*.tmp"))  # and no temporaries
    finally:
        _run(["git", "checkout", "data/sources.yaml"], root, env)


def test_pretrain_trains_publishes_the_base_model_and_tracks_the_curve(clone: tuple[Path, dict[str, str]]) -> None:
    root, env = clone
    result = _run([str(BIN / "dvc"), "repro", "pretrain"], root, env)
    assert "Running stage 'pretrain'" in result.stdout
    model = load_model(root / "data/models/base")
    assert model.config.n_layer == 2 and model.config.vocab_size == 1024
    assert sha256_file(root / "data/models/base/tokenizer.json") == sha256_file(root / "data/tokenizer/tokenizer.json")

    metrics = json.loads((root / "metrics/pretrain.json").read_text())
    assert metrics["steps"] == 6 and metrics["tokens_seen"] == 6 * 4 * 128
    assert metrics["val_loss"] < metrics["val_loss_initial"]  # even six steps learn something
    assert set(metrics["val_ppl_per_source"]) == {"tinyshakespeare", "c4", "wikitext2"}
    train_curve = pd.read_csv(root / "metrics/pretrain/train.csv")
    val_curve = pd.read_csv(root / "metrics/pretrain/val.csv")
    assert train_curve["step"].tolist() == [2, 4, 6] and val_curve["step"].tolist() == [0, 3, 6]
    plots = _run([str(BIN / "dvc"), "plots", "show", "--json"], root, env)
    assert "pretrain loss" in plots.stdout

    runs = _runs(root)
    run = runs[runs["tags.stage"] == "pretrain"].iloc[0]
    client = mlflow.tracking.MlflowClient(f"sqlite:///{root}/mlflow.db")
    assert [m.step for m in client.get_metric_history(run["run_id"], "loss")] == [2, 4, 6]
    assert [m.step for m in client.get_metric_history(run["run_id"], "val/loss")] == [0, 3, 6]
    assert run["params.preset"] == "cpu-tiny"
    assert "Running stage" not in _run([str(BIN / "dvc"), "repro", "pretrain"], root, env).stdout

    # Trained again from scratch (its checkpoints deleted), it publishes the same bytes: the model
    # directory holds no timings, so DVC and the run keys of the stages after it see no change.
    published = {p.name: p.read_bytes() for p in (root / "data/models/base").iterdir()}
    locked = _locked_out(root, "pretrain", "data/models/base")
    shutil.rmtree(root / ".runs" / "pretrain")
    again = _run([str(BIN / "dvc"), "repro", "--force", "--single-item", "pretrain"], root, env)
    assert "Running stage 'pretrain'" in again.stdout and "resumed" not in again.stdout + again.stderr
    assert {p.name: p.read_bytes() for p in (root / "data/models/base").iterdir()} == published
    assert _locked_out(root, "pretrain", "data/models/base") == locked


def test_sft_comparisons_and_reward_run_as_instructgpt_steps_one_and_two(clone: tuple[Path, dict[str, str]]) -> None:
    root, env = clone
    result = _run([str(BIN / "dvc"), "repro", "reward"], root, env)
    for stage in ("sft", "comparisons", "reward"):
        assert f"Running stage '{stage}'" in result.stdout

    sets = schemas.validate(pd.read_parquet(root / "data/comparisons/ranked_sets.parquet"), schemas.RankedSets, "ranked_sets")
    sampled = sets[sets["source"] == "sampled"]
    assert set(sets["source"]) == {"dpo_demo", "sampled"}
    assert set(sampled["labeler"]) == {"programmatic"} and set(sets.loc[sets["source"] == "dpo_demo", "labeler"]) == {"imported"}
    assert len(sets[(sets["source"] == "dpo_demo") & (sets["split"] == "train")]) == 16  # capped
    assert sampled["responses"].map(len).between(2, 4).all()
    demonstrations = pd.read_parquet(root / "data/prepared/demonstrations.parquet")
    reward_prompts = set(demonstrations.loc[demonstrations["phase"] == "reward", "prompt"])
    sft_prompts = set(demonstrations.loc[demonstrations["phase"] == "sft", "prompt"])
    assert set(sampled["prompt"]) <= reward_prompts and not set(sampled["prompt"]) & sft_prompts
    samples = [json.loads(line) for line in (root / "data/comparisons/sampled.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(len(s["ended"]) == len(s["responses"]) for s in samples)

    comparisons = json.loads((root / "metrics/comparisons.json").read_text())
    assert comparisons["prompts"] == 8 and comparisons["responses_sampled"] == 32
    assert comparisons["labeler_agreement"] is None and "labeler_agreement_note" in comparisons
    assert comparisons["sets"] == len(sets)

    reward = json.loads((root / "metrics/reward.json").read_text())
    assert reward["steps"] == 4 and set(reward["per_source"]) == {"dpo_demo", "sampled"}
    assert 0.0 <= reward["val_accuracy"] <= 1.0
    assert abs(reward["references"]["mean"]) < 1e-4  # the bias centres the reference demonstrations
    model = load_reward_model(root / "data/models/reward")
    assert float(model.score_bias) == pytest.approx(reward["bias"], abs=1e-5)
    assert read_state(root / "data/models/reward")["extra"]["model"] == "reward"
    assert pd.read_csv(root / "metrics/reward/val.csv")["step"].tolist() == [0, 2, 4]

    runs = _runs(root)
    by_stage = runs[runs["tags.stage"].isin(["sft", "comparisons", "reward"])].groupby("tags.stage").first()
    assert set(by_stage.index) == {"sft", "comparisons", "reward"}
    assert by_stage.loc["reward", "metrics.val_accuracy"] == pytest.approx(reward["val_accuracy"], abs=1e-4)
    assert by_stage.loc["comparisons", "params.sampled.responses"] == "4"
    assert "Running stage" not in _run([str(BIN / "dvc"), "repro", "reward"], root, env).stdout


def test_a_malformed_labels_file_fails_comparisons_naming_file_line_and_field(clone: tuple[Path, dict[str, str]]) -> None:
    root, env = clone
    before = hashlib.sha256((root / "data/comparisons/ranked_sets.parquet").read_bytes()).hexdigest()
    labels = root / "data/labels/ann.jsonl"
    good = {"prompt": "Which is kinder?", "responses": ["Thank you.", "Go away."], "ranking": [0, 1], "labeler": "ann"}
    labels.write_text(json.dumps(good) + "\n" + json.dumps({**good, "ranking": [0, "first"]}) + "\n")
    try:
        failed = _run([str(BIN / "dvc"), "repro", "comparisons"], root, env, check=False)
        assert failed.returncode != 0
        assert "data/labels/ann.jsonl:2: field 'ranking'" in failed.stderr, failed.stderr[-2000:]
        after = hashlib.sha256((root / "data/comparisons/ranked_sets.parquet").read_bytes()).hexdigest()
        assert after == before  # nothing was written
        # a good file: a set of its own, and ann's ranks of a set the SFT model sampled (the run is
        # seeded, so it samples the same responses again and her ranks attach to them)
        lines = [json.loads(line) for line in (root / "data/comparisons/sampled.jsonl").read_text().splitlines()]
        sampled = next(s for s in lines if len(set(s["rankings"].get("programmatic", [0]))) > 1)
        programmatic = sampled["rankings"]["programmatic"]
        hers = [max(programmatic) - r for r in programmatic]  # she reverses the rubric's order
        labels.write_text(json.dumps(good) + "\n" + json.dumps({**sampled, "ranking": hers, "labeler": "ann"}) + "\n")
        _run([str(BIN / "dvc"), "repro", "comparisons"], root, env)
        sets = pd.read_parquet(root / "data/comparisons/ranked_sets.parquet")
        mine = sets[sets["source"] == "labels"]
        assert mine["labeler"].tolist() == ["ann"] and mine["responses"].map(list).tolist() == [good["responses"]]
        ranked_by_her = sets[(sets["source"] == "sampled") & (sets["prompt"] == sampled["prompt"])].iloc[0]
        assert ranked_by_her["labeler"] == "ann" and list(ranked_by_her["ranking"]) == hers
        metrics = json.loads((root / "metrics/comparisons.json").read_text())
        assert metrics["labeler_agreement_sets"] == 1 and metrics["labeler_agreement"] == 0.0
    finally:
        labels.unlink(missing_ok=True)


def test_ppo_trains_the_policy_logs_every_iteration_and_compares_it_with_sft(clone: tuple[Path, dict[str, str]]) -> None:
    root, env = clone
    result = _run([str(BIN / "dvc"), "repro", "ppo"], root, env)
    assert "Running stage 'ppo'" in result.stdout
    metrics = json.loads((root / "metrics/ppo.json").read_text())
    assert metrics["iterations"] == 2
    comparison = metrics["comparison"]
    for key in ("policy/reward_score", "baseline/reward_score", "policy/labeler_score", "baseline/labeler_score",
                "policy/kl_to_reference", "win_rate"):
        assert key in comparison
    assert 0.0 <= comparison["win_rate"] <= 1.0 and comparison["baseline/kl_to_reference"] == pytest.approx(0.0, abs=1e-4)
    assert 0.0 < metrics["generation_share"] < 1.0
    samples = [json.loads(line) for line in (root / "metrics/ppo/samples.jsonl").read_text().splitlines()]
    assert len(samples) == comparison["prompts"] == 4  # every judged answer pair, as the labeler saw it
    curve = pd.read_csv(root / "metrics/ppo/train.csv")
    assert curve["step"].tolist() == [1, 2] and "loss/ptx" in curve and "policy/clipfrac" in curve
    policy = load_model(root / "data/models/policy")
    assert read_state(root / "data/models/policy")["extra"]["model"] == "policy" and policy.config.n_layer == 2

    runs = _runs(root)
    run = runs[runs["tags.stage"] == "ppo"].iloc[0]
    client = mlflow.tracking.MlflowClient(f"sqlite:///{root}/mlflow.db")
    assert [m.step for m in client.get_metric_history(run["run_id"], "objective/kl")] == [1, 2]
    assert run["metrics.comparison/win_rate"] == pytest.approx(comparison["win_rate"], abs=1e-4)

    # started again on the same params and data, the stage finds its last checkpoint and trains no further
    again = _run([str(BIN / "python"), "-m", "stages.ppo"], root, env)
    assert "resuming after iteration 2" in again.stdout and "iteration   1:" not in again.stdout
    rerun = json.loads((root / "metrics/ppo.json").read_text())
    assert rerun["comparison"] == comparison and rerun["train"] == metrics["train"]


def test_task_fine_tuning_and_icl_cover_every_task_a_user_defined_one_included(clone: tuple[Path, dict[str, str]]) -> None:
    root, env = clone
    _run([str(BIN / "dvc"), "repro", "ppo"], root, env)  # the SFT and PPO models are scored too (done already in a full run)
    # a person's own task: a source of kind `tasks` in the catalogue, no split, no code change
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    lines = [json.dumps({"text": f"the {words[i % 6]} film number {i}", "label": int(i % 6 < 3)}) for i in range(90)]
    user_file = root.parent / "toy_sentiment.jsonl"
    user_file.write_text("\n".join(lines) + "\n")
    catalogue = yaml.safe_load((root / "data/sources.yaml").read_text())
    catalogue.append({"name": "toy_sentiment", "kind": "tasks", "format": "classification_jsonl", "path": str(user_file),
                      "sha256": sha256_file(user_file), "license": "test data", "description": "a user's task"})
    (root / "data/sources.yaml").write_text(yaml.safe_dump(catalogue, sort_keys=False))

    result = _run([str(BIN / "dvc"), "repro", "finetune_tasks", "evaluate_icl"], root, env)
    for stage in ("cloze", "finetune_tasks", "evaluate_icl"):
        assert f"Running stage '{stage}'" in result.stdout
    cloze = pd.read_parquet(root / "data/prepared/book_cloze.parquet")
    schemas.validate(cloze, schemas.Tasks, "book_cloze")

    tasks = json.loads((root / "metrics/finetune_tasks.json").read_text())["tasks"]
    assert {"sts", "toy_sentiment"} <= set(tasks)
    toy = tasks["toy_sentiment"]
    assert toy["task_type"] == "classification" and toy["train_examples"] == 24 and toy["chance"] == 0.5
    assert set(toy["variants"]) == {"gpt1", "no_aux_lm", "no_pretraining"}
    assert all(0.0 <= v["accuracy"] <= 1.0 and "f1" in v for v in toy["variants"].values())
    assert tasks["sts"]["regression"] and "pearson" in tasks["sts"]["variants"]["gpt1"]
    table = (root / "metrics/finetune_tasks/table.md").read_text()
    assert "| toy_sentiment |" in table and "| sts |" in table

    runs = _runs(root)
    stage_run = runs[(runs["tags.stage"] == "finetune_tasks") & runs["tags.variant"].isna()].iloc[0]
    children = runs[runs["tags.task"] == "toy_sentiment"]
    assert sorted(children["tags.variant"]) == ["gpt1", "no_aux_lm", "no_pretraining"]
    assert set(children["tags.mlflow.parentRunId"]) == {stage_run["run_id"]}
    assert (children["metrics.eval/accuracy"].notna()).all()

    # run again: every fine-tuning run is read back from its finished checkpoint, not retrained
    again = _run([str(BIN / "python"), "-m", "stages.finetune_tasks"], root, env)
    assert again.stdout.count("resumed from") == 3 * len(tasks)
    assert json.loads((root / "metrics/finetune_tasks.json").read_text())["tasks"] == tasks

    icl = json.loads((root / "metrics/evaluate_icl.json").read_text())
    assert set(icl["models"]) == {"base", "sft", "policy"} and icl["skipped_models"] == []
    assert "sts" in icl["skipped_tasks"]  # scored similarity: no candidate answers
    rows = pd.DataFrame(icl["rows"])
    toy_rows = rows[rows["task"] == "toy_sentiment"]
    assert sorted(zip(toy_rows["model"], toy_rows["k"])) == sorted((m, k) for m in ("base", "sft", "policy") for k in (0, 1))
    arithmetic = rows[rows["task"] == "arithmetic"]
    assert set(arithmetic["strategy"]) == {"plain", "cot", "zero_shot_cot", "least_to_most"}
    assert (rows["accuracy"].between(0, 1)).all() and "| toy_sentiment | 1 | likelihood |" in (root / "metrics/evaluate_icl/table.md").read_text()
