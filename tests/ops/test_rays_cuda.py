"""ray_march and ray_sample on a GPU: the CUDA and Triton kernels against the reference."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.ops import ray_march, ray_sample
from tests.helpers import assert_close
from tests.ops.test_ray_march import FLAG_IDS, FLAGS, float64_oracle, make_inputs, run
from tests.ops.test_ray_sample import make_cameras, pinhole_oracle

pytestmark = pytest.mark.cuda


def _require(backend, op="ray_march_forward"):
    ok, reason = pe.backend_status("cuda", op)[backend]
    if not ok:
        pytest.skip(reason)


def _cuda(tensors):
    return [t.cuda() for t in tensors]


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
@pytest.mark.parametrize("channels", [1, 3, 32, 33, 96, 256])
@pytest.mark.parametrize("samples", [1, 2, 48, 97])
def test_gpu_matches_float64_oracle(backend, flags, channels, samples):
    _require(backend)
    inputs = make_inputs(batch=2, rays=37, samples=samples, channels=channels, seed=samples)
    got = run(backend, *_cuda(inputs), *flags)
    want = run("oracle", *inputs, *flags)
    for g, w in zip(got, want, strict=True):
        assert_close(g.cpu(), w.float(), torch.float32, scale=2)


@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_gpu_dtypes_match_reference(backend, dtype):
    _require(backend)
    inputs = _cuda(make_inputs(batch=2, rays=64, samples=48, channels=32, dtype=dtype))
    got = run(backend, *inputs, True, False)
    want = run("torch", *inputs, True, False)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert_close(g, w, dtype, scale=2)


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_renderer_size_opaque_and_empty_rays(backend):
    _require(backend)
    colors, densities, depths = make_inputs(batch=4, rays=4096, samples=96, channels=32)
    densities[:, :64] = -1e4  # empty rays
    densities[:, 64:128] += 80.0  # opaque rays
    got = run(backend, *_cuda((colors, densities, depths)))
    want = run("oracle", colors, densities, depths)
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        assert_close(g.cpu(), w.float(), torch.float32, scale=10)


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_backward_is_deterministic(backend):
    _require(backend)
    inputs = _cuda(make_inputs(batch=2, rays=512, samples=48, channels=32))
    first, second = run(backend, *inputs), run(backend, *inputs)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_gpu_wide_colors_route_to_triton_under_auto():
    _require("native")
    inputs = _cuda(make_inputs(rays=4, samples=5, channels=300))
    with pytest.raises(ValueError, match="at most 256"):
        ray_march(*inputs, backend="native")
    rgb, _, _ = ray_march(*inputs, backend="auto")
    assert_close(rgb.cpu(), float64_oracle(*[t.cpu() for t in inputs])[0].float(), torch.float32)


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_compile_fullgraph(backend):
    _require(backend)
    colors, densities, depths = _cuda(make_inputs(rays=64, samples=24, channels=32))
    colors.requires_grad_()
    densities.requires_grad_()

    def fn(c, d):
        rgb, depth, weights = ray_march(c, d, depths, backend=backend)
        return rgb.sum() + depth.sum() + weights.sum()

    torch.compile(fn, fullgraph=True)(colors, densities).backward()
    assert torch.isfinite(colors.grad).all() and torch.isfinite(densities.grad).all()


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("resolution", [1, 7, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gpu_ray_sample(backend, resolution, dtype):
    _require(backend, "ray_sample_forward")
    cam2world, intrinsics = make_cameras(batch=4)
    origins, directions = ray_sample(
        cam2world.to("cuda", dtype), intrinsics.to("cuda", dtype), resolution, backend=backend
    )
    want_origins, want_directions = pinhole_oracle(cam2world, intrinsics, resolution)
    check = torch.float32 if dtype == torch.float64 else dtype  # the cameras are fp32 numbers
    assert_close(origins.cpu(), want_origins, check)
    assert_close(directions.cpu(), want_directions, check, scale=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_ray_sample_native_backward(dtype):
    """The CUDA ray_sample_backward (chunked block sums) against the closed form on the CPU."""
    _require("native", "ray_sample_backward")
    from portrait_engine.ops.rays import _ray_sample_backward

    cam2world, intrinsics = make_cameras(batch=3, dtype=dtype)
    generator = torch.Generator().manual_seed(11)
    g_o, g_d = torch.randn(2, 3, 100 * 100, 3, generator=generator, dtype=dtype)
    cuda = [t.cuda() for t in (g_o, g_d, cam2world, intrinsics)]
    got = torch.ops.portrait_engine.ray_sample_backward(*cuda, 100)
    again = torch.ops.portrait_engine.ray_sample_backward(*cuda, 100)
    want = _ray_sample_backward(g_o, g_d, cam2world, intrinsics, 100)
    for g, a, w in zip(got, again, want, strict=True):
        assert torch.equal(g, a)  # no atomics: the same bits every call
        assert_close(g.cpu(), w, dtype, scale=4)  # 10^4-term sums in another order
