"""The training loop: schedule, weight-decay groups, gradient accumulation, determinism, resume,
divergence, metrics; and the hardware figures MFU is computed from."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from instructgpt import hardware
from instructgpt.checkpoint import latest_checkpoint, list_checkpoints, load_model, read_state
from instructgpt.config import from_params
from instructgpt.errors import ConfigError
from instructgpt.model import GPT, preset
from instructgpt.pretraining import Pretraining
from instructgpt.train import (
    TrainConfig,
    TrainingDiverged,
    build_optimizer,
    decay_groups,
    lr_at,
    seed_everything,
    train,
)

pytestmark = pytest.mark.usefixtures("single_thread")

CONTEXT = 32
BASE = TrainConfig(
    max_steps=6, batch_size=4, lr=3e-3, warmup_steps=2, log_every=2, eval_every=0, checkpoint_every=2,
    keep_checkpoints=0, device="cpu", seed=3,
)


def _model(dropout: float = 0.1, seed: int = 0) -> GPT:
    seed_everything(seed)
    return GPT(preset("cpu-tiny", vocab_size=256, context=CONTEXT, dropout=dropout))


def _task(shards: Path, config: TrainConfig) -> Pretraining:
    return Pretraining(shards, CONTEXT, config.batch_size, config.seed, val_tokens_per_source=64)


def _run(shards: Path, out: Path, config: TrainConfig = BASE, dropout: float = 0.1, **kwargs):  # type: ignore[no-untyped-def]
    model = _model(dropout)
    return model, train(model, _task(shards, config), config, out, **kwargs)


# ---------------------------------------------------------------------------------------------
# schedule and optimizer


def test_lr_warms_up_linearly_then_decays_on_a_cosine_to_the_floor() -> None:
    config = TrainConfig(max_steps=110, lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    assert [lr_at(s, config) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(10, config) == pytest.approx(1.0)  # the peak, where the cosine starts
    assert lr_at(60, config) == pytest.approx(0.55)  # halfway down: (1 + 0.1) / 2
    assert lr_at(110, config) == lr_at(500, config) == pytest.approx(0.1)  # the floor, and it stays
    assert all(lr_at(s, config) >= lr_at(s + 1, config) for s in range(10, 120))
    shorter = replace(config, decay_steps=35)
    assert lr_at(35, shorter) == pytest.approx(0.1) and lr_at(22, shorter) < lr_at(22, config)
    assert lr_at(0, TrainConfig(warmup_steps=0, lr=2.0, max_steps=10)) == 2.0


def test_weight_decay_only_on_matrices() -> None:
    model = _model()
    for groups in (decay_groups(model, 0.1), decay_groups(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), 0.1)):
        decay, no_decay = groups
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
        assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    optimizer = build_optimizer(model, BASE, torch.device("cpu"))
    in_groups = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in model.parameters())  # each once, tied weight too
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95) and optimizer.param_groups[0]["eps"] == 1e-8


def test_train_config_comes_from_params_and_checks_ranges() -> None:
    config = from_params(TrainConfig, {"betas": [0.9, 0.99], "lr": 1, "max_steps": 5}, "params.yaml:pretrain")
    assert config.betas == (0.9, 0.99) and config.lr == 1.0
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        from_params(TrainConfig, {"min_lr_ratio": 1.5}, "params.yaml:pretrain")
    with pytest.raises(ConfigError, match="grad_accum"):
        from_params(TrainConfig, {"grad_accum": 0}, "params.yaml:pretrain")


# ---------------------------------------------------------------------------------------------
# the loop


def test_accumulating_k_micro_batches_equals_one_batch_of_k_times_b(random_shards: Path, tmp_path: Path) -> None:
    """The same rows in fp32: losses agree to float rounding (1e-6 relative), and so do the updates.

    Updates are compared as a whole (the distance between the two runs' weights against the distance
    they moved, below 1e-4): elementwise, Adam's first step divides by |g| + eps, which turns the
    rounding of a gradient summed in another order into a visible difference where g is near 0.
    """
    big = replace(BASE, batch_size=4, grad_accum=1, max_steps=3)
    small = replace(BASE, batch_size=2, grad_accum=2, max_steps=3)
    start = _flat(_model(dropout=0.0))
    model_a, a = _run(random_shards, tmp_path / "a", big, dropout=0.0)
    model_b, b = _run(random_shards, tmp_path / "b", small, dropout=0.0)
    assert b.loss == pytest.approx(a.loss, rel=1e-6)
    assert a.tokens == b.tokens == 3 * 4 * CONTEXT
    assert (_flat(model_a) - _flat(model_b)).norm() < 1e-4 * (_flat(model_a) - start).norm()


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_a_run_is_deterministic_for_its_seed(random_shards: Path, tmp_path: Path) -> None:
    model_a, a = _run(random_shards, tmp_path / "a")
    model_b, b = _run(random_shards, tmp_path / "b")
    assert a.loss == b.loss  # bitwise, dropout included
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))
    _, c = _run(random_shards, tmp_path / "c", replace(BASE, seed=4))
    assert c.loss != a.loss


def test_a_stopped_run_resumes_to_the_same_weights(random_shards: Path, tmp_path: Path) -> None:
    """In-process version of tests/test_resume.py: stop after the step-4 checkpoint, start again."""
    model_a, a = _run(random_shards, tmp_path / "a")

    class Stop(Exception):
        pass

    class Interrupted(Pretraining):
        def batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, Tensor]:
            if step == 5:
                raise Stop
            return super().batch(step, micro, rank, world)

    with pytest.raises(Stop):
        train(_model(), Interrupted(random_shards, CONTEXT, 4, BASE.seed), BASE, tmp_path / "b")
    assert latest_checkpoint(tmp_path / "b").name == "step_000000004"
    model_b, b = _run(random_shards, tmp_path / "b")
    assert (b.step, b.loss, b.tokens) == (a.step, a.loss, a.tokens)
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))
    # Started once more, it has nothing left to do and reports the finished run.
    _, again = _run(random_shards, tmp_path / "b")
    assert (again.step, again.loss, again.eval) == (b.step, b.loss, b.eval)
    # The training time counts both invocations that trained, and the read-back adds none of its own.
    before_stop = read_state(tmp_path / "b" / "step_000000004")["data"]["train_seconds"]
    assert 0 < before_stop < b.train_seconds
    assert again.train_seconds == b.train_seconds == read_state(b.checkpoint)["data"]["train_seconds"]


class _Poisoned(Pretraining):
    """The loss (or, with `grad`, only the gradient) turns NaN from step `at` on."""

    def __init__(self, shards: Path, at: int, grad: bool) -> None:
        super().__init__(shards, CONTEXT, BASE.batch_size, BASE.seed)
        self.at, self.grad = at, grad

    def batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, Tensor]:
        return super().batch(step, micro, rank, world) | {"poison": torch.tensor(step >= self.at)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        loss = super().loss(model, batch)
        if not bool(batch["poison"]):
            return loss
        weight = next(model.parameters())
        # sqrt at 0: the value is 0 but its gradient is inf * 0 = NaN
        return loss + torch.sqrt((weight * 0).sum()) if self.grad else loss * float("nan")


@pytest.mark.parametrize("grad", [False, True], ids=["loss", "gradient"])
def test_a_non_finite_loss_or_gradient_stops_training_and_keeps_the_last_checkpoint(
    random_shards: Path, tmp_path: Path, grad: bool
) -> None:
    model = _model()
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 3 \(counted from 0\)") as caught:
        train(model, _Poisoned(random_shards, at=3, grad=grad), BASE, tmp_path)
    message = str(caught.value)
    assert ("loss nan" in message) != grad and "gradient norm nan" in message
    assert "step_000000002" in message
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000002"]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was not applied
    assert all(torch.isfinite(p).all() for p in load_model(tmp_path / "step_000000002").parameters())


def test_logs_metrics_evaluates_and_records_them(random_shards: Path, tmp_path: Path) -> None:
    logs: list[tuple[int, dict]] = []
    evals: list[tuple[int, dict]] = []
    config = replace(BASE, eval_every=3, keep_checkpoints=2)
    _, result = _run(
        random_shards, tmp_path, config, on_log=lambda s, m: logs.append((s, m)),
        on_eval=lambda s, m: evals.append((s, m)), extra_state={"tokenizer_sha256": "ab"},
        peak_flops_cache=tmp_path / "peak.json",
    )
    assert [s for s, _ in logs] == [2, 4, 6] and [s for s, _ in evals] == [3, 6]
    step, metrics = logs[-1]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_memory_mb", "tokens"} <= metrics.keys()
    assert metrics["lr"] == pytest.approx(lr_at(5, config))
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0 and metrics["tokens_per_s"] > 0
    assert 0 < metrics["mfu"] < 1 and metrics["peak_memory_mb"] > 10
    assert metrics["tokens"] == result.tokens == 6 * 4 * CONTEXT
    final = evals[-1][1]
    assert set(final) == {f"val/{s}/{m}" for s in ("books", "web") for m in ("loss", "ppl")} | {"val/loss", "val/ppl"}
    assert final["val/ppl"] == pytest.approx(math.exp(final["val/loss"]))
    assert 4.0 < final["val/loss"] < 7.0  # random tokens over 256 ids: about ln 256 = 5.5
    assert result.eval == final and result.metrics == metrics
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000004", "step_000000006"]
    state = read_state(result.checkpoint)
    assert state["step"] == 6 and state["data"]["loss"] == result.loss
    assert state["extra"]["tokenizer_sha256"] == "ab" and state["extra"]["eval"] == final
    assert (tmp_path / "peak.json").is_file()


def test_a_peak_probed_on_a_busy_machine_is_raised_so_mfu_stays_below_one(random_shards: Path, tmp_path: Path) -> None:
    cache = tmp_path / "peak.json"
    hardware.peak_flops(torch.device("cpu"), torch.float32, cache)
    records = json.loads(cache.read_text())
    (key,) = records
    records[key]["flops"] = 1e6  # as if the probe had run beside a noisy neighbour
    cache.write_text(json.dumps(records))
    logs: list[dict] = []
    _run(random_shards, tmp_path / "run", peak_flops_cache=cache, on_log=lambda s, m: logs.append(m))
    raised = json.loads(cache.read_text())[key]["flops"]
    assert raised > 1e8  # probed again: what the machine does, not the busy figure
    assert logs and all(0 < m["mfu"] <= 1 for m in logs)


# ---------------------------------------------------------------------------------------------
# hardware


def test_mfu_and_the_peak_flops_the_loop_divides_by(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hardware.mfu(6e6, 1_000, 1e12) == pytest.approx(0.006)
    cpu = torch.device("cpu")
    measured = hardware.peak_flops(cpu, torch.float32, tmp_path / "peak.json")
    assert 1e8 < measured < 1e14  # anything from a slow core to a big server
    monkeypatch.setattr(hardware, "matmul_probe", lambda *a, **k: pytest.fail("measured twice"))
    assert hardware.peak_flops(cpu, torch.float32, tmp_path / "peak.json") == measured  # recorded once
    assert hardware.peak_memory_mb(cpu) > 10
    assert hardware.select_device("auto") == cpu or torch.cuda.is_available() or torch.backends.mps.is_available()
    assert hardware.select_dtype("auto", cpu) == torch.float32
    with pytest.raises(ConfigError, match="dtype"):
        hardware.select_dtype("float16", cpu)


@pytest.mark.parametrize(
    "name, dtype, peak",
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12),
        ("NVIDIA H100 80GB HBM3", torch.float32, 494.7e12),
        ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
        ("NVIDIA H200", torch.bfloat16, 989e12),
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312e12),
        ("NVIDIA L40S", torch.bfloat16, 362e12),
        ("NVIDIA L4", torch.bfloat16, 121e12),
        ("NVIDIA A10", torch.bfloat16, 125e12),
        ("NVIDIA A10G", torch.bfloat16, None),  # not in the table: the probe measures it
    ],
)
def test_gpu_peaks_come_from_the_datasheet_table(name: str, dtype: torch.dtype, peak: float | None) -> None:
    assert hardware.datasheet_peak_flops(name, dtype) == peak
