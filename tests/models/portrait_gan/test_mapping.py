"""Mapping network: shapes, conditioning, truncation, w_avg tracking, bad inputs."""

from __future__ import annotations

import pytest
import torch

from portrait_engine.models.portrait_gan.config import PortraitGANConfig
from portrait_engine.models.portrait_gan.mapping import (
    MappingNetwork,
    PortraitMapping,
    conditioning_label,
)


@pytest.fixture
def mapping():
    torch.manual_seed(0)
    return PortraitMapping.from_config(PortraitGANConfig.preset("tiny"))


def test_shapes_and_dtype(mapping):
    ws = mapping(torch.randn(3, 64), torch.randn(3, 25), torch.randn(3, 6))
    assert ws.shape == (3, PortraitGANConfig.preset("tiny").num_ws, 64)
    assert ws.dtype == torch.float32
    # One w broadcast to every layer.
    torch.testing.assert_close(ws[:, 0], ws[:, -1])


def test_pose_conditions_the_output(mapping):
    z, cam = torch.randn(2, 64), torch.randn(2, 25)
    a = mapping(z, cam, torch.zeros(2, 6))
    b = mapping(z, cam, None)
    c = mapping(z, cam, torch.ones(2, 6))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_z_scale_is_normalised_away(mapping):
    z, cam = torch.randn(2, 64), torch.randn(2, 25)
    torch.testing.assert_close(mapping(z, cam), mapping(5 * z, cam), rtol=1e-5, atol=1e-5)


def test_conditioning_label_layout():
    cam, pose = torch.randn(2, 25), torch.randn(2, 6)
    label = conditioning_label(cam, pose, c_scale=2.0)
    torch.testing.assert_close(label[:, :25], 2 * cam)
    torch.testing.assert_close(label[:, 25:], 2 * pose)
    with pytest.raises(ValueError, match="pose"):
        conditioning_label(cam, torch.randn(3, 6))


def test_truncation_and_w_avg(mapping):
    z, cam = torch.randn(4, 64), torch.randn(4, 25)
    assert torch.count_nonzero(mapping.w_avg) == 0
    mapping(z, cam, update_emas=True)
    w_avg = mapping.w_avg.clone()
    assert torch.count_nonzero(w_avg) > 0
    full = mapping(z, cam)
    trunc = mapping(z, cam, truncation_psi=0.0, truncation_cutoff=3)
    torch.testing.assert_close(trunc[:, :3], w_avg.expand(4, 3, -1))
    torch.testing.assert_close(trunc[:, 3:], full[:, 3:])
    half = mapping(z, cam, truncation_psi=0.5)
    torch.testing.assert_close(half, w_avg + 0.5 * (full - w_avg))


def test_bad_inputs(mapping):
    with pytest.raises(ValueError, match="z must have shape"):
        mapping(torch.randn(2, 63), torch.randn(2, 25))
    with pytest.raises(ValueError, match="c must have shape"):
        mapping(torch.randn(2, 64), torch.randn(2, 24))
    with pytest.raises(ValueError, match="batch sizes"):
        mapping(torch.randn(2, 64), torch.randn(3, 25))


def test_projection_mapping_without_z():
    net = MappingNetwork(z_dim=0, c_dim=31, w_dim=16, num_ws=None, w_avg_beta=None, num_layers=2)
    cmap = net(None, torch.randn(5, 31))
    assert cmap.shape == (5, 16)
    with pytest.raises(ValueError, match="truncation"):
        net(None, torch.randn(5, 31), truncation_psi=0.5)


def test_gradients_reach_every_parameter(mapping):
    ws = mapping(torch.randn(2, 64), torch.randn(2, 25), torch.randn(2, 6))
    ws.square().sum().backward()
    for name, p in mapping.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
