"""The optimisation loop shared by pretraining, SFT, task fine-tuning and reward modelling.

A stage hands `train` a model, a task and a `TrainConfig`. The task says what a batch is and what
the loss is; the loop does the rest the same way for every stage:

- AdamW with weight decay on matrices only, the learning rate warmed up linearly then decayed on
  a cosine to `min_lr_ratio` of its peak (GPT-3: 10%), gradient accumulation over `grad_accum`
  micro batches, gradients clipped to a global norm.
- The device and precision from the config (`auto`: bf16 autocast, TF32 and fused AdamW on CUDA;
  plain fp32 on the CPU); `torch.compile` if asked.
- Data parallel over processes when started by `torchrun` (see `instructgpt.distributed`): each
  process computes its rows of the global batch, DDP averages the gradients, and gradients are
  synchronised on the last micro step only.
- Resume: the latest checkpoint in `checkpoint_dir` is loaded first (weights, AdamW state, RNG
  states, step). Batches are pure functions of (step, micro, rank) and dropout is reseeded from
  (seed, step, rank) every step, so on the CPU with `deterministic` a run killed at any moment and
  restarted ends bitwise equal to one that never stopped.
- A non-finite loss or gradient norm raises `TrainingDiverged` before the optimizer steps; no
  checkpoint is written, so the last good one stays.
- Every `log_every` steps `on_log(step, metrics)` gets loss (mean since the last log), lr,
  grad_norm, tokens_per_s, mfu, peak_memory_mb and tokens seen; every `eval_every` steps and at
  the end `on_eval(step, task.evaluate(model))` (every process evaluates its own copy, so none
  waits on another); a progress bar on rank 0's terminal. Callbacks run on rank 0 only.

Steps count optimizer updates; `step` in callbacks and checkpoints is the number already done.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from instructgpt import checkpoint, hardware
from instructgpt.distributed import Dist, init_distributed

LogCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainConfig:
    """Knobs of the loop; defaults follow GPT-3 (Brown et al. 2020) where the paper gives one.

    batch_size: rows per micro batch per process; the global batch is batch_size x grad_accum x
        processes (the task builds its batches with it).
    lr, min_lr_ratio, warmup_steps, decay_steps: linear warm-up to `lr` over `warmup_steps`, then
        cosine decay to `lr * min_lr_ratio` at `decay_steps` (None: `max_steps`), flat after.
        GPT-3 decays to 10%; GPT-1 to 0.
    weight_decay: AdamW's, on matrices only (not biases, gains). betas, eps: GPT-3's Adam.
    grad_clip: the global gradient norm is clipped to this (0: not clipped, but still logged).
    device: auto | cpu | cuda | cuda:N | mps. dtype: auto (bf16 autocast on CUDA, else fp32) |
        bfloat16 | float32.
    compile: torch.compile the model (worth it on GPUs for long runs).
    log_every, eval_every, checkpoint_every: in steps; 0 means only at the end (eval, checkpoint).
    keep_checkpoints: the newest N are kept (0: all).
    deterministic: deterministic algorithms (bitwise-reproducible on the CPU; on CUDA only where
        kernels allow it, with a warning where they do not).
    """

    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    decay_steps: int | None = None
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    log_every: int = 10
    eval_every: int = 200
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    deterministic: bool = True

    def __post_init__(self) -> None:
        positive = ("batch_size", "grad_accum", "log_every")
        non_negative = ("max_steps", "warmup_steps", "eval_every", "checkpoint_every", "keep_checkpoints", "grad_clip", "weight_decay")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be within [0, 1], got {self.min_lr_ratio}")
        if self.decay_steps is not None and self.decay_steps < self.warmup_steps:
            raise ValueError(f"decay_steps ({self.decay_steps}) must not be below warmup_steps ({self.warmup_steps})")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers within [0, 1), got {self.betas}")


class Task(Protocol):
    """What a stage trains on. Optional members: `tokens(batch) -> int` (tokens in a batch, for
    tokens/s and MFU), `evaluate(model) -> dict[str, float]` (called in eval mode, without
    gradients, under autocast), and `seq_len` (the sequence length for the FLOPs estimate)."""

    def batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, Tensor]:
        """This process's micro batch: a pure function of its arguments (that is what resumes)."""
        ...

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """The scalar loss of `batch` (already on the model's device) under `model`."""
        ...


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite."""

    def __init__(self, step: int, loss: float, grad_norm: float, last_checkpoint: Path | None) -> None:
        self.step, self.loss, self.grad_norm, self.last_checkpoint = step, loss, grad_norm, last_checkpoint
        kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
        super().__init__(
            f"training diverged at step {step} (counted from 0): loss {loss}, gradient norm {grad_norm}; nothing was saved for "
            f"this step and {kept}. Lower the learning rate, lengthen the warm-up or check the data, then run "
            "again: it resumes from the last checkpoint"
        )


@dataclass(frozen=True)
class TrainResult:
    """Where a run ended. A run started on a finished checkpoint directory returns it unchanged."""

    step: int  # optimizer steps done
    loss: float | None  # the last step's training loss (mean over its global batch)
    tokens: int  # training tokens seen over all processes (0 if the task does not count them)
    checkpoint: Path | None  # the final checkpoint
    metrics: dict[str, float] = field(default_factory=dict)  # the last logged metrics
    eval: dict[str, float] = field(default_factory=dict)  # the last evaluation
    seconds: float = 0.0  # wall time of this invocation
    train_seconds: float = 0.0  # wall time of the training the final checkpoint holds, over every invocation


def lr_at(step: int, config: TrainConfig) -> float:
    """The learning rate of step `step` (0-based): linear warm-up, then cosine to the floor."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    floor = config.lr * config.min_lr_ratio
    end = config.max_steps if config.decay_steps is None else config.decay_steps
    if step >= end:
        return floor
    progress = (step - config.warmup_steps) / max(1, end - config.warmup_steps)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - floor)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups: decay on matrices (>= 2-D), none on biases and gains.

    The model's own `optimizer_groups` wins when it has one (the GPT does, with the same rule).
    """
    if hasattr(model, "optimizer_groups"):
        return model.optimizer_groups(weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `decay_groups`; the fused kernel on CUDA and CPU."""
    return torch.optim.AdamW(
        decay_groups(model, config.weight_decay),
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        fused=device.type in ("cuda", "cpu") or None,  # fused on CPU too: 2 ms vs 10 ms a step (measured)
    )


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device): call it before building the model."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of (seed, step, rank): dropout masks are a pure function of them."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0])


def train(
    model: nn.Module,
    task: Task,
    config: TrainConfig,
    checkpoint_dir: str | Path,
    *,
    dist: Dist | None = None,
    on_log: LogCallback | None = None,
    on_eval: LogCallback | None = None,
    extra_state: dict[str, Any] | None = None,
    peak_flops_cache: str | Path | None = None,
) -> TrainResult:
    """Train `model` on `task` to `config.max_steps`, resuming from `checkpoint_dir` if it holds one.

    dist: the process group (default: `init_distributed(config.device)`, which joins a torchrun
        job if there is one, and is closed again at the end).
    extra_state: JSON metadata saved in every checkpoint (e.g. the tokenizer's sha256).
    peak_flops_cache: where the CPU matmul probe's figure is recorded (see `hardware.peak_flops`).
    The model is moved to the device; on return it holds the final weights.
    """
    own_dist = dist is None
    dist = dist or init_distributed(config.device)
    try:
        with hardware.backend_settings(dist.device, config.deterministic):
            loop = _Loop(model, task, config, Path(checkpoint_dir), dist, extra_state or {}, peak_flops_cache)
            return loop.run(dist.main_only(on_log), dist.main_only(on_eval))
    finally:
        if own_dist:
            dist.close()


class _Loop:
    """One invocation of `train`: the state it carries between steps."""

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        config: TrainConfig,
        checkpoint_dir: Path,
        dist: Dist,
        extra_state: dict[str, Any],
        peak_flops_cache: str | Path | None,
    ) -> None:
        self.task, self.config, self.dist, self.dir = task, config, dist, checkpoint_dir
        self.extra_state = extra_state
        self.device = dist.device
        self.dtype = hardware.select_dtype(config.dtype, self.device)
        self.model = model.to(self.device).train()  # the bare module: what checkpoints hold
        self.optimizer = build_optimizer(self.model, config, self.device)
        self.step, self.tokens, self.loss = 0, 0, None
        self.seconds_before = 0.0  # training time already in the checkpoint this invocation resumed from
        self.saved_seconds = 0.0  # training time the newest checkpoint holds
        self.started = time.perf_counter()
        self.metrics: dict[str, float] = {}
        self.eval: dict[str, float] = {}
        self.saved: Path | None = None
        self.ran = False  # whether this invocation took a step
        self.resume()
        compiled = torch.compile(self.model) if config.compile else self.model
        self.eval_model = compiled  # evaluation runs on each rank's copy, outside DDP
        self.ddp = dist.wrap(compiled)
        self.counts_tokens = hasattr(task, "tokens")
        seq_len = getattr(task, "seq_len", None)
        self.flops_per_token = (
            self.model.flops_per_token(seq_len) if hasattr(self.model, "flops_per_token")
            else 6 * sum(p.numel() for p in self.model.parameters())
        )
        self.peak = hardware.peak_flops(self.device, self.dtype, peak_flops_cache) if self.counts_tokens else 0.0
        self.peak_cache = peak_flops_cache
        self.peak_is_measured = self.counts_tokens and (
            self.device.type != "cuda"
            or hardware.datasheet_peak_flops(torch.cuda.get_device_name(self.device), self.dtype) is None)

    def resume(self) -> None:
        path = checkpoint.latest_checkpoint(self.dir)
        if path is None:
            return
        restored = checkpoint.load_checkpoint(path, self.model, self.optimizer)
        self.step = restored.step
        self.tokens = int(restored.data.get("tokens", 0))
        self.loss = restored.data.get("loss")
        self.seconds_before = self.saved_seconds = float(restored.data.get("train_seconds", 0.0))
        self.metrics = restored.extra.get("metrics", {})
        self.eval = restored.extra.get("eval", {})
        self.saved = path
        self.dist.print(f"resumed from {path} at step {self.step}")

    def run(self, on_log: LogCallback, on_eval: LogCallback) -> TrainResult:
        started = self.started = time.perf_counter()
        config = self.config
        bar = self.dist.progress(total=config.max_steps, initial=self.step, desc="train", unit="step")
        window = _Window(time.perf_counter())
        try:
            while self.step < config.max_steps:
                loss, grad_norm, tokens = self.train_step()
                self.step += 1
                self.ran = True
                window.add(loss, tokens)
                bar.update(1)
                last = self.step == config.max_steps
                if self.step % config.log_every == 0 or last:
                    self.metrics = self.log_metrics(window, grad_norm)
                    window = _Window(time.perf_counter())
                    bar.set_postfix(loss=f"{self.metrics['loss']:.4f}", lr=f"{self.metrics['lr']:.2e}")
                    on_log(self.step, self.metrics)
                if (config.eval_every and self.step % config.eval_every == 0) or last:
                    self.evaluate(on_eval)
                if (config.checkpoint_every and self.step % config.checkpoint_every == 0) or last:
                    self.save()
        finally:
            bar.close()
        return TrainResult(self.step, self.loss, self.tokens, self.saved, self.metrics, self.eval,
                           time.perf_counter() - started, self.saved_seconds)

    def train_seconds(self) -> float:
        # a read-back of a finished run adds nothing: its steps were timed when they ran
        return self.seconds_before + (time.perf_counter() - self.started if self.ran else 0.0)

    def train_step(self) -> tuple[float, float, int]:
        """One optimizer update over grad_accum micro batches: (loss, grad norm, tokens of all processes)."""
        config, dist = self.config, self.dist
        lr = lr_at(self.step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(step_seed(config.seed, self.step, dist.rank))
        total = torch.zeros((), device=self.device)
        tokens = 0
        for micro in range(config.grad_accum):
            batch = self.task.batch(self.step, micro, dist.rank, dist.world)
            tokens += int(self.task.tokens(batch)) if self.counts_tokens else 0  # type: ignore[attr-defined]
            batch = {k: self.to_device(v) for k, v in batch.items()}
            with dist.sync_gradients(self.ddp, sync=micro == config.grad_accum - 1):
                with hardware.autocast(self.device, self.dtype):
                    loss = self.task.loss(self.ddp, batch)
                (loss / config.grad_accum).backward()
            total += loss.detach().float()
        clip = config.grad_clip if config.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        # One collective for both: the mean loss over processes, and the tokens of all of them.
        # (float32 counts tokens exactly up to 2^24 per process and step; MPS has no float64.)
        local = torch.stack([total / config.grad_accum, torch.tensor(float(tokens), device=self.device)])
        loss_value, mean_tokens = dist.all_reduce_mean(local).tolist()
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            raise TrainingDiverged(self.step, loss_value, grad_norm, checkpoint.latest_checkpoint(self.dir))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss = loss_value
        self.tokens += round(mean_tokens * dist.world)
        return loss_value, grad_norm, round(mean_tokens * dist.world)

    def to_device(self, tensor: Tensor) -> Tensor:
        if self.device.type == "cuda":  # pinned memory lets the copy overlap the GPU's work
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def log_metrics(self, window: "_Window", grad_norm: float) -> dict[str, float]:
        seconds = max(time.perf_counter() - window.started, 1e-9)
        metrics = {
            "loss": window.loss_sum / window.steps,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": grad_norm,
            "peak_memory_mb": hardware.peak_memory_mb(self.device),
            "step_time_ms": 1000 * seconds / window.steps,
        }
        if self.counts_tokens:
            tokens_per_s = window.tokens / seconds
            metrics["tokens_per_s"] = tokens_per_s
            achieved = self.flops_per_token * tokens_per_s / self.dist.world
            if achieved > self.peak and self.peak_is_measured:
                self.peak = hardware.raise_measured_peak(self.device, self.dtype, self.peak_cache, achieved)
                self.dist.print(f"MFU would read above 100%: the measured peak is now {self.peak / 1e9:.1f} GFLOP/s")
            metrics["mfu"] = hardware.mfu(self.flops_per_token, tokens_per_s / self.dist.world, self.peak)
            metrics["tokens"] = self.tokens
        return metrics

    def evaluate(self, on_eval: LogCallback) -> None:
        evaluate = getattr(self.task, "evaluate", None)
        if evaluate is None:
            return
        self.model.eval()
        try:
            with torch.no_grad(), hardware.autocast(self.device, self.dtype):
                self.eval = {k: float(v) for k, v in evaluate(self.eval_model).items()}
        finally:
            self.model.train()
        on_eval(self.step, self.eval)

    def save(self) -> None:
        path = checkpoint.step_dir(self.dir, self.step)
        extra = {**self.extra_state, "train": asdict(self.config), "metrics": self.metrics, "eval": self.eval}
        self.saved_seconds = round(self.train_seconds(), 3)
        data = {"step": self.step, "tokens": self.tokens, "loss": self.loss, "train_seconds": self.saved_seconds}
        if self.dist.is_main:
            checkpoint.save_checkpoint(path, self.model, self.optimizer, step=self.step, data=data, extra=extra)
            checkpoint.prune_checkpoints(self.dir, self.config.keep_checkpoints)
        self.dist.barrier()
        self.saved = path


@dataclass
class _Window:
    """What happened since the last log: for mean loss and throughput."""

    started: float
    steps: int = 0
    loss_sum: float = 0.0
    tokens: int = 0

    def add(self, loss: float, tokens: int) -> None:
        self.steps += 1
        self.loss_sum += loss
        self.tokens += tokens
