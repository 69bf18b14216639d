"""Super-resolution: layouts per factor, shapes, resizing of off-size inputs, gradients."""

from __future__ import annotations

import pytest
import torch

from portrait_engine.models.portrait_gan.config import PortraitGANConfig
from portrait_engine.models.portrait_gan.superresolution import SuperResolution


def test_paper_layout_is_eg3d_8x_dc():
    with torch.device("meta"):
        sr = SuperResolution.from_config(PortraitGANConfig.preset("paper"))
    assert (sr.block0.in_channels, sr.block0.out_channels, sr.block0.resolution) == (32, 256, 256)
    assert (sr.block1.in_channels, sr.block1.out_channels, sr.block1.resolution) == (256, 128, 512)
    assert sr.block0.upsample and sr.block1.upsample
    assert sr.input_resolution == 128


def test_small_layout_is_eg3d_4x():
    sr = SuperResolution.from_config(PortraitGANConfig.preset("small"))
    assert not sr.block0.upsample and sr.block0.resolution == 128
    assert sr.block1.upsample and sr.block1.resolution == 256


@pytest.mark.parametrize("raw", [16, 32])
def test_tiny_forward_shapes_and_gradients(raw):
    config = PortraitGANConfig.preset("tiny")
    sr = SuperResolution.from_config(config)
    rgb = torch.randn(2, 3, raw, raw, requires_grad=True)
    x = torch.randn(2, config.feature_channels, raw, raw, requires_grad=True)
    ws = torch.randn(2, config.num_ws, config.w_dim, requires_grad=True)
    out = sr(rgb, x, ws)
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.float32
    out.square().mean().backward()
    for t in (rgb, x, ws):
        assert t.grad is not None and t.grad.abs().sum() > 0
    # Only the last w is used.
    assert ws.grad[:, :-1].abs().sum() == 0


def test_default_noise_mode_is_deterministic():
    config = PortraitGANConfig.preset("tiny")
    sr = SuperResolution.from_config(config)
    for m in sr.modules():
        if hasattr(m, "noise_strength"):
            m.noise_strength.data.fill_(1.0)
    args = (torch.randn(1, 3, 32, 32), torch.randn(1, 16, 32, 32), torch.randn(1, 2, 64))
    torch.testing.assert_close(sr(*args), sr(*args))
    assert not torch.allclose(sr(*args, noise_mode="random"), sr(*args, noise_mode="random"))


def test_bad_inputs():
    sr = SuperResolution.from_config(PortraitGANConfig.preset("tiny"))
    rgb, x, ws = torch.randn(1, 3, 32, 32), torch.randn(1, 16, 32, 32), torch.randn(1, 2, 64)
    with pytest.raises(ValueError, match="x must have shape"):
        sr(rgb, torch.randn(1, 15, 32, 32), ws)
    with pytest.raises(ValueError, match="rgb must have shape"):
        sr(torch.randn(1, 4, 32, 32), x, ws)
    with pytest.raises(ValueError, match="ws must have shape"):
        sr(rgb, x, torch.randn(1, 2, 63))
    with pytest.raises(ValueError, match="img_resolution"):
        SuperResolution(16, 512, 64, 64)
