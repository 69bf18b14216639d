"""Post-render head: background compositing, raw RGB, super-resolution and mask."""

from __future__ import annotations

import pytest
import torch

from portrait_engine.models.portrait_gan.config import PortraitGANConfig
from portrait_engine.models.portrait_gan.image_head import NeuralImageHead


@pytest.fixture
def tiny():
    return PortraitGANConfig.preset("tiny")


def inputs(config, n=2, r=32, weight=None):
    torch.manual_seed(0)
    feature = torch.randn(n, config.feature_channels, r, r)
    weight = torch.rand(n, 1, r, r) if weight is None else torch.full((n, 1, r, r), weight)
    ws = torch.randn(n, config.num_ws, config.w_dim)
    return feature, weight, ws


def test_shapes_and_dtypes(tiny):
    head = NeuralImageHead(tiny)
    out = head(*inputs(tiny), noise_mode="const")
    assert out["image"].shape == (2, 3, 64, 64)
    assert out["image_raw"].shape == (2, 3, 32, 32)
    assert out["image_mask"].shape == (2, 1, 32, 32)
    assert out["image_background"].shape == (2, 3, 32, 32)
    assert all(v.dtype == torch.float32 for v in out.values() if v is not None)


def test_mask_formula(tiny):
    head = NeuralImageHead(tiny)
    feature, weight, ws = inputs(tiny)
    out = head(feature, weight, ws, noise_mode="const")
    torch.testing.assert_close(out["image_mask"], weight * 1.002 - 0.001)


def test_background_only_shows_where_rays_are_transparent(tiny):
    head = NeuralImageHead(tiny)
    feature, _, ws = inputs(tiny, weight=1.0)
    opaque = head(feature, torch.ones(2, 1, 32, 32), ws, noise_mode="const")
    torch.testing.assert_close(opaque["feature"], feature)
    empty = head(torch.zeros_like(feature), torch.zeros(2, 1, 32, 32), ws, noise_mode="const")
    bg = head.background(ws, noise_mode="const")
    torch.testing.assert_close(empty["feature"], bg)  # same resolution here: no resize
    # A different background w changes only the transparent part.
    other = torch.randn_like(ws)
    swapped = head(feature, torch.ones(2, 1, 32, 32), ws, ws_background=other, noise_mode="const")
    torch.testing.assert_close(swapped["feature"], feature)


def test_without_torgb_and_background(tiny):
    config = PortraitGANConfig.preset("tiny", use_torgb_raw=False, use_background=False)
    head = NeuralImageHead(config)
    feature, weight, ws = inputs(config)
    out = head(feature, weight, ws)
    torch.testing.assert_close(out["image_raw"], feature[:, :3])
    assert out["image_background"] is None


def test_gradients(tiny):
    head = NeuralImageHead(tiny)
    feature, weight, ws = inputs(tiny)
    for t in (feature, weight, ws):
        t.requires_grad_(True)
    out = head(feature, weight, ws)
    (out["image"].mean() + out["image_raw"].mean() + out["image_background"].mean()).backward()
    for t in (feature, weight, ws):
        assert t.grad is not None and t.grad.abs().sum() > 0
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    # Super-resolution runs without noise by default (published), so its noise strengths idle.
    assert missing and all(
        n.startswith("superresolution.") and "noise_strength" in n for n in missing
    )


def test_bad_inputs(tiny):
    head = NeuralImageHead(tiny)
    feature, weight, ws = inputs(tiny)
    with pytest.raises(ValueError, match="feature"):
        head(feature[:, :3], weight, ws)
    with pytest.raises(ValueError, match="weight"):
        head(feature, weight[:, :, :16], ws)
    with pytest.raises(ValueError, match="ws"):
        head(feature, weight, ws[:1])
    with pytest.raises(ValueError, match="decoder_activation"):
        NeuralImageHead(tiny, decoder_activation="tanh")
