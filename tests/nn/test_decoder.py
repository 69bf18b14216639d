"""OSGDecoder: EG3D's formulas written out, parameter names, lr-multiplier scaling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from portrait_engine.nn import FullyConnectedLayer, OSGDecoder


def eg3d_formula(decoder: OSGDecoder, features: torch.Tensor, lr_mul: float) -> dict:
    """mean over planes -> x W0ᵀ·lr/√C + b0·lr -> softplus -> x W1ᵀ·lr/√64 + b1·lr."""
    x = features.mean(1) if features.dim() == 4 else features
    w0, b0 = decoder.net[0].weight, decoder.net[0].bias
    w1, b1 = decoder.net[2].weight, decoder.net[2].bias
    h = F.softplus(x @ (w0 * lr_mul / math.sqrt(w0.shape[1])).t() + b0 * lr_mul)
    y = h @ (w1 * lr_mul / math.sqrt(w1.shape[1])).t() + b1 * lr_mul
    return {"rgb": torch.sigmoid(y[..., 1:]) * 1.002 - 0.001, "sigma": y[..., :1]}


@pytest.mark.parametrize("lr_mul", [1.0, 0.01])
@pytest.mark.parametrize("planes", [False, True], ids=["mean-features", "per-plane"])
def test_matches_eg3d_formula(lr_mul, planes):
    torch.manual_seed(0)
    decoder = OSGDecoder(32, 32, lr_multiplier=lr_mul)
    with torch.no_grad():  # non-zero biases so that the bias gain matters
        decoder.net[0].bias.normal_()
        decoder.net[2].bias.normal_()
    shape = (2, 3, 50, 32) if planes else (2, 50, 32)
    features = torch.randn(shape)
    got = decoder(features, torch.randn(2, 50, 3))
    want = eg3d_formula(decoder, features, lr_mul)
    assert got["rgb"].shape == (2, 50, 32) and got["sigma"].shape == (2, 50, 1)
    torch.testing.assert_close(got["rgb"], want["rgb"])
    torch.testing.assert_close(got["sigma"], want["sigma"])
    rgb = got["rgb"].detach()
    assert float(rgb.min()) > -0.001 and float(rgb.max()) < 1.001


def test_parameter_names_and_sizes_are_eg3d_s():
    shapes = {name: tuple(p.shape) for name, p in OSGDecoder(32, 32).named_parameters()}
    assert shapes == {
        "net.0.weight": (64, 32),
        "net.0.bias": (64,),
        "net.2.weight": (33, 32 * 2),
        "net.2.bias": (33,),
    }


def test_lr_multiplier_keeps_the_initial_function():
    """Weights start as randn / lr_mul and are used times lr_mul: the same initial output."""
    features = torch.randn(1, 10, 8)
    outs = []
    for lr_mul in (1.0, 0.1):
        torch.manual_seed(3)
        outs.append(OSGDecoder(8, 4, lr_multiplier=lr_mul)(features)["sigma"])
    torch.testing.assert_close(outs[0], outs[1])


def test_gradients_reach_every_parameter():
    decoder = OSGDecoder(8, 4)
    out = decoder(torch.randn(1, 5, 8))
    (out["rgb"].sum() + out["sigma"].sum()).backward()
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name


def test_bad_inputs():
    decoder = OSGDecoder(8, 4)
    with pytest.raises(TypeError, match="features must be a torch.Tensor"):
        decoder([1.0])
    with pytest.raises(ValueError, match=r"features must have shape \(B, N, 8\)"):
        decoder(torch.randn(1, 5, 7))
    with pytest.raises(ValueError, match="lr_multiplier must be positive"):
        FullyConnectedLayer(3, 4, lr_multiplier=0.0)
