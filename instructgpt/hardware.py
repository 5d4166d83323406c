"""The machine a run trains on: which device and precision, how fast it could go, how much memory it used.

- `select_device("auto")`: CUDA when there is a GPU (the process's local rank picks which), else
  Apple's MPS, else the CPU. `select_dtype("auto", device)`: bf16 autocast on GPUs that support it,
  fp32 everywhere else. `backend_settings` turns on TF32 for fp32 matmuls on CUDA and, when asked,
  deterministic algorithms (exactly reproducible on the CPU; on GPUs some kernels, flash attention's
  backward among them, have no deterministic version and only warn).
- `peak_flops`: the dense matmul peak MFU is measured against. For known GPUs it is the datasheet's
  bf16 (or TF32, for fp32 runs) tensor-core figure; for the CPU, and GPUs the table lacks, it is
  measured once by a matmul probe and recorded in a JSON cache the caller names, keyed by the
  processor, thread count, dtype and torch version, so every later run compares against the same
  number. A probe measures what matmuls achieve, not the theoretical peak, so CPU MFU reads high
  next to GPU MFU; it is the honest denominator for "how much of this machine did we use".
  A run that goes faster than its measured peak raises it (`raise_measured_peak`).
- `mfu(flops_per_token, tokens_per_s, peak)` and `peak_memory_mb(device)` (CUDA's allocator
  high-water mark; the process's RSS high-water mark on the CPU).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import resource
import sys
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import ContextManager, Iterator

import torch

from instructgpt import atomic
from instructgpt.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_MEASURED: dict[str, float] = {}  # probe results of this process, by cache key

# Dense (no sparsity) peak FLOP/s per GPU from the vendor datasheets: (bf16/fp16 tensor cores,
# fp32 matmuls: TF32 tensor cores from Ampere on, plain fp32 before). First regex match wins, so
# the more specific names come first. A GPU not listed is measured by the probe instead.
GPU_PEAK_FLOPS: list[tuple[str, tuple[float, float]]] = [
    (r"GH200", (989e12, 494.7e12)),
    (r"H200", (989e12, 494.7e12)),
    (r"H100.*PCIe", (756e12, 378e12)),
    (r"H100.*NVL", (835e12, 418e12)),
    (r"H100|H800", (989e12, 494.7e12)),  # SXM ("H100 80GB HBM3")
    (r"B200", (2250e12, 1100e12)),
    (r"A100|A800", (312e12, 156e12)),
    (r"L40S", (362e12, 183e12)),
    (r"L40\b", (181e12, 90.5e12)),
    (r"\bL4\b", (121e12, 60e12)),
    (r"\bA10\b", (125e12, 62.5e12)),
    (r"V100", (125e12, 15.7e12)),  # fp16 tensor cores; no bf16, no TF32
    (r"\bT4\b", (65e12, 8.1e12)),
]


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: cuda:<local_rank> if a GPU is there, else mps, else cpu; or `cpu`, `cuda`, `cuda:N`, `mps`."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for, but torch sees no GPU; use 'auto' or 'cpu'", field="device")
        return device if device.index is not None else torch.device("cuda", local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but it is not available; use 'auto' or 'cpu'", field="device")
    return device


def select_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: `auto` is bf16 on GPUs that support it and fp32 elsewhere.

    fp16 would need loss scaling, which the training loop does not do, so it is refused.
    """
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {name!r}", field="dtype")
    return DTYPES[name]


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Mixed precision for the forward pass; nothing at all for fp32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextmanager
def backend_settings(device: torch.device, deterministic: bool) -> Iterator[None]:
    """TF32 matmuls on CUDA; deterministic algorithms if asked (restored on exit: they are global)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be reproducible
    if device.type == "cpu":
        keep_freed_memory()
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def keep_freed_memory() -> None:
    """Ask glibc to reuse freed activation memory instead of returning it to the OS.

    By default glibc serves large blocks with mmap and unmaps them on free, so every training step
    maps its activations afresh: about 130k page faults a step at the default model size, 17% of the
    step (measured on this project's 2-core machine). Process-wide and harmless elsewhere; a no-op
    where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: never mmap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed memory
    except (OSError, AttributeError):
        pass


def device_name(device: torch.device) -> str:
    """A human name for reports and cache keys: the GPU's name or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return _cpu_name()
    return device.type


def peak_flops(device: torch.device, dtype: torch.dtype, cache: str | Path | None = None) -> float:
    """Dense peak FLOP/s of one device for matmuls in `dtype` (see the module docstring)."""
    if device.type == "cuda":
        peak = datasheet_peak_flops(torch.cuda.get_device_name(device), dtype)
        if peak is not None:
            return peak
    return measured_peak_flops(device, dtype, cache)


def datasheet_peak_flops(gpu_name: str, dtype: torch.dtype) -> float | None:
    """The table's figure for a GPU name as CUDA reports it, or None if the table lacks it."""
    for pattern, (half, single) in GPU_PEAK_FLOPS:
        if re.search(pattern, gpu_name):
            return single if dtype == torch.float32 else half
    return None


def measured_peak_flops(device: torch.device, dtype: torch.dtype, cache: str | Path | None = None) -> float:
    """The probe's figure for this machine, from `cache` if it was measured before, else measured now."""
    key = _cache_key(device, dtype)
    records = _read_cache(cache)
    if key in records:
        return float(records[key]["flops"])
    if key not in _MEASURED:  # without a cache file, still measured once per process
        _MEASURED[key] = matmul_probe(device, dtype, _probe_size(device))
    _record(cache, records, key, _MEASURED[key], _probe_size(device))
    return _MEASURED[key]


def raise_measured_peak(device: torch.device, dtype: torch.dtype, cache: str | Path | None, achieved: float) -> float:
    """A new peak after a run did `achieved` FLOP/s, more than the measured one: the probe was
    taken on a busy machine (a noisy neighbour on a shared host halved it once). It probes again and
    keeps the best of the two probes and `achieved` (the model's FLOPs are matmuls, so what it did
    is what matmuls can do), so MFU never reads above 100%; the cache records the new figure."""
    key = _cache_key(device, dtype)
    records = _read_cache(cache)
    before = float(records[key]["flops"]) if key in records else _MEASURED.get(key, 0.0)
    flops = max(before, matmul_probe(device, dtype, _probe_size(device)), achieved)
    _MEASURED[key] = flops
    _record(cache, records, key, flops, _probe_size(device))
    return flops


def _cache_key(device: torch.device, dtype: torch.dtype) -> str:
    return (f"{device_name(device)} | threads={torch.get_num_threads()} | {str(dtype).removeprefix('torch.')}"
            f" | torch {torch.__version__} | probe v2")


def _probe_size(device: torch.device) -> int:
    return 2048 if device.type == "cpu" else 8192


def _record(cache: str | Path | None, records: dict, key: str, flops: float, size: int) -> None:
    if cache is None:
        return
    records[key] = {
        "flops": flops,
        "matmul": size,
        "threads": torch.get_num_threads(),
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic.write_json(cache, records)


def matmul_probe(device: torch.device, dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` square matmuls of `size` (after one warm-up).

    On a CPU in fp32 the model multiplies through oneDNN (`instructgpt.model.Linear`), which can be
    twice as fast as `torch.matmul`'s MKL; the peak is the faster of the two kernels, so that MFU
    is measured against what the hardware can do, never above 100%.
    """
    from instructgpt.model import fast_cpu_matmul  # late: model imports nothing from here

    generator = torch.Generator().manual_seed(0)  # a private generator: the global RNG is the run's
    a, b = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
    kernels = [torch.matmul]
    if device.type == "cpu" and dtype == torch.float32 and fast_cpu_matmul is not None:
        kernels.append(lambda x, y: fast_cpu_matmul(x, y.t()))
    best = float("inf")
    for kernel in kernels:
        for i in range(repeats + 1):
            _synchronize(device)
            started = time.perf_counter()
            kernel(a, b)
            _synchronize(device)
            if i:  # the first is the warm-up
                best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def mfu(flops_per_token: float, tokens_per_s: float, peak: float) -> float:
    """Model FLOPs utilisation: the share of the device's peak that the model's FLOPs used."""
    return flops_per_token * tokens_per_s / peak


def peak_memory_mb(device: torch.device) -> float:
    """MiB: CUDA's allocator high-water mark, MPS's current driver allocation, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _read_cache(cache: str | Path | None) -> dict:
    if cache is None or not Path(cache).is_file():
        return {}
    try:
        records = json.loads(Path(cache).read_text(encoding="utf-8"))
    except ValueError:
        return {}  # a corrupt cache is re-measured and rewritten
    return records if isinstance(records, dict) else {}
