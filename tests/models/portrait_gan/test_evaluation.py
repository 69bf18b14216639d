"""3DPortraitGAN evaluation: multi-view depth consistency and FID."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from portrait_engine.models.portrait_gan.evaluation import (
    FeatureExtractor,
    FeatureExtractorError,
    depth_consistency,
    extract_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    multiview_depth_consistency,
    orbit_cameras,
    project_points,
    unproject_depth,
)
from portrait_engine.ops import ray_sample, unpack_camera_label

YAWS = [math.radians(a) for a in (-40, -20, 0, 20, 40)]


def _sphere_renderer(radius=0.15, wobble=0.0, resolution=48):
    """Depth and weight of a sphere at the origin; with ``wobble`` its centre moves with the
    camera's yaw (a view-dependent, hence inconsistent, geometry)."""

    def render(camera):
        cam2world, intrinsics = unpack_camera_label(camera.to(torch.float64))
        origins, directions = ray_sample(cam2world, intrinsics, resolution, backend="torch")
        position = cam2world[:, :3, 3]
        yaw = torch.atan2(position[:, 0], position[:, 2])  # camera on +z at yaw 0
        centre = torch.zeros_like(position)
        centre[:, 0] = wobble * torch.sin(3 * yaw)
        oc = origins - centre[:, None]
        b = (oc * directions).sum(-1)
        disc = b * b - (oc * oc).sum(-1) + radius**2
        hit = disc > 0
        t = torch.where(hit, -b - disc.clamp_min(0).sqrt(), torch.full_like(b, 3.3))
        shape = (camera.shape[0], 1, resolution, resolution)
        return t.view(shape), hit.to(torch.float64).view(shape)

    return render


def test_unproject_then_project_returns_the_pixel_and_the_depth():
    camera = orbit_cameras([0.3, -2.0], 0.1).to(torch.float64)
    depth = 2.5 + 0.4 * torch.rand(2, 1, 8, 8, dtype=torch.float64)
    points = unproject_depth(depth, camera)
    uv, z, distance = project_points(points, camera)
    j, i = np.meshgrid(np.arange(8), np.arange(8))
    expected = torch.from_numpy(np.stack([(j + 0.5) / 8, (i + 0.5) / 8], -1).reshape(-1, 2))
    torch.testing.assert_close(uv, expected.expand(2, -1, -1), atol=1e-12, rtol=0)
    torch.testing.assert_close(distance, depth.view(2, -1), atol=1e-12, rtol=0)
    assert (z > 0).all() and (z <= distance + 1e-12).all()


def test_a_sphere_is_consistent_from_every_view():
    cameras = orbit_cameras(YAWS, 0.1)
    depth, weight = _sphere_renderer()(cameras)
    result = depth_consistency(depth, weight, cameras, box_size=0.7)
    # Bilinear interpolation of the depth between pixel centres is the only error (0.3 mm
    # here, a pixel is 8.6 mm): it falls quadratically with the resolution.
    assert result.error < 1e-3
    assert result.coverage > 0.9
    assert (result.pair_points[~np.eye(5, dtype=bool)] > 100).all()
    finer = depth_consistency(*_sphere_renderer(resolution=96)(cameras), cameras, box_size=0.7)
    assert finer.error < result.error / 2.5


def test_a_view_dependent_geometry_is_not():
    cameras = orbit_cameras(YAWS, 0.1)
    depth, weight = _sphere_renderer(wobble=0.02)(cameras)
    result = depth_consistency(depth, weight, cameras, box_size=0.7)
    assert result.error > 5e-3
    consistent = depth_consistency(*_sphere_renderer()(cameras), cameras, box_size=0.7)
    assert result.error > 10 * consistent.error
    # and it does not go away at a finer resolution
    finer = depth_consistency(
        *_sphere_renderer(wobble=0.02, resolution=96)(cameras), cameras, box_size=0.7
    )
    assert finer.error > 5e-3
    by_angle = result.by_angle(YAWS)
    assert set(by_angle) == {20.0, 40.0, 60.0, 80.0}


def test_multiview_consistency_pools_scenes():
    cameras = orbit_cameras(YAWS)
    pooled = multiview_depth_consistency(
        [_sphere_renderer(0.12), _sphere_renderer(0.15, wobble=0.02)], cameras, box_size=0.7
    )
    one = depth_consistency(*_sphere_renderer(0.15, wobble=0.02)(cameras), cameras, box_size=0.7)
    assert pooled.extra["scenes"] == 2
    assert 0 < pooled.error < one.error


def test_depth_consistency_errors():
    cameras = orbit_cameras(YAWS)
    depth, weight = _sphere_renderer()(cameras)
    with pytest.raises(ValueError, match="2 views"):
        depth_consistency(depth[:1], weight[:1], cameras[:1], box_size=0.7)
    with pytest.raises(ValueError, match="camera"):
        depth_consistency(depth, weight, cameras[:3], box_size=0.7)
    with pytest.raises(ValueError, match="no surface point"):
        depth_consistency(depth, weight * 0, cameras, box_size=0.7)


# ---- FID ---------------------------------------------------------------------------------------


def test_frechet_distance_of_one_dimensional_gaussians():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(1.0, 2.0, (500, 1)))
    b = torch.from_numpy(rng.normal(-0.5, 0.5, (400, 1)))
    expected = (a.mean() - b.mean()) ** 2 + (a.std() - b.std()) ** 2  # (μ₁−μ₂)² + (σ₁−σ₂)²
    assert fid_from_features(a, b) == pytest.approx(float(expected), rel=1e-10)


def test_frechet_distance_of_non_commuting_covariances():
    # For 2 x 2 PSD M, tr √M = √(tr M + 2 √det M); M = Σ₁Σ₂ with tr 8, det 9.
    s1 = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    s2 = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    mu1 = torch.tensor([0.5, -1.0], dtype=torch.float64)
    mu2 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    expected = 0.25 + 4.0 + 4.0 + 4.0 - 2 * math.sqrt(14.0)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-12)


def test_identical_sets_have_zero_fid_and_shifts_add_their_square():
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(16, 16))
    features = torch.from_numpy(rng.normal(size=(300, 16)) @ mixing)
    assert abs(fid_from_features(features, features)) < 1e-8
    shift = torch.zeros(16, dtype=torch.float64)
    shift[3] = 2.0
    assert fid_from_features(features, features + shift) == pytest.approx(4.0, rel=1e-7)


def test_feature_statistics_match_numpy():
    x = torch.randn(50, 4, dtype=torch.float64)
    mu, sigma = feature_statistics(x)
    # summation order differs from NumPy's: an absolute float64 tolerance for means near 0
    np.testing.assert_allclose(mu.numpy(), x.numpy().mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.numpy(), rowvar=False), rtol=1e-10)
    with pytest.raises(ValueError, match="features"):
        feature_statistics(torch.zeros(1, 4))


class _Pool(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.mean(dim=(2, 3)) / 255.0)


def test_torchscript_and_export_extractors(tmp_path):
    torch.manual_seed(0)
    module = _Pool().eval()
    images = torch.rand(4, 3, 16, 16) * 255
    torch.jit.save(torch.jit.script(module), tmp_path / "f.pt")
    scripted = FeatureExtractor(tmp_path / "f.pt")
    expected = module(images).double()
    torch.testing.assert_close(scripted(images), expected, rtol=1e-6, atol=1e-6)
    program = torch.export.export(module, (images,))
    torch.export.save(program, tmp_path / "f.pt2")
    exported = FeatureExtractor(tmp_path / "f.pt2")
    torch.testing.assert_close(exported(images), expected, rtol=1e-6, atol=1e-6)
    features = extract_features(scripted, [images[:2], images[2:]])
    torch.testing.assert_close(features, expected, rtol=1e-6, atol=1e-6)


def test_bad_extractor_files_say_what_is_wrong(tmp_path):
    with pytest.raises(FeatureExtractorError, match="does not exist.*downloaded"):
        FeatureExtractor(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(FeatureExtractorError, match="junk.pt could not be loaded as TorchScript"):
        FeatureExtractor(tmp_path / "junk.pt")
    (tmp_path / "junk.pt2").write_bytes(b"not a program")
    with pytest.raises(FeatureExtractorError, match="torch.export"):
        FeatureExtractor(tmp_path / "junk.pt2")

    class Flat(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return images.mean(dim=(1, 2, 3))

    torch.jit.save(torch.jit.script(Flat()), tmp_path / "flat.pt")
    with pytest.raises(FeatureExtractorError, match=r"features \(N, D\)"):
        FeatureExtractor(tmp_path / "flat.pt")(torch.rand(2, 3, 8, 8))


def _figure_depths(cameras, poses, n=48):
    """True depth (along the unit rays) and coverage of a synthetic portrait per camera."""
    from portrait_engine.data.portrait.labels import intrinsics_matrix
    from portrait_engine.data.portrait.synthetic import render_fragments, sample_identity

    k = intrinsics_matrix()
    identity = sample_identity(np.random.default_rng(0))
    pix = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    v, u = torch.meshgrid(pix, pix, indexing="ij")
    ray_length = torch.sqrt(((u - 0.5) / k[0, 0]) ** 2 + ((v - 0.5) / k[1, 1]) ** 2 + 1)
    depths, weights = [], []
    for camera, pose in zip(cameras, poses, strict=True):
        fragments, *_ = render_fragments(identity, pose, camera[:16].view(4, 4).numpy(), k, n)
        depth = torch.where(fragments.covered, fragments.depth * ray_length, 3.3)
        depths.append(depth)
        weights.append(fragments.covered.double())
    return torch.stack(depths)[:, None], torch.stack(weights)[:, None]


def test_the_synthetic_figure_is_consistent_and_a_pose_that_follows_the_camera_is_not():
    # A non-convex head with shoulders, nose and ears all around: the occlusion that the
    # metric does not model (beyond back faces) costs little on it.
    from portrait_engine.data.portrait.synthetic import LOOKAT_POINT

    yaws = [2 * math.pi * k / 8 - math.pi for k in range(8)]
    cameras = orbit_cameras(yaws, 0.05, target=LOOKAT_POINT).to(torch.float64)
    still = [np.array([0.05, 0.1, 0.0, 0.1, 0.2, 0.0])] * 8
    result = depth_consistency(*_figure_depths(cameras, still), cameras, box_size=0.7)
    assert result.error < 2e-3 and result.coverage > 0.95
    # the head turning with the camera: a view-dependent geometry
    turning = [np.array([0.0, 0.0, 0.0, 0.0, 0.6 * math.sin(y), 0.0]) for y in yaws]
    moved = depth_consistency(*_figure_depths(cameras, turning), cameras, box_size=0.7)
    assert moved.error > 3 * result.error
