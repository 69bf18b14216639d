"""Reference of attention-weighted embedding pooling (RI perceptibility attention)."""

from __future__ import annotations

import torch


def attention_pool_reference(features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Attention-weighted pooling of a feature map (RI's perceptibility attention pooling).

    ``features`` ``(B, C, H, W)``, ``scores`` ``(B, K, H, W)`` -> ``(B, K, C)``: for each of the
    K maps, ``a = softmax(scores)`` over the H·W positions, then ``Σ_hw a[hw] · features[:, hw]``.
    Half-precision inputs are computed in float32 and the result cast back.
    """
    dtype = features.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    attention = torch.softmax(scores.to(compute).flatten(2), dim=-1)  # (B, K, L)
    pooled = torch.einsum("bkl,bcl->bkc", attention, features.to(compute).flatten(2))
    return pooled.to(dtype)
