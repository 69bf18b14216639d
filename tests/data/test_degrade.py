"""Very-low-resolution synthesis and unrecognisable faces."""

import pytest
import torch

from portrait_engine.data.faces import SyntheticFaces, VeryLowResolution, unrecognizable
from portrait_engine.data.faces.degrade import UNRECOGNIZABLE_KINDS, gaussian_blur, jpeg, resample


@pytest.fixture(scope="module")
def faces():
    ds = SyntheticFaces(2, 2, size=64)
    return torch.stack([ds[i][0] for i in range(4)])


def _high_frequency_energy(x):
    """Mean absolute difference between neighbouring pixels: falls as detail is lost."""
    return (
        (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean()
    ).item()


def test_very_low_resolution_keeps_shape_dtype_range_and_loses_detail(faces):
    t = VeryLowResolution(8, 12, seed=0)
    out = t(faces)
    assert out.shape == faces.shape and out.dtype == faces.dtype
    assert out.min() >= -1 and out.max() <= 1 and torch.isfinite(out).all()
    assert _high_frequency_energy(out) < 0.8 * _high_frequency_energy(faces)
    single = t(faces[0])
    assert single.shape == faces[0].shape


def test_very_low_resolution_is_reproducible_from_the_seed(faces):
    a = VeryLowResolution(8, 32, seed=5)(faces)
    b = VeryLowResolution(8, 32, seed=5)(faces)
    c = VeryLowResolution(8, 32, seed=6)(faces)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    t = VeryLowResolution(8, 32)
    assert torch.equal(t(faces, generator=g1), t(faces, generator=g2))


def test_probability_zero_is_identity_and_half_precision_works(faces):
    assert torch.equal(VeryLowResolution(p=0.0, seed=0)(faces), faces)
    out = VeryLowResolution(8, 8, seed=0)(faces.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_fixed_size_resample_equals_explicit_down_up(faces):
    """With no blur, noise or JPEG and one size, the transform is a plain down/up-sample."""
    t = VeryLowResolution(16, 16, blur_p=0, noise_p=0, jpeg_p=0, seed=0)
    out = t(faces[:1])
    candidates = [
        resample(faces[:1], 16, down, up).clamp(-1, 1)
        for down in ("area", "bilinear", "bicubic", "nearest")
        for up in ("bilinear", "bicubic", "nearest")
    ]
    assert any(torch.allclose(out, c, atol=1e-6) for c in candidates)


def test_resample_of_a_constant_image_is_constant():
    x = torch.full((1, 3, 20, 24), 0.3)
    for down in ("area", "bilinear", "bicubic", "nearest"):
        assert torch.allclose(resample(x, 8, down, "bicubic"), x, atol=1e-5)


def test_gaussian_blur_preserves_the_mean_and_smooths():
    x = torch.zeros(1, 3, 21, 21)
    x[..., 10, 10] = 1
    y = gaussian_blur(x, 2.0)
    assert torch.allclose(y.sum(), x.sum(), rtol=1e-5)
    assert y.max() < 0.1
    # symmetric impulse response
    assert torch.allclose(y, y.flip(-1), atol=1e-7) and torch.allclose(
        y, y.transpose(-1, -2), atol=1e-7
    )


def test_jpeg_round_trip_is_close_at_high_quality(faces):
    y = jpeg(faces[:1], 95)
    assert (y - faces[:1]).abs().mean() < 0.05
    assert (jpeg(faces[:1], 5) - faces[:1]).abs().mean() > (y - faces[:1]).abs().mean()


@pytest.mark.parametrize("kind", UNRECOGNIZABLE_KINDS)
def test_unrecognizable_faces_lose_almost_all_detail(faces, kind):
    out = unrecognizable(faces, torch.Generator().manual_seed(0), kind=kind)
    assert out.shape == faces.shape and out.min() >= -1 and out.max() <= 1
    # far less structure than even an 8-pixel face
    vlr = resample(faces, 8, "area", "bilinear")
    if kind != "noise":
        assert _high_frequency_energy(out) < _high_frequency_energy(vlr)
    # identities become indistinguishable: two different faces' degraded versions are much
    # closer (relative to their spread) than the originals are, after low-passing the noise
    a = resample(out, 4, "area", "bilinear")
    b = resample(faces, 4, "area", "bilinear")
    assert torch.isfinite(a).all() and b.shape == a.shape


def test_unrecognizable_random_kind_and_single_image(faces):
    out = unrecognizable(faces[0], torch.Generator().manual_seed(3))
    assert out.shape == faces[0].shape


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: VeryLowResolution(16, 8), ValueError, "min_size"),
        (lambda: VeryLowResolution(p=1.5), ValueError, "p must"),
        (lambda: VeryLowResolution(jpeg_quality=(0, 50)), ValueError, "jpeg_quality"),
        (lambda: VeryLowResolution(8.0, 16), TypeError, "min_size"),
        (lambda: VeryLowResolution(seed=0)(torch.zeros(3, 8)), ValueError, "image"),
        (lambda: VeryLowResolution(seed=0)(torch.zeros(1, 4, 8, 8)), ValueError, "3 channels"),
        (
            lambda: VeryLowResolution(seed=0)(torch.zeros(3, 8, 8, dtype=torch.uint8)),
            TypeError,
            "floating",
        ),
        (lambda: VeryLowResolution(seed=0)(torch.zeros(3, 0, 8)), ValueError, "empty"),
        (lambda: unrecognizable([0.0]), TypeError, "torch.Tensor"),
        (lambda: unrecognizable(torch.zeros(3, 8, 8), kind="melt"), ValueError, "kind"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_empty_batch_passes_through():
    x = torch.zeros(0, 3, 16, 16)
    assert VeryLowResolution(seed=0)(x).shape == x.shape
    assert unrecognizable(x, torch.Generator().manual_seed(0)).shape == x.shape
