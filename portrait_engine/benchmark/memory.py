"""Peak memory of one call, with a label saying what was measured.

- CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated before
  the call: the peak of the caching allocator's live bytes that the call added.
- CPU: ``tracemalloc`` does not see tensor memory and the process RSS hides reuse of freed
  heap pages, so the call runs once under ``torch.profiler`` with ``profile_memory=True``:
  every allocation and free of PyTorch's CPU allocator (ATen ops, the C++ extension's
  ``at::empty`` and autograd alike) is a timed event, and the peak of their running sum is
  the most bytes the call held at once beyond its inputs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import torch

CUDA_METHOD = "cuda max_memory_allocated above the inputs"
CPU_METHOD = "cpu allocator peak above the inputs (torch.profiler memory events)"


def peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[float | None, str]:
    """``(MiB, method)`` for one call of ``fn`` on ``device``; ``None`` when unmeasurable."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del result
        return peak / 2**20, CUDA_METHOD
    if device.type != "cpu":
        return None, f"not measured on {device.type}"
    return _cpu_peak_bytes(fn) / 2**20, CPU_METHOD


def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with (
        _native_stderr_silenced(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        result = fn()
        del result  # the output is part of the peak, then freed like any caller would
    events = [
        event
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda event: event.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """The profiler's C++ side prints two lines to file descriptor 2 on every start and stop;
    between hundreds of rows they would bury the table, so fd 2 points at /dev/null here."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (an embedding host): leave it be
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
