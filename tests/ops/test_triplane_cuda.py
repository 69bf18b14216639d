"""triplane_sample on a GPU: the CUDA and Triton kernels against the reference on the GPU."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.ops import triplane_sample
from tests.helpers import assert_close, relative_l2
from tests.ops.test_triplane import make_inputs, run

pytestmark = pytest.mark.cuda
GPU_BACKENDS = ["triton", "native"]


def _require(backend):
    ok, reason = pe.backend_status("cuda")[backend]
    if not ok:
        pytest.skip(reason)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize(
    "kind,axes", [("triplane", "eg3d"), ("trigrid3", "panohead"), ("trigrid1", "eg3d")]
)
@pytest.mark.parametrize("reduce", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_matches_reference(backend, kind, axes, reduce, dtype):
    _require(backend)
    planes, points = make_inputs(kind, batch=3, channels=33, resolution=32, n=5000, dtype=dtype)
    planes, points = planes.cuda(), points.cuda()
    kwargs = dict(plane_axes=axes, reduce=reduce, box_warp=0.9)
    got = run(backend, planes, points, **kwargs)
    want = run("torch", planes.float(), points.float(), **kwargs)
    assert_close(got[0], want[0], dtype)
    assert_close(got[1], want[1], dtype, scale=4)
    assert relative_l2(got[2], want[2]) < (1e-5 if dtype == torch.float32 else 5e-2)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("kind", ["triplane", "trigrid3"])
def test_gpu_non_finite_points_match_cuda_grid_sample(backend, kind):
    _require(backend)
    planes, points = make_inputs(kind, n=8)
    points[0, 0] = float("nan")
    points[1, 1, 0] = float("inf")
    planes, points = planes.cuda(), points.cuda()
    axes = "eg3d" if kind == "triplane" else "panohead"
    got = triplane_sample(planes, points, backend=backend, plane_axes=axes, reduce="none")
    want = triplane_sample(planes, points, backend="torch", plane_axes=axes, reduce="none")
    assert torch.equal(got.isnan(), want.isnan())
    assert_close(got, want, torch.float32)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_large_batch_of_points_and_empty(backend):
    _require(backend)
    planes, points = make_inputs("triplane", batch=2, channels=32, resolution=64, n=300_000)
    planes, points = planes.cuda(), points.cuda()
    got = run(backend, planes, points)
    want = run("torch", planes, points)
    assert_close(got[0], want[0], torch.float32)
    assert relative_l2(got[1], want[1]) < 1e-5
    empty = triplane_sample(planes, points[:, :0], backend=backend)
    assert empty.shape == (2, 0, 32)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_compile_fullgraph(backend):
    _require(backend)
    planes, points = make_inputs("trigrid3", n=500)
    planes, points = planes.cuda().requires_grad_(), points.cuda().requires_grad_()
    compiled = torch.compile(
        lambda a, b: triplane_sample(a, b, plane_axes="panohead", backend=backend).sum(),
        fullgraph=True,
    )
    compiled(planes, points).backward()
    assert torch.isfinite(planes.grad).all() and torch.isfinite(points.grad).all()
