"""render_rays: every backend against the reference (sample + decode + march), forward and
backward (planes, decoder weights, points), and the edge cases."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import portrait_engine as pe
from portrait_engine.models.portrait_gan.generator import PortraitDecoder
from portrait_engine.nn import OSGDecoder
from portrait_engine.ops import render_rays
from portrait_engine.ops.reference import (
    decode_reference,
    decoder_effective_weights,
    render_rays_reference,
)
from tests.helpers import assert_close, relative_l2


def _kernel_param(name):
    ok, reason = pe.backend_status("cpu", "render_rays_forward")[name]
    missing = importlib.util.find_spec("portrait_engine.kernels.render") is None
    if ok and name == "triton" and missing:
        ok, reason = False, "portrait_engine.kernels.render (the Triton render kernel) is missing"
    return pytest.param(name, marks=pytest.mark.skipif(not ok, reason=reason))


KERNEL_BACKENDS = [_kernel_param("triton"), _kernel_param("native")]
ALL_BACKENDS = [pytest.param("torch")] + KERNEL_BACKENDS
KINDS = ["triplane", "trigrid"]


def make_inputs(
    kind="triplane",
    batch=2,
    rays=5,
    samples=6,
    channels=8,
    hidden=16,
    out=4,
    size=7,
    dtype=torch.float32,
    seed=0,
    spread=0.6,
):
    """Planes, points (some outside the box), ascending depths and an OSG decoder."""
    generator = torch.Generator().manual_seed(seed)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    if kind == "triplane":
        shape = (batch, 3, channels, size, size)
    else:
        shape = (batch, 3, channels, 3, size, size + 1)
    planes = torch.randn(shape, generator=generator, dtype=compute).to(dtype)
    points = torch.rand(batch, rays, samples, 3, generator=generator, dtype=compute) - 0.5
    points = points * 2 * spread
    steps = torch.rand(batch, rays, samples, 1, generator=generator, dtype=compute) + 0.05
    depths = 2.0 + torch.cumsum(steps * 0.1, dim=2)
    torch.manual_seed(seed)
    decoder = OSGDecoder(channels, out, hidden_dim=hidden).to(compute)
    with torch.no_grad():
        decoder.net[2].bias[0] = 1.5  # some density, so that the weights are not all tiny
        decoder.net[2].bias[1:].normal_(0, 0.5, generator=generator)
        decoder.net[0].bias.normal_(0, 0.5, generator=generator)
    return planes, points, depths, decoder


def reference(planes, points, depths, decoder, **kwargs):
    noise = kwargs.pop("density_noise", None)
    if isinstance(noise, torch.Tensor):
        kwargs["noise"] = noise
    weights = kwargs.pop("weights", "sum")
    return render_rays_reference(
        planes, points, depths, *decoder_effective_weights(decoder), weights_mode=weights, **kwargs
    )


def reference_gradients(planes, points, depths, decoder, **kwargs):
    """Gradients of the float64 reference w.r.t. (planes, points, *decoder parameters): the
    oracle of the fp32 kernels' gradients (the fused backward's suffix sums are a total minus a
    prefix, so its fp32 rounding is relative to the ray's total, not to each term)."""
    import copy

    decoder64 = copy.deepcopy(decoder).double()
    planes64 = planes.detach().double().requires_grad_(True)
    points64 = points.detach().double().requires_grad_(True)
    noise = kwargs.get("density_noise")
    if isinstance(noise, torch.Tensor):
        kwargs = {**kwargs, "density_noise": noise.double()}
    out = reference(planes64, points64, depths.double(), decoder64, **kwargs)
    return gradients(out, [planes64, points64, *decoder64.parameters()])


def gradients(outputs, inputs, seed=1):
    generator = torch.Generator().manual_seed(seed)
    loss = sum((out * torch.randn(out.shape, generator=generator).to(out)).sum() for out in outputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def check_against_reference(planes, points, depths, decoder, backend, **kwargs):
    """``render_rays`` on ``backend`` against the reference: outputs at float32 tolerance, and
    the gradients of planes, points and decoder as whole tensors (so that a missing gradient
    cannot hide behind a sparse one) and elementwise."""
    got = render_rays(planes, points, depths, decoder, backend=backend, **kwargs)
    want = reference(planes, points, depths, decoder, **kwargs)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float32, scale=2)
    params = [planes, points, *decoder.parameters()]
    grads_got = gradients(got, params)
    grads_want = reference_gradients(planes, points, depths, decoder, **kwargs)
    for g, w in zip(grads_got, grads_want, strict=True):
        assert relative_l2(g, w) < 1e-4
        assert_close(g, w, torch.float32, scale=10)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("plane_axes", ["eg3d", "panohead"])
@pytest.mark.parametrize("weights", ["sum", "full"])
def test_forward_and_backward_match_reference(backend, kind, plane_axes, weights, poison_outputs):
    planes, points, depths, decoder = make_inputs(kind, seed=3)
    planes.requires_grad_(True)
    points.requires_grad_(True)
    kwargs = dict(plane_axes=plane_axes, box_warp=1.1, weights=weights)
    check_against_reference(planes, points, depths, decoder, backend, **kwargs)


def portrait_decoder(decoder, activation):
    """3DPortraitGAN's decoder with ``decoder``'s weights and the colour ``activation``."""
    hidden = decoder.net[0].weight.shape[0]
    portrait = PortraitDecoder(
        decoder.n_features, decoder.net[2].weight.shape[0] - 1, hidden_dim=hidden,
        activation=activation,
    ).to(decoder.net[0].weight)  # fmt: skip
    portrait.load_state_dict(decoder.state_dict())
    return portrait


@pytest.mark.parametrize("activation", ["sigmoid", "none", "lrelu"])
def test_decode_reference_is_the_portrait_decoder(activation):
    """The reference's colour activation is the model's: PortraitDecoder on the same features."""
    _, _, _, decoder = make_inputs("triplane", seed=4)
    portrait = portrait_decoder(decoder, activation)
    features = torch.randn(2, 9, decoder.n_features, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = portrait(features)
        rgb, sigma = decode_reference(
            features, *decoder_effective_weights(portrait), color_activation=activation
        )
    assert bool((want["rgb"] < 0).any()) == (activation != "sigmoid")  # the activations differ
    torch.testing.assert_close(rgb, want["rgb"])
    torch.testing.assert_close(sigma, want["sigma"])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("activation", ["none", "lrelu"])
@pytest.mark.parametrize(("kind", "weights"), [("triplane", "full"), ("trigrid", "sum")])
def test_color_activations_match_reference(backend, activation, kind, weights, poison_outputs):
    """3DPortraitGAN's raw ("none") and PanoHead's lrelu colours, read from a PortraitDecoder,
    forward and backward against the float64 reference; with noise, crop and white_back."""
    planes, points, depths, osg = make_inputs(kind, seed=16)
    decoder = portrait_decoder(osg, activation)
    with torch.no_grad():
        # the first samples of every ray inside the crop: no ray has Σw = 0 (whose eager
        # reference gradients are NaN; see test_noise_and_crop)
        points[:, :, :3] *= 0.4
    planes.requires_grad_(True)
    points.requires_grad_(True)
    noise = torch.randn(depths.shape, generator=torch.Generator().manual_seed(16)) * 0.3
    kwargs = dict(plane_axes="panohead", crop=0.1, white_back=True, weights=weights)
    got = render_rays(
        planes, points, depths, decoder, density_noise=noise, backend=backend, **kwargs
    )
    want = reference(
        planes, points, depths, decoder, density_noise=noise, color_activation=activation,
        **kwargs,
    )  # fmt: skip
    sigmoid = reference(planes, points, depths, decoder, density_noise=noise, **kwargs)
    assert float((want[0] - sigmoid[0]).abs().max()) > 0.1  # the activation matters
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float32, scale=2)
    params = [planes, points, *decoder.parameters()]
    grads_got = gradients(got, params)
    grads_want = reference_gradients(
        planes, points, depths, decoder, density_noise=noise, color_activation=activation,
        **kwargs,
    )  # fmt: skip
    for g, w in zip(grads_got, grads_want, strict=True):
        assert relative_l2(g, w) < 1e-4
        assert_close(g, w, torch.float32, scale=10)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("activation", ["sigmoid", "none", "lrelu"])
def test_color_activation_of_weight_tuples(backend, activation):
    """Effective weights carry no activation: ``color_activation`` names it (default sigmoid)."""
    planes, points, depths, decoder = make_inputs("trigrid", seed=17)
    weights = decoder_effective_weights(decoder)
    with torch.no_grad():
        got = render_rays(
            planes, points, depths, weights, color_activation=activation, backend=backend
        )
        want = reference(planes, points, depths, decoder, color_activation=activation)
        default = render_rays(planes, points, depths, weights, backend=backend)
        sigmoid = reference(planes, points, depths, decoder)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float32, scale=2)
    for g, w in zip(default, sigmoid, strict=True):
        assert_close(g, w, torch.float32, scale=2)


def test_native_float64_gradcheck_color_activations():
    if not pe.backend_status("cpu", "render_rays_forward")["native"][0]:
        pytest.skip("native extension without render_rays")
    planes, points, depths, decoder = make_inputs(
        "triplane", batch=1, rays=2, samples=4, channels=3, hidden=5, out=2, size=4,
        dtype=torch.float64, seed=18,
    )  # fmt: skip
    w1, b1, w2, b2 = (t.detach().clone() for t in decoder_effective_weights(decoder))
    for activation in ("none", "lrelu"):

        def fn(planes, points, w1, b1, w2, b2, activation=activation):
            return render_rays(
                planes, points, depths, (w1, b1, w2, b2), color_activation=activation,
                weights="full", backend="native",
            )  # fmt: skip

        inputs = [t.detach().clone().requires_grad_(True) for t in (planes, points, w1, b1, w2, b2)]
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("white_back", [False, True])
@pytest.mark.parametrize("scale_rgb", [False, True])
def test_white_back_and_scale_rgb(backend, white_back, scale_rgb):
    planes, points, depths, decoder = make_inputs("triplane", seed=5)
    planes.requires_grad_(True)
    points.requires_grad_(True)
    kwargs = dict(white_back=white_back, scale_rgb=scale_rgb)
    got = render_rays(planes, points, depths, decoder, backend=backend, **kwargs)
    want = reference(planes, points, depths, decoder, **kwargs)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float32, scale=2)
    grads_want = reference_gradients(planes, points, depths, decoder, **kwargs)
    grads_got = gradients(got, [planes, points, *decoder.parameters()])
    for g, w in zip(grads_got, grads_want, strict=True):
        assert relative_l2(g, w) < 1e-4


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_noise_and_crop(backend, kind):
    planes, points, depths, decoder = make_inputs(kind, seed=7, spread=0.7)
    planes.requires_grad_(True)
    points.requires_grad_(True)
    with torch.no_grad():
        # the first samples of every ray inside the crop: no ray has Σw = 0, where the eager
        # reference's 0 / 0 gives NaN gradients (the kernels give the limit, 0)
        points[:, :, :3] *= 0.4
    noise = torch.randn(depths.shape, generator=torch.Generator().manual_seed(2)) * 0.7
    kwargs = dict(density_noise=noise, crop=0.15, box_warp=1.0, weights="full")
    inside = (points[..., 0].abs() <= 0.35) & (points[..., 2].abs() <= 0.35)
    assert 0 < int(inside.sum()) < inside.numel()  # the crop takes effect on some samples
    got = render_rays(planes, points, depths, decoder, backend=backend, **kwargs)
    want = reference(planes, points, depths, decoder, **kwargs)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float32, scale=2)
    grads_want = reference_gradients(planes, points, depths, decoder, **kwargs)
    grads_got = gradients(got, [planes, points, *decoder.parameters()])
    for g, w in zip(grads_got, grads_want, strict=True):
        assert relative_l2(g, w) < 1e-4


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_noise_drawn_from_generator(backend):
    planes, points, depths, decoder = make_inputs("triplane", seed=8)
    out = [
        render_rays(
            planes,
            points,
            depths,
            decoder,
            density_noise=0.8,
            generator=torch.Generator().manual_seed(seed),
            backend=backend,
        )[0]
        for seed in (4, 4, 5)
    ]
    noise = torch.randn(depths.shape, generator=torch.Generator().manual_seed(4)) * 0.8
    want = reference(planes, points, depths, decoder, density_noise=noise)[0]
    assert_close(out[0], want, torch.float32, scale=2)
    assert torch.equal(out[0], out[1])
    assert not torch.allclose(out[0], out[2])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_rays(backend):
    planes, points, depths, decoder = make_inputs("triplane", rays=0)
    planes.requires_grad_(True)
    features, depth, weights = render_rays(
        planes, points, depths, decoder, weights="full", backend=backend
    )
    assert features.shape == (2, 0, 4) and depth.shape == (2, 0, 1)
    assert weights.shape == (2, 0, 5, 1)
    (features.sum() + depth.sum()).backward()
    assert planes.grad is not None and not planes.grad.any()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_rays_without_weight(backend):
    """Rays whose Σw = 0 (no density): depth is the largest depth and no gradient is NaN."""
    planes, points, depths, decoder = make_inputs("triplane", seed=9)
    with torch.no_grad():
        decoder.net[2].bias[0] = -1e4  # softplus(σ - 1) = 0: α = 0 everywhere
    planes.requires_grad_(True)
    points.requires_grad_(True)
    got = render_rays(planes, points, depths, decoder, backend=backend)
    want = reference(planes, points, depths, decoder)
    assert float(got[2].detach().abs().max()) == 0.0
    assert torch.equal(got[1], torch.full_like(got[1], float(depths.max())))
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float32)
    params = [planes, points, *decoder.parameters()]
    for g in gradients(got, params):
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_planes(backend, dtype):
    planes, points, depths, decoder = make_inputs("trigrid", dtype=dtype, seed=11)
    planes.requires_grad_(True)
    got = render_rays(planes, points, depths, decoder, backend=backend)
    want = reference(planes, points, depths, decoder)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        # the same half-precision texels, read and accumulated in fp32 on both sides
        assert_close(g, w, torch.float32, scale=5)
    (gp,) = gradients(got, [planes])
    (wp,) = gradients(want, [planes])
    assert gp.dtype == dtype
    assert relative_l2(gp, wp) < 1e-2  # the gradient is rounded to the planes' dtype


def test_native_float64_gradcheck():
    if not pe.backend_status("cpu", "render_rays_forward")["native"][0]:
        pytest.skip("native extension without render_rays")
    planes, points, depths, decoder = make_inputs(
        "trigrid", batch=1, rays=2, samples=4, channels=3, hidden=5, out=2, size=4,
        dtype=torch.float64, seed=12,
    )  # fmt: skip
    w1, b1, w2, b2 = (t.detach().clone() for t in decoder_effective_weights(decoder))
    noise = torch.randn(depths.shape, dtype=torch.float64) * 0.3

    def fn(planes, points, w1, b1, w2, b2):
        return render_rays(
            planes, points, depths, (w1, b1, w2, b2), density_noise=noise, weights="full",
            white_back=True, backend="native",
        )  # fmt: skip

    inputs = [t.requires_grad_(True) for t in (planes, points, w1, b1, w2, b2)]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_deterministic_plane_gradients(backend):
    # Triton's interpreter (no GPU) runs the programs one after another, so it cannot race:
    # there the check is of the deterministic path's plumbing, at a third of the size and with
    # two runs (the full size took 56 s of CI's 12-minute pytest, 2026-11-27); on a GPU, the
    # full size and three runs
    interpreted = backend == "triton" and not torch.cuda.is_available()
    rays, count = (12, 2) if interpreted else (40, 3)
    planes, points, depths, decoder = make_inputs("trigrid", rays=rays, samples=12, seed=13)
    planes.requires_grad_(True)
    runs = []
    for _ in range(count):
        out = render_rays(planes, points, depths, decoder, deterministic=True, backend=backend)
        (grad,) = gradients(out, [planes])
        runs.append(grad)
    assert all(torch.equal(runs[0], other) for other in runs[1:])


def test_native_cpu_result_does_not_depend_on_threads():
    """1 to 8 threads: the planes' gradient scatter splits the 3 planes' rows into bands from
    4 threads on (two bands, three at 8); every result bitwise the same."""
    if not pe.backend_status("cpu", "render_rays_forward")["native"][0]:
        pytest.skip("native extension without render_rays")
    planes, points, depths, decoder = make_inputs("triplane", rays=70, samples=8, seed=14)
    planes.requires_grad_(True)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 4, 8):
            torch.set_num_threads(threads)
            out = render_rays(planes, points, depths, decoder, backend="native")
            results.append(gradients(out, [planes, *decoder.parameters()]))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(other, results[0], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
@pytest.mark.parametrize(
    ("kind", "channels", "hidden", "out", "samples"),
    [
        ("triplane", 32, 64, 32, 13),  # EG3D's decoder: the C = 32 instantiation, O = 33
        ("trigrid", 32, 64, 32, 8),
        ("triplane", 17, 20, 3, 9),  # sizes that are not whole 16-value chunks
        ("trigrid", 5, 16, 16, 2),
    ],
)
def test_native_cpu_isa_paths_and_sizes_match_reference(
    isa, kind, channels, hidden, out, samples, monkeypatch, poison_outputs
):
    """Each compiled path of the CPU kernel (PORTRAIT_ENGINE_CPU_ISA caps the run-time choice;
    a path the CPU lacks falls back to the widest it has), at EG3D's decoder sizes (the fixed
    32-channel loops; 33 outputs: 2 whole column chunks and a tail column of the register-tiled
    products) and at sizes that fill no chunk, with sample counts that leave partial row tiles
    (full tiles of 8 rows with AVX-512, 6 with AVX2, 3 with SSE2: 13 = 8 + 4 + 1, 6 + 6 + 1 and
    4 x 3 + 1; 9 = 8 + 1, 6 + 3, 3 x 3), against the reference, forward and backward."""
    if not pe.backend_status("cpu", "render_rays_forward")["native"][0]:
        pytest.skip("native extension without render_rays")
    monkeypatch.setenv("PORTRAIT_ENGINE_CPU_ISA", isa)
    planes, points, depths, decoder = make_inputs(
        kind, rays=11, samples=samples, channels=channels, hidden=hidden, out=out, seed=samples,
    )  # fmt: skip
    planes.requires_grad_(True)
    points.requires_grad_(True)
    noise = torch.randn(depths.shape, generator=torch.Generator().manual_seed(2)) * 0.3
    for weights in ("sum", "full"):
        kwargs = dict(density_noise=noise, weights=weights)
        check_against_reference(planes, points, depths, decoder, "native", **kwargs)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
@pytest.mark.parametrize(("channels", "samples"), [(32, 13), (5, 9)])
def test_native_cpu_isa_paths_float64(isa, channels, samples, monkeypatch, poison_outputs):
    """The float64 kernel (the gradcheck one) on each compiled path: its tile products hold 16
    doubles as 8, 4 or 2 vectors of the path's register width, in tiles of 1, 3 or 8 rows,
    against the float64 reference at float64 tolerance, forward and backward."""
    if not pe.backend_status("cpu", "render_rays_forward")["native"][0]:
        pytest.skip("native extension without render_rays")
    monkeypatch.setenv("PORTRAIT_ENGINE_CPU_ISA", isa)
    planes, points, depths, decoder = make_inputs(
        "triplane", rays=7, samples=samples, channels=channels, hidden=20, out=32,
        dtype=torch.float64, seed=samples + channels,
    )  # fmt: skip
    planes.requires_grad_(True)
    points.requires_grad_(True)
    for weights in ("sum", "full"):
        got = render_rays(planes, points, depths, decoder, backend="native", weights=weights)
        want = reference(planes, points, depths, decoder, weights=weights)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
        params = [planes, points, *decoder.parameters()]
        grads_got = gradients(got, params)
        grads_want = gradients(want, params)
        for g, w in zip(grads_got, grads_want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_decoder_given_as_effective_weights_gets_gradients():
    planes, points, depths, decoder = make_inputs("triplane", seed=15)
    weights = [t.detach().clone().requires_grad_(True) for t in decoder_effective_weights(decoder)]
    out = render_rays(planes, points, depths, weights)
    grads = gradients(out, weights)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: a.update(points=a["points"][..., :2]), ValueError, "points must have shape"),
        (lambda a: a.update(depths=a["depths"][:, :, :-1]), ValueError, "depths must have shape"),
        (
            lambda a: a.update(points=a["points"][:, :, :1], depths=a["depths"][:, :, :1]),
            ValueError,
            "S >= 2",
        ),
        (lambda a: a.update(planes=a["planes"][:1]), ValueError, "same batch size"),
        (lambda a: a.update(planes=a["planes"].int()), TypeError, "planes must be a floating"),
        (lambda a: a.update(points=a["points"].tolist()), TypeError, "points must be a torch"),
        (lambda a: a.update(decoder="mlp"), TypeError, "decoder must be"),
        (
            lambda a: a.update(decoder=OSGDecoder(5, 4, hidden_dim=16)),
            ValueError,
            "w1 must have shape",
        ),
        (lambda a: a.update(weights="mean"), ValueError, "weights must be one of"),
        (lambda a: a.update(crop=0.6), ValueError, "crop must be in"),
        (lambda a: a.update(box_warp=-1.0), ValueError, "box_warp must be a positive"),
        (lambda a: a.update(density_noise=-0.1), ValueError, "density_noise must be >= 0"),
        (
            lambda a: a.update(density_noise=torch.zeros(2, 5, 3, 1)),
            ValueError,
            "density_noise must be a number or a tensor of shape",
        ),
        (lambda a: a.update(white_back=1), TypeError, "white_back must be a bool"),
        (lambda a: a["points"].__setitem__((0, 1, 2, 0), float("nan")), ValueError, "points"),
        (lambda a: a["depths"].__setitem__((1, 0, 0, 0), float("inf")), ValueError, "depths"),
        (lambda a: a.update(plane_axes="xyz"), ValueError, "plane_axes must be one of"),
        (
            lambda a: a.update(color_activation="relu"),
            ValueError,
            "color_activation must be one of",
        ),
        (lambda a: a.update(color_activation=0), TypeError, "color_activation must be a str"),
        (
            lambda a: a.update(color_activation="none"),
            ValueError,
            "contradicts the decoder's activation 'sigmoid'",
        ),
        (
            lambda a: a.update(
                decoder=portrait_decoder(a["decoder"], "lrelu"), color_activation="sigmoid"
            ),
            ValueError,
            "contradicts the decoder's activation 'lrelu'",
        ),
    ],
)
def test_bad_inputs(change, error, match):
    planes, points, depths, decoder = make_inputs("triplane")
    args = dict(planes=planes, points=points, depths=depths, decoder=decoder)
    change(args)
    with pytest.raises(error, match=match):
        render_rays(
            args.pop("planes"), args.pop("points"), args.pop("depths"), args.pop("decoder"),
            **args,
        )  # fmt: skip


_NATIVE_OK = pe.backend_status("cpu", "render_rays_forward")["native"][0]


def _kernel_inputs():
    """Prepared kernel-level inputs (channels-last planes, proj, effective weights)."""
    planes = torch.randn(1, 3, 1, 4, 4, 8)
    points = torch.rand(1, 2, 3, 3) - 0.5
    depths = torch.linspace(1.0, 2.0, 3).expand(1, 2, 3).contiguous()
    proj = torch.eye(3).expand(3, 3, 3).contiguous() * 2
    w1, b1 = torch.randn(16, 8), torch.randn(16)
    w2, b2 = torch.randn(5, 16), torch.randn(5)
    return planes, points, depths, proj, w1, b1, w2, b2, torch.empty(0)


@pytest.mark.skipif(not _NATIVE_OK, reason="the native extension lacks render_rays")
def test_native_kernel_checks_its_contract():
    """Direct callers of the kernel-level ops get the host checks (csrc/render/checks.h)."""
    op = torch.ops.portrait_engine
    inputs = _kernel_inputs()
    flags = (False, False, 0.0, False, True)
    features, depth_raw, weights = op.render_rays_forward(*inputs, *flags, 0, False)
    assert features.shape == (1, 2, 4) and torch.isfinite(features).all()
    with pytest.raises(RuntimeError, match=r"render_rays \(cpu\): color_activation"):
        op.render_rays_forward(*inputs, *flags, 7, False)
    bad_w1 = list(inputs)
    bad_w1[4] = torch.randn(16, 7)
    with pytest.raises(RuntimeError, match=r"render_rays \(cpu\): w1 must be \(Hd, C\)"):
        op.render_rays_forward(*bad_w1, *flags, 0, False)
    grads = (torch.ones_like(features), torch.zeros_like(depth_raw), torch.zeros(1, 2, 2))
    with pytest.raises(RuntimeError, match=r"render_rays \(cpu\): grad_weights must be"):
        op.render_rays_backward(
            *grads, *inputs, features, depth_raw, weights, *flags, 0, False, False
        )
