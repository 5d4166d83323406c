"""Data parallel: 2 processes under torchrun (gloo, CPU) train exactly what 1 process trains at the
same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instructgpt import pretraining
from instructgpt.model import GPT, preset
from instructgpt.train import seed_everything

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

TRAIN = ["max_steps=4", "lr=3e-3", "warmup_steps=1", "log_every=2", "checkpoint_every=2", "device=cpu", "seed=11"]
MODEL = ["context=32"]  # cpu-tiny has no dropout: each process draws its own masks


def test_two_processes_train_what_one_process_trains_at_the_same_global_batch(random_shards: Path, tmp_path: Path) -> None:
    """Global batch 8 rows: 2 processes x 2 rows x 2 micro steps against 1 process x 8 rows.

    Losses agree to float rounding (1e-6 relative). The weights are compared as a whole: their
    distance apart is below 1e-4 of the distance they moved. (Elementwise, the all-reduce sums
    gradients in another order, and Adam's division by |g| + eps makes that rounding visible
    where a gradient is near 0.)
    """
    common = [str(random_shards), "--model", *MODEL, "--val-tokens", "64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "instructgpt.pretraining"]
    ddp = tmp_path / "ddp"
    subprocess.run(
        [*launch, *common[:1], str(ddp), *common[1:], "--train", *TRAIN, "batch_size=2", "grad_accum=2",
         "--result", str(ddp / "result.json")],
        check=True, env=env, capture_output=True, timeout=120,
    )
    single = tmp_path / "single"
    pretraining.main([*common[:1], str(single), *common[1:], "--train", *TRAIN, "batch_size=8", "--result", str(single / "result.json")])

    two, one = (json.loads((run / "result.json").read_text()) for run in (ddp, single))
    assert two["step"] == one["step"] == 4 and two["tokens"] == one["tokens"] == 4 * 8 * 32
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert two["eval"] == pytest.approx(one["eval"], rel=1e-6)

    seed_everything(11)
    start = _flat(GPT(preset("cpu-tiny", vocab_size=256, context=32)).state_dict())
    final_two, final_one = (_flat(load_file(run / "step_000000004" / "model.safetensors")) for run in (ddp, single))
    assert (final_two - final_one).norm() < 1e-4 * (final_one - start).norm()


def _flat(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([weights[k].flatten() for k in sorted(weights) if k != "lm_head.weight"])
