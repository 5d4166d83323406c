"""Checkpoints: a bitwise round trip (tied weights, AdamW state, RNG), atomic writes, no pickles."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from instructgpt import checkpoint
from instructgpt.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model,
    prune_checkpoints,
    read_state,
    save_checkpoint,
    step_dir,
)
from instructgpt.model import GPT, preset

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIG = preset("cpu-tiny", vocab_size=64, context=16, dropout=0.1)


def _trained(seed: int) -> tuple[GPT, torch.optim.AdamW]:
    """A tiny GPT after two AdamW steps, so every optimizer buffer is populated."""
    torch.manual_seed(seed)
    model = GPT(CONFIG)
    optimizer = torch.optim.AdamW(model.optimizer_groups(0.1), lr=1e-3, betas=(0.9, 0.95))
    for _ in range(2):
        x = torch.randint(0, 64, (2, 16))
        model(x, x).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_round_trip_is_bitwise_with_tied_weights_and_optimizer_state(tmp_path: Path) -> None:
    model, optimizer = _trained(0)
    path = save_checkpoint(tmp_path / "ck", model, optimizer, step=2, data={"step": 2}, extra={"tokenizer_sha256": "ab"})

    stored = load_file(path / "model.safetensors")
    assert "transformer.wte.weight" in stored and "lm_head.weight" not in stored  # the tied tensor, once
    assert read_state(path)["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    assert "transformer.h.0.attn.c_attn.weight/exp_avg_sq" in load_file(path / "optimizer.safetensors")

    fresh, fresh_optimizer = _trained(1)
    restored = load_checkpoint(path, fresh, fresh_optimizer)
    assert (restored.step, restored.data, restored.extra) == (2, {"step": 2}, {"tokenizer_sha256": "ab"})
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert fresh.lm_head.weight is fresh.transformer.wte.weight  # still tied
    for p, q in zip(model.parameters(), fresh.parameters()):
        saved, loaded = optimizer.state[p], fresh_optimizer.state[q]
        assert saved.keys() == loaded.keys()
        assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    strip = lambda groups: [{k: v for k, v in g.items() if k != "params"} for g in groups]  # noqa: E731
    assert strip(optimizer.param_groups) == strip(fresh_optimizer.param_groups)


def test_rng_states_are_restored(tmp_path: Path) -> None:
    model, _ = _trained(0)
    random.random(), np.random.random(), torch.rand(1)  # noqa: B018  # leave no RNG in a fresh state
    path = save_checkpoint(tmp_path / "ck", model, step=0)
    draws = random.random(), np.random.random(), torch.rand(3), torch.nn.functional.dropout(torch.ones(8), 0.5)
    load_checkpoint(path, model)
    again = random.random(), np.random.random(), torch.rand(3), torch.nn.functional.dropout(torch.ones(8), 0.5)
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2]) and torch.equal(draws[3], again[3])


def test_load_model_rebuilds_the_gpt_from_its_config(tmp_path: Path) -> None:
    model, _ = _trained(0)
    path = save_checkpoint(tmp_path / "ck", model, step=5)
    rebuilt = load_model(path)
    assert rebuilt.config == CONFIG
    x = torch.randint(0, 64, (1, 16))
    model.eval(), rebuilt.eval()
    assert torch.equal(model(x).logits, rebuilt(x).logits)
    assert json.loads((path / "state.json").read_text())["config"]["n_embd"] == 64  # readable without torch
    tuned = load_model(path, dropout=0.2)  # a fine-tuning stage changes what leaves the weights alone
    assert tuned.config.dropout == 0.2 and torch.equal(tuned.transformer.wte.weight, model.transformer.wte.weight)


def test_a_model_with_another_config_is_refused(tmp_path: Path) -> None:
    model, _ = _trained(0)
    path = save_checkpoint(tmp_path / "ck", model, step=1)
    with pytest.raises(CheckpointError, match=r"different model: n_embd 64 \(model: 32\)"):
        load_checkpoint(path, GPT(preset("cpu-tiny", vocab_size=64, context=16, dropout=0.1, n_embd=32)))


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer = _trained(0)
    save_checkpoint(step_dir(tmp_path, 1), model, optimizer, step=1)
    before = {f.name: f.read_bytes() for f in step_dir(tmp_path, 1).iterdir()}

    calls = []

    def crash_on_optimizer(tensors: dict, filename: Path, metadata: dict | None = None) -> None:
        calls.append(filename)
        if Path(filename).name == "optimizer.safetensors":
            raise KeyboardInterrupt("killed mid-save")
        real_save(tensors, filename, metadata=metadata)

    real_save = checkpoint.save_file
    monkeypatch.setattr(checkpoint, "save_file", crash_on_optimizer)
    model.transformer.wte.weight.data += 1
    for target in (step_dir(tmp_path, 2), step_dir(tmp_path, 1)):  # a new step, and over the old one
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(target, model, optimizer, step=2)
    assert len(calls) == 4  # the model file was written both times before the crash
    assert list_checkpoints(tmp_path) == [step_dir(tmp_path, 1)]
    assert {f.name: f.read_bytes() for f in step_dir(tmp_path, 1).iterdir()} == before


def test_latest_ignores_partial_saves_and_prune_keeps_the_newest(tmp_path: Path) -> None:
    model, _ = _trained(0)
    for step in (2, 10, 4):
        save_checkpoint(step_dir(tmp_path, step), model, step=step)
    (tmp_path / ".step_000000012.abcd.tmp").mkdir()  # what SIGKILL during a save leaves
    (tmp_path / "step_000000011").mkdir()  # no state.json: not a checkpoint
    assert latest_checkpoint(tmp_path) == step_dir(tmp_path, 10)
    prune_checkpoints(tmp_path, keep=2)
    assert list_checkpoints(tmp_path) == [step_dir(tmp_path, 4), step_dir(tmp_path, 10)]
    assert not (tmp_path / ".step_000000012.abcd.tmp").exists()
    assert latest_checkpoint(tmp_path / "missing") is None


class _Payload:
    """Unpickling this writes a file: proof that a loader ran a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "pwned"))


def test_loading_never_unpickles(tmp_path: Path) -> None:
    model, optimizer = _trained(0)
    path = save_checkpoint(tmp_path / "ck", model, optimizer, step=1)
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Payload(marker))
    (path / "extra.pt").write_bytes(payload)  # files a checkpoint does not name are never opened
    (path / "optimizer.pt").write_bytes(payload)
    load_checkpoint(path, model, optimizer)
    assert not marker.exists()

    (path / "model.safetensors").write_bytes(payload)  # a pickle posing as the weights
    torch.save({"weights": _Payload(marker)}, path / "optimizer.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path, model, optimizer)
    os.replace(path / "optimizer.safetensors", path / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(path)
    assert not marker.exists()
