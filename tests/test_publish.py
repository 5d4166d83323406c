"""Publishing a trained checkpoint as a model directory: the same training publishes the same bytes,
whatever the host's timings, so the stages keyed on the model are not retrained for a timing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from instructgpt.checkpoint import MODEL_FILE, STATE_FILE, load_model, read_state
from instructgpt.model import GPT, preset
from instructgpt.pretraining import Pretraining
from instructgpt.train import TrainConfig, seed_everything, train
from stages.training import HOST_DEPENDENT, publish

pytestmark = pytest.mark.usefixtures("single_thread")

CONTEXT = 32
CONFIG = TrainConfig(max_steps=4, batch_size=4, lr=3e-3, warmup_steps=1, log_every=2, eval_every=0,
                     checkpoint_every=4, keep_checkpoints=0, device="cpu", seed=3)


def _train_and_publish(shards: Path, root: Path) -> tuple[Path, Path]:
    seed_everything(0)
    model = GPT(preset("cpu-tiny", vocab_size=256, context=CONTEXT))
    result = train(model, Pretraining(shards, CONTEXT, CONFIG.batch_size, CONFIG.seed), CONFIG, root / "run")
    (root / "tokenizer.json").write_text('{"stand-in": true}\n')
    publish(result.checkpoint, root / "tokenizer.json", root / "model")
    return result.checkpoint, root / "model"


def test_two_identical_trainings_publish_identical_bytes(random_shards: Path, tmp_path: Path) -> None:
    checkpoint_a, published_a = _train_and_publish(random_shards, tmp_path / "a")
    checkpoint_b, published_b = _train_and_publish(random_shards, tmp_path / "b")
    # The checkpoints differ (each run's wall time and throughput) ...
    timed_a, timed_b = read_state(checkpoint_a), read_state(checkpoint_b)
    assert "train_seconds" in timed_a["data"]
    assert {"tokens_per_s", "mfu", "peak_memory_mb"} <= timed_a["extra"]["metrics"].keys()
    assert timed_a["extra"]["metrics"]["tokens_per_s"] != timed_b["extra"]["metrics"]["tokens_per_s"]
    # ... the published models do not, file for file.
    names = sorted(p.name for p in published_a.iterdir())
    assert names == sorted(p.name for p in published_b.iterdir()) == sorted([MODEL_FILE, STATE_FILE, "tokenizer.json"])
    for name in names:
        assert (published_a / name).read_bytes() == (published_b / name).read_bytes(), name


def test_published_state_keeps_the_model_and_drops_only_the_timings(random_shards: Path, tmp_path: Path) -> None:
    checkpoint, published = _train_and_publish(random_shards, tmp_path)
    timed, state = read_state(checkpoint), read_state(published)
    assert state["data"] == {k: v for k, v in timed["data"].items() if k != "train_seconds"}
    assert {"step", "tokens", "loss"} <= state["data"].keys()
    assert state["extra"]["metrics"] == {k: v for k, v in timed["extra"]["metrics"].items() if k not in HOST_DEPENDENT}
    assert {"loss", "lr", "grad_norm"} <= state["extra"]["metrics"].keys()
    assert {k: v for k, v in state.items() if k not in ("data", "extra")} == {
        k: v for k, v in timed.items() if k not in ("data", "extra")}
    # The published weights are the checkpoint's, and load as the model.
    assert (published / MODEL_FILE).read_bytes() == (checkpoint / MODEL_FILE).read_bytes()
    seed_everything(0)
    original = GPT(preset("cpu-tiny", vocab_size=256, context=CONTEXT))
    loaded = load_model(published)
    assert loaded.config == original.config
    assert not all(torch.equal(p, q) for p, q in zip(original.parameters(), loaded.parameters()))  # it trained
