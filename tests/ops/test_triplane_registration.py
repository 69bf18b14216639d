"""triplane_sample: validation, backend choice, torch.library registration, torch.compile."""

from __future__ import annotations

import re

import pytest
import torch

import portrait_engine as pe
from portrait_engine.ops import triplane_sample
from portrait_engine.ops.triplane import _projection
from tests.ops.test_triplane import KERNEL_BACKENDS, make_inputs

OPS = {
    "triton": ("triplane_sample_triton_forward", "triplane_sample_triton_backward"),
    "native": ("triplane_sample_forward", "triplane_sample_backward"),
}


def kernel_inputs(kind, dtype=torch.float32, requires_grad=True, n=20):
    """Inputs of the kernel-level ops, as the public op lays them out."""
    planes, points = make_inputs(kind, n=n, dtype=dtype)
    trilinear = planes.dim() == 6
    grid = planes if trilinear else planes.unsqueeze(3)
    channels_last = grid.permute(0, 1, 3, 4, 5, 2).contiguous()
    axes = torch.tensor(pe.ops.reference.EG3D_PLANE_AXES, dtype=torch.float64)
    proj = _projection(axes, 1.0, planes)
    return [
        channels_last.requires_grad_(requires_grad),
        points.requires_grad_(requires_grad),
        proj,
        trilinear,
    ]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("kind", ["triplane", "trigrid3"])
@pytest.mark.parametrize("reduce_mean", [True, False])
@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(backend, kind, reduce_mean, requires_grad):
    forward, backward = OPS[backend]
    args = kernel_inputs(kind, requires_grad=requires_grad) + [reduce_mean, True]
    torch.library.opcheck(getattr(torch.ops.portrait_engine, forward), args)
    planes, points, proj, trilinear, *_ = args
    out = getattr(torch.ops.portrait_engine, forward)(*args)
    grad = torch.randn_like(out)
    backward_op = getattr(torch.ops.portrait_engine, backward)
    backward_args = [grad, planes.detach(), points.detach(), proj, trilinear, reduce_mean, True]
    torch.library.opcheck(backward_op, backward_args)
    torch.library.opcheck(backward_op, backward_args + [False])
    # without the points' gradient: the same planes' gradient, bit for bit
    with_points = backward_op(*backward_args)
    without_points = backward_op(*backward_args, False)
    assert torch.equal(with_points[0], without_points[0])
    assert without_points[1].shape == with_points[1].shape


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_torch_compile_fullgraph(backend):
    planes, points = make_inputs("trigrid3", n=30)

    def fn(planes, points):
        return (
            triplane_sample(planes, points, plane_axes="panohead", box_warp=0.9, backend=backend)
            .square()
            .sum()
        )

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    a = planes.clone().requires_grad_()
    b = points.clone().requires_grad_()
    compiled(a, b).backward()
    c = planes.clone().requires_grad_()
    d = points.clone().requires_grad_()
    fn(c, d).backward()
    torch.testing.assert_close(a.grad, c.grad)
    torch.testing.assert_close(b.grad, d.grad)


# --- backend choice ------------------------------------------------------------------------


def test_available_backends_always_include_torch():
    assert "torch" in pe.available_backends("cpu")
    assert set(pe.available_backends("cpu")) <= set(pe.BACKENDS)


def test_use_backend_context_and_global_setter(monkeypatch):
    calls = []
    import portrait_engine.ops.triplane as module

    real = module.triplane_sample_reference
    monkeypatch.setattr(
        module, "triplane_sample_reference", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    planes, points = make_inputs("triplane")
    assert pe.get_backend() == "auto"
    with pe.use_backend("torch"):
        assert pe.get_backend() == "torch"
        triplane_sample(planes, points)
        with pe.use_backend("auto"):
            assert pe.get_backend() == "auto"
        assert pe.get_backend() == "torch"
    assert calls == [1]
    pe.set_backend("torch")
    try:
        triplane_sample(planes, points)
        assert calls == [1, 1]
    finally:
        pe.set_backend("auto")


def test_unknown_backend_is_refused():
    planes, points = make_inputs("triplane")
    with pytest.raises(ValueError, match="backend must be one of"):
        triplane_sample(planes, points, backend="cuda-magic")
    with pytest.raises(ValueError, match="backend must be one of"):
        pe.use_backend("nope").__enter__()


def test_unavailable_backend_says_why(monkeypatch):
    monkeypatch.setattr(
        pe._backend,
        "backend_status",
        lambda device, native_op=None: {
            "torch": (True, ""),
            "triton": (False, "triton is not installed"),
            "native": (False, "not built"),
        },
    )
    planes, points = make_inputs("triplane")
    with pytest.raises(pe.BackendUnavailableError, match="triton is not installed"):
        triplane_sample(planes, points, backend="triton")
    # auto falls back to the reference
    assert triplane_sample(planes, points, backend="auto").shape == (2, points.shape[1], 5)


def test_auto_takes_the_per_op_order_where_one_is_measured(monkeypatch):
    every = {name: (True, "") for name in pe.BACKENDS}
    monkeypatch.setattr(pe._backend, "backend_status", lambda device, native_op=None: every)
    cuda = torch.device("cuda")
    # ray_march: Triton measured faster than the CUDA kernel on an H200
    assert pe._backend.resolve("auto", cuda, "ray_march_forward") == "triton"
    # render_rays: the fused Triton renderer measured faster than the CUDA one on an H200
    assert pe._backend.resolve("auto", cuda, "render_rays_forward") == "triton"
    assert pe._backend.resolve("auto", torch.device("cpu"), "render_rays_forward") == "native"
    # triplane_sample and softplus: Triton measured faster than the CUDA kernels on an H100
    assert pe._backend.resolve("auto", cuda, "triplane_sample_forward") == "triton"
    assert pe._backend.resolve("auto", cuda, "softplus_forward") == "triton"
    assert pe._backend.resolve("auto", torch.device("cpu"), "triplane_sample_forward") == "native"
    # ops without a measured exception keep the device's order
    assert pe._backend.resolve("auto", cuda, "decoder_outputs_forward") == "native"
    assert pe._backend.resolve("auto", cuda, "lbs_forward") == "native"
    assert pe._backend.resolve("auto", torch.device("cpu"), "ray_march_forward") == "native"
    # an explicit choice is kept
    assert pe._backend.resolve("native", cuda, "ray_march_forward") == "native"


# --- bad inputs get a clear error naming the argument --------------------------------------


def bad_cases():
    planes, points = make_inputs("triplane")
    return [
        (
            "planes not a tensor",
            dict(planes=planes.tolist()),
            TypeError,
            "planes must be a torch.Tensor",
        ),
        ("points not a tensor", dict(points=3), TypeError, "points must be a torch.Tensor"),
        (
            "planes rank 4",
            dict(planes=planes[0]),
            ValueError,
            r"planes must have shape \(B, P, C, H, W\)",
        ),
        (
            "points rank 2",
            dict(points=points[0]),
            ValueError,
            r"points must have shape \(B, N, 3\)",
        ),
        (
            "points last dim 2",
            dict(points=points[..., :2]),
            ValueError,
            r"points must have shape \(B, N, 3\)",
        ),
        ("batch mismatch", dict(points=points[:1]), ValueError, "same batch size"),
        ("two planes", dict(planes=planes[:, :2]), ValueError, "3 planes"),
        ("empty spatial", dict(planes=planes[..., :0]), ValueError, "non-empty"),
        (
            "integer planes",
            dict(planes=planes.long()),
            TypeError,
            "planes must be a floating-point",
        ),
        ("integer points", dict(points=points.int()), TypeError, "points must be a floating-point"),
        ("dtype mismatch", dict(points=points.double()), TypeError, "same dtype"),
        ("meta device", dict(points=points.to("meta")), ValueError, "same device"),
        ("unknown axes", dict(plane_axes="stylegan"), ValueError, "plane_axes must be one of"),
        (
            "axes wrong shape",
            dict(plane_axes=torch.eye(3)),
            ValueError,
            r"plane_axes must have shape \(3, 3, 3\)",
        ),
        ("singular axes", dict(plane_axes=torch.zeros(3, 3, 3)), ValueError, "invertible"),
        ("unknown reduce", dict(reduce="sum"), ValueError, "reduce must be one of"),
        ("negative box_warp", dict(box_warp=-1.0), ValueError, "box_warp must be a positive"),
        ("nan box_warp", dict(box_warp=float("nan")), ValueError, "box_warp must be a positive"),
    ]


@pytest.mark.parametrize("case", bad_cases(), ids=lambda case: case[0])
def test_bad_inputs_raise_clear_errors(case):
    _, override, error, message = case
    planes, points = make_inputs("triplane")
    kwargs = {"planes": planes, "points": points, **override}
    with pytest.raises(error, match=message):
        triplane_sample(kwargs.pop("planes"), kwargs.pop("points"), **kwargs)


def test_error_message_names_received_shape():
    planes, points = make_inputs("triplane")
    with pytest.raises(ValueError, match=re.escape("got shape (2, 97)")):
        triplane_sample(planes, points[..., 0])
