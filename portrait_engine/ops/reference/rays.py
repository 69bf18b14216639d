"""References of ray generation and compositing (EG3D ``RaySampler`` and ``MipRayMarcher2``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# EG3D's camera label: 16 numbers of the flattened 4x4 cam2world matrix (OpenCV convention),
# then 9 numbers of the flattened 3x3 intrinsics normalised by the image size.
CAMERA_LABEL_SIZE = 25

# MipRayMarcher2 adds this to every (1 - alpha) factor of the transmittance product.
TRANSMITTANCE_EPS = 1e-10


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def unpack_camera_label_reference(label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cam2world (B, 4, 4), intrinsics (B, 3, 3))`` of EG3D's ``(B, 25)`` camera labels."""
    return label[:, :16].reshape(-1, 4, 4), label[:, 16:25].reshape(-1, 3, 3)


def ray_sample_reference(
    cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera rays through the pixel centres of a ``resolution x resolution`` image (EG3D).

    ``cam2world`` ``(B, 4, 4)`` (OpenCV axes: x right, y down, z forward), ``intrinsics``
    ``(B, 3, 3)`` normalised by the image size (``fx, fy, cx, cy`` in image widths, skew
    ``sk = K[0, 1]``). Ray ``m = i * resolution + j`` (row i, column j) goes through the
    normalised pixel centre ``u = (j + 0.5) / resolution``, ``v = (i + 0.5) / resolution``,
    lifted to the camera plane z = 1 by the inverse of the skewed pinhole model:

        x = (u - cx + cy·sk/fy - sk·v/fy) / fx,   y = (v - cy) / fy,

    its direction is ``normalize(cam2world @ (x, y, 1, 1) - t)`` (``t = cam2world[:3, 3]``,
    normalised as ``F.normalize``: divided by ``max(|d|, 1e-12)``), its origin ``t``.
    Returns ``(origins, directions)``, each ``(B, resolution², 3)``. Half-precision inputs are
    computed in float32 and the results cast back. Differentiable in both inputs.
    """
    dtype = cam2world.dtype
    compute = _compute_dtype(dtype)
    cam2world = cam2world.to(compute)
    intrinsics = intrinsics.to(compute)
    batch, rays = cam2world.shape[0], resolution * resolution
    fx = intrinsics[:, 0, 0, None]
    fy = intrinsics[:, 1, 1, None]
    cx = intrinsics[:, 0, 2, None]
    cy = intrinsics[:, 1, 2, None]
    sk = intrinsics[:, 0, 1, None]

    steps = torch.arange(resolution, dtype=compute, device=cam2world.device)
    centres = steps * (1.0 / resolution) + (0.5 / resolution)
    v, u = torch.meshgrid(centres, centres, indexing="ij")  # v: row, u: column
    u = u.reshape(1, rays).expand(batch, rays)
    v = v.reshape(1, rays).expand(batch, rays)

    x_lift = (u - cx + cy * sk / fy - sk * v / fy) / fx
    y_lift = (v - cy) / fy
    ones = torch.ones_like(x_lift)
    camera_points = torch.stack((x_lift, y_lift, ones, ones), dim=-1)  # (B, M, 4)
    world_points = torch.bmm(cam2world, camera_points.transpose(1, 2)).transpose(1, 2)[..., :3]
    origin = cam2world[:, :3, 3]
    directions = F.normalize(world_points - origin[:, None, :], dim=2)
    origins = origin[:, None, :].expand(batch, rays, 3)
    return origins.to(dtype), directions.to(dtype)


def ray_march_reference(
    colors: torch.Tensor,
    densities: torch.Tensor,
    depths: torch.Tensor,
    *,
    white_back: bool = False,
    scale_rgb: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volume compositing of S samples per ray, as EG3D's ``MipRayMarcher2``.

    ``colors`` ``(B, R, S, C)``, ``densities`` ``(B, R, S, 1)`` (raw, before activation),
    ``depths`` ``(B, R, S, 1)``. Over the S - 1 intervals between consecutive samples, with
    midpoint values ``c_i = (c[i] + c[i+1]) / 2`` (likewise σ̃ and z):

        δ_i = z[i+1] - z[i],   σ_i = softplus(σ̃_i - 1),   α_i = 1 - exp(-σ_i δ_i),
        T_i = ∏_{j<i} (1 - α_j + 1e-10),   w_i = α_i T_i,
        rgb = Σ w_i c_i (+ 1 - Σ w_i if white_back),   depth = Σ w_i z_i / Σ w_i,

    the depth's NaN (a ray with Σ w = 0) replaced by +inf (``torch.nan_to_num``: ±inf become the
    largest finite values) and the result clamped to ``[min(depths), max(depths)]`` over the
    whole tensor; then ``rgb * 2 - 1`` when ``scale_rgb`` (EG3D; 3DPortraitGAN uses the raw
    value). Returns ``(rgb (B, R, C), depth (B, R, 1), weights (B, R, S-1, 1))``.
    Half-precision inputs are computed in float32 and the results cast back.
    """
    dtype = colors.dtype
    compute = _compute_dtype(dtype)
    colors, densities, depths = (t.to(compute) for t in (colors, densities, depths))
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2

    sigma = F.softplus(densities_mid - 1)
    alpha = 1 - torch.exp(-(sigma * deltas))
    shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + TRANSMITTANCE_EPS], -2)
    weights = alpha * torch.cumprod(shifted, -2)[:, :, :-1]

    rgb = torch.sum(weights * colors_mid, -2)
    weight_total = weights.sum(2)
    depth = torch.sum(weights * depths_mid, -2) / weight_total
    depth = torch.nan_to_num(depth, float("inf"))
    if depths.numel() > 0:
        depth = torch.clamp(depth, torch.min(depths), torch.max(depths))
    if white_back:
        rgb = rgb + 1 - weight_total
    if scale_rgb:
        rgb = rgb * 2 - 1
    return rgb.to(dtype), depth.to(dtype), weights.to(dtype)
