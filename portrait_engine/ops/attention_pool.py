"""Attention-weighted embedding pooling: the public op, its registration and its autograd.

``attention_pool`` validates its inputs, picks a backend and hands the kernels a ``(B, C, L)``
view of the features (contiguous or channels-last: the kernels read either layout through its
strides, so neither is copied) and ``(B, K, L)`` scores. Kernels: ``kernels/attention_pool.py``
(Triton) and ``csrc/pooling/`` (C++ CPU and CUDA); contract in
``docs/kernel_contract_attention_pool.md``. The forward also returns the per-map log-sum-exp, so
the backward recomputes the softmax without another reduction, and reads the features once:
``dF = aᵀg``, ``ds = a ⊙ (Fᵀg − ⟨out, g⟩)``.
"""

from __future__ import annotations

import torch

from portrait_engine import _backend
from portrait_engine.ops import _validation as v
from portrait_engine.ops._library import (
    accumulation_dtype,
    eager,
    register_native_pair,
    register_pair,
)
from portrait_engine.ops.reference import attention_pool_reference

# --------------------------------------------------------------------------------------------
# Kernel-level custom ops (prepared inputs; no validation)
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("portrait_engine::attention_pool_triton_forward", mutates_args=())
def _triton_forward(
    features: torch.Tensor, scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import attention_pool as kernels

    return kernels.attention_pool_forward(features, scores)


@torch.library.custom_op("portrait_engine::attention_pool_triton_backward", mutates_args=())
def _triton_backward(
    grad_out: torch.Tensor,
    features: torch.Tensor,
    scores: torch.Tensor,
    lse: torch.Tensor,
    out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import attention_pool as kernels

    return kernels.attention_pool_backward(grad_out, features, scores, lse, out)


def _fake_forward(features, scores):
    batch, channels, _ = features.shape
    maps = scores.shape[1]
    return (
        features.new_empty((batch, maps, channels)),
        features.new_empty((batch, maps), dtype=accumulation_dtype(features.dtype)),
    )


def grad_features_like(features: torch.Tensor) -> torch.Tensor:
    """An empty gradient of a ``(B, C, L)`` features view, in the layout the kernels write."""
    batch, channels, positions = features.shape
    if features.stride(1) == 1 and channels > 1:  # channels-last
        return features.new_empty((batch, positions, channels)).permute(0, 2, 1)
    return features.new_empty((batch, channels, positions))


def _fake_backward(grad_out, features, scores, lse, out):
    return grad_features_like(features), scores.new_empty(scores.shape)


def _setup_context(ctx, inputs, output):
    features, scores = inputs
    out, lse = output
    ctx.save_for_backward(features, scores, lse, out)
    ctx.mark_non_differentiable(lse)


def _make_autograd(backward_op):
    def backward(ctx, grad_out, _grad_lse):
        features, scores, lse, out = ctx.saved_tensors
        return backward_op(grad_out.contiguous(), features, scores, lse, out)

    return backward


_REGISTRATION = dict(
    fake_forward=_fake_forward,
    fake_backward=_fake_backward,
    setup_context=_setup_context,
    make_backward=_make_autograd,
)
register_pair("attention_pool_triton_forward", "attention_pool_triton_backward", **_REGISTRATION)
_NATIVE_REGISTERED = register_native_pair(
    "attention_pool_forward", "attention_pool_backward", **_REGISTRATION
)


# --------------------------------------------------------------------------------------------
# The public op
# --------------------------------------------------------------------------------------------


def _validate(features, scores) -> None:
    v.check_tensor("features", features)
    v.check_tensor("scores", scores)
    v.check_rank("features", features, (4,), "(B, C, H, W)")
    v.check_rank("scores", scores, (4,), "(B, K, H, W)")
    if features.shape[0] != scores.shape[0]:
        raise ValueError(
            "features and scores must have the same batch size, got features "
            f"{tuple(features.shape)} (B={features.shape[0]}) and scores "
            f"{tuple(scores.shape)} (B={scores.shape[0]})"
        )
    if features.shape[2:] != scores.shape[2:]:
        raise ValueError(
            "features and scores must have the same H x W, got features "
            f"{tuple(features.shape)} and scores {tuple(scores.shape)}"
        )
    if features.shape[2] * features.shape[3] == 0:
        raise ValueError(
            f"features must have at least one position (H x W > 0), got {tuple(features.shape)}"
        )
    if scores.shape[1] == 0:
        raise ValueError(f"scores must hold at least one map (K > 0), got {tuple(scores.shape)}")
    v.check_float("features", features)
    v.check_float("scores", scores)
    v.check_same_device(("features", "scores"), features, scores)
    v.check_same_dtype(("features", "scores"), features, scores)


def _features_view(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, L)`` view of the features: contiguous and channels-last pass uncopied."""
    flat = features.flatten(2)
    batch, channels, positions = flat.shape
    contiguous = flat.stride(2) == 1 and flat.stride(1) == positions
    channels_last = flat.stride(1) == 1 and flat.stride(2) == channels
    if (contiguous or channels_last) and flat.stride(0) == channels * positions:
        return flat
    return features.contiguous().flatten(2)


def attention_pool(
    features: torch.Tensor, scores: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """Pool a feature map into K embeddings through K spatial softmax attention maps.

    Args:
        features: ``(B, C, H, W)``, contiguous or channels-last (other layouts are copied).
        scores: ``(B, K, H, W)`` attention logits, same dtype and device as ``features``.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``; ``None`` uses the
            backend in force (:func:`portrait_engine.use_backend`).

    Returns:
        ``(B, K, C)``: ``out[b, k] = Σ_hw softmax(scores[b, k])[hw] · features[b, :, hw]``,
        the softmax over the H·W positions with its maximum subtracted (safe for scores of any
        magnitude). fp16 / bf16 accumulate in fp32. Gradients flow to both inputs.
    """
    _validate(features, scores)
    name = _backend.resolve(backend, features.device, "attention_pool_forward")
    if name == "torch":
        return attention_pool_reference(features, scores)
    flat_features = _features_view(features)
    flat_scores = scores.contiguous().flatten(2)
    if name == "triton":
        op = torch.ops.portrait_engine.attention_pool_triton_forward
    else:
        op = torch.ops.portrait_engine.attention_pool_forward
    out, _ = eager(op)(flat_features, flat_scores)
    return out
