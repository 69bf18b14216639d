"""Reference of tri-plane / tri-grid sampling (EG3D ``sample_from_planes``, PanoHead tri-grid)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# EG3D's released plane axes (``generate_planes``): the planes are sampled at (x, y), (x, z)
# and (z, x) -- the third is a known quirk of the released code, kept for weight compatibility.
EG3D_PLANE_AXES = (
    ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
    ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
)
# PanoHead's (and 3DPortraitGAN's) tri-grid axes: planes at (x, y | z), (x, z | y), (y, z | x),
# the coordinate after the bar indexing the grid's depth D.
PANOHEAD_PLANE_AXES = (
    ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
    ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)),
)
NAMED_PLANE_AXES = {"eg3d": EG3D_PLANE_AXES, "panohead": PANOHEAD_PLANE_AXES}


def plane_axes_tensor(
    plane_axes: str | torch.Tensor, device: torch.device | None = None
) -> torch.Tensor:
    """The ``(3, 3, 3)`` axis matrices of a named convention, or ``plane_axes`` itself."""
    if isinstance(plane_axes, str):
        return torch.tensor(NAMED_PLANE_AXES[plane_axes], dtype=torch.float32, device=device)
    return plane_axes


def project_onto_planes(plane_axes: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """Plane coordinates of points: ``coordinates @ inverse(plane_axes[p])`` for each plane.

    ``plane_axes`` ``(P, 3, 3)``, ``coordinates`` ``(B, N, 3)`` -> ``(B, P, N, 3)``; the first
    two columns index a plane's (W, H), the third a tri-grid's depth D.
    """
    inverse = torch.linalg.inv(plane_axes.to(coordinates.dtype))
    return torch.einsum("bnj,pjk->bpnk", coordinates, inverse)


def triplane_sample_reference(
    planes: torch.Tensor,
    points: torch.Tensor,
    *,
    box_warp: float = 1.0,
    plane_axes: str | torch.Tensor = "eg3d",
    reduce: str = "mean",
) -> torch.Tensor:
    """Sample tri-plane / tri-grid features at 3-D points, as EG3D's ``sample_from_planes``.

    ``planes`` ``(B, P, C, H, W)`` (tri-plane, bilinear) or ``(B, P, C, D, H, W)`` (tri-grid,
    trilinear, PanoHead's layout); ``points`` ``(B, N, 3)`` world coordinates. The points are
    scaled by ``2 / box_warp``, projected onto each plane by the inverse of its axis matrix,
    and sampled with ``grid_sample(mode="bilinear", padding_mode="zeros",
    align_corners=False)``. Returns ``(B, N, C)`` (mean over planes) for ``reduce="mean"`` or
    ``(B, P, N, C)`` for ``reduce="none"``. Half-precision inputs are computed in float32 and
    the result cast back.
    """
    dtype = planes.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    planes = planes.to(compute)
    points = points.to(compute)
    axes = plane_axes_tensor(plane_axes, planes.device).to(compute)
    trigrid = planes.dim() == 6
    batch, n_planes, channels = planes.shape[:3]
    n_points = points.shape[1]

    grid = project_onto_planes(axes, (2.0 / box_warp) * points)  # (B, P, N, 3)
    grid = grid.reshape(batch * n_planes, 1, n_points, 3)
    if trigrid:
        flat = planes.reshape(batch * n_planes, channels, *planes.shape[3:])
        sampled = F.grid_sample(
            flat, grid.unsqueeze(1), mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (B*P, C, 1, 1, N)
    else:
        flat = planes.reshape(batch * n_planes, channels, *planes.shape[3:])
        sampled = F.grid_sample(
            flat, grid[..., :2], mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (B*P, C, 1, N)
    features = sampled.reshape(batch, n_planes, channels, n_points).transpose(-1, -2)
    if reduce == "mean":
        features = features.mean(1)
    return features.to(dtype)
