"""Synthetic 360° portraits: true cameras, poses, determinism, coverage of views."""

from __future__ import annotations

import numpy as np
import pytest

from portrait_engine.data.portrait.dataset import PortraitDataset
from portrait_engine.data.portrait.labels import intrinsics_matrix, lookat_cam2world
from portrait_engine.data.portrait.synthetic import (
    LOOKAT_POINT,
    axis_angle_matrix,
    make_synthetic_dataset,
    render_portrait,
    sample_identity,
    synthetic_entries,
)


def test_cameras_are_eg3d_look_at_cameras():
    labels = np.stack([e[2] for e in synthetic_entries(12, resolution=8, seed=3)])
    for label in labels:
        c2w = label[:16].reshape(4, 4)
        t = c2w[:3, 3]
        np.testing.assert_allclose(np.linalg.norm(t - LOOKAT_POINT), 2.7, rtol=1e-9)
        # Camera z (forward) points at the published look-at point; rotation orthonormal;
        # OpenCV y down.
        to_target = np.asarray(LOOKAT_POINT) - t
        np.testing.assert_allclose(c2w[:3, 2], to_target / np.linalg.norm(to_target), atol=1e-9)
        np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-9)
        assert c2w[1, 1] < 0
        np.testing.assert_allclose(label[16:25], intrinsics_matrix().reshape(9))
        assert np.all(np.abs(label[25:]) < 1.0)


def test_yaw_covers_the_full_circle():
    labels = np.stack([e[2] for e in synthetic_entries(40, resolution=4, seed=0)])
    x, z = labels[:, 3], labels[:, 11]
    quadrants = {(bool(a > 0), bool(b > 0)) for a, b in zip(x, z, strict=True)}
    assert len(quadrants) == 4
    assert (z < 0).any()  # views from behind


def test_deterministic_by_seed():
    a = list(synthetic_entries(2, resolution=12, seed=5))
    b = list(synthetic_entries(2, resolution=12, seed=5))
    c = list(synthetic_entries(2, resolution=12, seed=6))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[1], y[1])
        np.testing.assert_array_equal(x[2], y[2])
    assert not np.array_equal(a[0][1], c[0][1])


def test_the_figure_is_centred_and_pose_moves_the_head():
    rng = np.random.default_rng(0)
    identity = sample_identity(rng)
    k = intrinsics_matrix()
    cam = lookat_cam2world(0.0, 0.0)
    _, rest = render_portrait(identity, np.zeros(6), cam, k, 32, supersample=1)
    assert 0.15 < rest.mean() < 0.8
    cols = np.nonzero(rest.any(0))[0]
    assert abs((cols.min() + cols.max()) / 2 - 15.5) <= 1.0  # left-right centred
    turned = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.5])  # head roll
    _, rolled = render_portrait(identity, turned, cam, k, 32, supersample=1)
    assert not np.array_equal(rolled, rest)
    # The torso does not move with the head: the bottom rows are unchanged.
    np.testing.assert_array_equal(rolled[-3:], rest[-3:])


def test_axis_angle_matrix():
    np.testing.assert_allclose(axis_angle_matrix(np.zeros(3)), np.eye(3))
    r = axis_angle_matrix(np.array([0.0, 0.0, np.pi / 2]))
    np.testing.assert_allclose(r @ np.array([1.0, 0, 0]), [0, 1, 0], atol=1e-12)


def test_make_synthetic_dataset_is_readable(tmp_path):
    path = make_synthetic_dataset(
        tmp_path / "s.zip", 3, resolution=16, mask_path=tmp_path / "m.zip"
    )
    ds = PortraitDataset(path, mask_path=tmp_path / "m.zip")
    assert len(ds) == 3 and ds.resolution == 16
    item = ds[0]
    assert item["mask"].max() == 255 and item["mask"].min() == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_images"):
        next(synthetic_entries(0))
