"""The native CPU kernels' cache of large output blocks (csrc/output_cache.h).

Native ops that return a large CPU tensor every step (lbs's 17 MB ``posedirs`` gradient at
SMPL's size) take its memory from a cache of blocks that stay mapped: a block whose tensor is
freed (say by ``zero_grad(set_to_none=True)``) waits there for the next request of its size,
instead of going back to the operating system and being faulted in again, a page per 4 KiB, on
the next write. Only blocks of 1 MiB or more are cached, and at most
``PORTRAIT_ENGINE_CPU_CACHE_MB`` MiB of idle ones (default 256; ``0`` turns the cache off; read
once per process). The blocks count in ``torch.profiler``'s memory events while a tensor holds
them, as PyTorch's own CPU allocations do.
"""

from __future__ import annotations

import torch

from portrait_engine import _extension

__all__ = ["cpu_cache_info", "empty_cpu_cache"]


def cpu_cache_info() -> dict[str, int]:
    """The cache's idle blocks: ``{"blocks", "bytes", "limit_bytes"}`` (all 0 without the
    native extension)."""
    if not _extension.has_op("cpu_output_cache"):
        return {"blocks": 0, "bytes": 0, "limit_bytes": 0}
    blocks, idle, limit = torch.ops.portrait_engine.cpu_output_cache()
    return {"blocks": blocks, "bytes": idle, "limit_bytes": limit}


def empty_cpu_cache() -> None:
    """Free the cache's idle blocks (the blocks tensors hold are not touched)."""
    if _extension.has_op("cpu_output_cache_clear"):
        torch.ops.portrait_engine.cpu_output_cache_clear()
