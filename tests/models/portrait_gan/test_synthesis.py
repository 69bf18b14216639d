"""Synthesis backbone: tri-grid / tri-plane shapes, layout, gradients; background network."""

from __future__ import annotations

import pytest
import torch

from portrait_engine.models.portrait_gan.config import PortraitGANConfig
from portrait_engine.models.portrait_gan.synthesis import (
    BackgroundSynthesis,
    SynthesisNetwork,
    TriGridSynthesis,
    channels_at,
)


@pytest.fixture
def tiny():
    return PortraitGANConfig.preset("tiny")


def test_num_ws_and_channels():
    net = SynthesisNetwork(
        w_dim=8, img_resolution=16, img_channels=3, channel_base=64, channel_max=8
    )
    assert net.num_ws == 2 * 4 - 2
    assert channels_at(4, 64, 8) == 8 and channels_at(16, 64, 8) == 4
    assert net(torch.randn(2, net.num_ws, 8)).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="ws must have shape"):
        net(torch.randn(2, net.num_ws + 1, 8))
    with pytest.raises(ValueError, match="power of two"):
        SynthesisNetwork(w_dim=8, img_resolution=24, img_channels=3)


def test_trigrid_shape_and_layout(tiny):
    torch.manual_seed(0)
    net = TriGridSynthesis.from_config(tiny)
    ws = torch.randn(2, tiny.num_ws, tiny.w_dim)
    planes = net(ws, noise_mode="const")
    r = tiny.backbone_resolution
    assert planes.shape == (2, 3, tiny.triplane_channels, 3, r, r)
    assert planes.dtype == torch.float32 and torch.isfinite(planes).all()
    # Channel-major layout (PanoHead's view(N, 3, C*D, H, W) then view(N*3, C, D, H, W)).
    flat = net.synthesis(ws, noise_mode="const")
    c, d = tiny.triplane_channels, tiny.triplane_depth
    torch.testing.assert_close(planes[1, 2, 5, 1], flat[1, (2 * c + 5) * d + 1])


def test_plain_triplane_option(tiny):
    config = PortraitGANConfig.preset("tiny", triplane_depth=1)
    net = TriGridSynthesis.from_config(config)
    planes = net(torch.randn(1, config.num_ws, config.w_dim))
    assert planes.shape == (1, 3, config.triplane_channels, 32, 32)


def test_paper_backbone_emits_288_channels():
    config = PortraitGANConfig.preset("paper")
    with torch.device("meta"):
        net = TriGridSynthesis.from_config(config)
    assert net.synthesis.img_channels == 288
    assert net.num_ws == 14
    assert net.synthesis.b256.torgb.out_channels == 288


def test_gradients_flow_to_every_parameter(tiny):
    torch.manual_seed(1)
    net = TriGridSynthesis.from_config(tiny)
    ws = torch.randn(2, tiny.num_ws, tiny.w_dim, requires_grad=True)
    net(ws, noise_mode="random").square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_fused_and_unfused_modconv_agree(tiny):
    torch.manual_seed(2)
    net = TriGridSynthesis.from_config(tiny).double()
    ws = torch.randn(2, tiny.num_ws, tiny.w_dim, dtype=torch.float64)
    a = net(ws, noise_mode="const", fused_modconv=True)
    b = net(ws, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(a, b)


def test_background_network(tiny):
    net = BackgroundSynthesis.from_config(tiny)
    ws = torch.randn(2, tiny.num_ws, tiny.w_dim)
    bg = net(ws)
    assert bg.shape == (
        2,
        tiny.feature_channels,
        tiny.sr_input_resolution,
        tiny.sr_input_resolution,
    )
    # Fewer w's than it needs: the last is repeated.
    one = ws[:, :1]
    a = net(one, noise_mode="const")
    b = net(one.repeat(1, net.num_ws, 1), noise_mode="const")
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("depth", [1, 3])
def test_planes_feed_the_triplane_sample_op(tiny, depth):
    # The layout contract with the rendering op: (N, 3, C, D, H, W) / (N, 3, C, H, W).
    from portrait_engine.ops import triplane_sample

    config = PortraitGANConfig.preset("tiny", triplane_depth=depth)
    planes = TriGridSynthesis.from_config(config)(torch.randn(2, config.num_ws, config.w_dim))
    points = torch.rand(2, 5, 3) - 0.5
    features = triplane_sample(
        planes, points, box_warp=config.box_warp, plane_axes=config.plane_axes, backend="torch"
    )
    assert features.shape == (2, 5, config.triplane_channels)
    assert torch.isfinite(features).all()
