"""The fused neural renderer ``render_rays``: the public op, its registration and its autograd.

``render_rays`` samples the tri-plane / tri-grid at every sample point of every ray, decodes
the features with EG3D's OSG decoder and composites them with ``MipRayMarcher2``, per ray, in
one kernel: no per-sample feature, hidden activation or colour is written to memory, and the
backward recomputes them per ray. The front-end validates, lays the planes out channels-last
``(B, P, D, H, W, C)`` as ``triplane_sample`` does, folds the plane axes and ``2 / box_warp``
into one ``(P, 3, 3)`` projection, turns the decoder into its effective weights (a
differentiable torch expression, so the decoder's parameters receive gradients through torch),
and draws the density noise. Kernels: ``kernels/render.py`` (Triton) and ``csrc/render/``
(C++ CPU and CUDA); contract and derivation in ``docs/render_rays.md``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from portrait_engine import _backend
from portrait_engine.ops import _validation as v
from portrait_engine.ops._library import (
    accumulation_dtype,
    eager,
    register_native_pair,
    register_pair,
)
from portrait_engine.ops.reference import decoder_effective_weights, render_rays_reference
from portrait_engine.ops.reference.render import COLOR_ACTIVATIONS, WEIGHTS_MODES
from portrait_engine.ops.triplane import _projection, planes_to_channels_last

# --------------------------------------------------------------------------------------------
# Kernel-level custom ops (prepared inputs; no validation)
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("portrait_engine::render_rays_triton_forward", mutates_args=())
def _triton_forward(
    planes: torch.Tensor,
    points: torch.Tensor,
    depths: torch.Tensor,
    proj: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    noise: torch.Tensor,
    trilinear: bool,
    use_crop: bool,
    crop_limit: float,
    white_back: bool,
    scale_rgb: bool,
    color_activation: int,
    full_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import render as kernels

    return kernels.render_rays_forward(
        planes,
        points,
        depths,
        proj,
        w1,
        b1,
        w2,
        b2,
        noise,
        trilinear,
        use_crop,
        crop_limit,
        white_back,
        scale_rgb,
        color_activation,
        full_weights,
    )


@torch.library.custom_op("portrait_engine::render_rays_triton_backward", mutates_args=())
def _triton_backward(
    grad_features: torch.Tensor,
    grad_depth_raw: torch.Tensor,
    grad_weights: torch.Tensor,
    planes: torch.Tensor,
    points: torch.Tensor,
    depths: torch.Tensor,
    proj: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    noise: torch.Tensor,
    features: torch.Tensor,
    depth_raw: torch.Tensor,
    weights: torch.Tensor,
    trilinear: bool,
    use_crop: bool,
    crop_limit: float,
    white_back: bool,
    scale_rgb: bool,
    color_activation: int,
    full_weights: bool,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import render as kernels

    grads = kernels.render_rays_backward(
        grad_features,
        grad_depth_raw,
        grad_weights,
        planes,
        points,
        depths,
        proj,
        w1,
        b1,
        w2,
        b2,
        noise,
        features,
        depth_raw,
        weights,
        trilinear,
        use_crop,
        crop_limit,
        white_back,
        scale_rgb,
        color_activation,
        full_weights,
        deterministic,
    )
    # a custom op's outputs may not alias each other: the launcher may return the decoder's
    # gradients as views of one reduction buffer (a few thousand values: copies cost nothing)
    grad_planes, grad_points, *grad_decoder = grads
    return (grad_planes, grad_points, *(grad.clone() for grad in grad_decoder))


def _fake_forward(
    planes,
    points,
    depths,
    proj,
    w1,
    b1,
    w2,
    b2,
    noise,
    trilinear,
    use_crop,
    crop_limit,
    white_back,
    scale_rgb,
    color_activation,
    full_weights,
):
    batch, rays, samples, _ = points.shape
    return (
        points.new_empty((batch, rays, w2.shape[0] - 1)),
        points.new_empty((batch, rays, 1)),
        points.new_empty((batch, rays, samples - 1 if full_weights else 1)),
    )


def _fake_backward(grad_features, grad_depth_raw, grad_weights, planes, points, *rest):
    w1, b1, w2, b2 = rest[2:6]
    return (
        planes.new_empty(planes.shape, dtype=accumulation_dtype(planes.dtype)),
        points.new_empty(points.shape),
        w1.new_empty(w1.shape),
        b1.new_empty(b1.shape),
        w2.new_empty(w2.shape),
        b2.new_empty(b2.shape),
    )


# The public op's `deterministic` reaches the backward through the autograd context: it is read
# in setup_context, which runs inside the forward call (eagerly, or while torch.compile traces).
_state = threading.local()


@contextlib.contextmanager
def _deterministic_backward(enabled: bool) -> Iterator[None]:
    previous = getattr(_state, "deterministic", False)
    _state.deterministic = enabled
    try:
        yield
    finally:
        _state.deterministic = previous


def _setup_context(ctx, inputs, output):
    planes, points, depths, proj, w1, b1, w2, b2, noise = inputs[:9]
    ctx.save_for_backward(planes, points, depths, proj, w1, b1, w2, b2, noise, *output)
    ctx.flags = tuple(inputs[9:])
    ctx.deterministic = bool(
        getattr(_state, "deterministic", False) or torch.are_deterministic_algorithms_enabled()
    )


def _make_autograd(backward_op):
    def backward(ctx, grad_features, grad_depth_raw, grad_weights):
        saved = ctx.saved_tensors
        planes, points = saved[0], saved[1]
        features, depth_raw, weights = saved[9:]
        grads = [
            torch.zeros_like(out) if grad is None else grad.contiguous()
            for grad, out in zip(
                (grad_features, grad_depth_raw, grad_weights),
                (features, depth_raw, weights),
                strict=True,
            )
        ]
        grad_planes, grad_points, grad_w1, grad_b1, grad_w2, grad_b2 = backward_op(
            *grads, *saved, *ctx.flags, ctx.deterministic
        )
        return (
            grad_planes.to(planes.dtype),
            grad_points.to(points.dtype),
            None,  # depths: sample positions come from linspace / importance sampling
            None,  # proj
            grad_w1,
            grad_b1,
            grad_w2,
            grad_b2,
            None,  # noise
            *([None] * 7),  # the flags
        )

    return backward


_REGISTRATION = dict(
    fake_forward=_fake_forward,
    fake_backward=_fake_backward,
    setup_context=_setup_context,
    make_backward=_make_autograd,
)
register_pair("render_rays_triton_forward", "render_rays_triton_backward", **_REGISTRATION)
_NATIVE_REGISTERED = register_native_pair(
    "render_rays_forward", "render_rays_backward", **_REGISTRATION
)


# --------------------------------------------------------------------------------------------
# The public op
# --------------------------------------------------------------------------------------------

DecoderWeights = Sequence[torch.Tensor]


def _color_activation(decoder: nn.Module | DecoderWeights, color_activation: str | None) -> str:
    """The colour activation to render with: ``color_activation``, or when None the decoder's
    ``activation`` attribute (``"sigmoid"`` for an ``OSGDecoder`` without one, and for a
    tuple of weights). An explicit choice that contradicts the decoder's is an error."""
    declared = None
    if isinstance(decoder, nn.Module):
        declared = getattr(decoder, "activation", "sigmoid")
        if declared not in COLOR_ACTIVATIONS:
            raise ValueError(
                f"decoder's activation must be one of {COLOR_ACTIVATIONS}, got {declared!r} "
                f"(render such a decoder with the unfused ops)"
            )
    if color_activation is None:
        return declared if declared is not None else "sigmoid"
    if not isinstance(color_activation, str):
        raise TypeError(
            f"color_activation must be a str or None, got {type(color_activation).__name__}"
        )
    v.check_choice("color_activation", color_activation, COLOR_ACTIVATIONS)
    if declared is not None and declared != color_activation:
        raise ValueError(
            f"color_activation={color_activation!r} contradicts the decoder's activation "
            f"{declared!r} (leave color_activation=None to use the decoder's)"
        )
    return color_activation


def _decoder_weights(decoder: nn.Module | DecoderWeights) -> tuple[torch.Tensor, ...]:
    if isinstance(decoder, nn.Module):
        net = getattr(decoder, "net", None)
        if not (
            isinstance(net, nn.Sequential) and len(net) == 3 and hasattr(net[0], "weight_gain")
        ):
            raise TypeError(
                "decoder must be an OSGDecoder (FullyConnected, Softplus, FullyConnected) or a "
                f"(w1, b1, w2, b2) tuple of effective weights, got {type(decoder).__name__}"
            )
        if net[0].bias is None or net[2].bias is None:
            raise ValueError("decoder's FullyConnected layers must have biases")
        return decoder_effective_weights(decoder)
    if isinstance(decoder, torch.Tensor) or not isinstance(decoder, (tuple, list)):
        raise TypeError(
            "decoder must be an OSGDecoder or a (w1, b1, w2, b2) tuple of effective weights, "
            f"got {type(decoder).__name__}"
        )
    if len(decoder) != 4:
        raise ValueError(f"decoder must be a (w1, b1, w2, b2) tuple, got {len(decoder)} items")
    for name, tensor in zip(("w1", "b1", "w2", "b2"), decoder, strict=True):
        v.check_tensor(f"decoder {name}", tensor)
        v.check_float(f"decoder {name}", tensor)
    return tuple(decoder)


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    # eager only: reading the answer back is a device sync (and a graph break when compiling)
    if torch.compiler.is_compiling() or tensor.numel() == 0:
        return
    if not bool(torch.isfinite(tensor.detach().sum())):
        bad = int((~torch.isfinite(tensor.detach())).sum())
        if bad:
            raise ValueError(f"{name} must be finite (no NaN or inf), got {bad} such elements")


def _validate(planes, points, depths, weights, box_warp, crop, white_back, scale_rgb):
    v.check_tensor("planes", planes)
    v.check_tensor("points", points)
    v.check_tensor("depths", depths)
    v.check_rank("planes", planes, (5, 6), "(B, P, C, H, W) or (B, P, C, D, H, W)")
    v.check_rank("points", points, (4,), "(B, R, S, 3)")
    v.check_rank("depths", depths, (4,), "(B, R, S, 1)")
    if points.shape[-1] != 3:
        raise ValueError(f"points must have shape (B, R, S, 3), got {tuple(points.shape)}")
    expected = tuple(points.shape[:3]) + (1,)
    if tuple(depths.shape) != expected:
        raise ValueError(
            f"depths must have shape (B, R, S, 1) = {expected} to match points "
            f"{tuple(points.shape)}, got {tuple(depths.shape)}"
        )
    if points.shape[2] < 2:
        raise ValueError(
            f"points must hold at least 2 samples per ray (S >= 2), got {tuple(points.shape)}"
        )
    if planes.shape[0] != points.shape[0]:
        raise ValueError(
            f"planes and points must have the same batch size, got planes "
            f"{tuple(planes.shape)} (B={planes.shape[0]}) and points {tuple(points.shape)} "
            f"(B={points.shape[0]})"
        )
    if any(size == 0 for size in planes.shape[1:]):
        raise ValueError(
            f"planes must have non-empty plane, channel and spatial dimensions, "
            f"got {tuple(planes.shape)}"
        )
    v.check_float("planes", planes)
    v.check_float("points", points)
    v.check_float("depths", depths)
    v.check_same_device(("planes", "points"), planes, points)
    v.check_same_device(("planes", "depths"), planes, depths)
    v.check_positive_number("box_warp", box_warp)
    v.check_choice("weights", weights, WEIGHTS_MODES)
    if isinstance(crop, bool) or not isinstance(crop, (int, float)):
        raise TypeError(f"crop must be a number, got {type(crop).__name__}")
    if not (0 <= crop < box_warp / 2):
        raise ValueError(f"crop must be in [0, box_warp / 2) = [0, {box_warp / 2}), got {crop}")
    _check_flag("white_back", white_back)
    _check_flag("scale_rgb", scale_rgb)


def _validate_decoder(w1, b1, w2, b2, channels: int, device: torch.device) -> None:
    if w1.dim() != 2 or w1.shape[1] != channels:
        raise ValueError(
            f"decoder w1 must have shape (hidden, C) with C = {channels} plane channels, "
            f"got {tuple(w1.shape)}"
        )
    hidden = w1.shape[0]
    if tuple(b1.shape) != (hidden,):
        raise ValueError(f"decoder b1 must have shape ({hidden},), got {tuple(b1.shape)}")
    if w2.dim() != 2 or w2.shape[1] != hidden or w2.shape[0] < 2:
        raise ValueError(
            f"decoder w2 must have shape (1 + C_out, {hidden}) with C_out >= 1, "
            f"got {tuple(w2.shape)}"
        )
    if tuple(b2.shape) != (w2.shape[0],):
        raise ValueError(f"decoder b2 must have shape ({w2.shape[0]},), got {tuple(b2.shape)}")
    for name, tensor in zip(("w1", "b1", "w2", "b2"), (w1, b1, w2, b2), strict=True):
        if tensor.device != device:
            raise ValueError(
                f"decoder {name} must be on the planes' device {device}, got {tensor.device}"
            )


def _noise(density_noise, generator, points: torch.Tensor, dtype: torch.dtype):
    """The additive raw-density noise ``(B, R, S)`` in ``dtype``, or None."""
    shape = tuple(points.shape[:3])
    if isinstance(density_noise, torch.Tensor):
        v.check_float("density_noise", density_noise)
        if tuple(density_noise.shape) not in (shape, shape + (1,)):
            raise ValueError(
                f"density_noise must be a number or a tensor of shape (B, R, S, 1) = "
                f"{shape + (1,)}, got {tuple(density_noise.shape)}"
            )
        if density_noise.device != points.device:
            raise ValueError(
                f"density_noise must be on the points' device {points.device}, "
                f"got {density_noise.device}"
            )
        return density_noise.detach().reshape(shape).to(dtype)
    if isinstance(density_noise, bool) or not isinstance(density_noise, (int, float)):
        raise TypeError(
            f"density_noise must be a number or a tensor, got {type(density_noise).__name__}"
        )
    if not density_noise >= 0:
        raise ValueError(f"density_noise must be >= 0, got {density_noise}")
    if density_noise == 0:
        return None
    draw = torch.randn(shape + (1,), generator=generator, device=points.device, dtype=dtype)
    return (draw * density_noise).reshape(shape)


def render_rays(
    planes: torch.Tensor,
    points: torch.Tensor,
    depths: torch.Tensor,
    decoder: nn.Module | DecoderWeights,
    *,
    plane_axes: str | torch.Tensor = "eg3d",
    box_warp: float = 1.0,
    white_back: bool = False,
    scale_rgb: bool = True,
    color_activation: str | None = None,
    density_noise: float | torch.Tensor = 0.0,
    crop: float = 0.0,
    weights: str = "sum",
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render S samples per ray: tri-plane sampling, OSG decoding and ``MipRayMarcher2``, fused.

    Args:
        planes: ``(B, P, C, H, W)`` tri-plane or ``(B, P, C, D, H, W)`` tri-grid; float32,
            bfloat16, float16 (float64 on the CPU).
        points: ``(B, R, S, 3)`` sample points, already deformed where the model deforms them
            (3DPortraitGAN's pose deformation); computed in float32 (float64 with float64
            planes). Gradients flow to them.
        depths: ``(B, R, S, 1)`` their depths along the rays, ascending (no gradient).
        decoder: an ``OSGDecoder`` (its parameters receive gradients) or a tuple
            ``(w1 (Hd, C), b1 (Hd,), w2 (1 + C_out, Hd), b2 (1 + C_out,))`` of effective
            weights (:func:`~portrait_engine.ops.reference.decoder_effective_weights`).
        plane_axes, box_warp: as :func:`~portrait_engine.ops.triplane_sample`.
        white_back, scale_rgb: as :func:`~portrait_engine.ops.ray_march`.
        color_activation: the activation of the decoder's colour outputs: ``"sigmoid"``
            (EG3D's ``sigmoid(x)·1.002 − 0.001``), ``"none"`` (the raw outputs:
            3DPortraitGAN's published decoder) or ``"lrelu"`` (PanoHead's
            ``leaky_relu(x, 0.2)·√2``). ``None`` (default): the decoder module's
            ``activation`` attribute (``PortraitDecoder``; an ``OSGDecoder`` has none and is
            ``"sigmoid"``), ``"sigmoid"`` for a tuple of weights. Naming one that contradicts
            the decoder module's raises ``ValueError``.
        density_noise: a standard deviation: ``N(0, 1)·density_noise`` drawn from
            ``generator`` with shape ``(B, R, S, 1)`` (one ``torch.randn`` call, in the points'
            compute dtype) is added to the raw densities; or a tensor ``(B, R, S, 1)`` of
            ready-made additive noise (how the renderer keeps the unfused path's draws).
        crop: PanoHead's ``triplane_crop``: the raw density is -1e3 where a point has
            ``|x| > box_warp/2 - crop`` or ``|z| > box_warp/2 - crop`` (0 disables it).
        weights: ``"sum"``: the third output is ``Σ w (B, R, 1)``; ``"full"``: the
            per-interval weights ``(B, R, S - 1, 1)`` (what ``sample_importance`` needs).
        deterministic: bit-identical plane gradients run to run (the native CPU kernel always
            is; on CUDA a slower fixed-point reduction). ``torch.use_deterministic_algorithms``
            turns it on too.
        generator: the random generator of the density noise.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``; ``None`` uses the
            backend in force.

    Returns:
        ``(features (B, R, C_out), depth (B, R, 1), weights)``, float32 (float64 for float64
        planes): the composited colour features, the depth ``Σ w z / Σ w`` (NaN -> +inf, then
        clamped to ``[min(depths), max(depths)]``, as ``ray_march``), and the weights.
    """
    _validate(planes, points, depths, weights, box_warp, crop, white_back, scale_rgb)
    _check_flag("deterministic", deterministic)
    activation = _color_activation(decoder, color_activation)
    w1, b1, w2, b2 = _decoder_weights(decoder)
    _validate_decoder(w1, b1, w2, b2, planes.shape[2], planes.device)
    _check_finite("points", points)
    _check_finite("depths", depths)
    compute = accumulation_dtype(planes.dtype)
    noise = _noise(density_noise, generator, points, compute)
    proj = _projection(plane_axes, box_warp, planes)
    name = _backend.resolve(backend, planes.device, "render_rays_forward")
    if name == "torch":
        return render_rays_reference(
            planes,
            points,
            depths,
            w1,
            b1,
            w2,
            b2,
            box_warp=box_warp,
            plane_axes=plane_axes,
            white_back=white_back,
            scale_rgb=scale_rgb,
            color_activation=activation,
            noise=None if noise is None else noise.unsqueeze(-1),
            crop=float(crop),
            weights_mode=weights,
        )

    trilinear = planes.dim() == 6
    grid = planes if trilinear else planes.unsqueeze(3)
    channels_last = planes_to_channels_last(grid)
    depths_flat = depths.detach().to(compute).reshape(depths.shape[:3]).contiguous()
    if noise is None:
        noise = torch.empty(0, dtype=compute, device=planes.device)
    full = weights == "full"
    op = (
        torch.ops.portrait_engine.render_rays_triton_forward
        if name == "triton"
        else torch.ops.portrait_engine.render_rays_forward
    )
    with _deterministic_backward(deterministic):
        features, depth_raw, out_weights = eager(op)(
            channels_last,
            points.to(compute).contiguous(),
            depths_flat,
            proj,
            *(t.to(compute).contiguous() for t in (w1, b1, w2, b2)),
            noise.contiguous(),
            trilinear,
            crop > 0,
            float(box_warp / 2 - crop),
            white_back,
            scale_rgb,
            COLOR_ACTIVATIONS.index(activation),
            full,
        )
    depth = torch.nan_to_num(depth_raw, float("inf"))
    if depths.numel() > 0:
        low, high = torch.aminmax(depths_flat)
        depth = torch.clamp(depth, low, high)
    if full:
        out_weights = out_weights.unsqueeze(-1)
    return features, depth, out_weights


__all__ = ["render_rays"]
