"""Timing: honest medians with their spread, on CPU and GPU.

GPU: CUDA events around each call, in the manner of ``triton.testing.do_bench`` — a warm-up,
an estimate, then many calls each preceded by a write of a buffer larger than the L2 cache
(so no call finds its inputs cached by the previous one) and by clearing the gradients named
in ``grad_to_none``; one synchronisation at the end.

CPU: ``time.perf_counter`` around each repeat of ``calls_per_run`` calls, so that a sample
lasts at least 2 ms (one call for anything slower). Until 2026-11-26 each repeat was a
``torch.utils.benchmark.Timer.timeit``, which runs two untimed calls before every repeat: a
slow row's three calls per sample then cost three times its budget, and each timed call
followed two of its own, cache-warm, where the GPU timer writes over the L2 cache before
every call.

Either way the samples' median, 20th / 80th percentiles, interquartile range, minimum and
maximum are reported, so the spread of the repeats is part of every result.

The providers of one benchmark row are timed together (``time_interleaved``): warmed up one
by one, then sampled in rounds, one provider after another, so that a machine whose speed
drifts over the row (a shared VM) slows them alike and their ratios hold.
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
    method: str  # "cuda-events" or "perf_counter"
    wall_s: float | None = None  # seconds spent in the function's own calls, warm-up included

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
    result = time_interleaved(
        {"fn": fns},
        device,
        min_runs=min_runs,
        max_runs=max_runs,
        budget_s=budget_s,
        grad_to_none={"fn": grad_to_none or ()},
    )["fn"]
    if isinstance(result, BaseException):
        raise result
    return result


def time_interleaved(
    functions: dict[str, Callable[[], object] | Sequence[Callable[[], object]]],
    device: torch.device,
    *,
    min_runs: int = 5,
    max_runs: int = 1000,
    budget_s: float = 1.0,
    grad_to_none: dict[str, Sequence[torch.Tensor]] | None = None,
) -> dict[str, Timing | Exception]:
    """Time several named functions (the providers of one benchmark row) with their samples
    interleaved: each is warmed up and gets its own number of samples (``budget_s`` each, at
    least ``min_runs``), and the samples are taken in rounds, one function after another (odd
    rounds in reverse order), each function's samples spread evenly over the rounds. A machine
    whose speed drifts during the row (a shared VM, a CPU changing clocks) then slows every
    function alike, and their ratios stay true; timed one after another, each would see a
    different part of the drift.

    Returns a Timing per name, or the exception that function raised (its sampling stops; the
    others go on). ``Timing.wall_s`` is the time spent in that function's own calls.
    """
    device = torch.device(device)
    samplers: dict[str, _Sampler] = {}
    results: dict[str, Timing | Exception] = {}
    flush = None
    if device.type == "cuda":  # written before each call: twice the L2 cache
        flush = torch.empty(
            2 * cache_bytes("cuda", device.index or 0) // 4, dtype=torch.int32, device=device
        )
    for name, fns in functions.items():
        leaves = list((grad_to_none or {}).get(name, ()))
        if flush is None:
            sampler = _CpuSampler(_rotating(fns), leaves)
        else:
            sampler = _CudaSampler(_rotating(fns), leaves, device, flush)
        try:
            sampler.prepare(min_runs, max_runs, budget_s)
        except Exception as error:  # noqa: BLE001 -- reported for this function alone
            results[name] = error
            continue
        samplers[name] = sampler
    rounds = max((s.runs for s in samplers.values()), default=0)
    for r in range(rounds):
        # odd rounds go in reverse order: a call runs faster just after another call on the
        # same inputs (they are in cache, its output's memory is warm), and with one fixed order
        # the same provider would always come after the same other one. Reversed every other
        # round, each provider follows each neighbour, and itself at the turns, alike. On the
        # 2-core VM, the triplane kernels called twice in a row on the same inputs took
        # 0.60-0.94x the first call's time on the second (2026-11-27, six shapes).
        order = list(samplers.items())
        for name, sampler in order if r % 2 == 0 else reversed(order):
            # sample r of `rounds` maps to this function's sample index r * runs // rounds: a
            # function with fewer samples takes one in every few rounds, spread over all
            if (r * sampler.runs) // rounds == ((r + 1) * sampler.runs) // rounds:
                continue
            try:
                sampler.sample()
            except Exception as error:  # noqa: BLE001
                results[name] = error
                del samplers[name]
    for name, sampler in samplers.items():
        results[name] = sampler.finish()
    return {name: results[name] for name in functions}


class _Sampler:
    """Warm-up, run count and samples of one function on one device."""

    method = ""

    def __init__(self, fn: Callable[[], object], leaves: list[torch.Tensor]) -> None:
        self.fn, self.leaves = fn, leaves
        self.runs = 0  # samples still to take
        self.calls_per_run = 1
        self.samples_ms: list[float] = []
        self.wall_s = 0.0

    def clear(self) -> None:
        for tensor in self.leaves:
            tensor.grad = None

    def call(self) -> None:
        self.clear()
        self.fn()

    def _timed(self, action: Callable[[], object]) -> object:
        t0 = time.perf_counter()
        try:
            return action()
        finally:
            self.wall_s += time.perf_counter() - t0

    def prepare(self, min_runs: int, max_runs: int, budget_s: float) -> None:
        self._timed(lambda: self._prepare(min_runs, max_runs, budget_s))

    def sample(self) -> None:
        self._timed(self._sample)

    def finish(self) -> Timing:
        self._timed(self._finish)
        timed = summarise(self.samples_ms, self.calls_per_run, self.method)
        timed.wall_s = self.wall_s
        return timed


class _CpuSampler(_Sampler):
    """``time.perf_counter`` around ``calls_per_run`` calls (a sample lasts >= 2 ms)."""

    method = "perf_counter"

    def _prepare(self, min_runs: int, max_runs: int, budget_s: float) -> None:
        self.call()  # warm-up: compilation, allocator growth
        t0 = time.perf_counter()
        self.call()
        estimate_s = max(time.perf_counter() - t0, 1e-7)
        # a sample lasts >= 2 ms so the clock's own overhead stays negligible
        self.calls_per_run = max(1, int(2e-3 / estimate_s))
        self.runs = max(min_runs, min(max_runs, int(budget_s / (estimate_s * self.calls_per_run))))
        # A slow call's estimate (one call after the warm-up, like every sample) is kept as
        # the first sample: on a CPU suite dominated by slow rows this saves a call per row.
        if self.calls_per_run == 1:
            self.samples_ms.append(estimate_s * 1e3)
            self.runs -= 1  # runs counts the samples still to take

    def _sample(self) -> None:
        call, count = self.call, self.calls_per_run
        t0 = time.perf_counter()
        for _ in range(count):
            call()
        self.samples_ms.append((time.perf_counter() - t0) * 1e3 / count)

    def _finish(self) -> None:
        pass


class _CudaSampler(_Sampler):
    """CUDA events around single calls, each after a write of twice the L2 cache (so no
    call finds its inputs cached by the previous one); synchronised once at the end."""

    method = "cuda-events"

    def __init__(self, fn, leaves, device: torch.device, flush: torch.Tensor) -> None:
        super().__init__(fn, leaves)
        self.device, self.flush = device, flush
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def _prepare(self, min_runs: int, max_runs: int, budget_s: float) -> None:
        self.call()  # warm-up: compilation, autotuning, allocator growth
        torch.cuda.synchronize(self.device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(3):
            self.call()
        end.record()
        torch.cuda.synchronize(self.device)
        estimate_ms = max(start.elapsed_time(end) / 3, 1e-3)
        self.runs = max(min_runs, min(max_runs, int(budget_s * 1000 / estimate_ms)))

    def _sample(self) -> None:
        self.flush.zero_()
        self.clear()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        self.fn()
        end.record()
        self.events.append((start, end))

    def _finish(self) -> None:
        torch.cuda.synchronize(self.device)
        self.samples_ms = [s.elapsed_time(e) for s, e in self.events]


def device_name(device: torch.device) -> str:
    """A file-system-safe name of the device, used for the results folder."""
    device = torch.device(device)
    if device.type == "cuda":
        raw = torch.cuda.get_device_name(device)
    else:
        raw = f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in raw).strip("-")
