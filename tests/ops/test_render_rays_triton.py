"""kernels/render.py -- the Triton kernels of the fused renderer -- against render_rays_reference.

The kernels are called directly with the kernel-level contract's prepared inputs (channels-last
planes, the folded projection, flat depths and noise); the expected values are the unfused
reference's, and the expected gradients come from autograd through it. On the CPU they run in
Triton's interpreter at small sizes; the ``cuda``-marked tests run the compiled kernels at the
paper's sizes.
"""

from __future__ import annotations

import pytest
import torch

from portrait_engine.kernels import render as kernels
from portrait_engine.kernels._launch import interpreting
from portrait_engine.ops.reference import render_rays_reference
from portrait_engine.ops.reference.render import COLOR_ACTIVATIONS
from portrait_engine.ops.triplane import _projection
from tests.helpers import assert_close, relative_l2

interpreter_only = pytest.mark.skipif(
    not interpreting(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1"
)

GRAD_NAMES = ("planes", "points", "w1", "b1", "w2", "b2")


# --- inputs ------------------------------------------------------------------------------------


def make_inputs(
    kind,
    *,
    batch=2,
    rays=7,
    samples=6,
    channels=8,
    hidden=16,
    out=4,
    resolution=(8, 8),
    grid_depth=4,
    box_warp=1.0,
    crop=0.1,
    seed=0,
    device="cpu",
    plane_dtype=torch.float32,
):
    """Reference-layout inputs: planes ``(B, 3, C, H, W)`` or ``(B, 3, C, D, H, W)``, points
    ``(B, R, S, 3)``, ascending depths ``(B, R, S)``, decoder weights, noise ``(B, R, S)``.

    Ray (0, 0) lies wholly outside the crop (inside the planes' box): with a crop its weights
    are all zero and its depth NaN. Ray (0, 1) lies outside the planes' box: its features are
    zero, its density the decoder's bias. The others mix points inside and outside the box.
    """
    g = torch.Generator().manual_seed(seed)
    height, width = resolution
    if kind == "triplane":
        shape = (batch, 3, channels, height, width)
    else:
        shape = (batch, 3, channels, grid_depth, height, width)
    planes = torch.randn(shape, generator=g).to(plane_dtype)
    points = (torch.rand(batch, rays, samples, 3, generator=g) - 0.5) * 0.85 * box_warp
    # one point in ten beyond the planes' box (zero padding) and mostly beyond the crop
    beyond = torch.rand(batch, rays, samples, 1, generator=g) < 0.1
    points = torch.where(beyond, points * 1.6, points)
    limit = box_warp / 2 - crop
    if rays >= 2 and batch >= 1:
        # x in (limit, box_warp / 2): sampled from the planes, cropped away
        points[0, 0, :, 0] = limit + (box_warp / 2 - limit) * torch.linspace(0.2, 0.9, samples)
        points[0, 1, :, 0] = 0.8 * box_warp
    depths = 1.0 + torch.cumsum(0.05 + 0.4 * torch.rand(batch, rays, samples, generator=g), -1)
    w1 = torch.randn(hidden, channels, generator=g) / channels**0.5
    b1 = 0.3 * torch.randn(hidden, generator=g)
    w2 = torch.randn(1 + out, hidden, generator=g) / hidden**0.5
    b2 = 0.3 * torch.randn(1 + out, generator=g)
    b2[0] += 1.5  # densities of order 1: weights neither all ~0 nor all on the first interval
    noise = 0.5 * torch.randn(batch, rays, samples, generator=g)
    tensors = dict(
        planes=planes, points=points, depths=depths, w1=w1, b1=b1, w2=w2, b2=b2, noise=noise
    )
    return {k: v.to(device) for k, v in tensors.items()}


def make_output_grads(inputs, full_weights, seed=1):
    """Random upstream gradients of (features, depth_raw, weights), on the inputs' device."""
    g = torch.Generator().manual_seed(seed)
    batch, rays, samples, _ = inputs["points"].shape
    out = inputs["w2"].shape[0] - 1
    n_weights = samples - 1 if full_weights else 1
    grads = (
        torch.randn(batch, rays, out, generator=g),
        torch.randn(batch, rays, 1, generator=g),
        torch.randn(batch, rays, n_weights, generator=g),
    )
    return tuple(t.to(inputs["points"].device) for t in grads)


def kernel_args(inputs, *, plane_axes, box_warp, crop, use_noise):
    """The kernel-level contract's arguments: channels-last planes, projection, flat tensors."""
    planes = inputs["planes"]
    trilinear = planes.dim() == 6
    grid = planes if trilinear else planes.unsqueeze(3)
    channels_last = grid.permute(0, 1, 3, 4, 5, 2).contiguous()
    proj = _projection(plane_axes, box_warp, planes).to(inputs["points"].dtype)
    noise = inputs["noise"] if use_noise else inputs["points"].new_empty(0)
    tensors = (
        channels_last,
        inputs["points"].contiguous(),
        inputs["depths"].contiguous(),
        proj.contiguous(),
        inputs["w1"],
        inputs["b1"],
        inputs["w2"],
        inputs["b2"],
        noise,
    )
    return tensors, trilinear, crop > 0, box_warp / 2 - crop


def run_kernels(inputs, grads, flags, deterministic=False):
    """Forward then backward through the kernels; gradients in the reference's layout."""
    tensors, trilinear, use_crop, limit = kernel_args(
        inputs,
        plane_axes=flags["plane_axes"],
        box_warp=flags["box_warp"],
        crop=flags["crop"],
        use_noise=flags["noise"],
    )
    activation = COLOR_ACTIVATIONS.index(flags["color_activation"])
    modes = (flags["white_back"], flags["scale_rgb"], activation, flags["full_weights"])
    outputs = kernels.render_rays_forward(*tensors, trilinear, use_crop, limit, *modes)
    grad_in = kernels.render_rays_backward(
        *grads, *tensors, *outputs, trilinear, use_crop, limit, *modes, deterministic
    )
    grad_planes = grad_in[0].permute(0, 1, 5, 2, 3, 4)  # (B, P, C, D, H, W)
    if not trilinear:
        grad_planes = grad_planes[:, :, :, 0]
    return outputs, (grad_planes, *grad_in[1:])


def run_reference(inputs, grads, flags):
    """The reference's ``(features, depth_raw, weights)`` and autograd gradients of
    ``Σ g_F F + Σ g_D depth_raw + Σ g_W weights`` (an empty ray's NaN depth excluded)."""
    leaves = {
        name: inputs[name].detach().clone().requires_grad_()
        for name in ("planes", "points", "w1", "b1", "w2", "b2")
    }
    features, _, weights = render_rays_reference(
        leaves["planes"],
        leaves["points"],
        inputs["depths"][..., None],
        leaves["w1"],
        leaves["b1"],
        leaves["w2"],
        leaves["b2"],
        box_warp=flags["box_warp"],
        plane_axes=flags["plane_axes"],
        white_back=flags["white_back"],
        scale_rgb=flags["scale_rgb"],
        color_activation=flags["color_activation"],
        noise=inputs["noise"][..., None] if flags["noise"] else None,
        crop=flags["crop"],
        weights_mode="full",
    )
    weights = weights[..., 0]  # (B, R, S - 1)
    depths = inputs["depths"]
    total = weights.sum(-1, keepdim=True)
    depth_sum = (weights * (depths[..., 1:] + depths[..., :-1]) / 2).sum(-1, keepdim=True)
    depth_raw = depth_sum / total  # NaN where Σ w = 0, as the kernels' contract
    weights_out = weights if flags["full_weights"] else total

    grad_features, grad_depth, grad_weights = grads
    empty = total == 0
    finite_depth = torch.where(empty, 0.0, depth_sum / torch.where(empty, 1.0, total))
    loss = (
        (features * grad_features).sum()
        + (finite_depth * grad_depth).sum()
        + (weights_out * grad_weights).sum()
    )
    loss.backward()
    outputs = (features.detach(), depth_raw.detach(), weights_out.detach())
    return outputs, tuple(leaves[name].grad for name in GRAD_NAMES)


def flags_of(plane_axes="eg3d", box_warp=1.0, **kw):
    flags = dict(
        plane_axes=plane_axes,
        box_warp=box_warp,
        white_back=False,
        scale_rgb=True,
        color_activation="sigmoid",
        full_weights=False,
        noise=False,
        crop=0.0,
    )
    flags.update(kw)
    return flags


def check_against_reference(got, want, dtype=torch.float32, scale=1.0):
    (out, grad_in), (out_ref, grad_ref) = got, want
    for name, a, e in zip(("features", "depth_raw", "weights"), out, out_ref, strict=True):
        assert a.dtype == e.dtype, name
        assert_close(a, e, dtype, scale=scale)
    for name, a, e in zip(GRAD_NAMES, grad_in, grad_ref, strict=True):
        assert torch.isfinite(a).all(), f"grad_{name} has non-finite values"
        assert_close(a.to(e.dtype), e, dtype, scale=scale)
        # whole-tensor check: a missing gradient cannot hide behind a sparse one
        assert relative_l2(a, e) < 1e-5 * scale, f"grad_{name}: relative L2 {relative_l2(a, e)}"


# --- the interpreter: every mode against the reference -------------------------------------


CASES = [
    # (kind, sizes, flags)
    ("triplane", {}, flags_of()),
    (
        "triplane",
        {},
        flags_of(white_back=True, scale_rgb=False, full_weights=True, noise=True, crop=0.1),
    ),
    ("triplane", {}, flags_of("panohead", 0.8, white_back=True, scale_rgb=True, crop=0.1)),
    ("trigrid", {}, flags_of("panohead", full_weights=True, noise=True, crop=0.1)),
    ("trigrid", {}, flags_of("panohead", 1.3, white_back=True, scale_rgb=False)),
    # sizes that are not powers of two (padded and masked tiles), EG3D axes on a tri-grid
    (
        "trigrid",
        dict(channels=5, hidden=12, out=3, resolution=(6, 10), grid_depth=3),
        flags_of(full_weights=True, scale_rgb=False, crop=0.1),
    ),
    # 3DPortraitGAN's colour activations: none (its published decoder) and PanoHead's lrelu
    ("triplane", {}, flags_of(color_activation="none", full_weights=True, noise=True, crop=0.1)),
    ("trigrid", {}, flags_of("panohead", color_activation="none", white_back=True)),
    ("triplane", {}, flags_of("panohead", color_activation="lrelu", noise=True, crop=0.1)),
    (
        "trigrid",
        dict(channels=5, hidden=12, out=3, resolution=(6, 10), grid_depth=3),
        flags_of(color_activation="lrelu", full_weights=True, scale_rgb=False),
    ),
]
CASE_IDS = [
    "triplane-eg3d",
    "triplane-eg3d-whiteback-full-noise-crop",
    "triplane-panohead-whiteback-crop",
    "trigrid-panohead-full-noise-crop",
    "trigrid-panohead-whiteback-noscale",
    "trigrid-eg3d-odd-sizes-full-crop",
    "triplane-eg3d-none-full-noise-crop",
    "trigrid-panohead-none-whiteback",
    "triplane-panohead-lrelu-noise-crop",
    "trigrid-eg3d-odd-sizes-lrelu-full",
]


@interpreter_only
@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize(("kind", "sizes", "flags"), CASES, ids=CASE_IDS)
def test_kernels_match_reference(kind, sizes, flags):
    inputs = make_inputs(kind, box_warp=flags["box_warp"], crop=flags["crop"] or 0.1, **sizes)
    grads = make_output_grads(inputs, flags["full_weights"])
    got = run_kernels(inputs, grads, flags)
    want = run_reference(inputs, grads, flags)
    check_against_reference(got, want)
    features, depth_raw, weights = got[0]
    if flags["crop"] > 0:
        # ray (0, 0) is cropped away: no weight at all, a NaN depth, and its (non-zero) depth
        # gradient passed nothing (the gradients above are finite and match)
        assert torch.all(weights[0, 0] == 0)
        assert torch.isnan(depth_raw[0, 0]).all()
        # (a ray is empty when each of its intervals has a cropped end: rare by construction)
        assert torch.isfinite(depth_raw.flatten()[2:]).float().mean() > 0.75


@interpreter_only
def test_empty_ray_nan_depth_gradient_contributes_nothing():
    flags = flags_of(crop=0.1, full_weights=True)
    inputs = make_inputs("triplane")
    grad_features, grad_depth, grad_weights = make_output_grads(inputs, True)
    only_empty = torch.zeros_like(grad_depth)
    only_empty[0, 0] = 3.0  # the cropped ray, whose depth_raw is NaN
    grads = (torch.zeros_like(grad_features), only_empty, torch.zeros_like(grad_weights))
    (_, depth_raw, _), grad_in = run_kernels(inputs, grads, flags)
    assert torch.isnan(depth_raw[0, 0]).all()
    for name, grad in zip(GRAD_NAMES, grad_in, strict=True):
        assert torch.equal(grad, torch.zeros_like(grad)), f"grad_{name} is not exactly zero"


@interpreter_only
@pytest.mark.parametrize("full_weights", [False, True])
def test_zero_rays(full_weights):
    flags = flags_of(full_weights=full_weights)
    inputs = make_inputs("triplane", rays=0)
    grads = make_output_grads(inputs, full_weights)
    (features, depth_raw, weights), grad_in = run_kernels(inputs, grads, flags)
    assert features.shape == (2, 0, 4)
    assert depth_raw.shape == (2, 0, 1)
    assert weights.shape == (2, 0, 5 if full_weights else 1)
    for name, grad in zip(GRAD_NAMES, grad_in, strict=True):
        assert grad.shape == inputs[name].shape
        assert torch.count_nonzero(grad) == 0


@interpreter_only
@pytest.mark.usefixtures("poison_outputs")
def test_deterministic_plane_gradients_are_bit_identical_and_correct():
    flags = flags_of("panohead", full_weights=True, noise=True, crop=0.1)
    inputs = make_inputs("trigrid")
    grads = make_output_grads(inputs, True)
    first = run_kernels(inputs, grads, flags, deterministic=True)
    second = run_kernels(inputs, grads, flags, deterministic=True)
    for a, b in zip(first[1], second[1], strict=True):
        assert torch.equal(a, b)
    check_against_reference(first, run_reference(inputs, grads, flags))
    # the atomic path computes the same sums in another order
    atomic = run_kernels(inputs, grads, flags, deterministic=False)
    assert_close(first[1][0], atomic[1][0], torch.float32)


@interpreter_only
@pytest.mark.usefixtures("poison_outputs")
def test_several_ray_blocks_per_program(monkeypatch):
    """GPU-like launch: blocks of 16 rays that straddle batch elements, and a persistent
    backward grid where a program walks two blocks, one of them past the last ray."""
    monkeypatch.setattr(kernels, "_block_rays", lambda n_rays, backward: (16, 4))
    monkeypatch.setattr(kernels, "_backward_programs", lambda n_blocks, device: 2)
    flags = flags_of("panohead", white_back=True, noise=True, crop=0.1)
    inputs = make_inputs("triplane", rays=20, samples=4)  # 40 rays: 3 blocks, 2 programs
    grads = make_output_grads(inputs, False)
    check_against_reference(run_kernels(inputs, grads, flags), run_reference(inputs, grads, flags))


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_planes(dtype):
    """Half planes: fp16 dot operands (the feature tile and the decoder weights are rounded to
    fp16); bf16 runs fp32 dots in the interpreter (see ``_dot_config``). The reference samples
    the same half values in fp32, so the difference is the operand rounding."""
    flags = flags_of("panohead", full_weights=True, crop=0.1)
    inputs = make_inputs("trigrid", plane_dtype=dtype)
    grads = make_output_grads(inputs, True)
    (out, grad_in), (out_ref, grad_ref) = (
        run_kernels(inputs, grads, flags),
        run_reference(inputs, grads, flags),
    )
    for a, e in zip(out, out_ref, strict=True):
        assert a.dtype == torch.float32
        assert_close(a, e, dtype)
    assert grad_in[0].dtype == torch.float32
    for name, a, e in zip(GRAD_NAMES, grad_in, grad_ref, strict=True):
        assert relative_l2(a, e.float()) < 1e-2, name


# --- on a GPU, at the paper's sizes ------------------------------------------------------------


def _gpu_case(plane_dtype, kind="trigrid"):
    resolution = (64, 64)
    inputs = make_inputs(
        kind,
        batch=2,
        rays=300,
        samples=96,
        channels=32,
        hidden=64,
        out=32,
        resolution=resolution,
        grid_depth=16,
        plane_dtype=plane_dtype,
        device="cuda",
    )
    # the paper's depth range, 96 samples (48 coarse + 48 fine merged)
    g = torch.Generator().manual_seed(3)
    steps = torch.rand(2, 300, 96, generator=g) * (2 * 0.45 / 96)
    inputs["depths"] = (2.25 + torch.cumsum(steps, -1)).cuda()
    return inputs


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["triplane", "trigrid"])
@pytest.mark.parametrize("full_weights", [False, True])
def test_gpu_fp32_ieee_matches_reference(monkeypatch, kind, full_weights):
    monkeypatch.setattr(kernels, "FP32_DOT_PRECISION", "ieee")
    axes = "eg3d" if kind == "triplane" else "panohead"
    flags = flags_of(axes, full_weights=full_weights, noise=True, crop=0.1, white_back=True)
    inputs = _gpu_case(torch.float32, kind)
    grads = make_output_grads(inputs, full_weights)
    got = run_kernels(inputs, grads, flags)
    want = run_reference(inputs, grads, flags)
    # 96 samples × 64 hidden units summed in another order than cuBLAS / autograd: the
    # per-element tolerance grows with the reduction length (FlagGems' habit)
    check_against_reference(got, want, scale=20.0)


@pytest.mark.cuda
def test_gpu_fp32_tf32_close_to_reference():
    flags = flags_of("panohead", full_weights=False, noise=True, crop=0.1)
    inputs = _gpu_case(torch.float32)
    grads = make_output_grads(inputs, False)
    (out, grad_in), (out_ref, grad_ref) = (
        run_kernels(inputs, grads, flags),
        run_reference(inputs, grads, flags),
    )
    # tf32 keeps 10 mantissa bits of the dot operands: ~1e-3 relative error per product
    for a, e in zip(out, out_ref, strict=True):
        assert relative_l2(torch.nan_to_num(a), torch.nan_to_num(e)) < 5e-3
    for name, a, e in zip(GRAD_NAMES, grad_in, grad_ref, strict=True):
        assert relative_l2(a, e) < 1e-2, name


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_half_planes_close_to_reference(dtype):
    flags = flags_of("panohead", full_weights=True, crop=0.1)
    inputs = _gpu_case(dtype)
    grads = make_output_grads(inputs, True)
    (out, grad_in), (out_ref, grad_ref) = (
        run_kernels(inputs, grads, flags),
        run_reference(inputs, grads, flags),
    )
    for a, e in zip(out, out_ref, strict=True):
        assert a.dtype == torch.float32
        assert relative_l2(torch.nan_to_num(a), torch.nan_to_num(e)) < 2e-2
    for name, a, e in zip(GRAD_NAMES, grad_in, grad_ref, strict=True):
        assert relative_l2(a, e.float()) < 4e-2, name


@pytest.mark.cuda
def test_gpu_deterministic_plane_gradients():
    flags = flags_of("panohead", full_weights=True, noise=True, crop=0.1)
    inputs = _gpu_case(torch.bfloat16)
    grads = make_output_grads(inputs, True)
    first = run_kernels(inputs, grads, flags, deterministic=True)[1]
    second = run_kernels(inputs, grads, flags, deterministic=True)[1]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    atomic = run_kernels(inputs, grads, flags)[1]
    assert relative_l2(first[0], atomic[0]) < 1e-5
