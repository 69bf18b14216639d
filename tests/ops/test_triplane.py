"""triplane_sample: every backend against the reference and against grid_sample directly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import portrait_engine as pe
from portrait_engine.ops import triplane_sample
from portrait_engine.ops.reference import (
    EG3D_PLANE_AXES,
    PANOHEAD_PLANE_AXES,
    triplane_sample_reference,
)
from portrait_engine.ops.triplane import channels_last_planes
from tests.helpers import assert_close, relative_l2

KERNEL_BACKENDS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            not pe.backend_status("cpu")[name][0], reason=pe.backend_status("cpu")[name][1]
        ),
    )
    for name in ("triton", "native")
]
ALL_BACKENDS = [pytest.param("torch")] + KERNEL_BACKENDS
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# --- literal EG3D / PanoHead formulas (the published semantics, written out once more) -------


def eg3d_sample_from_planes(plane_axes, plane_features, coordinates, box_warp):
    """EG3D: bmm with the inverse axes, grid_sample, permute, reshape (then mean in decoder)."""
    n, n_planes, c, h, w = plane_features.shape
    m = coordinates.shape[1]
    flat = plane_features.view(n * n_planes, c, h, w)
    coordinates = (2 / box_warp) * coordinates
    coords = coordinates.unsqueeze(1).expand(-1, n_planes, -1, -1).reshape(n * n_planes, m, 3)
    inv = torch.linalg.inv(plane_axes).unsqueeze(0).expand(n, -1, -1, -1).reshape(-1, 3, 3)
    projected = torch.bmm(coords, inv)[..., :2].unsqueeze(1)
    out = F.grid_sample(
        flat, projected.float(), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.permute(0, 3, 2, 1).reshape(n, n_planes, m, c)


def panohead_sample_from_planes(plane_axes, plane_features, coordinates, box_warp, depth):
    """PanoHead tri-grid: features (N, P, C*D, H, W) viewed as (N*P, C, D, H, W), 5-D sample."""
    n, n_planes, cd, h, w = plane_features.shape
    m = coordinates.shape[1]
    c = cd // depth
    flat = plane_features.view(n * n_planes, c, depth, h, w)
    coordinates = (2 / box_warp) * coordinates
    coords = coordinates.unsqueeze(1).expand(-1, n_planes, -1, -1).reshape(n * n_planes, m, 3)
    inv = torch.linalg.inv(plane_axes).unsqueeze(0).expand(n, -1, -1, -1).reshape(-1, 3, 3)
    projected = torch.bmm(coords, inv).unsqueeze(1).unsqueeze(2)
    out = F.grid_sample(
        flat, projected.float(), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.permute(0, 4, 3, 2, 1).reshape(n, n_planes, m, c)


# --- inputs ------------------------------------------------------------------------------------


def make_points(batch, n, box_warp, generator, resolution=8, depth=1, dtype=torch.float32):
    """Points inside, on the border of and outside the box, some exactly on texel borders."""
    inside = (torch.rand(batch, n, 3, generator=generator) - 0.5) * 1.3 * box_warp
    # texel borders of an axis with R cells, align_corners=False: g = 2k/R - 1  ->  x = g*bw/2
    k = torch.randint(0, resolution + 1, (batch, n, 3), generator=generator)
    on_border = (2 * k / resolution - 1) * box_warp / 2
    pick = torch.rand(batch, n, 1, generator=generator) < 0.25
    points = torch.where(pick, on_border, inside)
    points[:, :2] = torch.tensor([[0.5, -0.5, 0.5], [2.0, 0.0, -3.0]]) * box_warp
    return points.to(dtype)


def make_inputs(
    kind, batch=2, channels=5, resolution=8, n=97, box_warp=1.0, seed=0, dtype=torch.float32
):
    generator = torch.Generator().manual_seed(seed)
    depth = {"triplane": 1, "trigrid1": 1, "trigrid3": 3}[kind]
    if kind == "triplane":
        shape = (batch, 3, channels, resolution, resolution + 2)
    else:
        shape = (batch, 3, channels, depth, resolution, resolution + 2)
    planes = torch.randn(shape, generator=generator).to(dtype)
    points = make_points(batch, n, box_warp, generator, resolution, depth, dtype)
    return planes, points


def random_rotation(seed):
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, 3, generator=generator, dtype=torch.float64))
    return q.float()


# --- the reference is the published formula ----------------------------------------------------


@pytest.mark.parametrize("box_warp", [1.0, 0.7])
def test_reference_matches_eg3d_sample_from_planes(box_warp):
    planes, points = make_inputs("triplane", box_warp=box_warp)
    axes = torch.tensor(EG3D_PLANE_AXES)
    expected = eg3d_sample_from_planes(axes, planes, points, box_warp)
    got = triplane_sample_reference(planes, points, box_warp=box_warp, reduce="none")
    assert_close(got, expected, torch.float32)
    assert_close(
        triplane_sample_reference(planes, points, box_warp=box_warp),
        expected.mean(1),
        torch.float32,
    )


def test_reference_matches_panohead_trigrid():
    planes, points = make_inputs("trigrid3", box_warp=0.9)
    b, p, c, d, h, w = planes.shape
    axes = torch.tensor(PANOHEAD_PLANE_AXES)
    expected = panohead_sample_from_planes(axes, planes.reshape(b, p, c * d, h, w), points, 0.9, d)
    got = triplane_sample_reference(
        planes, points, box_warp=0.9, plane_axes="panohead", reduce="none"
    )
    assert_close(got, expected, torch.float32)


def test_eg3d_axes_sample_xy_xz_zx():
    """EG3D's released axes put the third plane at (z, x), not (y, z)."""
    planes = torch.zeros(1, 3, 1, 4, 4)
    planes[0, :, 0, 0, 3] = torch.tensor([1.0, 2.0, 3.0])  # texel (row 0, col 3) of each plane
    # (u, v) = (0.75, -0.75) in grid units hits that texel's centre; box_warp=2 keeps units.
    uv = {0: (0.75, -0.75, 0.0), 1: (0.75, 0.0, -0.75), 2: (-0.75, 0.0, 0.75)}
    for plane, xyz in uv.items():
        out = triplane_sample_reference(planes, torch.tensor([[xyz]]), box_warp=2.0, reduce="none")
        assert out[0, plane, 0, 0].item() == pytest.approx(plane + 1.0)


# --- every backend against the reference, forward and backward --------------------------------


def run(backend, planes, points, **kwargs):
    planes = planes.detach().clone().requires_grad_()
    points = points.detach().clone().requires_grad_()
    out = triplane_sample(planes, points, backend=backend, **kwargs)
    generator = torch.Generator().manual_seed(123)
    grad = torch.randn(out.shape, generator=generator).to(out)
    out.backward(grad)
    return out.detach(), planes.grad, points.grad


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "kind,axes",
    [
        ("triplane", "eg3d"),
        ("triplane", "panohead"),
        ("trigrid1", "panohead"),
        ("trigrid3", "panohead"),
        ("trigrid3", "eg3d"),
        ("triplane", "rotation"),
    ],
)
@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_matches_reference_float32(backend, kind, axes, reduce):
    box_warp = 0.8
    planes, points = make_inputs(kind, box_warp=box_warp, seed=hash((kind, axes, reduce)) % 1000)
    plane_axes = random_rotation(3) if axes == "rotation" else axes
    kwargs = dict(box_warp=box_warp, plane_axes=plane_axes, reduce=reduce)
    want = run("torch", planes, points, **kwargs)
    got = run(backend, planes, points, **kwargs)
    # The rotation's projection rounds differently from EG3D's two-step scaling, so a point
    # on a texel border may land on the other side: its coordinate gradient may jump there.
    flips = 0.02 if axes == "rotation" else 0.0
    assert_close(got[0], want[0], torch.float32)
    assert_close(got[1], want[1], torch.float32)
    assert_close(got[2], want[2], torch.float32, scale=10, max_flip_fraction=flips)
    assert relative_l2(got[2], want[2]) < (0.2 if flips else 1e-5)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["triplane", "trigrid3"])
def test_half_precision_accumulates_in_float32(backend, dtype, kind):
    planes, points = make_inputs(kind, dtype=dtype, n=64)
    kwargs = dict(box_warp=1.0, plane_axes="panohead" if kind != "triplane" else "eg3d")
    got = run(backend, planes, points, **kwargs)
    want = run("torch", planes.float(), points.float(), **kwargs)
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == dtype
    assert_close(got[0], want[0], dtype)
    assert_close(got[1], want[1], dtype)
    # the coordinate gradient scales with the resolution and jumps at texel borders
    assert relative_l2(got[2], want[2]) < 5e-2


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_matches_grid_sample_directly(backend):
    planes, points = make_inputs("triplane", n=50)
    expected = eg3d_sample_from_planes(torch.tensor(EG3D_PLANE_AXES), planes, points, 1.0)
    got = triplane_sample(planes, points, reduce="none", backend=backend)
    assert_close(got, expected, torch.float32)


@pytest.mark.parametrize(
    "backend", ["torch", pytest.param("native", marks=KERNEL_BACKENDS[1].marks)]
)
@pytest.mark.parametrize("kind", ["triplane", "trigrid3"])
def test_gradcheck_float64(backend, kind):
    generator = torch.Generator().manual_seed(5)
    planes, _ = make_inputs(kind, batch=1, channels=2, resolution=4, n=6, dtype=torch.float64)
    # random interior points: finite differences must not straddle a texel border
    points = ((torch.rand(1, 6, 3, generator=generator) - 0.5) * 1.1).double()
    planes.requires_grad_()
    points.requires_grad_()
    kwargs = dict(plane_axes="panohead" if kind != "triplane" else "eg3d")
    assert torch.autograd.gradcheck(
        lambda a, b: triplane_sample(a, b, backend=backend, **kwargs),
        (planes, points),
        eps=1e-6,
        atol=1e-7,
    )


# --- edge inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("kind", ["triplane", "trigrid3"])
def test_empty_points_give_empty_result(backend, kind):
    planes, points = make_inputs(kind)
    points = points[:, :0].requires_grad_()
    planes.requires_grad_()
    out = triplane_sample(planes, points, backend=backend)
    assert out.shape == (2, 0, planes.shape[2])
    out.sum().backward()
    assert planes.grad.abs().sum() == 0 and points.grad.shape == points.shape


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch(backend):
    planes, points = make_inputs("triplane")
    out = triplane_sample(planes[:0], points[:0], reduce="none", backend=backend)
    assert out.shape == (0, 3, points.shape[1], planes.shape[2])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("kind", ["triplane", "trigrid3"])
@pytest.mark.parametrize("channels", [4, 32])  # 32: the CPU forward's register-held channels
def test_non_finite_points_match_grid_sample(backend, kind, channels):
    planes, points = make_inputs(kind, channels=channels, n=6)
    points[0, 0] = float("nan")
    points[0, 1, 0] = float("inf")
    points[1, 2, 2] = -float("inf")
    axes = "eg3d" if kind == "triplane" else "panohead"
    got = triplane_sample(planes, points, reduce="none", backend=backend, plane_axes=axes)
    b, p, c = planes.shape[:3]
    if kind == "triplane":
        expected = eg3d_sample_from_planes(torch.tensor(EG3D_PLANE_AXES), planes, points, 1.0)
    else:
        expected = panohead_sample_from_planes(
            torch.tensor(PANOHEAD_PLANE_AXES),
            planes.reshape(b, p, -1, *planes.shape[-2:]),
            points,
            1.0,
            planes.shape[3],
        )
    # CPU grid_sample: NaN for a tri-plane, zeros for a tri-grid; we must give the same
    assert torch.equal(got.isnan(), expected.isnan())
    assert_close(got, expected, torch.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_points_outside_the_box_give_zeros(backend):
    planes, _ = make_inputs("trigrid3")
    points = torch.tensor([[[1.5, 0.0, 0.0], [0.0, -2.0, 0.0], [0.0, 0.0, 9e9]]]).expand(2, -1, -1)
    out = triplane_sample(
        planes,
        points.contiguous(),
        reduce="none",
        backend=backend,
        plane_axes=torch.eye(3).expand(3, 3, 3),
    )
    assert torch.all(out == 0)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_inputs(backend):
    planes, points = make_inputs("trigrid3")
    planes_nc = planes.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, strided
    points_nc = points.transpose(0, 1).contiguous().transpose(0, 1)
    assert not planes_nc.is_contiguous() and not points_nc.is_contiguous()
    got = run(backend, planes_nc, points_nc, plane_axes="panohead")
    want = run("torch", planes, points, plane_axes="panohead")
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("kind", ["triplane", "trigrid3"])
def test_channels_last_planes_sample_alike_in_two_calls(backend, kind):
    # the renderer's use: one channels-last conversion, two samplings of it, gradients summed
    planes, points = make_inputs(kind, seed=4)
    axes = "eg3d" if kind == "triplane" else "panohead"
    converted = channels_last_planes(planes)
    assert converted.shape == planes.shape and torch.equal(converted, planes)
    assert converted.permute(0, 1, *range(3, planes.dim()), 2).is_contiguous()
    leaves = [planes.detach().clone().requires_grad_() for _ in range(2)]
    outputs = []
    for leaf, convert in zip(leaves, (channels_last_planes, lambda t: t), strict=True):
        shared = convert(leaf)
        first = triplane_sample(shared, points, plane_axes=axes, backend=backend)
        second = triplane_sample(shared, points.flip(1), plane_axes=axes, backend=backend)
        (first.square().sum() + (second * 3).sum()).backward()
        outputs.append((first.detach(), second.detach()))
    for got, want in zip(outputs[0], outputs[1], strict=True):
        assert torch.equal(got, want)
    assert leaves[0].grad.is_contiguous()
    assert_close(leaves[0].grad, leaves[1].grad, torch.float32)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backward_with_respect_to_one_input(backend):
    planes, points = make_inputs("triplane")
    planes.requires_grad_()
    out = triplane_sample(planes, points, backend=backend)
    (grad,) = torch.autograd.grad(out.square().sum(), planes)
    ref_planes = planes.detach().requires_grad_()
    out_ref = triplane_sample(ref_planes, points, backend="torch")
    (want,) = torch.autograd.grad(out_ref.square().sum(), ref_planes)
    assert_close(grad, want, torch.float32)


@pytest.mark.parametrize("kind", ["triplane", "trigrid3"])
@pytest.mark.parametrize("batch", [1, 2])
def test_native_gradients_do_not_depend_on_the_thread_count(kind, batch):
    """The native CPU backward splits each plane's rows into bands when there are fewer
    (batch, plane) pairs than threads (B = 1 and 2, 3 planes, on 1, 2, 4 and 8 threads: one,
    two and three bands); each texel is still written by one task in point order."""
    if not pe.backend_status("cpu")["native"][0]:
        pytest.skip(pe.backend_status("cpu")["native"][1])
    planes, points = make_inputs(kind, batch=batch, channels=8, resolution=16, n=500, seed=3)
    planes.requires_grad_()
    points.requires_grad_()
    grad_out = torch.randn(batch, 500, 8, generator=torch.Generator().manual_seed(4))
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 4, 8):
            torch.set_num_threads(count)
            out = triplane_sample(planes, points, backend="native")
            results.append(torch.autograd.grad(out, (planes, points), grad_out))
    finally:
        torch.set_num_threads(threads)
    for grads in results[1:]:
        for got, want in zip(grads, results[0], strict=True):
            assert torch.equal(got, want)


def test_named_projection_is_made_once_and_survives_inference_mode():
    from portrait_engine.ops import triplane as triplane_ops

    triplane_ops._cached_named_projection.cache_clear()
    planes = torch.randn(1, 3, 4, 8, 8)
    with torch.inference_mode():  # the first call may come from inference code
        first = triplane_ops._projection("eg3d", 0.7, planes)
    second = triplane_ops._projection("eg3d", 0.7, planes)
    assert second is first  # one tensor per (axes, box_warp, device, dtype)
    assert not first.is_inference()  # the autograd formula can save it
    other = triplane_ops._projection("eg3d", 0.8, planes)
    assert other is not first
    axes = torch.tensor(EG3D_PLANE_AXES, dtype=torch.float64)
    assert torch.allclose(first.double(), torch.linalg.inv(axes) * (2 / 0.7), atol=1e-6)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gradients_after_a_first_call_in_inference_mode(backend):
    planes, points = make_inputs("triplane", box_warp=0.6, seed=3)
    with torch.inference_mode():
        triplane_sample(planes, points, box_warp=0.6, backend=backend)
    planes.requires_grad_()
    triplane_sample(planes, points, box_warp=0.6, backend=backend).sum().backward()
    want = planes.detach().clone().requires_grad_()
    triplane_sample(want, points, box_warp=0.6, backend="torch").sum().backward()
    assert_close(planes.grad, want.grad, torch.float32)


# --- the native CPU kernel's instruction-set paths ------------------------------------------

CPU_ISAS = ["baseline", "avx2", "avx512"]


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", [p for p in KERNEL_BACKENDS if p.values[0] == "native"])
@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("kind", ["triplane", "trigrid3"])
@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_native_cpu_isa_paths_match_reference(backend, isa, kind, reduce, monkeypatch):
    """Each compiled path of the CPU kernels (PORTRAIT_ENGINE_CPU_ISA caps the run-time choice;
    a path the CPU lacks falls back to the widest it has), forward and both gradients, on
    channel counts below, at and around the 4-, 8- and 16-float vectors, and the float forward's
    register-held channel counts (16, 32, 48, 64)."""
    monkeypatch.setenv("PORTRAIT_ENGINE_CPU_ISA", isa)
    axes = "panohead" if kind == "trigrid3" else "eg3d"
    for channels in (1, 5, 8, 16, 17, 32, 33, 48, 64):
        planes, points = make_inputs(kind, channels=channels, n=61, seed=channels)
        kwargs = dict(box_warp=1.0, plane_axes=axes, reduce=reduce)
        got = run(backend, planes, points, **kwargs)
        want = run("torch", planes, points, **kwargs)
        assert_close(got[0], want[0], torch.float32)
        assert_close(got[1], want[1], torch.float32)
        # the coordinate gradient jumps at texel borders (make_points puts points there)
        assert relative_l2(got[2], want[2]) < 1e-5


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", [p for p in KERNEL_BACKENDS if p.values[0] == "native"])
@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_native_cpu_isa_paths_half_precision(backend, isa, dtype, monkeypatch):
    """The half and bfloat16 conversions inside the per-ISA clones (accumulation in float32)."""
    monkeypatch.setenv("PORTRAIT_ENGINE_CPU_ISA", isa)
    planes, points = make_inputs("trigrid3", channels=33, dtype=dtype, n=64)
    kwargs = dict(box_warp=1.0, plane_axes="panohead")
    got = run(backend, planes, points, **kwargs)
    want = run("torch", planes.float(), points.float(), **kwargs)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    assert_close(got[0], want[0], dtype)
    assert_close(got[1], want[1], dtype)
    assert relative_l2(got[2], want[2]) < 5e-2
