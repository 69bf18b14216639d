"""Reference of the fused neural renderer ``render_rays``: tri-plane sampling, OSG decoding and
``MipRayMarcher2`` compositing of S samples per ray, composed from the other references.

This is the unfused computation the fused kernels must reproduce (and the oracle of their
tests). The decoder enters as its *effective* weights, the ones its equalized-learning-rate
layers multiply by (``W·gain``, ``b·bias_gain``), see :func:`decoder_effective_weights`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from portrait_engine.ops.reference.rays import ray_march_reference
from portrait_engine.ops.reference.triplane import triplane_sample_reference

CROP_DENSITY = -1e3  # PanoHead's raw density outside the tri-plane crop
RGB_PADDING = 0.001  # EG3D's widened sigmoid: sigmoid(x) * (1 + 2 * 0.001) - 0.001
WEIGHTS_MODES = ("sum", "full")
# The colour activations of the decoder's rgb outputs, in the kernels' numbering (index = the
# kernel-level ``color_activation``): EG3D's widened sigmoid, none (3DPortraitGAN's published
# decoder), PanoHead's ``leaky_relu(x, 0.2)·√2``.
COLOR_ACTIVATIONS = ("sigmoid", "none", "lrelu")
LRELU_SLOPE = 0.2


def color_activation_reference(x: torch.Tensor, color_activation: str = "sigmoid") -> torch.Tensor:
    """The colour activation ``color_activation`` (one of :data:`COLOR_ACTIVATIONS`) of the
    decoder's colour outputs ``x``."""
    if color_activation == "sigmoid":
        return torch.sigmoid(x) * (1 + 2 * RGB_PADDING) - RGB_PADDING
    if color_activation == "none":
        return x
    if color_activation == "lrelu":
        return F.leaky_relu(x, LRELU_SLOPE) * math.sqrt(2)
    raise ValueError(
        f"color_activation must be one of {COLOR_ACTIVATIONS}, got {color_activation!r}"
    )


def decoder_effective_weights(
    decoder,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(w1 (H, C), b1 (H,), w2 (1 + C_out, H), b2 (1 + C_out,))`` of an ``OSGDecoder``: the
    weights its two ``FullyConnectedLayer`` s apply, with their gains folded in (differentiable:
    gradients flow back to the decoder's parameters)."""
    first, last = decoder.net[0], decoder.net[2]
    return (
        first.weight * first.weight_gain,
        first.bias * first.bias_gain,
        last.weight * last.weight_gain,
        last.bias * last.bias_gain,
    )


def decode_reference(
    features: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    color_activation: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The OSG decoder on ``(..., C)`` features: ``(rgb (..., C_out), sigma (..., 1))``, the
    colours through ``color_activation`` (:func:`color_activation_reference`)."""
    hidden = F.softplus(features @ w1.t() + b1)
    out = hidden @ w2.t() + b2
    sigma, x = out.split([1, out.shape[-1] - 1], dim=-1)
    return color_activation_reference(x, color_activation), sigma


def render_rays_reference(
    planes: torch.Tensor,
    points: torch.Tensor,
    depths: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    *,
    box_warp: float = 1.0,
    plane_axes: str | torch.Tensor = "eg3d",
    white_back: bool = False,
    scale_rgb: bool = True,
    color_activation: str = "sigmoid",
    noise: torch.Tensor | None = None,
    crop: float = 0.0,
    weights_mode: str = "sum",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render S samples per ray: sample, decode, march.

    ``planes`` ``(B, P, C, H, W)`` or ``(B, P, C, D, H, W)``; ``points`` ``(B, R, S, 3)`` (the
    sample points, already deformed where the model deforms them); ``depths`` ``(B, R, S, 1)``
    (their depths along the ray, ascending); decoder weights as from
    :func:`decoder_effective_weights`, its colours through ``color_activation`` (EG3D's
    ``"sigmoid"``, ``"none"`` or ``"lrelu"``, :func:`color_activation_reference`).
    ``noise`` ``(B, R, S, 1)`` is added to the raw density (the renderer's
    ``N(0, 1)·density_noise``); with ``crop > 0`` a point with ``|x| > box_warp/2 - crop`` or
    ``|z| > box_warp/2 - crop`` gets the raw density -1e3 (PanoHead's ``triplane_crop``).
    Returns ``(features (B, R, C_out), depth (B, R, 1), weight_sum (B, R, 1))`` for
    ``weights_mode="sum"`` or ``(features, depth, weights (B, R, S-1, 1))`` for ``"full"``,
    all float32 (float64 for float64 inputs).
    """
    batch, rays, samples, _ = points.shape
    compute = torch.float64 if planes.dtype == torch.float64 else torch.float32
    flat = points.reshape(batch, rays * samples, 3)
    features = triplane_sample_reference(
        planes.to(compute), flat.to(compute), box_warp=box_warp, plane_axes=plane_axes
    )
    rgb, sigma = decode_reference(
        features, *(t.to(compute) for t in (w1, b1, w2, b2)), color_activation=color_activation
    )
    rgb = rgb.reshape(batch, rays, samples, rgb.shape[-1])  # -1 is ambiguous when R = 0
    sigma = sigma.reshape(batch, rays, samples, 1)
    if noise is not None:
        sigma = sigma + noise.to(compute)
    if crop > 0:
        limit = box_warp / 2 - crop
        p = points.to(compute)
        outside = (p[..., 0].abs() > limit) | (p[..., 2].abs() > limit)
        sigma = torch.where(outside.unsqueeze(-1), torch.full_like(sigma, CROP_DENSITY), sigma)
    out, depth, weights = ray_march_reference(
        rgb, sigma, depths.to(compute), white_back=white_back, scale_rgb=scale_rgb
    )
    if weights_mode == "sum":
        return out, depth, weights.sum(2)
    return out, depth, weights


__all__ = [
    "COLOR_ACTIVATIONS",
    "CROP_DENSITY",
    "LRELU_SLOPE",
    "RGB_PADDING",
    "WEIGHTS_MODES",
    "color_activation_reference",
    "decode_reference",
    "decoder_effective_weights",
    "render_rays_reference",
]
