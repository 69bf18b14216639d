"""A small z-buffer rasteriser of triangle meshes on the CPU (torch), for the synthetic data.

It renders what the synthetic portraits need and no more: one camera, one closed mesh,
pixel centres as sample points, perspective-correct barycentrics, nearest surface wins.

Every front-facing triangle (its outward normal towards the camera) is projected to the
image; the pixel centres inside its screen-space bounding box are enumerated in one flat
batch (``repeat_interleave`` over the boxes' areas, so no per-triangle Python loop), tested
with edge functions (inclusive: a centre on a shared edge belongs to both triangles, so there
are no cracks) and depth-tested with a scatter-min of the camera-space depth. The winner of a
pixel is the nearest candidate; ties (the same depth to the last bit) go to the highest
candidate index, so the result does not depend on scatter order.

Barycentrics are perspective-correct: the screen-space weights ``λ_i`` become
``(λ_i / z_i) / Σ_k λ_k / z_k``, which interpolate any vertex attribute linearly on the 3-D
triangle; the depth is ``1 / Σ λ_i / z_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Fragments:
    """Per-pixel result of :func:`rasterize` at resolution ``(H, W)``.

    ``face`` ``(H, W)`` int64, the visible face or -1; ``bary`` ``(H, W, 3)`` its
    perspective-correct barycentrics (zeros where empty); ``depth`` ``(H, W)`` camera-space
    z (inf where empty).
    """

    face: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def covered(self) -> torch.Tensor:
        return self.face >= 0

    def interpolate(self, values: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Interpolate per-vertex ``values`` ``(V, C)`` to the pixels: ``(H, W, C)``, zeros
        where no face is visible."""
        face = self.face.clamp_min(0)
        corner_values = values[faces[face]]  # (H, W, 3, C)
        out = (self.bary.unsqueeze(-1) * corner_values).sum(-2)
        return torch.where(self.covered.unsqueeze(-1), out, torch.zeros_like(out))


def _edge(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Twice the signed area of the triangle ``(a, b, p)`` (2-D points ``(..., 2)``)."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (
        p[..., 0] - a[..., 0]
    )


def rasterize(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    intrinsics: torch.Tensor,
    resolution: int,
    near: float = 1e-3,
) -> Fragments:
    """Rasterise a mesh seen by a pinhole camera.

    Args:
        vertices: ``(V, 3)`` in the camera frame (OpenCV: x right, y down, z forward).
        faces: ``(F, 3)`` int64 vertex indices, wound so the cross product
            ``(v1 - v0) x (v2 - v0)`` points out of the surface.
        intrinsics: ``(3, 3)`` normalised by the image size (EG3D's convention: focal in image
            widths, principal point at 0.5).
        resolution: the square image's side in pixels.
        near: faces with a vertex nearer than this are dropped.
    """
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {tuple(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {tuple(faces.shape)}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    dtype, n = vertices.dtype, resolution
    corners = vertices[faces]  # (F, 3, 3)
    normal = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    # Front-facing: the outward normal points back towards the camera at the origin.
    keep = ((normal * corners.mean(1)).sum(-1) < 0) & (corners[..., 2] > near).all(-1)
    face_ids = torch.nonzero(keep).squeeze(1)
    corners = corners[face_ids]
    z = corners[..., 2]  # (F', 3)
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    screen = torch.stack(
        [
            (fx * corners[..., 0] / z + cx) * n + intrinsics[0, 1] * corners[..., 1] / z * n,
            (fy * corners[..., 1] / z + cy) * n,
        ],
        dim=-1,
    )  # (F', 3, 2) in pixels; pixel i has its centre at i + 0.5
    area = _edge(screen[:, 0], screen[:, 1], screen[:, 2])
    valid = area.abs() > 1e-12
    face_ids, screen, z, area = face_ids[valid], screen[valid], z[valid], area[valid]

    low = torch.ceil(screen.amin(1) - 0.5).clamp(0, n - 1).long()  # (F', 2)
    high = torch.floor(screen.amax(1) - 0.5).clamp(-1, n - 1).long()
    extent = (high - low + 1).clamp_min(0)
    counts = extent[:, 0] * extent[:, 1]
    which = torch.repeat_interleave(torch.arange(len(counts)), counts)  # candidate -> face
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(int(counts.sum())) - starts[which]
    width = extent[which, 0]
    px = low[which, 0] + local % width.clamp_min(1)
    py = low[which, 1] + local // width.clamp_min(1)
    centre = torch.stack([px, py], -1).to(dtype) + 0.5

    tri = screen[which]
    lam = torch.stack(
        [
            _edge(tri[:, 1], tri[:, 2], centre),
            _edge(tri[:, 2], tri[:, 0], centre),
            _edge(tri[:, 0], tri[:, 1], centre),
        ],
        dim=-1,
    ) / area[which].unsqueeze(-1)
    inside = (lam >= 0).all(-1)
    which, px, py, lam = which[inside], px[inside], py[inside], lam[inside]
    weighted = lam / z[which]
    inverse_depth = weighted.sum(-1)
    depth = 1.0 / inverse_depth
    pixel = py * n + px

    zbuffer = torch.full((n * n,), float("inf"), dtype=dtype)
    zbuffer = zbuffer.scatter_reduce(0, pixel, depth, reduce="amin")
    candidate = torch.arange(len(pixel))
    nearest = depth <= zbuffer[pixel]
    winner = torch.full((n * n,), -1, dtype=torch.long)
    winner = winner.scatter_reduce(0, pixel[nearest], candidate[nearest], reduce="amax")

    covered = winner >= 0
    win = winner[covered]
    face = torch.full((n * n,), -1, dtype=torch.long)
    face[covered] = face_ids[which[win]]
    bary = torch.zeros(n * n, 3, dtype=dtype)
    bary[covered] = weighted[win] / inverse_depth[win].unsqueeze(-1)
    return Fragments(face.view(n, n), bary.view(n, n, 3), zbuffer.view(n, n))


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals ``(V, 3)`` of an outward-wound mesh."""
    corners = vertices[faces]
    face_normal = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals.index_add_(0, faces[:, k], face_normal)
    return normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)
