"""Timing and device ceilings: honest medians with their spread, on CPU and GPU."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    """Milliseconds: the median and the 20th / 80th percentiles of repeated runs."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    runs: int


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def time_function(
    fn: Callable[[], object],
    device: torch.device,
    *,
    min_runs: int = 5,
    budget_s: float = 1.0,
    grad_to_none: list[torch.Tensor] | None = None,
) -> Timing:
    """Median time of ``fn()`` after a warm-up.

    On a GPU, CUDA events around each call, the L2 cache flushed between calls by writing a
    buffer larger than it (as ``triton.testing.do_bench`` does); on the CPU, wall-clock time of
    each call. Gradients named in ``grad_to_none`` are cleared before each call, so backward
    passes do not time an accumulation.
    """

    def clear() -> None:
        for tensor in grad_to_none or ():
            tensor.grad = None

    clear()
    fn()  # warm-up: compilation, autotuning, allocator growth
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        clear()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        estimate_ms = max(start.elapsed_time(end), 1e-3)
        runs = max(min_runs, min(1000, int(budget_s * 1000 / estimate_ms)))
        times = []
        for _ in range(runs):
            flush.zero_()
            clear()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    else:
        import time

        times = []
        deadline = time.perf_counter() + budget_s
        while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < 1000):
            clear()
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    return Timing(
        median_ms=statistics.median(times),
        p20_ms=_percentile(times, 0.2),
        p80_ms=_percentile(times, 0.8),
        runs=len(times),
    )


def copy_bandwidth_gbps(device: torch.device, megabytes: int = 256) -> float:
    """Measured device-to-device copy bandwidth (read + write bytes per second), in GB/s."""
    n = megabytes * 1024 * 1024 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    timing = time_function(lambda: dst.copy_(src), device, min_runs=5, budget_s=0.5)
    return 2 * src.numel() * 4 / (timing.median_ms * 1e-3) / 1e9


def device_name(device: torch.device) -> str:
    """A file-system-safe name of the device, used for the results folder."""
    if device.type == "cuda":
        raw = torch.cuda.get_device_name(device)
    else:
        import platform

        raw = f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in raw).strip("-")
