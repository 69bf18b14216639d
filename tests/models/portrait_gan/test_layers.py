"""StyleGAN2 layers: resampling identities, modulated convolution, equalised learning rate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from portrait_engine.models.portrait_gan.layers import (
    Conv2dLayer,
    FullyConnectedLayer,
    SynthesisBlock,
    SynthesisLayer,
    ToRGBLayer,
    bias_act,
    modulated_conv2d,
    normalize_2nd_moment,
)
from portrait_engine.models.portrait_gan.resample import (
    conv2d_resample,
    downsample2d,
    filter2d,
    setup_filter,
    upfirdn2d,
    upsample2d,
)

F64 = torch.float64


def test_setup_filter_is_normalised_outer_product():
    f = setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4)
    torch.testing.assert_close(f.sum(), torch.tensor(1.0))
    torch.testing.assert_close(f[0], torch.tensor([1.0, 3, 3, 1]) / 64)


def test_filter2d_of_an_impulse_is_the_filter():
    f = setup_filter([1, 2, 4]).double()
    x = torch.zeros(1, 1, 7, 7, dtype=F64)
    x[0, 0, 3, 3] = 1
    y = filter2d(x, f)
    assert y.shape == x.shape
    # A true convolution: the impulse response is the filter itself, centred.
    torch.testing.assert_close(y[0, 0, 2:5, 2:5], f)


def test_upsample_and_downsample_keep_a_constant_image():
    f = setup_filter().double()
    x = torch.full((2, 3, 8, 8), 0.7, dtype=F64)
    up = upsample2d(x, f)
    down = downsample2d(x, f)
    assert up.shape == (2, 3, 16, 16) and down.shape == (2, 3, 4, 4)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 0.7))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 0.7))


def test_upfirdn2d_negative_padding_crops():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = upfirdn2d(x, torch.ones(1, 1), padding=[-1, 0, 0, -1])
    torch.testing.assert_close(y, x[:, :, :3, 1:])


@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_resample_up_equals_upsample_then_convolve(groups):
    # Transposed conv + filter (the published path) against upsample + true convolution:
    # both are linear shift-invariant, so they agree away from the zero-padded border.
    f = setup_filter().double()
    x = torch.randn(2, 4, 8, 8, dtype=F64)
    w = torch.randn(6, 4 // groups, 3, 3, dtype=F64)
    a = conv2d_resample(x, w, f, up=2, padding=1, groups=groups, flip_weight=False)
    b = F.conv2d(upsample2d(x, f), w.flip([2, 3]), padding=1, groups=groups)
    assert a.shape == b.shape == (2, 6, 16, 16)
    torch.testing.assert_close(a[..., 2:-2, 2:-2], b[..., 2:-2, 2:-2])


def test_conv2d_resample_down_equals_convolve_then_downsample():
    f = setup_filter().double()
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    w = torch.randn(5, 3, 3, 3, dtype=F64)
    a = conv2d_resample(x, w, f, down=2, padding=1)
    b = downsample2d(F.conv2d(x, w, padding=1), f)
    assert a.shape == b.shape == (2, 5, 4, 4)
    torch.testing.assert_close(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1])
    # 1x1 with down: filter then subsample then 1x1 conv, exactly.
    w1 = torch.randn(5, 3, 1, 1, dtype=F64)
    torch.testing.assert_close(conv2d_resample(x, w1, f, down=2), F.conv2d(downsample2d(x, f), w1))


def test_conv2d_resample_without_filter_for_resampling_is_an_error():
    with pytest.raises(ValueError, match="filter"):
        conv2d_resample(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3), None, up=2)


def test_bias_act_lrelu_gain_and_clamp():
    x = torch.tensor([[-2.0, 0.5, 100.0]])
    b = torch.tensor([1.0, 0.0, 0.0])
    y = bias_act(x, b, activation="lrelu", clamp=10.0)
    expected = torch.tensor([[-0.2 * math.sqrt(2), 0.5 * math.sqrt(2), 10.0]])
    torch.testing.assert_close(y, expected)
    with pytest.raises(ValueError, match="activation"):
        bias_act(x, activation="gelu")


def test_normalize_2nd_moment_unit_rms():
    x = torch.randn(4, 32) * 7
    y = normalize_2nd_moment(x)
    torch.testing.assert_close(y.square().mean(1), torch.ones(4), rtol=1e-5, atol=1e-5)


def test_fully_connected_equalised_learning_rate():
    torch.manual_seed(0)
    layer = FullyConnectedLayer(8, 3, lr_multiplier=0.01, bias_init=0.5).double()
    x = torch.randn(5, 8, dtype=F64)
    w_eff = layer.weight * 0.01 / math.sqrt(8)
    b_eff = layer.bias * 0.01
    torch.testing.assert_close(layer(x), x @ w_eff.t() + b_eff)
    # The stored weight is N(0, 1) / lr_multiplier, so the effective weight has std 1/sqrt(in).
    assert 50 < layer.weight.std().item() < 200
    lrelu = FullyConnectedLayer(8, 3, activation="lrelu").double()
    ref = F.leaky_relu(x @ (lrelu.weight / math.sqrt(8)).t() + lrelu.bias, 0.2) * math.sqrt(2)
    torch.testing.assert_close(lrelu(x), ref)


def _modconv_per_sample(x, weight, styles, demodulate, up=1):
    out = []
    f = setup_filter().to(x.dtype)
    for i in range(x.shape[0]):
        w = weight * styles[i].reshape(1, -1, 1, 1)
        if demodulate:
            w = w * (w.square().sum([1, 2, 3], keepdim=True) + 1e-8).rsqrt()
        if up == 1:
            out.append(F.conv2d(x[i : i + 1], w, padding=weight.shape[-1] // 2))
        else:
            xi = upsample2d(x[i : i + 1], f)
            out.append(F.conv2d(xi, w.flip([2, 3]), padding=weight.shape[-1] // 2))
    return torch.cat(out)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv2d_matches_per_sample_weights(fused, demodulate):
    x = torch.randn(3, 4, 6, 6, dtype=F64)
    weight = torch.randn(5, 4, 3, 3, dtype=F64)
    styles = torch.rand(3, 4, dtype=F64) + 0.5
    y = modulated_conv2d(x, weight, styles, padding=1, demodulate=demodulate, fused_modconv=fused)
    torch.testing.assert_close(y, _modconv_per_sample(x, weight, styles, demodulate))


@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv2d_upsampling(fused):
    f = setup_filter().double()
    x = torch.randn(2, 4, 6, 6, dtype=F64)
    weight = torch.randn(3, 4, 3, 3, dtype=F64)
    styles = torch.rand(2, 4, dtype=F64) + 0.5
    y = modulated_conv2d(
        x,
        weight,
        styles,
        up=2,
        padding=1,
        resample_filter=f,
        flip_weight=False,
        fused_modconv=fused,
    )
    ref = _modconv_per_sample(x, weight, styles, True, up=2)
    assert y.shape == (2, 3, 12, 12)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2])


def test_modulated_conv2d_rejects_wrong_styles():
    with pytest.raises(ValueError, match="styles"):
        modulated_conv2d(torch.randn(2, 4, 5, 5), torch.randn(3, 4, 3, 3), torch.randn(2, 3))


def test_conv2d_layer_shapes():
    x = torch.randn(2, 4, 8, 8)
    assert Conv2dLayer(4, 6, 3, activation="lrelu")(x).shape == (2, 6, 8, 8)
    assert Conv2dLayer(4, 6, 3, down=2)(x).shape == (2, 6, 4, 4)
    assert Conv2dLayer(4, 6, 1, bias=False, down=2)(x).shape == (2, 6, 4, 4)
    assert Conv2dLayer(4, 6, 3, up=2)(x).shape == (2, 6, 16, 16)


def test_synthesis_layer_noise_modes():
    torch.manual_seed(0)
    layer = SynthesisLayer(4, 6, w_dim=8, resolution=8)
    with torch.no_grad():
        layer.noise_strength.fill_(1.0)
    x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 8)
    c1, c2 = layer(x, w, noise_mode="const"), layer(x, w, noise_mode="const")
    torch.testing.assert_close(c1, c2)
    r1, r2 = layer(x, w, noise_mode="random"), layer(x, w, noise_mode="random")
    assert not torch.allclose(r1, r2)
    n = layer(x, w, noise_mode="none")
    assert not torch.allclose(n, c1)
    with pytest.raises(ValueError, match="noise_mode"):
        layer(x, w, noise_mode="loud")
    with pytest.raises(ValueError, match="x must have shape"):
        layer(torch.randn(2, 4, 4, 4), w)


def test_synthesis_layer_fused_and_unfused_agree():
    torch.manual_seed(1)
    layer = SynthesisLayer(4, 6, w_dim=8, resolution=16, up=2).double()
    x, w = torch.randn(2, 4, 8, 8, dtype=F64), torch.randn(2, 8, dtype=F64)
    a = layer(x, w, noise_mode="none", fused_modconv=True)
    b = layer(x, w, noise_mode="none", fused_modconv=False)
    torch.testing.assert_close(a, b)


def test_torgb_is_not_demodulated():
    torch.manual_seed(2)
    layer = ToRGBLayer(4, 3, w_dim=8).double()
    x, w = torch.randn(2, 4, 5, 5, dtype=F64), torch.randn(2, 8, dtype=F64)
    styles = layer.affine(w) / 2.0  # weight_gain = 1 / sqrt(4)
    ref = torch.einsum("oi,ni,nihw->nohw", layer.weight[:, :, 0, 0], styles, x)
    torch.testing.assert_close(layer(x, w), ref + layer.bias.reshape(1, -1, 1, 1))


@pytest.mark.parametrize("upsample", [True, False])
def test_synthesis_block_shapes_and_skip_image(upsample):
    block = SynthesisBlock(
        8,
        6,
        w_dim=8,
        resolution=16 if upsample else 8,
        img_channels=3,
        is_last=True,
        upsample=upsample,
    )
    res_in = 8
    x = torch.randn(2, 8, res_in, res_in)
    img = torch.randn(2, 3, res_in, res_in)
    ws = torch.randn(2, 3, 8)
    y, out = block(x, img, ws, noise_mode="none")
    res = 16 if upsample else 8
    assert y.shape == (2, 6, res, res) and out.shape == (2, 3, res, res)
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="ws must have shape"):
        block(x, img, torch.randn(2, 2, 8))


def test_first_synthesis_block_starts_from_the_constant():
    block = SynthesisBlock(0, 6, w_dim=8, resolution=4, img_channels=3, is_last=False)
    y, img = block(None, None, torch.randn(2, 2, 8), noise_mode="none")
    assert y.shape == (2, 6, 4, 4) and img.shape == (2, 3, 4, 4)
    assert block.num_conv == 1 and block.num_torgb == 1


def test_modulated_conv2d_half_precision_prenormalisation():
    # fp16 inputs take the published pre-normalised path; demodulation makes it the same
    # function, so it must agree with float32 to half precision.
    torch.manual_seed(3)
    x = torch.randn(2, 8, 6, 6)
    weight = torch.randn(4, 8, 3, 3) * 30
    styles = torch.rand(2, 8) * 50 + 1
    ref = modulated_conv2d(x, weight, styles, padding=1, fused_modconv=False)
    half = modulated_conv2d(x.half(), weight.half(), styles.half(), padding=1, fused_modconv=False)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), ref, rtol=2e-2, atol=2e-2)


def test_synthesis_block_under_bfloat16_autocast():
    block = SynthesisBlock(0, 6, w_dim=8, resolution=4, img_channels=3, is_last=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x, img = block(None, None, torch.randn(2, 2, 8), noise_mode="none")
    assert img.dtype == torch.float32 and torch.isfinite(img).all()
