"""Timing helpers shared by the benchmark suites."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch


def median_time(
    fn: Callable[[], object],
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> float:
    """Median wall time (s) of ``fn`` over ``repeats`` runs after ``warmup`` runs.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called after each run so asynchronous
    devices are timed to completion.
    """
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_threads() -> int:
    """Apply ``GPHM_BENCH_THREADS`` (or ``OMP_NUM_THREADS``) to torch; return the count."""
    for var in ("GPHM_BENCH_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            torch.set_num_threads(int(os.environ[var]))
            break
    return torch.get_num_threads()
