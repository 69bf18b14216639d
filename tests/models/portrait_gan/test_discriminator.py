"""Pose-aware dual discriminator: shapes, conditioning, symmetry, blur, gradients, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from portrait_engine.data.portrait.labels import (
    camera_label,
    intrinsics_matrix,
    lookat_cam2world,
    mirror_camera,
    mirror_pose,
)
from portrait_engine.models.portrait_gan.config import PortraitGANConfig
from portrait_engine.models.portrait_gan.discriminator import (
    MinibatchStdLayer,
    PoseAwareDualDiscriminator,
    blur,
    blur_sigma_at,
    filtered_resizing,
    real_inputs,
)


def cameras(yaws):
    labels = [camera_label(lookat_cam2world(y, 0.05), intrinsics_matrix()) for y in yaws]
    return torch.tensor(np.stack(labels), dtype=torch.float32)


def images(n, res=64, raw=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n, 3, res, res, generator=g),
        "image_raw": torch.randn(n, 3, raw, raw, generator=g),
        "image_mask": torch.rand(n, 1, raw, raw, generator=g),
    }


@pytest.fixture
def disc():
    torch.manual_seed(0)
    return PoseAwareDualDiscriminator.from_config(PortraitGANConfig.preset("tiny"))


def test_shapes_and_dtypes(disc):
    logits, pose = disc(images(4), cameras([0.3, -0.3, 2.0, -2.0]))
    assert logits.shape == (4, 1) and pose.shape == (4, 6)
    assert logits.dtype == pose.dtype == torch.float32
    assert torch.isfinite(logits).all() and torch.isfinite(pose).all()
    # Input: image + raw + mask = 7 channels.
    assert disc.b64.fromrgb.in_channels == 7


def test_paper_sizes():
    with torch.device("meta"):  # sizes only: no memory, no init time
        d = PoseAwareDualDiscriminator.from_config(PortraitGANConfig.preset("paper"))
    assert d.b512.fromrgb.in_channels == 7
    assert d.pose_branch.in_features == 512 * 16
    assert d.mapping.c_dim == 31 and d.cmap_dim == 512


def test_true_pose_conditions_the_logits(disc):
    img, cam = images(2), cameras([0.3, -0.3])
    a, pred = disc(img, cam, pose=torch.zeros(2, 6))
    b, _ = disc(img, cam, pose=torch.ones(2, 6))
    c, _ = disc(img, cam, pose=pred.detach())
    d, _ = disc(img, cam)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(c, d)


def test_pose_prediction_is_mirror_symmetric(disc):
    # A left view and its mirror image seen from the mirrored (right) camera. The published
    # branch also reads the camera label, unmirrored; zero its camera columns so that only
    # the explicit symmetry decides, then the two predictions must be exact mirrors.
    with torch.no_grad():
        disc.pose_branch.net[0].weight[:, -25:] = 0
    left_cam = cameras([0.6])
    cam = torch.cat([left_cam, mirror_camera(left_cam)])
    one = images(1)
    img = {k: torch.cat([v, v.flip(3)]) for k, v in one.items()}
    pose, _ = disc.predict_pose(img, cam)
    assert not torch.allclose(pose[1], pose[0])
    torch.testing.assert_close(pose[1], mirror_pose(pose[0]))


def test_gradients_reach_images_and_parameters(disc):
    img = images(2)
    for v in img.values():
        v.requires_grad_(True)
    logits, pose = disc(img, cameras([0.2, -0.2]))
    (logits.sum() + pose.square().sum()).backward()
    for k, v in img.items():
        assert v.grad is not None and v.grad.abs().sum() > 0, k
    missing = [n for n, p in disc.named_parameters() if p.grad is None]
    assert not missing


def test_predicted_pose_label_is_detached(disc):
    logits, _ = disc(images(2), cameras([0.2, -0.2]))
    logits.sum().backward()
    # The pose branch only gets gradients through the pose output, not through the logits.
    assert all(p.grad is None for p in disc.pose_branch.parameters())


def test_blur_schedule_and_filter():
    assert blur_sigma_at(0) == 10.0
    assert blur_sigma_at(100_000) == pytest.approx(5.0)
    assert blur_sigma_at(500_000) == 0.0
    assert blur_sigma_at(10, fade_kimg=0) == 0.0
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1
    y = blur(x, 1.0)
    t = torch.arange(-3.0, 4.0)
    f = 2 ** (-(t**2))
    f = f / f.sum()
    torch.testing.assert_close(y[0, 0, 7:14, 7:14], f.outer(f))
    assert blur(x, 0.2) is x
    const = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(blur(const, 1.0)[..., 3:-3, 3:-3], const[..., 3:-3, 3:-3])


def test_blur_only_touches_the_final_image(disc):
    img, cam = images(2), cameras([0.2, -0.2])
    a, _ = disc(img, cam, pose=torch.zeros(2, 6), blur_sigma=2.0)
    blurred = dict(img, image=blur(img["image"], 2.0))
    b, _ = disc(blurred, cam, pose=torch.zeros(2, 6))
    torch.testing.assert_close(a, b)


def test_filtered_resizing_upsamples_raw():
    x = torch.rand(2, 3, 16, 16)
    y = filtered_resizing(x, 64)
    assert y.shape == (2, 3, 64, 64)
    torch.testing.assert_close(y.mean(), x.mean(), rtol=1e-2, atol=1e-2)


def test_real_inputs_scale_resize_and_blur_the_raw_target():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=g)
    mask = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8, generator=g)
    out = real_inputs(image, mask, 32)
    torch.testing.assert_close(out["image"], image.float() / 127.5 - 1)
    assert out["image"].min() >= -1 and out["image"].max() <= 1
    torch.testing.assert_close(out["image_raw"], filtered_resizing(out["image"], 32))
    torch.testing.assert_close(out["image_mask"], filtered_resizing(mask.float() / 255, 32))
    blurred = real_inputs(image, mask, 32, blur_sigma=1.5)
    torch.testing.assert_close(blurred["image"], out["image"])  # the final image is not
    torch.testing.assert_close(blurred["image_raw"], blur(out["image_raw"], 1.5))
    assert not torch.allclose(blurred["image_raw"], out["image_raw"])
    kept = real_inputs(image, mask, 32, blur_sigma=1.5, blur_raw_target=False)
    torch.testing.assert_close(kept["image_raw"], out["image_raw"])
    with pytest.raises(ValueError, match="one batch size"):
        real_inputs(image, mask[:1], 32)


def test_real_inputs_feed_the_discriminator(disc):
    image = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    mask = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    logits, pose = disc(real_inputs(image, mask, 32, blur_sigma=1.0), cameras([0.1, -0.1]))
    assert logits.shape == (2, 1) and pose.shape == (2, 6)


def test_minibatch_std():
    x = torch.randn(4, 6, 3, 3)
    y = MinibatchStdLayer(group_size=2)(x)
    assert y.shape == (4, 7, 3, 3)
    g = x.reshape(2, 2, 6, 3, 3)
    expected = (g.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])
    torch.testing.assert_close(y[0, 6, 0, 0], expected[0])
    torch.testing.assert_close(y[2, 6, 0, 0], expected[0])
    with pytest.raises(ValueError, match="divisible"):
        MinibatchStdLayer(group_size=4)(torch.randn(6, 2, 2, 2))


def test_conditioning_noise():
    torch.manual_seed(0)
    config = PortraitGANConfig.preset("tiny", disc_c_noise=1.0)
    d = PoseAwareDualDiscriminator.from_config(config)
    img, cam, pose = images(2), cameras([0.2, -0.2]), torch.zeros(2, 6)
    a, _ = d(img, cam, pose=pose)
    b, _ = d(img, cam, pose=pose)
    assert not torch.allclose(a, b)
    single, _ = d(images(1), cameras([0.2]), pose=torch.zeros(1, 6))
    assert torch.isfinite(single).all()


def test_bad_inputs(disc):
    cam = cameras([0.1, -0.1])
    with pytest.raises(ValueError, match="keys"):
        disc({"image": torch.randn(2, 3, 64, 64)}, cam)
    bad = images(2)
    bad["image"] = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="64 x 64"):
        disc(bad, cam)
    bad = images(2)
    bad["image_mask"] = torch.rand(2, 2, 32, 32)
    with pytest.raises(ValueError, match="image_mask"):
        disc(bad, cam)
    bad = images(2)
    bad["image_raw"] = torch.zeros(2, 3, 32, 32, dtype=torch.int64)
    with pytest.raises(TypeError, match="image_raw"):
        disc(bad, cam)
    with pytest.raises(ValueError, match="camera"):
        disc(images(2), torch.randn(2, 24))
    with pytest.raises(ValueError, match="pose"):
        disc(images(2), cam, pose=torch.randn(2, 5))
    assert math.isfinite(float(disc(images(2), cam)[0].detach().sum()))
