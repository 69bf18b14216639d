"""The decoder's activation: the public ``softplus`` op, its registration and its autograd.

``softplus(x)`` is ``torch.nn.functional.softplus`` with beta 1 and threshold 20, the hidden
activation of EG3D's ``OSGDecoder``: over the renderer's N samples x 64 hidden units it is the
largest element-wise cost of a render, and PyTorch's CPU kernel evaluates libm's exp and log1p
per element. Kernels: ``kernels/activation.py`` (Triton) and ``csrc/activation/`` (C++ CPU,
vectorised per instruction set, and CUDA); contract in ``docs/kernel_contract_activation.md``.
The backward recomputes ``exp(x)`` from the saved input (one exp per element, as torch's).
"""

from __future__ import annotations

import torch

from portrait_engine import _backend
from portrait_engine.ops import _validation as v
from portrait_engine.ops._library import register_native_pair, register_pair
from portrait_engine.ops.reference import softplus_reference

# --------------------------------------------------------------------------------------------
# Kernel-level custom ops (prepared inputs; no validation)
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("portrait_engine::softplus_triton_forward", mutates_args=())
def _triton_forward(x: torch.Tensor) -> torch.Tensor:
    from portrait_engine.kernels import activation as kernels

    return kernels.softplus_forward(x)


@torch.library.custom_op("portrait_engine::softplus_triton_backward", mutates_args=())
def _triton_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    from portrait_engine.kernels import activation as kernels

    return kernels.softplus_backward(grad, x)


def _fake_forward(x):
    return torch.empty_like(x)


def _fake_backward(grad, x):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    (x,) = inputs
    ctx.save_for_backward(x)


def _make_autograd(backward_op):
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return backward_op(grad.contiguous(), x)

    return backward


_REGISTRATION = dict(
    fake_forward=_fake_forward,
    fake_backward=_fake_backward,
    setup_context=_setup_context,
    make_backward=_make_autograd,
)
register_pair("softplus_triton_forward", "softplus_triton_backward", **_REGISTRATION)
_NATIVE_REGISTERED = register_native_pair("softplus_forward", "softplus_backward", **_REGISTRATION)


# --------------------------------------------------------------------------------------------
# The public op
# --------------------------------------------------------------------------------------------


def softplus(x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``log(1 + exp(x))`` element-wise, linear (``x``) above 20: ``torch.nn.Softplus()``.

    Args:
        x: a floating-point tensor of any shape (non-contiguous inputs are copied).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``; ``None`` uses the
            backend in force (:func:`portrait_engine.use_backend`).

    Returns:
        A tensor of the shape and dtype of ``x``; fp16 / bf16 are computed in fp32. The
        gradient is ``sigmoid(x)`` (1 above the threshold), computed as torch's
        ``softplus_backward`` does (``z / (z + 1)``, ``z = exp(x)``). NaN propagates.
    """
    v.check_tensor("x", x)
    v.check_float("x", x)
    name = _backend.resolve(backend, x.device, "softplus_forward")
    if name == "torch":
        return softplus_reference(x)
    if name == "triton":
        op = torch.ops.portrait_engine.softplus_triton_forward
    else:
        op = torch.ops.portrait_engine.softplus_forward
    return op(x.contiguous())


__all__ = ["softplus"]
