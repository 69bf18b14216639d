"""Timing: honest medians with their spread, on CPU and GPU.

GPU: CUDA events around each call, in the manner of ``triton.testing.do_bench`` — a warm-up,
an estimate, then many calls each preceded by a write of a buffer larger than the L2 cache
(so no call finds its inputs cached by the previous one) and by clearing the gradients named
in ``grad_to_none``; one synchronisation at the end.

CPU: ``torch.utils.benchmark.Timer`` (which pins the thread count and synchronises where
needed), called repeatedly with ``timeit(number)``: each repeat is one sample, ``number``
calls long so that a sample lasts at least a few milliseconds.

Either way the samples' median, 20th / 80th percentiles, interquartile range, minimum and
maximum are reported, so the spread of the repeats is part of every result.
"""

from __future__ import annotations

import functools
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass
class Timing:
    """Milliseconds per call over ``runs`` samples (each the mean of ``calls_per_run`` calls)."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    iqr_ms: float  # 75th minus 25th percentile
    min_ms: float
    max_ms: float
    runs: int
    calls_per_run: int
    method: str  # "cuda-events" or "torch.utils.benchmark"

    def as_dict(self) -> dict:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated ``q``-quantile (0..1) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarise(samples_ms: Sequence[float], calls_per_run: int, method: str) -> Timing:
    values = sorted(samples_ms)
    return Timing(
        median_ms=statistics.median(values),
        p20_ms=percentile(values, 0.2),
        p80_ms=percentile(values, 0.8),
        iqr_ms=percentile(values, 0.75) - percentile(values, 0.25),
        min_ms=values[0],
        max_ms=values[-1],
        runs=len(values),
        calls_per_run=calls_per_run,
        method=method,
    )


def _rotating(fns: Callable[[], object] | Sequence[Callable[[], object]]) -> Callable[[], object]:
    """One callable that calls each of ``fns`` in turn (input sets rotated between calls)."""
    if callable(fns):
        return fns
    fns = list(fns)
    if len(fns) == 1:
        return fns[0]
    state = {"next": 0}

    def call():
        index = state["next"]
        state["next"] = (index + 1) % len(fns)
        return fns[index]()

    return call


@functools.cache
def cache_bytes(device_type: str, index: int = 0) -> int:
    """Size of the last-level cache the timed inputs must not fit in: L2 on a GPU, the
    largest CPU cache level otherwise (from ``/sys``; 32 MiB when it cannot be read)."""
    if device_type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(index), "L2_cache_size", 64 << 20))
    largest = 0
    for level in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (level / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            largest = max(largest, int(digits) * scale)
    return largest or 32 << 20


def time_function(
    fns: Callable[[], object] | Sequence[Callable[[], object]],
    device: torch.device,
    *,
    min_runs: int = 5,
    max_runs: int = 1000,
    budget_s: float = 1.0,
    grad_to_none: Sequence[torch.Tensor] | None = None,
) -> Timing:
    """Per-call time of ``fns`` after a warm-up, with the spread of the repeats.

    ``fns`` is one callable or several (one per rotating input set, called in turn so that
    together their inputs exceed the cache). ``budget_s`` bounds the timing after warm-up,
    except that at least ``min_runs`` samples are always taken.
    """
    device = torch.device(device)
    fn = _rotating(fns)
    leaves = list(grad_to_none or ())

    def clear() -> None:
        for tensor in leaves:
            tensor.grad = None

    if device.type == "cuda":
        return _time_cuda(fn, device, clear, min_runs, max_runs, budget_s)
    return _time_cpu(fn, clear, min_runs, max_runs, budget_s)


def _time_cuda(fn, device, clear, min_runs, max_runs, budget_s) -> Timing:
    flush_elems = 2 * cache_bytes("cuda", device.index or 0) // 4
    flush = torch.empty(flush_elems, dtype=torch.int32, device=device)
    clear()
    fn()  # warm-up: compilation, autotuning, allocator growth
    torch.cuda.synchronize(device)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        clear()
        fn()
    end.record()
    torch.cuda.synchronize(device)
    estimate_ms = max(start.elapsed_time(end) / 3, 1e-3)
    runs = max(min_runs, min(max_runs, int(budget_s * 1000 / estimate_ms)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for i in range(runs):
        flush.zero_()
        clear()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    samples = [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
    return summarise(samples, 1, "cuda-events")


def _time_cpu(fn, clear, min_runs, max_runs, budget_s) -> Timing:
    from torch.utils import benchmark

    def call():
        clear()
        fn()

    call()  # warm-up: compilation, allocator growth
    t0 = time.perf_counter()
    call()
    estimate_s = max(time.perf_counter() - t0, 1e-7)
    # a sample lasts >= 2 ms so the timer's own overhead stays negligible
    calls_per_run = max(1, int(2e-3 / estimate_s))
    runs = max(min_runs, min(max_runs, int(budget_s / (estimate_s * calls_per_run))))
    timer = benchmark.Timer(
        stmt="call()", globals={"call": call}, num_threads=torch.get_num_threads()
    )
    # A slow call's estimate (one call after the warm-up, like every sample) is kept as the
    # first sample: on a CPU suite dominated by slow rows this saves a call per row.
    samples = [estimate_s * 1e3] if calls_per_run == 1 else []
    samples += [timer.timeit(calls_per_run).median * 1e3 for _ in range(runs - len(samples))]
    return summarise(samples, calls_per_run, "torch.utils.benchmark")


def device_name(device: torch.device) -> str:
    """A file-system-safe name of the device, used for the results folder."""
    device = torch.device(device)
    if device.type == "cuda":
        raw = torch.cuda.get_device_name(device)
    else:
        raw = f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in raw).strip("-")
