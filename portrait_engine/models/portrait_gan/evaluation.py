"""Evaluation metrics of 3DPortraitGAN: multi-view depth consistency and FID.

**Multi-view consistency of rendered depth** [ours, after the geometry-consistency checks of
the 3D-aware GAN literature]: one latent is rendered from several cameras (the mapping is
conditioned once, on a fixed camera, so only the rendering camera changes). Each view's
depth map (EG3D's depth: distance along the unit ray, ``ray_march``'s ``Σ w t / Σ w``) is
unprojected through the camera's rays (:func:`portrait_engine.ops.ray_sample`) where the
view sees the surface (accumulated weight > ``threshold``), the 3-D points are projected into
every other view, and the other view's depth there (bilinear, only where all four
neighbouring pixels see the surface too) is compared with the point's distance from that
camera. The score is the mean absolute difference divided by the box size (``box_warp``):
0 for a generator whose geometry does not depend on the camera. Points whose surface (normal
from their own view's depth map) faces away from the other camera are not checked there:
that removes self-occlusion of convex shapes; occlusion by another part is not modelled and
counts as disagreement, so compare scores measured with the same cameras.

**FID** (Heusel et al. 2017) with a user-supplied feature extractor: a TorchScript file
(``torch.jit.save``) or a ``torch.export`` program (``.pt2``, ``torch.export.save``) that
maps images ``(N, 3, H, W)`` float32 in **[0, 255]** (RGB, the data's resolution; resize
inside the extractor if it needs another size — the convention of StyleGAN's metric
detector) to features ``(N, D)``. Nothing is ever downloaded. The Fréchet distance
``|μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^{1/2}`` is computed in float64 without scipy:
``tr (Σ₁ Σ₂)^{1/2} = Σ √λ`` over the eigenvalues ``λ`` of the symmetric positive
semi-definite ``Σ₁^{1/2} Σ₂ Σ₁^{1/2}`` (which has the eigenvalues of ``Σ₁ Σ₂``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from portrait_engine.ops import ray_sample, unpack_camera_label

# A depth renderer: cameras (V, 25) -> (depth (V, 1, H, W), weight (V, 1, H, W)).
DepthRenderer = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# ---- multi-view depth consistency -------------------------------------------------------------


def unproject_depth(depth: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """3-D points ``(V, H·W, 3)`` of depth maps ``(V, 1, H, W)`` (distance along the unit
    ray through each pixel centre) seen by cameras ``(V, 25)`` (EG3D labels); square maps."""
    if depth.ndim != 4 or depth.shape[1] != 1 or depth.shape[2] != depth.shape[3]:
        raise ValueError(f"depth must have shape (V, 1, R, R), got {tuple(depth.shape)}")
    cam2world, intrinsics = unpack_camera_label(camera.to(depth.dtype))
    origins, directions = ray_sample(
        cam2world.contiguous(), intrinsics.contiguous(), depth.shape[-1], backend="torch"
    )
    return origins + depth.reshape(depth.shape[0], -1, 1) * directions


def project_points(points: torch.Tensor, camera: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Project world points ``(V, P, 3)`` into cameras ``(V, 25)``.

    Returns ``uv`` ``(V, P, 2)`` in normalised image coordinates (``[0, 1]``, pixel centre
    ``(j + 0.5) / R``), the camera-frame depth ``z`` ``(V, P)`` and the distance from the
    camera centre ``(V, P)`` (EG3D's depth along the unit ray).
    """
    cam2world, intrinsics = unpack_camera_label(camera.to(points.dtype))
    centre = cam2world[:, :3, 3]
    # the inverse, not the transpose: labels rounded to float32 are not exactly orthonormal
    world2cam = torch.linalg.inv(cam2world)
    local = torch.einsum("vjk,vpk->vpj", world2cam[:, :3, :3], points) + world2cam[:, None, :3, 3]
    z = local[..., 2]
    x, y = local[..., 0] / z, local[..., 1] / z
    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
    skew, cx, cy = intrinsics[:, 0, 1, None], intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None]
    uv = torch.stack([fx * x + skew * y + cx, fy * y + cy], dim=-1)
    distance = (points - centre[:, None]).norm(dim=-1)
    return uv, z, distance


@dataclass
class DepthConsistency:
    """Result of :func:`depth_consistency`.

    ``error`` is the mean of ``|depth_j(π_j(p)) − |p − o_j|| / box_size`` over every point
    ``p`` seen in a view ``i`` and checked in a view ``j ≠ i``; ``pair_error`` ``(V, V)`` the
    same per ordered pair (NaN where no point was checked); ``pair_points`` ``(V, V)`` how
    many points each pair checked; ``coverage`` the fraction of surface points that some
    other view could check.
    """

    error: float
    pair_error: np.ndarray
    pair_points: np.ndarray
    coverage: float
    extra: dict = field(default_factory=dict)

    def by_angle(self, yaws: Sequence[float]) -> dict[float, float]:
        """Mean error per absolute yaw difference (degrees, rounded) between the views."""
        sums: dict[float, list[float]] = {}
        for i, a in enumerate(yaws):
            for j, b in enumerate(yaws):
                count = self.pair_points[i, j]
                if i == j or count == 0:
                    continue
                gap = abs((math.degrees(a - b) + 180.0) % 360.0 - 180.0)
                entry = sums.setdefault(round(gap, 1), [0.0, 0.0])
                entry[0] += float(self.pair_error[i, j]) * count
                entry[1] += count
        return {gap: total / count for gap, (total, count) in sorted(sums.items())}


def depth_consistency(
    depth: torch.Tensor,
    weight: torch.Tensor,
    camera: torch.Tensor,
    *,
    box_size: float,
    threshold: float = 0.5,
    min_cosine: float = 0.25,
) -> DepthConsistency:
    """Multi-view consistency of the depth maps of **one** scene seen by ``V`` cameras.

    A point of view ``i`` is checked in view ``j`` only where its surface, whose normal comes
    from view ``i``'s own depth map (cross product of the neighbouring points), faces camera
    ``j`` at more than ``arccos(min_cosine)`` from grazing: back-facing points are hidden by
    the surface itself (the whole occlusion of a convex shape); occlusion by another part
    (a nose hiding a cheek) is not modelled and counts as disagreement.

    Args:
        depth: ``(V, 1, R, R)`` depth along the unit rays (EG3D's ``image_depth``).
        weight: ``(V, 1, R, R)`` accumulated opacity (or the mask); a pixel sees the surface
            where it exceeds ``threshold``.
        camera: ``(V, 25)`` EG3D camera labels of the views.
        box_size: the scene's box side (``box_warp``): errors are divided by it.
    """
    if depth.shape != weight.shape or depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(
            f"depth and weight must both have shape (V, 1, R, R), got {tuple(depth.shape)} "
            f"and {tuple(weight.shape)}"
        )
    views = depth.shape[0]
    if camera.shape != (views, 25):
        raise ValueError(f"camera must have shape ({views}, 25), got {tuple(camera.shape)}")
    if views < 2:
        raise ValueError(f"need at least 2 views, got {views}")
    if box_size <= 0:
        raise ValueError(f"box_size must be > 0, got {box_size}")
    depth = depth.detach().to(torch.float64)
    seen = (weight.detach() > threshold).to(torch.float64)
    camera = camera.detach().to(torch.float64)
    points = unproject_depth(depth, camera)  # (V, R², 3)
    normals, has_normal = _depth_normals(points, seen, camera)
    visible = (seen.reshape(views, -1) > 0) & has_normal
    pair_error = np.full((views, views), np.nan)
    pair_points = np.zeros((views, views), dtype=np.int64)
    checked = torch.zeros_like(visible)
    total_error, total_count = 0.0, 0
    for i in range(views):
        p = points[i][visible[i]]  # (P, 3)
        n = normals[i][visible[i]]
        if len(p) == 0:
            continue
        for j in range(views):
            if j == i:
                continue
            uv, z, distance = project_points(p[None], camera[j : j + 1])
            # a surface facing away from camera j (or grazing it) is hidden from it
            towards = (camera[j, [3, 7, 11]] - p) / distance[0, :, None]
            facing = (n * towards).sum(-1) > min_cosine
            grid = (uv * 2 - 1).view(1, 1, -1, 2)  # align_corners=False: pixel centres
            sampled = F.grid_sample(depth[j : j + 1], grid, align_corners=False)
            # only where all four neighbours see the surface (validity interpolates to 1)
            valid = F.grid_sample(seen[j : j + 1], grid, align_corners=False)
            ok = (valid.view(-1) > 1 - 1e-6) & (z[0] > 0) & facing
            ok &= ((uv[0] >= 0) & (uv[0] <= 1)).all(-1)
            count = int(ok.sum())
            pair_points[i, j] = count
            if count == 0:
                continue
            errors = (sampled.view(-1)[ok] - distance[0][ok]).abs() / box_size
            pair_error[i, j] = float(errors.mean())
            total_error += float(errors.sum())
            total_count += count
            index = torch.nonzero(visible[i]).squeeze(1)[ok]
            checked[i, index] = True
    if total_count == 0:
        raise ValueError(
            "no surface point was seen by two views: the views do not overlap or the weights "
            f"never exceed threshold={threshold}"
        )
    coverage = float(checked.sum()) / max(int(visible.sum()), 1)
    return DepthConsistency(total_error / total_count, pair_error, pair_points, coverage)


def _depth_normals(
    points: torch.Tensor, seen: torch.Tensor, camera: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit normals ``(V, R², 3)`` of the surface of each depth map, facing its camera, and
    where they exist ``(V, R²)`` (the pixel and its four neighbours see the surface)."""
    views, r = seen.shape[0], seen.shape[-1]
    grid = points.view(views, r, r, 3)
    mask = seen.view(views, r, r) > 0
    normals = torch.zeros_like(grid)
    exists = torch.zeros_like(mask)
    along_x = grid[:, 1:-1, 2:] - grid[:, 1:-1, :-2]
    along_y = grid[:, 2:, 1:-1] - grid[:, :-2, 1:-1]
    inner = torch.linalg.cross(along_x, along_y)
    inner = inner / inner.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    to_camera = camera[:, None, None, [3, 7, 11]] - grid[:, 1:-1, 1:-1]
    flip = (inner * to_camera).sum(-1, keepdim=True) < 0
    normals[:, 1:-1, 1:-1] = torch.where(flip, -inner, inner)
    exists[:, 1:-1, 1:-1] = (
        mask[:, 1:-1, 1:-1] & mask[:, 1:-1, 2:] & mask[:, 1:-1, :-2] & mask[:, 2:, 1:-1]
    ) & mask[:, :-2, 1:-1]
    return normals.view(views, -1, 3), exists.view(views, -1)


def orbit_cameras(
    yaws: Sequence[float],
    pitch: float = 0.0,
    *,
    radius: float | None = None,
    focal: float | None = None,
    target: Sequence[float] | None = None,
) -> torch.Tensor:
    """``(V, 25)`` EG3D look-at camera labels at ``yaws`` (radians) and one ``pitch``, looking
    at ``target`` (3DPortraitGAN's look-at point by default)."""
    from portrait_engine.data.portrait.labels import (
        DEFAULT_FOCAL,
        DEFAULT_RADIUS,
        LOOKAT_POINT,
        camera_label,
        intrinsics_matrix,
        lookat_cam2world,
    )

    radius = DEFAULT_RADIUS if radius is None else radius
    target = LOOKAT_POINT if target is None else target
    k = intrinsics_matrix(DEFAULT_FOCAL if focal is None else focal)
    labels = [
        camera_label(lookat_cam2world(y, pitch, radius, target=tuple(target)), k) for y in yaws
    ]
    return torch.from_numpy(np.stack(labels)).to(torch.float32)


def generator_depth_renderer(
    generator,
    z: torch.Tensor,
    *,
    pose: torch.Tensor | None = None,
    conditioning_camera: torch.Tensor | None = None,
    truncation_psi: float = 1.0,
    resolution: int | None = None,
    seed: int = 0,
) -> DepthRenderer:
    """A :data:`DepthRenderer` of one latent ``z`` ``(1, z_dim)`` of a
    :class:`PortraitGenerator`: the mapping runs once (conditioned on
    ``conditioning_camera`` ``(1, 25)``, the frontal camera by default, and ``pose``
    ``(1, 6)``, zeros by default), then the tri-grid is rendered from each camera with the
    body at ``pose``. Depth and weight at the neural rendering resolution."""
    if z.ndim != 2 or z.shape[0] != 1:
        raise ValueError(f"z must have shape (1, z_dim), got {tuple(z.shape)}")
    device = z.device
    if conditioning_camera is None:
        conditioning_camera = orbit_cameras([0.0]).to(device)
    if pose is None:
        pose = torch.zeros(1, 6, device=device)
    with torch.no_grad():
        ws = generator.mapping(z, conditioning_camera, pose, truncation_psi=truncation_psi)
        planes = generator.planes(ws, noise_mode="const")

    def render(camera: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = camera.shape[0]
        rng = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            _, depth, weight = generator.render(
                planes.expand(views, *planes.shape[1:]),
                camera.to(device),
                pose.expand(views, -1),
                resolution=resolution,
                generator=rng,
            )
        return depth, weight

    return render


def multiview_depth_consistency(
    renderers: Iterable[DepthRenderer],
    camera: torch.Tensor,
    *,
    box_size: float,
    threshold: float = 0.5,
) -> DepthConsistency:
    """:func:`depth_consistency` averaged over several scenes (one renderer per latent),
    every scene seen by the same cameras ``(V, 25)``; points are pooled over the scenes."""
    results = []
    for render in renderers:
        depth, weight = render(camera)
        try:
            results.append(
                depth_consistency(depth, weight, camera, box_size=box_size, threshold=threshold)
            )
        except ValueError as err:
            if "no surface point" not in str(err):
                raise
    if not results:
        raise ValueError("no scene had a surface seen by two views")
    counts = np.stack([r.pair_points for r in results])  # (S, V, V)
    errors = np.stack([np.nan_to_num(r.pair_error) for r in results])
    total = counts.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pair_error = np.where(total > 0, (errors * counts).sum(0) / np.maximum(total, 1), np.nan)
    error = float((errors * counts).sum() / counts.sum())
    coverage = float(np.mean([r.coverage for r in results]))
    return DepthConsistency(error, pair_error, total, coverage, {"scenes": len(results)})


# ---- FID ---------------------------------------------------------------------------------------


class FeatureExtractorError(ValueError):
    """A feature-extractor file that is missing, unreadable, or maps images to the wrong
    shape."""


class FeatureExtractor:
    """A user's feature extractor loaded from a TorchScript (``.pt``/``.pth``/``.ts`` or any
    other name) or ``torch.export`` (``.pt2``) file; calling it maps images ``(N, 3, H, W)``
    float32 in [0, 255] to features ``(N, D)`` float64."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu") -> None:
        path = Path(path)
        if not path.is_file():
            raise FeatureExtractorError(
                f"feature extractor {path} does not exist: give a TorchScript file "
                "(torch.jit.save) or a torch.export program (.pt2) mapping images "
                "(N, 3, H, W) in [0, 255] to features (N, D); none is downloaded"
            )
        self.path, self.device = path, torch.device(device)
        try:
            if path.suffix == ".pt2":
                self.module = torch.export.load(str(path)).module()
                self.kind = "torch.export"
            else:
                with warnings.catch_warnings():  # TorchScript is deprecated, still supported
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self.module = torch.jit.load(str(path), map_location=self.device)
                self.module.eval()
                self.kind = "torchscript"
        except Exception as err:  # both loaders raise many types for a bad file
            raise FeatureExtractorError(
                f"feature extractor {path} could not be loaded as "
                f"{'a torch.export program' if path.suffix == '.pt2' else 'TorchScript'}: "
                f"{type(err).__name__}: {err}"
            ) from err
        if self.kind == "torch.export":
            self.module = self.module.to(self.device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
        try:
            with torch.no_grad():
                features = self.module(images.to(self.device, torch.float32))
        except Exception as err:
            raise FeatureExtractorError(
                f"feature extractor {self.path} failed on images {tuple(images.shape)}: "
                f"{type(err).__name__}: {err}"
            ) from err
        if isinstance(features, (tuple, list)):
            features = features[0]
        if (
            not isinstance(features, torch.Tensor)
            or features.ndim != 2
            or features.shape[0] != images.shape[0]
        ):
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else features
            raise FeatureExtractorError(
                f"feature extractor {self.path} must return features (N, D) for N = "
                f"{images.shape[0]} images, got {shape}"
            )
        return features.detach().to("cpu", torch.float64)


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of features ``(N, D)``, float64."""
    features = torch.as_tensor(features).to(torch.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must have shape (N >= 2, D), got {tuple(features.shape)}")
    mu = features.mean(0)
    centred = features - mu
    return mu, centred.T @ centred / (features.shape[0] - 1)


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigendecomposition)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """``|μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^{1/2}`` in float64 (no scipy)."""
    mu1, mu2 = (torch.as_tensor(m).to(torch.float64) for m in (mu1, mu2))
    sigma1, sigma2 = (torch.as_tensor(s).to(torch.float64) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu {tuple(mu1.shape)}, {tuple(mu2.shape)}, sigma "
            f"{tuple(sigma1.shape)}, {tuple(sigma2.shape)}"
        )
    root1 = _sqrtm_psd(sigma1)
    product = root1 @ sigma2 @ root1  # symmetric PSD, the eigenvalues of Σ₁ Σ₂
    eigenvalues = torch.linalg.eigvalsh((product + product.T) / 2).clamp_min(0)
    trace_sqrt = eigenvalues.sqrt().sum()
    value = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return float(value.clamp_min(0))


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets ``(N, D)`` and ``(M, D)``."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def extract_features(
    extractor: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[torch.Tensor]
) -> torch.Tensor:
    """Features ``(N, D)`` float64 of image batches ``(n, 3, H, W)`` in [0, 255]."""
    features = [torch.as_tensor(extractor(batch)).to(torch.float64) for batch in batches]
    if not features:
        raise ValueError("no images to extract features from")
    return torch.cat(features)


__all__ = [
    "DepthConsistency",
    "FeatureExtractor",
    "FeatureExtractorError",
    "depth_consistency",
    "extract_features",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "generator_depth_renderer",
    "multiview_depth_consistency",
    "orbit_cameras",
    "project_points",
    "unproject_depth",
]
