"""Resume: a training process SIGKILLed mid-run and started again ends bitwise equal to a run that
was never interrupted (CPU, fp32, deterministic settings, dropout on)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from instructgpt.checkpoint import latest_checkpoint, read_state

pytestmark = pytest.mark.slow

STEPS = 60
TRAIN = [f"max_steps={STEPS}", "batch_size=4", "lr=3e-3", "warmup_steps=5", "log_every=5", "eval_every=20",
         "checkpoint_every=5", "keep_checkpoints=2", "device=cpu", "seed=5"]


def _command(shards: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "instructgpt.pretraining", str(shards), str(out), "--model", "context=32",
            "dropout=0.1", "--val-tokens", "64", "--train", *TRAIN, "--result", str(out / "result.json")]


def test_a_killed_run_resumes_bitwise_equal_to_an_uninterrupted_one(random_shards: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every run: the same float sums
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = subprocess.Popen(_command(random_shards, whole), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    victim = subprocess.Popen(_command(random_shards, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while latest_checkpoint(killed) is None and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    at_kill = read_state(latest_checkpoint(killed))["step"]
    assert 0 < at_kill < STEPS and not (killed / "result.json").exists()

    resumed = subprocess.run(_command(random_shards, killed), env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {killed}" in resumed.stdout
    logged = [int(line.split()[1].rstrip(":")) for line in resumed.stdout.splitlines() if line.startswith("step ")]
    assert logged[0] == at_kill + 5  # it went on from the checkpoint, not from the start
    _, reference_err = reference.communicate(timeout=120)
    assert reference.returncode == 0, reference_err[-2000:]

    a, b = (json.loads((run / "result.json").read_text()) for run in (whole, killed))
    assert a["step"] == b["step"] == STEPS
    assert a["loss"] == b["loss"] and a["eval"] == b["eval"] and a["tokens"] == b["tokens"]  # bitwise
    final_a, final_b = (load_file(run / f"step_{STEPS:09d}" / "model.safetensors") for run in (whole, killed))
    assert final_a.keys() == final_b.keys()
    assert all(final_a[k].equal(final_b[k]) for k in final_a)
    optim_a, optim_b = (load_file(run / f"step_{STEPS:09d}" / "optimizer.safetensors") for run in (whole, killed))
    assert all(optim_a[k].equal(optim_b[k]) for k in optim_a)
