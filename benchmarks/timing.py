"""Timing shared by the benchmarks: best of N rounds, interleaved so outside load hits every contender alike."""

from __future__ import annotations

import time
from typing import Callable


def best_of(runs: list[Callable[[], object]], repeats: int, warmup: bool = False) -> list[float]:
    """Best wall time of each run over `repeats` interleaved rounds (after one untimed call each if `warmup`)."""
    if warmup:
        for run in runs:
            run()  # thread pools, caches, page cache
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - started)
    return best
