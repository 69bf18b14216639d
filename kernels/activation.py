"""Triton kernels of the decoder's softplus (``portrait_engine.ops.softplus``).

``torch.nn.functional.softplus`` with beta 1 and threshold 20 (EG3D's decoder hidden layer) and
its backward as torch's ``softplus_backward`` computes it, from one exp (contract:
``docs/kernel_contract_activation.md``):

* forward ``y = x`` above the threshold, else ``log1p(exp(x))``;
* backward ``dx = g · (1 above the threshold, else z / (z + 1), z = exp(x))``.

Element-wise over a contiguous flat tensor, one block of elements per program, masked; math in
fp32 (fp64 for fp64 inputs), outputs in the input dtype. ``log1p`` is the corrected
``log(1 + z)`` of the ray kernels (``kernels/rays.py``). Large blocks under the interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from portrait_engine.kernels._alloc import empty_output
from portrait_engine.kernels._launch import device_guard as _device_guard
from portrait_engine.kernels._launch import interpreting as _interpreting
from portrait_engine.kernels.rays import _SOFTPLUS_THRESHOLD, _log1p


@triton.jit
def _softplus_forward_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, COMPUTE: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(COMPUTE)
    above = x > _SOFTPLUS_THRESHOLD
    # tl.where, not a minimum: above the threshold the exp side may be inf and is not used
    z = tl.exp(tl.where(above, 0.0, x))
    y = tl.where(above, x, _log1p(z))
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softplus_backward_kernel(
    grad_ptr, x_ptr, out_ptr, n, BLOCK: tl.constexpr, COMPUTE: tl.constexpr
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(COMPUTE)
    g = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(COMPUTE)
    above = x > _SOFTPLUS_THRESHOLD
    z = tl.exp(tl.where(above, 0.0, x))
    slope = tl.where(above, 1.0, z / (z + 1.0))
    tl.store(out_ptr + offsets, (g * slope).to(out_ptr.dtype.element_ty), mask=mask)


def _block(n: int) -> int:
    return 65536 if _interpreting() else 1024


def _compute(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def softplus_forward(x: torch.Tensor) -> torch.Tensor:
    """``softplus(x)`` of a contiguous floating tensor, in its dtype."""
    out = empty_output(x.shape, dtype=x.dtype, device=x.device)
    n = x.numel()
    if n == 0:
        return out
    block = _block(n)
    with _device_guard(x):
        _softplus_forward_kernel[(triton.cdiv(n, block),)](
            x, out, n, BLOCK=block, COMPUTE=_compute(x.dtype)
        )
    return out


def softplus_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``grad · softplus'(x)`` for contiguous ``grad`` and ``x`` of one shape and dtype."""
    out = empty_output(x.shape, dtype=x.dtype, device=x.device)
    n = x.numel()
    if n == 0:
        return out
    block = _block(n)
    with _device_guard(x):
        _softplus_backward_kernel[(triton.cdiv(n, block),)](
            grad, x, out, n, BLOCK=block, COMPUTE=_compute(x.dtype)
        )
    return out
