"""Inference helpers: seeds, cameras, grids, videos, density grids, marching cubes, PLY."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from portrait_engine.models.portrait_gan import PortraitGANConfig
from portrait_engine.models.portrait_gan import inference as inf
from portrait_engine.models.portrait_gan.generator import PortraitGenerator


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    return PortraitGenerator(PortraitGANConfig.preset("tiny")).eval()


def test_parse_seeds():
    assert inf.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert inf.parse_seeds("5") == [5]
    for bad in ("", "a", "3-x", "-1"):
        with pytest.raises(ValueError, match="seeds"):
            inf.parse_seeds(bad)


def test_orbit_camera_positions():
    front = inf.orbit_camera(0.0)
    assert front.shape == (1, 25)
    position = front[0, [3, 7, 11]]
    # on a radius-2.7 sphere around 3DPortraitGAN's look-at point (0, 0.0649, 0)
    target = torch.tensor([0.0, 0.0649, 0.0])
    torch.testing.assert_close(position, torch.tensor([0.0, 0.0649, 2.7]), atol=1e-5, rtol=0)
    side = inf.orbit_camera(math.pi / 2, batch=2)
    assert side.shape == (2, 25)
    assert side[0, 3] == pytest.approx(2.7, abs=1e-5)  # yaw > 0 moves the camera to +x
    # the camera looks at the target: its forward axis (third column) points from it there
    forward = side[0, :16].reshape(4, 4)[:3, 2]
    torch.testing.assert_close(forward, (target - side[0, [3, 7, 11]]) / 2.7, atol=1e-5, rtol=0)
    origin = inf.orbit_camera(0.0, target=(0.0, 0.0, 0.0))
    torch.testing.assert_close(
        origin[0, [3, 7, 11]], torch.tensor([0.0, 0.0, 2.7]), atol=1e-5, rtol=0
    )


def test_image_grid_layout():
    images = np.random.default_rng(0).integers(0, 255, (2, 3, 4, 5, 3), dtype=np.uint8)
    grid = inf.image_grid(images)
    assert grid.shape == (8, 15, 3)
    assert np.array_equal(grid[4:8, 5:10], images[1, 1])
    assert np.array_equal(grid[0:4, 10:15], images[0, 2])
    with pytest.raises(ValueError, match="images"):
        inf.image_grid(images[0])


def test_to_uint8():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0]).reshape(1, 1, 4).expand(3, 1, 4)
    out = inf.to_uint8(x)
    assert out.shape == (1, 4, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 0, 128, 255]


def test_write_video_gif(tmp_path, monkeypatch):
    frames = [np.full((6, 6, 3), 40 * k, np.uint8) for k in range(5)]
    monkeypatch.setattr(inf, "ffmpeg_available", lambda: False)
    with pytest.warns(UserWarning, match="imageio-ffmpeg"):
        path = inf.write_video(frames, tmp_path / "v.mp4", fps=10)
    assert path.suffix == ".gif"
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        gif.seek(3)
        assert np.asarray(gif.convert("RGB"))[0, 0, 0] == 120
    with pytest.raises(ValueError, match="frames"):
        inf.write_video([], tmp_path / "x.gif")


def test_write_ply_round_trip(tmp_path):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    path = inf.write_ply(tmp_path / "m.ply", vertices, faces)
    lines = path.read_text().splitlines()
    end = lines.index("end_header")
    assert "element vertex 4" in lines and "element face 2" in lines
    body = lines[end + 1 :]
    assert np.allclose(np.loadtxt(body[:4]), vertices)
    assert np.array_equal(np.loadtxt(body[4:], dtype=int), [[3, 0, 1, 2], [3, 0, 2, 3]])
    with pytest.raises(ValueError, match="out of range"):
        inf.write_ply(tmp_path / "bad.ply", vertices, np.array([[0, 1, 9]]))


def test_marching_cubes_of_a_sphere():
    pytest.importorskip("skimage")
    n, side, radius = 33, 1.0, 0.3
    axis = np.linspace(-side / 2, side / 2, n)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    # off-centre so a swapped axis shows
    sigma = radius - np.sqrt((x - 0.1) ** 2 + y**2 + (z + 0.05) ** 2)
    vertices, faces = inf.marching_cubes(sigma, 0.0, side)
    assert len(faces) > 100
    centre = vertices.mean(0)
    assert np.allclose(centre, [0.1, 0.0, -0.05], atol=0.01)
    distance = np.linalg.norm(vertices - [0.1, 0.0, -0.05], axis=1)
    assert np.abs(distance - radius).max() < 0.01
    with pytest.raises(ValueError, match="never crosses"):
        inf.marching_cubes(sigma, 5.0, side)


def test_marching_cubes_without_scikit_image(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(ImportError, match="scikit-image"):
        inf.marching_cubes(np.zeros((4, 4, 4)), "auto")


def test_density_grid_indexing_and_chunks(gen):
    torch.manual_seed(1)
    z = torch.randn(1, gen.config.z_dim)
    with torch.no_grad():
        ws = gen.map(z, inf.orbit_camera(0.0))
        grid = inf.density_grid(gen, ws, 5, chunk=7)
        whole = inf.density_grid(gen, ws, 5)
        planes = gen.planes(ws, noise_mode="const")
        s = gen.config.box_warp
        point = torch.tensor([[[-s / 2, -s / 4, s / 2]]])  # indices (0, 1, 4)
        direct = gen.sample_density(planes, point)
    assert grid.shape == (5, 5, 5) and grid.dtype == np.float32
    # Chunks change the decoder's GEMM shapes, and BLAS rounds by blocking: the chunked grid
    # may differ from the whole one by an ulp (seen in CI: 2.4e-7 on values near 1.3), no more.
    np.testing.assert_allclose(grid, whole, rtol=1e-6, atol=1e-6)
    assert grid[0, 1, 4] == pytest.approx(float(direct), abs=1e-5)
    assert np.unique(grid).size > 10
    with pytest.raises(ValueError, match="resolution"):
        inf.density_grid(gen, ws, 1)


def test_generate_images_shapes_and_pose(gen):
    images, poses = inf.generate_images(
        gen,
        [0, 1],
        [(0.0, 0.0), (1.0, 0.2)],
        pose=[0, 0.2, 0, 0, 0.1, 0],
        neural_rendering_resolution=8,
    )
    size = gen.config.img_resolution
    assert images.shape == (2, 2, 3, size, size)
    assert torch.isfinite(images).all()
    assert torch.equal(poses[1, 1], torch.tensor([0, 0.2, 0, 0, 0.1, 0]))
    assert not torch.equal(images[0, 0], images[1, 0])  # seeds differ
    again, _ = inf.generate_images(
        gen, [1], [(1.0, 0.2)], pose=[0, 0.2, 0, 0, 0.1, 0], neural_rendering_resolution=8
    )
    torch.testing.assert_close(again[0, 0], images[1, 1])
    predicted_images, predicted = inf.generate_images(
        gen, [0], [(0.5, 0.0)], predict_pose=True, neural_rendering_resolution=8
    )
    with torch.no_grad():
        expected = gen.get_pose(inf.latent(0, gen.config.z_dim), inf.orbit_camera(0.5))
    torch.testing.assert_close(predicted[0, 0], expected[0])
    with pytest.raises(ValueError, match="6 numbers"):
        inf.generate_images(gen, [0], [(0.0, 0.0)], pose=[0.1, 0.2])
