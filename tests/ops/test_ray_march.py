"""ray_march: every backend against the reference and against a float64 front-to-back loop."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.ops import ray_march
from portrait_engine.ops.reference import ray_march_reference
from tests.helpers import assert_close, relative_l2

NATIVE_OP = "ray_march_forward"


def _backend_param(name):
    ok, reason = pe.backend_status("cpu", NATIVE_OP)[name]
    return pytest.param(name, marks=pytest.mark.skipif(not ok, reason=reason))


KERNEL_BACKENDS = [_backend_param("triton"), _backend_param("native")]
ALL_BACKENDS = [pytest.param("torch")] + KERNEL_BACKENDS
FLAGS = [(False, True), (True, True), (False, False), (True, False)]
FLAG_IDS = ["eg3d", "white_back", "raw_rgb", "white_back-raw_rgb"]


def make_inputs(
    batch=2,
    rays=5,
    samples=7,
    channels=3,
    seed=0,
    dtype=torch.float32,
    density_scale=3.0,
    density_shift=0.0,
):
    """Colours, densities and increasing depths (jittered linspace, like EG3D's coarse pass)."""
    generator = torch.Generator().manual_seed(seed)
    colors = torch.randn(batch, rays, samples, channels, generator=generator)
    densities = density_scale * torch.randn(batch, rays, samples, 1, generator=generator)
    densities = densities + density_shift
    steps = torch.rand(batch, rays, samples, 1, generator=generator) * 0.1 + 0.02
    depths = 2.25 + torch.cumsum(steps, dim=2)
    return colors.to(dtype), densities.to(dtype), depths.to(dtype)


def float64_oracle(colors, densities, depths, white_back=False, scale_rgb=True):
    """The MipRayMarcher2 formulas as an explicit front-to-back loop, in float64."""
    colors, densities, depths = (t.double() for t in (colors, densities, depths))
    samples = colors.shape[2]
    transmittance = torch.ones(colors.shape[:2] + (1,), dtype=torch.float64)
    rgb = torch.zeros(colors.shape[:2] + colors.shape[3:], dtype=torch.float64)
    total = torch.zeros_like(transmittance)
    weighted_depth = torch.zeros_like(transmittance)
    weights = []
    for i in range(samples - 1):
        delta = depths[:, :, i + 1] - depths[:, :, i]
        sigma = torch.nn.functional.softplus((densities[:, :, i] + densities[:, :, i + 1]) / 2 - 1)
        alpha = 1 - torch.exp(-sigma * delta)
        weight = alpha * transmittance
        transmittance = transmittance * (1 - alpha + 1e-10)
        rgb = rgb + weight * (colors[:, :, i] + colors[:, :, i + 1]) / 2
        weighted_depth = weighted_depth + weight * (depths[:, :, i] + depths[:, :, i + 1]) / 2
        total = total + weight
        weights.append(weight)
    # Σ w = 0 gives NaN -> inf in EG3D; the safe divisor keeps 0 / 0 out of the backward
    depth = weighted_depth / torch.where(total > 0, total, 1.0)
    depth = torch.where(total > 0, depth, float("inf"))
    depth = depth.clamp(depths.min(), depths.max())
    if white_back:
        rgb = rgb + 1 - total
    if scale_rgb:
        rgb = rgb * 2 - 1
    stacked = torch.stack(weights, dim=2) if weights else depths[:, :, :0]
    return rgb, depth, stacked


def run(backend, colors, densities, depths, white_back=False, scale_rgb=True, grad_seed=7):
    """Outputs and the gradients of colors and densities for random output gradients."""
    colors = colors.detach().clone().requires_grad_()
    densities = densities.detach().clone().requires_grad_()
    if backend == "oracle":
        outputs = float64_oracle(colors, densities, depths, white_back, scale_rgb)
    else:
        outputs = ray_march(
            colors, densities, depths, white_back=white_back, scale_rgb=scale_rgb, backend=backend
        )
    generator = torch.Generator().manual_seed(grad_seed)
    grads = [torch.randn(o.shape, generator=generator).to(o) for o in outputs]
    pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if o.requires_grad]
    if pairs:
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    input_grads = [torch.zeros_like(x) if x.grad is None else x.grad for x in (colors, densities)]
    return [o.detach() for o in outputs] + input_grads


NAMES = ("rgb", "depth", "weights", "grad_colors", "grad_densities")


def assert_all_close(got, want, dtype, scale=1.0):
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert g.dtype == dtype, name
        try:
            assert_close(g, w, dtype, scale=scale)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
@pytest.mark.parametrize("samples", [1, 2, 3, 24])
def test_matches_float64_oracle(backend, flags, samples):
    inputs = make_inputs(samples=samples, channels=5, seed=samples)
    got = run(backend, *inputs, *flags)
    want = run("oracle", *inputs, *flags)
    assert_all_close(got, [w.float() for w in want], torch.float32)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("channels", [1, 32, 33])
def test_matches_reference_at_renderer_shapes(backend, channels):
    inputs = make_inputs(batch=2, rays=9, samples=48, channels=channels, seed=channels)
    got = run(backend, *inputs)
    want = run("torch", *inputs)
    assert_all_close(got, want, torch.float32)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(backend, dtype):
    inputs = make_inputs(samples=16, channels=8, dtype=dtype)
    got = run(backend, *inputs, True, False)
    want = run("torch", *inputs, True, False)
    assert_all_close(got, want, dtype)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_rays_give_the_largest_depth(backend):
    """All densities very negative: no weight anywhere, depth = max(depths) (EG3D's NaN -> inf)."""
    colors, densities, depths = make_inputs(samples=6)
    densities = torch.full_like(densities, -1e4)
    rgb, depth, weights, grad_colors, _ = run(backend, colors, densities, depths)
    assert (weights == 0).all()
    assert torch.equal(depth, torch.full_like(depth, depths.max().item()))
    assert torch.equal(rgb, torch.full_like(rgb, -1.0))
    assert torch.equal(grad_colors, torch.zeros_like(grad_colors))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_empty_rays_have_finite_density_gradients(backend):
    """Σ w = 0: the kernels give the depth (a constant there) zero gradient.

    Eager EG3D (the torch backend) differentiates 0 / 0 there and gets NaN; the kernels give
    what that gives without the depth gradient.
    """
    colors, densities, depths = make_inputs(samples=6)
    densities[:, :2] = -1e4
    got = run(backend, colors, densities, depths)
    assert torch.isfinite(got[4]).all()
    assert torch.isnan(run("torch", colors, densities, depths)[4][:, :2]).any()
    want = run("oracle", colors, densities, depths)  # its depth divides by Σ w only where > 0
    assert_all_close(got, [w.float() for w in want], torch.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_opaque_rays_keep_finite_accurate_gradients(backend):
    """Huge densities: alpha rounds to 1, the transmittance collapses to 1e-10 powers."""
    inputs = make_inputs(samples=12, density_scale=30.0, density_shift=60.0)
    got = run(backend, *inputs, True, True)
    want = run("oracle", *inputs, True, True)
    for tensor in got:
        assert torch.isfinite(tensor).all()
    assert_all_close(got, [w.float() for w in want], torch.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_whole_tensor_gradients_are_not_missing(backend):
    inputs = make_inputs(batch=3, rays=11, samples=20, channels=4, seed=3)
    got = run(backend, *inputs)
    want = run("oracle", *inputs)
    for g, w in zip(got[3:], want[3:], strict=True):
        assert relative_l2(g, w) < 1e-5
        assert w.abs().sum() > 0


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_inputs(backend):
    colors, densities, depths = make_inputs(rays=6, samples=5, channels=4)
    colors_t = colors.transpose(1, 2).contiguous().transpose(1, 2)
    densities_t = densities.transpose(0, 1).contiguous().transpose(0, 1)
    assert not colors_t.is_contiguous() and not densities_t.is_contiguous()
    got = run(backend, colors_t, densities_t, depths)
    want = run("oracle", colors, densities, depths)
    assert_all_close(got, [w.float() for w in want], torch.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch_and_rays(backend):
    colors, densities, depths = make_inputs()
    for sl in (slice(0, 0),):
        rgb, depth, weights = ray_march(colors[sl], densities[sl], depths[sl], backend=backend)
        assert rgb.shape == (0, 5, 3) and depth.shape == (0, 5, 1) and weights.shape == (0, 5, 6, 1)
    rgb, depth, weights = ray_march(colors[:, :0], densities[:, :0], depths[:, :0], backend=backend)
    assert rgb.shape == (2, 0, 3) and depth.shape == (2, 0, 1) and weights.shape == (2, 0, 6, 1)


@pytest.mark.parametrize("backend", ["torch", *KERNEL_BACKENDS])
def test_gradcheck_float64(backend):
    colors, densities, depths = make_inputs(
        batch=2, rays=3, samples=5, channels=2, dtype=torch.float64
    )
    for flags in FLAGS:
        c = colors.detach().requires_grad_()
        d = densities.detach().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, b, flags=flags: ray_march(
                a, b, depths, white_back=flags[0], scale_rgb=flags[1], backend=backend
            ),
            (c, d),
            # Triton runs under its interpreter here (~0.1 s a call): the full Jacobian's 180
            # forward calls per flag set took 2 minutes of CI, so Triton gets gradcheck's fast
            # mode (the Jacobian checked along random directions); the others the full one
            fast_mode=backend == "triton",
        )


def test_reference_is_mip_ray_marcher2():
    """One ray, two samples, by hand: a single interval whose weight is alpha."""
    colors = torch.tensor([[[[0.2, 0.4], [0.6, 0.0]]]], dtype=torch.float64)
    densities = torch.tensor([[[[2.0], [4.0]]]], dtype=torch.float64)
    depths = torch.tensor([[[[1.0], [1.5]]]], dtype=torch.float64)
    rgb, depth, weights = ray_march_reference(colors, densities, depths)
    sigma = torch.log1p(torch.exp(torch.tensor(3.0 - 1.0, dtype=torch.float64)))
    alpha = 1 - torch.exp(-sigma * 0.5)
    assert torch.allclose(weights.flatten(), alpha.reshape(1))
    assert torch.allclose(
        rgb.flatten(), (alpha * torch.tensor([0.4, 0.2], dtype=torch.float64)) * 2 - 1
    )
    assert torch.allclose(depth.flatten(), torch.tensor([1.25], dtype=torch.float64))
    raw, _, _ = ray_march_reference(colors, densities, depths, white_back=True, scale_rgb=False)
    assert torch.allclose(
        raw.flatten(), alpha * torch.tensor([0.4, 0.2], dtype=torch.float64) + 1 - alpha
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_depth_is_clamped_to_the_range_of_all_rays(backend):
    """The clamp range spans the whole tensor: an empty ray gets the batch's farthest depth."""
    colors, densities, depths = make_inputs(batch=2, rays=2, samples=4)
    densities[1, 1] = -1e4
    depths[0, 0, -1] = 9.0
    _, depth, _ = ray_march(colors, densities, depths, backend=backend)
    assert depth[1, 1].item() == 9.0
    assert depth[0, 1].item() < 9.0


@pytest.mark.parametrize("backend", [_backend_param("native")])
def test_native_results_do_not_depend_on_the_thread_count(backend):
    inputs = make_inputs(batch=3, rays=200, samples=9, channels=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(backend, *inputs)
        torch.set_num_threads(max(2, threads))
        many = run(backend, *inputs)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many, strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# Registration, torch.compile and validation
# --------------------------------------------------------------------------------------------

OPS = {
    "triton": ("ray_march_triton_forward", "ray_march_triton_backward"),
    "native": ("ray_march_forward", "ray_march_backward"),
}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
def test_opcheck(backend, flags):
    from portrait_engine.ops.rays import depth_range_of

    forward, backward = OPS[backend]
    colors, densities, depths = make_inputs(batch=1, rays=3, samples=4, channels=2)
    depth_range = depth_range_of(depths)
    forward_op = getattr(torch.ops.portrait_engine, forward)
    args = (colors.requires_grad_(), densities.requires_grad_(), depths, depth_range, *flags)
    torch.library.opcheck(forward_op, args)
    rgb, depth, weights, totals = forward_op(*args)
    grads = [torch.randn_like(t) for t in (rgb, depth, weights)]
    torch.library.opcheck(
        getattr(torch.ops.portrait_engine, backward),
        (*grads, colors.detach(), densities.detach(), depths, depth_range, totals, *flags),
    )


@pytest.mark.parametrize("backend", ["torch", *KERNEL_BACKENDS])
def test_torch_compile_fullgraph(backend):
    colors, densities, depths = make_inputs(samples=6)

    def fn(colors, densities, depths):
        rgb, depth, weights = ray_march(colors, densities, depths, backend=backend)
        return rgb.square().sum() + depth.sum() + weights.square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    a, b = colors.clone().requires_grad_(), densities.clone().requires_grad_()
    compiled(a, b, depths).backward()
    c, d = colors.clone().requires_grad_(), densities.clone().requires_grad_()
    fn(c, d, depths).backward()
    torch.testing.assert_close(a.grad, c.grad)
    torch.testing.assert_close(b.grad, d.grad)


def bad_cases():
    colors, densities, depths = make_inputs()
    return [
        ("colors not a tensor", dict(colors=[1.0]), TypeError, "colors must be a torch.Tensor"),
        ("depths not a tensor", dict(depths=2.0), TypeError, "depths must be a torch.Tensor"),
        (
            "colors rank 3",
            dict(colors=colors[0]),
            ValueError,
            r"colors must have shape \(B, R, S, C\)",
        ),
        (
            "densities without channel",
            dict(densities=densities[..., 0]),
            ValueError,
            r"densities must have shape \(B, R, S, 1\)",
        ),
        (
            "densities two channels",
            dict(densities=densities.expand(-1, -1, -1, 2)),
            ValueError,
            "densities must have shape",
        ),
        (
            "depths fewer samples",
            dict(depths=depths[:, :, :3]),
            ValueError,
            "depths must have shape",
        ),
        ("depths other rays", dict(depths=depths[:, :2]), ValueError, "depths must have shape"),
        (
            "no samples",
            dict(colors=colors[:, :, :0], densities=densities[:, :, :0], depths=depths[:, :, :0]),
            ValueError,
            r"at least one sample",
        ),
        ("no channels", dict(colors=colors[..., :0]), ValueError, "at least one channel"),
        ("integer colors", dict(colors=colors.int()), TypeError, "colors must be a floating-point"),
        (
            "integer depths",
            dict(depths=depths.long()),
            TypeError,
            "depths must be a floating-point",
        ),
        ("dtype mismatch", dict(densities=densities.double()), TypeError, "same dtype"),
        ("device mismatch", dict(depths=depths.to("meta")), ValueError, "same device"),
        ("white_back not bool", dict(white_back=1), TypeError, "white_back must be a bool"),
        ("scale_rgb not bool", dict(scale_rgb="yes"), TypeError, "scale_rgb must be a bool"),
        ("unknown backend", dict(backend="cuda"), ValueError, "backend must be one of"),
    ]


@pytest.mark.parametrize("case", bad_cases(), ids=lambda case: case[0])
def test_bad_inputs_raise_clear_errors(case):
    _, override, error, message = case
    colors, densities, depths = make_inputs()
    kwargs = {"colors": colors, "densities": densities, "depths": depths, **override}
    with pytest.raises(error, match=message):
        ray_march(**kwargs)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_nan_density_poisons_only_its_ray(backend):
    colors, densities, depths = make_inputs(batch=1, rays=3, samples=5)
    densities[0, 1, 2] = float("nan")
    rgb, depth, weights = ray_march(colors, densities, depths, backend=backend)
    assert torch.isnan(rgb[0, 1]).all() and torch.isfinite(rgb[0, [0, 2]]).all()
    assert torch.isfinite(depth[0, [0, 2]]).all()


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("used", [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)], ids=str)
@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
def test_outputs_that_miss_the_loss_give_no_gradient(backend, used, flags):
    """Outputs no gradient reaches arrive in the backward as None and are skipped: the input
    gradients still equal the float64 oracle's for a loss over the others only."""
    colors, densities, depths = make_inputs(samples=9, channels=4, seed=5)
    results = []
    for name in (backend, "oracle"):
        c = colors.detach().clone().double().requires_grad_()
        d = densities.detach().clone().double().requires_grad_()
        if name == "oracle":
            outputs = float64_oracle(c, d, depths, *flags)
        else:
            c, d = c.float().detach().requires_grad_(), d.float().detach().requires_grad_()
            outputs = ray_march(c, d, depths, white_back=flags[0], scale_rgb=flags[1], backend=name)
        generator = torch.Generator().manual_seed(11)
        grads = [torch.randn(o.shape, generator=generator).to(o) for o in outputs]
        torch.autograd.backward([outputs[i] for i in used], [grads[i] for i in used])
        # colours get no gradient from depth and weights alone (None in the oracle)
        results.append(tuple(torch.zeros_like(x) if x.grad is None else x.grad for x in (c, d)))
    (got_c, got_d), (want_c, want_d) = results
    assert_close(got_c, want_c.float(), torch.float32)
    assert_close(got_d, want_d.float(), torch.float32)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_opcheck_backward_without_depth_and_weight_gradients(backend):
    from portrait_engine.ops.rays import depth_range_of

    forward, backward = OPS[backend]
    colors, densities, depths = make_inputs(batch=1, rays=3, samples=4, channels=2)
    depth_range = depth_range_of(depths)
    rgb, depth, weights, totals = getattr(torch.ops.portrait_engine, forward)(
        colors, densities, depths, depth_range, False, True
    )
    backward_op = getattr(torch.ops.portrait_engine, backward)
    grad_rgb = torch.randn_like(rgb)
    torch.library.opcheck(
        backward_op,
        (grad_rgb, None, None, colors, densities, depths, depth_range, totals, False, True),
    )
    # None is the same as zeros
    got = backward_op(
        grad_rgb, None, None, colors, densities, depths, depth_range, totals, False, True
    )
    zeros = (torch.zeros_like(depth), torch.zeros_like(weights))
    want = backward_op(
        grad_rgb, *zeros, colors, densities, depths, depth_range, totals, False, True
    )
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_unused_outputs_reach_the_backward_as_none(backend, monkeypatch):
    """No zeros are materialised for the depth and weights when only rgb reaches the loss."""
    from portrait_engine.ops import rays as rays_ops

    seen = []
    original = rays_ops._optional_contiguous
    monkeypatch.setattr(
        rays_ops,
        "_optional_contiguous",
        lambda grad: (seen.append(grad is None), original(grad))[1],
    )
    colors, densities, depths = make_inputs()
    colors.requires_grad_()
    rgb, _, _ = ray_march(colors, densities.requires_grad_(), depths, backend=backend)
    rgb.sum().backward()
    assert seen == [True, True]


# --------------------------------------------------------------------------------------------
# The native CPU kernel's instruction-set paths and its polynomial exp / log1p
# --------------------------------------------------------------------------------------------

CPU_ISAS = ["baseline", "avx2", "avx512"]


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", [_backend_param("native")])
@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
def test_native_cpu_isa_paths_match_float64_oracle(backend, isa, flags, monkeypatch):
    """Each compiled path (PORTRAIT_ENGINE_CPU_ISA caps the run-time choice; a path the CPU
    lacks falls back to the widest it has) on sample counts around the 16-interval blocks and
    channel counts around the 32- and 8-channel blocks."""
    monkeypatch.setenv("PORTRAIT_ENGINE_CPU_ISA", isa)
    for samples, channels in [(2, 1), (16, 8), (17, 32), (18, 33), (49, 41)]:
        inputs = make_inputs(batch=2, rays=3, samples=samples, channels=channels, seed=samples)
        got = run(backend, *inputs, *flags)
        want = run("oracle", *inputs, *flags)
        assert_all_close(got, [w.float() for w in want], torch.float32)


@pytest.mark.parametrize("backend", [_backend_param("native")])
@pytest.mark.parametrize("isa", CPU_ISAS)
def test_softplus_and_exp_match_float64_across_the_range(backend, isa, monkeypatch):
    """One interval per ray (S = 2) whose softplus argument sweeps [-120, 120] finely: the weight
    is 1 - exp(-softplus(x) δ) and the density gradient goes through softplus' and exp, so
    the polynomial exp / log1p of the float kernels (csrc/cpu_math.h) meet float64 everywhere,
    through the underflow, the softplus threshold (20) and the saturation."""
    monkeypatch.setenv("PORTRAIT_ENGINE_CPU_ISA", isa)
    x = torch.linspace(-120.0, 120.0, 48001, dtype=torch.float64)
    rays = x.numel()
    densities = (x + 1.0).reshape(1, rays, 1, 1).expand(1, rays, 2, 1).float()
    # δ from 1e-3 to 1: exp(-softplus(x) δ) spans its whole range
    delta = torch.logspace(-3, 0, rays, dtype=torch.float64)[torch.randperm(rays)]
    depths = torch.stack((torch.full_like(delta, 2.0), 2.0 + delta), dim=-1)
    depths = depths.reshape(1, rays, 2, 1).float()
    colors = torch.randn(1, rays, 2, 3, generator=torch.Generator().manual_seed(3))
    got = run(backend, colors, densities, depths)
    want = run("oracle", colors, densities, depths)
    # not the depth: where float32's 1 - exp(-τ) rounds to 0 (τ below 3e-8) the ray has no
    # weight and gets the largest depth, while float64 still divides its tiny weights
    for name, g, w in zip(NAMES, got, want, strict=True):
        if name != "depth":
            try:
                assert_close(g, w.float(), torch.float32)
            except AssertionError as error:
                raise AssertionError(f"{name}: {error}") from None
    empty = x < -110  # exp underflows: no weight at all, exactly
    assert (got[2].flatten()[empty] == 0).all()
