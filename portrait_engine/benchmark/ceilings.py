"""The device's ceilings, measured in the same run as the benchmarks.

Every achieved rate the harness reports is a fraction of one of these, so the fractions are
of this machine as it runs now (clocks, threads, other load), not of a datasheet:

- copy bandwidth: ``dst.copy_(src)`` between two device buffers each several times larger
  than the last-level cache, counted as bytes read plus bytes written per second;
- matrix rate: ``torch.mm`` of two random square matrices of the dtype, ``2·n³`` floating
  point operations per call (on a GPU, float32 follows ``torch.backends.cuda.matmul
  .allow_tf32``, which is recorded beside the figure).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from portrait_engine.benchmark.timing import Timing, cache_bytes, time_function


@dataclass
class Ceiling:
    value: float  # GB/s for bandwidth, TFLOP/s for a matrix rate
    unit: str
    what: str  # how it was measured, in words
    timing: dict  # the Timing behind it

    def as_dict(self) -> dict:
        return asdict(self)


def copy_bandwidth(device: torch.device, *, budget_s: float = 0.3) -> Ceiling:
    """Device-to-device copy bandwidth (bytes read + bytes written per second), GB/s."""
    device = torch.device(device)
    # four times the cache per buffer, at least 64 MiB (CPU) / 256 MiB (GPU), at most 1 GiB
    floor = (64 if device.type == "cpu" else 256) << 20
    nbytes = min(1 << 30, max(floor, 4 * cache_bytes(device.type, device.index or 0)))
    generator = torch.Generator().manual_seed(1)
    src = torch.randn(nbytes // 4, generator=generator).to(device)
    dst = torch.empty_like(src)
    timing = time_function(lambda: dst.copy_(src), device, min_runs=5, budget_s=budget_s)
    gbps = 2 * nbytes / (timing.median_ms * 1e-3) / 1e9
    return Ceiling(
        value=gbps,
        unit="GB/s",
        what=f"dst.copy_(src), float32, {nbytes >> 20} MiB each, read + write bytes",
        timing=timing.as_dict(),
    )


def matmul_size(device: torch.device, dtype: torch.dtype) -> int:
    """A size that keeps the device busy for milliseconds, not seconds."""
    if torch.device(device).type == "cuda":
        return 8192
    return 1024 if dtype in (torch.float32, torch.float64) else 512


def matmul_rate(device: torch.device, dtype: torch.dtype, *, budget_s: float = 0.3) -> Ceiling:
    """``torch.mm`` rate of ``dtype`` in TFLOP/s (``2·n³`` operations per product)."""
    device = torch.device(device)
    n = matmul_size(device, dtype)
    generator = torch.Generator().manual_seed(2)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    timing: Timing = time_function(
        lambda: torch.mm(a, b, out=out), device, min_runs=3, budget_s=budget_s
    )
    what = f"torch.mm {n}x{n} @ {n}x{n}, {str(dtype).removeprefix('torch.')}"
    if device.type == "cuda" and dtype == torch.float32:
        what += f", allow_tf32={torch.backends.cuda.matmul.allow_tf32}"
    return Ceiling(
        value=2 * n**3 / (timing.median_ms * 1e-3) / 1e12,
        unit="TFLOP/s",
        what=what,
        timing=timing.as_dict(),
    )


def measure_ceilings(device: torch.device, dtypes: list[torch.dtype], budget_s: float) -> dict:
    """``{"copy_bandwidth": Ceiling, "matmul": {dtype name: Ceiling}}`` as plain dicts."""
    return {
        "copy_bandwidth": copy_bandwidth(device, budget_s=budget_s).as_dict(),
        "matmul": {
            str(dtype).removeprefix("torch."): matmul_rate(
                device, dtype, budget_s=budget_s
            ).as_dict()
            for dtype in dtypes
        },
    }
