"""Triton kernels of the decoder's softplus and output head (``portrait_engine.ops.softplus``,
``portrait_engine.ops.decoder_outputs``).

``torch.nn.functional.softplus`` with beta 1 and threshold 20 (EG3D's decoder hidden layer) and
its backward as torch's ``softplus_backward`` computes it, from one exp (contract:
``docs/kernel_contract_activation.md``):

* forward ``y = x`` above the threshold, else ``log1p(exp(x))``;
* backward ``dx = g · (1 above the threshold, else z / (z + 1), z = exp(x))``.

The output head of EG3D's ``OSGDecoder`` over rows ``x`` ``(N, 1 + Co)``: ``sigma = x[:, :1]``,
``rgb = sigmoid(x[:, 1:]) · (1 + 2·0.001) − 0.001``; backward ``(g_sigma | g_rgb · (1 + 2·0.001)
s (1 − s))``, ``s`` the sigmoid.

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
    # the interpreter's cost is per program instance: one large block; 1024 on a GPU
    return min(65536, triton.next_power_of_2(n)) if _interpreting() else 1024


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


_RGB_PADDING = tl.constexpr(0.001)  # EG3D's widened sigmoid


@triton.jit
def _decoder_outputs_forward_kernel(
    x_ptr, sigma_ptr, rgb_ptr, n, O, BLOCK: tl.constexpr, COMPUTE: tl.constexpr
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    row = offsets // O
    col = offsets % O
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    tl.store(sigma_ptr + row, x, mask=mask & (col == 0))
    state = 1.0 / (1.0 + tl.exp(-x.to(COMPUTE)))
    rgb = state * (1.0 + 2.0 * _RGB_PADDING) - _RGB_PADDING
    rgb_offsets = row * (O - 1) + col - 1
    tl.store(rgb_ptr + rgb_offsets, rgb.to(rgb_ptr.dtype.element_ty), mask=mask & (col > 0))


@triton.jit
def _decoder_outputs_backward_kernel(
    grad_sigma_ptr, grad_rgb_ptr, x_ptr, out_ptr, n, O, BLOCK: tl.constexpr, COMPUTE: tl.constexpr
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    row = offsets // O
    col = offsets % O
    is_sigma = col == 0
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(COMPUTE)
    g_sigma = tl.load(grad_sigma_ptr + row, mask=mask & is_sigma, other=0.0).to(COMPUTE)
    rgb_offsets = row * (O - 1) + col - 1
    g_rgb = tl.load(grad_rgb_ptr + rgb_offsets, mask=mask & (col > 0), other=0.0).to(COMPUTE)
    state = 1.0 / (1.0 + tl.exp(-x))
    slope = (1.0 + 2.0 * _RGB_PADDING) * state * (1.0 - state)
    out = tl.where(is_sigma, g_sigma, g_rgb * slope)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def decoder_outputs_forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma (N, 1), rgb (N, O - 1))`` of a contiguous ``(N, O)`` tensor, in its dtype."""
    rows, width = x.shape
    sigma = empty_output((rows, 1), dtype=x.dtype, device=x.device)
    rgb = empty_output((rows, width - 1), dtype=x.dtype, device=x.device)
    n = x.numel()
    if n == 0:
        return sigma, rgb
    block = _block(n)
    with _device_guard(x):
        _decoder_outputs_forward_kernel[(triton.cdiv(n, block),)](
            x, sigma, rgb, n, width, BLOCK=block, COMPUTE=_compute(x.dtype)
        )
    return sigma, rgb


def decoder_outputs_backward(
    grad_sigma: torch.Tensor, grad_rgb: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """The ``(N, O)`` gradient of ``x`` from contiguous ``grad_sigma`` and ``grad_rgb``."""
    out = empty_output(x.shape, dtype=x.dtype, device=x.device)
    n = x.numel()
    if n == 0:
        return out
    block = _block(n)
    with _device_guard(x):
        _decoder_outputs_backward_kernel[(triton.cdiv(n, block),)](
            grad_sigma, grad_rgb, x, out, n, x.shape[1], BLOCK=block, COMPUTE=_compute(x.dtype)
        )
    return out
