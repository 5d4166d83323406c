"""The benchmark scripts run end to end and print their headline lines (tiny shapes, one round)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_train_step_benchmark_prints_throughput_mfu_and_ratios(repo_root: Path) -> None:
    command = [sys.executable, str(repo_root / "benchmarks" / "train_step.py"), "--preset", "cpu-tiny",
               "--batch", "2", "--steps", "1", "--rounds", "1", "--warmup", "1", "--activations", "default", "gelu",
               "--ablate"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "matmul peaks (fp32 2048^2): matmul" in out and "MFU/matmul" in out
    for name in ("ours/gelu", "hf/gelu_new", "hf/gelu", "ours/gelu, MKL linear"):
        assert name in out
    assert "ratio ours/HF (default: ours gelu, HF gelu_new)" in out
    assert "ratio ours/HF (gelu: ours gelu, HF gelu)" in out


def test_ppo_memory_benchmark_prints_the_peak_and_its_parts(repo_root: Path) -> None:
    command = [sys.executable, str(repo_root / "benchmarks" / "ppo_memory.py"), "--shapes", "cpu-small", "--batch", "2",
               "--response", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.strip().startswith("cpu-small"))
    assert "5.3M" in row and row.count("MB") == 4
