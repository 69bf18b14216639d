"""The decoder's element-wise stages: the public ``softplus`` and ``decoder_outputs`` ops, their
registration and their autograd.

``softplus(x)`` is ``torch.nn.functional.softplus`` with beta 1 and threshold 20, the hidden
activation of EG3D's ``OSGDecoder``: over the renderer's N samples x 64 hidden units it is the
largest element-wise cost of a render, and PyTorch's CPU kernel evaluates libm's exp and log1p
per element. Kernels: ``kernels/activation.py`` (Triton) and ``csrc/activation/`` (C++ CPU,
vectorised per instruction set, and CUDA); contract in ``docs/kernel_contract_activation.md``.
The backward recomputes ``exp(x)`` from the saved input (one exp per element, as torch's).

``decoder_outputs(x)`` is the decoder's output head, ``sigma = x[..., :1]`` and EG3D's widened
sigmoid of the rest, in one pass each way (eager: a split, three element-wise kernels, and in
the backward a concatenation and three more).
"""

from __future__ import annotations

import torch

from portrait_engine import _backend
from portrait_engine.ops import _validation as v
from portrait_engine.ops._library import eager, register_native_pair, register_pair
from portrait_engine.ops.reference import decoder_outputs_reference, softplus_reference

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


@torch.library.custom_op("portrait_engine::decoder_outputs_triton_forward", mutates_args=())
def _triton_head_forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import activation as kernels

    return kernels.decoder_outputs_forward(x)


@torch.library.custom_op("portrait_engine::decoder_outputs_triton_backward", mutates_args=())
def _triton_head_backward(
    grad_sigma: torch.Tensor, grad_rgb: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    from portrait_engine.kernels import activation as kernels

    return kernels.decoder_outputs_backward(grad_sigma, grad_rgb, x)


def _fake_head_forward(x):
    rows, width = x.shape
    return x.new_empty((rows, 1)), x.new_empty((rows, width - 1))


def _fake_head_backward(grad_sigma, grad_rgb, x):
    return torch.empty_like(x)


def _make_head_autograd(backward_op):
    def backward(ctx, grad_sigma, grad_rgb):
        (x,) = ctx.saved_tensors
        rows, width = x.shape
        if grad_sigma is None:
            grad_sigma = x.new_zeros((rows, 1))
        if grad_rgb is None:
            grad_rgb = x.new_zeros((rows, width - 1))
        return backward_op(grad_sigma.contiguous(), grad_rgb.contiguous(), x)

    return backward


_HEAD_REGISTRATION = dict(
    fake_forward=_fake_head_forward,
    fake_backward=_fake_head_backward,
    setup_context=_setup_context,
    make_backward=_make_head_autograd,
)
register_pair(
    "decoder_outputs_triton_forward", "decoder_outputs_triton_backward", **_HEAD_REGISTRATION
)
_NATIVE_HEAD_REGISTERED = register_native_pair(
    "decoder_outputs_forward", "decoder_outputs_backward", **_HEAD_REGISTRATION
)


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
    return eager(op)(x.contiguous())


def decoder_outputs(
    x: torch.Tensor, *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """EG3D's ``OSGDecoder`` output head: raw density and widened-sigmoid colour features.

    Args:
        x: ``(..., 1 + C_out)`` the decoder's last layer output, C_out >= 1, floating point.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``; ``None`` uses the
            backend in force.

    Returns:
        ``(sigma (..., 1), rgb (..., C_out))`` in the dtype of ``x`` (fp16 / bf16 computed in
        fp32): ``sigma = x[..., :1]`` and ``rgb = sigmoid(x[..., 1:]) · (1 + 2·0.001) − 0.001``
        (:func:`~portrait_engine.ops.reference.decoder_outputs_reference`). Gradients flow to
        ``x`` from both outputs.
    """
    v.check_tensor("x", x)
    v.check_float("x", x)
    if x.dim() < 1 or x.shape[-1] < 2:
        raise ValueError(
            f"x must have shape (..., 1 + C_out) with C_out >= 1, got {tuple(x.shape)}"
        )
    name = _backend.resolve(backend, x.device, "decoder_outputs_forward")
    if name == "torch":
        return decoder_outputs_reference(x)
    if name == "triton":
        op = torch.ops.portrait_engine.decoder_outputs_triton_forward
    else:
        op = torch.ops.portrait_engine.decoder_outputs_forward
    lead, width = x.shape[:-1], x.shape[-1]
    sigma, rgb = eager(op)(x.reshape(-1, width).contiguous())
    return sigma.reshape(*lead, 1), rgb.reshape(*lead, width - 1)


__all__ = ["decoder_outputs", "softplus"]
