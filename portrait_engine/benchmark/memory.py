"""Peak memory of one call, with a label saying what was measured.

- CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated before
  the call: the peak of the caching allocator's live bytes that the call added.
- CPU: ``tracemalloc`` does not see tensor memory and the process RSS hides reuse of freed
  heap pages, so the call runs once under ``torch.profiler`` with ``profile_memory=True``:
  every allocation and free of PyTorch's CPU allocator (ATen ops, the C++ extension's
  ``at::empty`` and autograd alike) is a timed event, and the peak of their running sum is
  the most bytes the call held at once beyond its inputs.

``retain_cpu_memory`` keeps freed CPU memory in the benchmark process (see there).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable, Iterator

import torch

# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
RETAIN_MMAP_THRESHOLD = 1 << 30
RETAIN_TRIM_THRESHOLD = (1 << 31) - 1


def retain_cpu_memory() -> str | None:
    """Make glibc's malloc keep freed memory in the process, as the CUDA caching allocator
    does on a GPU; returns what was set, or ``None`` where it cannot be (not glibc).

    Why: by default glibc maps every block above a threshold (128 KiB, rising to at most
    32 MiB) afresh and returns it to the kernel when it is freed, so each call of an op with
    large temporaries or outputs first-touches new pages. On the 2-core development VM that
    cost comes in streaks: merge_samples at its quick size (a 52 MB output) took 6.3-7 ms
    per call in some stretches and 52-58 ms, 50-60 ms of it system time, in others, with the
    same 410 page faults per call in both; a first touch of fresh memory there runs at about
    1 GB/s. The streaks decided whole rows (sample_importance fwd+bwd 15 ms in one suite run,
    42 ms in the next). With the thresholds raised the same loop took 4.8-5.4 ms every call.
    On a GPU no timing ever includes such faults (the caching allocator keeps its blocks);
    this gives the CPU rows the same footing, for every provider alike.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        gnu = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None  # not glibc (musl has no mallopt thresholds)
    gnu.restype = ctypes.c_char_p
    ok = mallopt(_M_MMAP_THRESHOLD, RETAIN_MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, RETAIN_TRIM_THRESHOLD) == 1 and ok
    if not ok:
        return None
    return (
        f"glibc {gnu().decode()} malloc retains freed memory "
        f"(mallopt M_MMAP_THRESHOLD={RETAIN_MMAP_THRESHOLD}, "
        f"M_TRIM_THRESHOLD={RETAIN_TRIM_THRESHOLD})"
    )


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
