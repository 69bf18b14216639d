"""``@triton.jit`` helpers shared by the Triton kernel modules (device code only)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_xyz(ptr, mask, COMPUTE: tl.constexpr):
    """Three consecutive values per lane (a point, or its gradient), in COMPUTE; 0 if masked."""
    x = tl.load(ptr + 0, mask=mask, other=0.0).to(COMPUTE)
    y = tl.load(ptr + 1, mask=mask, other=0.0).to(COMPUTE)
    z = tl.load(ptr + 2, mask=mask, other=0.0).to(COMPUTE)
    return x, y, z
