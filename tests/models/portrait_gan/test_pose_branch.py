"""Pose branches: shapes, published MLP widths, exact mirror symmetry, bad inputs."""

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
from portrait_engine.models.portrait_gan.pose_branch import (
    DiscriminatorPoseBranch,
    GeneratorPoseBranch,
)


def cameras(yaws, pitch=0.1):
    labels = [camera_label(lookat_cam2world(y, pitch), intrinsics_matrix()) for y in yaws]
    return torch.tensor(np.stack(labels), dtype=torch.float32)


def test_generator_branch_shapes_and_published_widths():
    with torch.device("meta"):
        paper = GeneratorPoseBranch.from_config(PortraitGANConfig.preset("paper"))
    widths = [(m.in_features, m.out_features) for m in paper.net]
    assert widths == [(512 + 25, 128), (128, 32), (32, 6)]
    tiny = GeneratorPoseBranch.from_config(PortraitGANConfig.preset("tiny"))
    pose = tiny(torch.randn(4, 64), cameras([0.3, -0.3, 2.0, -2.5]))
    assert pose.shape == (4, 6) and pose.dtype == torch.float32


def test_generator_branch_mirrors_exactly():
    torch.manual_seed(0)
    branch = GeneratorPoseBranch(z_dim=8, hidden=(16,))
    z = torch.randn(5, 8)
    cam = cameras([0.4, 1.2, 2.9, -0.7, -2.2])
    pose = branch(z, cam)
    pose_of_mirror = branch(z, mirror_camera(cam))
    # Mirroring the camera mirrors the predicted pose (away from the +-pi/2 boundary).
    torch.testing.assert_close(pose_of_mirror, mirror_pose(pose))


def test_generator_branch_without_symmetry_is_the_plain_mlp():
    torch.manual_seed(1)
    branch = GeneratorPoseBranch(z_dim=8, hidden=(16,), explicitly_symmetry=False)
    z, cam = torch.randn(3, 8), cameras([0.4, -0.4, 3.0])
    torch.testing.assert_close(branch(z, cam), branch.net(torch.cat([z, cam], 1)))


def test_discriminator_branch_published_widths():
    with torch.device("meta"):
        branch = DiscriminatorPoseBranch(512 * 16)
    widths = [(m.in_features, m.out_features) for m in branch.net]
    assert widths == [(8192 + 25, 2048), (2048, 512), (512, 128), (128, 32), (32, 6)]


def test_gradients_flow():
    branch = GeneratorPoseBranch(z_dim=8, hidden=(16,))
    z = torch.randn(3, 8, requires_grad=True)
    branch(z, cameras([0.4, -0.4, 3.0])).sum().backward()
    assert z.grad.abs().sum() > 0
    assert all(p.grad is not None for p in branch.parameters())


def test_bad_inputs():
    branch = GeneratorPoseBranch(z_dim=8, hidden=(16,))
    with pytest.raises(ValueError, match="z must have shape"):
        branch(torch.randn(3, 7), cameras([0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="camera must have shape"):
        branch(torch.randn(3, 8), torch.randn(2, 25))
    d = DiscriminatorPoseBranch(32)
    with pytest.raises(ValueError, match="features"):
        d(torch.randn(2, 31), torch.randn(2, 25))


def test_left_right_split_uses_the_camera_position():
    from portrait_engine.data.portrait.labels import is_left_camera

    cam = cameras([math.pi / 4, 3 * math.pi / 4, -math.pi / 4, -3 * math.pi / 4])
    # yaw > 0 moves the camera towards +x ("left" in 3DPortraitGAN's test), yaw < 0 to -x.
    assert cam[:, 3].sign().tolist() == [1, 1, -1, -1]
    assert is_left_camera(cam).flatten().tolist() == [True, True, False, False]
