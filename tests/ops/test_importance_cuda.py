"""sample_importance / merge_samples / ImportanceRenderer on a GPU: the CUDA and Triton kernels
against the reference on the GPU, at the EG3D sizes, and every path of the sample_importance
kernels (the CUDA warp-per-ray kernel with 8, fewer and 1 warps per block, its thread-per-ray
fallback for long rays; Triton's in-kernel sort and its torch.sort path for many draws)."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.kernels import render as render_kernels
from portrait_engine.nn import ImportanceRenderer
from portrait_engine.ops import merge_samples, sample_importance
from portrait_engine.ops.reference import (
    importance_uniforms,
    merge_samples_reference,
    sample_importance_reference,
)
from tests.helpers import assert_close
from tests.nn.test_renderer import make_scene
from tests.ops.test_merge_samples import KERNEL_SHAPES, check_scatter_and_gather
from tests.ops.test_merge_samples import make_inputs as make_merge_inputs
from tests.ops.test_sample_importance import eg3d_oracle, make_inputs

pytestmark = pytest.mark.cuda


def _require(backend, op):
    ok, reason = pe.backend_status("cuda", op)[backend]
    if not ok:
        pytest.skip(reason)


@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("sort", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_sample_importance_matches_reference(backend, sort, dtype):
    _require(backend, "sample_importance")
    depths, weights = make_inputs(batch=4, rays=1024, samples=48, dtype=dtype)
    depths, weights = depths.cuda(), weights.cuda()
    got = sample_importance(
        depths,
        weights,
        48,
        generator=torch.Generator("cuda").manual_seed(0),
        sort=sort,
        backend=backend,
    )
    want = sample_importance_reference(
        depths, weights, 48, generator=torch.Generator("cuda").manual_seed(0), sort=sort
    )
    assert got.dtype == dtype
    assert_close(got, want, dtype)


KERNEL_OPS = {"triton": "sample_importance_triton", "native": "sample_importance"}


def _kernel_op(backend):
    _require(backend, "sample_importance")
    return getattr(torch.ops.portrait_engine, KERNEL_OPS[backend])


def _flat_inputs(rays, samples, dtype, seed=0):
    depths, weights = make_inputs(batch=1, rays=rays, samples=samples, seed=seed, dtype=dtype)
    return depths.reshape(rays, samples), weights.reshape(rays, samples - 1)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("sort", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("draws", [1, 33, 48, 70])
@pytest.mark.parametrize("samples", [4, 37, 48, 100])
def test_gpu_sample_importance_any_size(backend, sort, draws, samples):
    """Any S >= 4 and any n (one lane, a partial chunk, several chunks of 32), sorted or not,
    against a float64 per-ray transcription of EG3D's formulas on the same draws."""
    op = _kernel_op(backend)
    rays = 37  # not a multiple of the 8 rays of a CUDA block
    depths, weights = _flat_inputs(rays, samples, torch.float32, seed=samples + draws)
    u = importance_uniforms(rays, draws, generator=torch.Generator().manual_seed(draws))
    got = op(depths.cuda(), weights.cuda(), u.cuda(), sort).cpu()
    want = eg3d_oracle(depths.reshape(1, rays, samples, 1), weights.reshape(1, rays, -1, 1), u)
    want = want.reshape(rays, draws)
    if sort:
        # the reference's order: the samples of the sorted draws, then a running maximum
        want = torch.cummax(torch.sort(want, dim=-1).values, dim=-1).values
        assert bool((got[:, 1:] >= got[:, :-1]).all())
    assert_close(got, want, torch.float32)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("sort", [False, True], ids=["unsorted", "sorted"])
def test_gpu_sample_importance_tied_draws(backend, sort):
    """Equal draws in one ray (ranked by index in the CUDA kernel): every output slot written
    once, the samples those of the sorted draws."""
    op = _kernel_op(backend)
    depths, weights = _flat_inputs(9, 20, torch.float32, seed=3)
    u = torch.randint(0, 6, (9, 50), generator=torch.Generator().manual_seed(4)).float() / 5
    got = op(depths.cuda(), weights.cuda(), u.cuda(), sort).cpu()
    want = sample_importance_reference(
        depths.reshape(1, 9, 20, 1), weights.reshape(1, 9, 19, 1), 50, sort=sort, u=u
    ).reshape(9, 50)
    assert_close(got, want, torch.float32)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("sort", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize(
    "samples,draws",
    [
        (1500, 40),  # 18 KiB of shared memory per ray in fp32: 2 warps per CUDA block
        (3000, 200),  # 36 KiB: 1 warp per block; Triton: BLOCK_S = 4096
        (6000, 50),  # 72 KiB: the CUDA thread-per-ray fallback
        (48, 2000),  # many draws: the Triton torch.sort path, CUDA 8 KiB per ray sorted
    ],
)
def test_gpu_sample_importance_long_rays_and_fallbacks(backend, sort, samples, draws):
    op = _kernel_op(backend)
    rays = 11
    depths, weights = _flat_inputs(rays, samples, torch.float32, seed=1)
    u = importance_uniforms(rays, draws, generator=torch.Generator().manual_seed(2))
    got = op(depths.cuda(), weights.cuda(), u.cuda(), sort)
    want = sample_importance_reference(
        depths.reshape(1, rays, samples, 1).cuda(),
        weights.reshape(1, rays, samples - 1, 1).cuda(),
        draws,
        sort=sort,
        u=u.cuda(),
    ).reshape(rays, draws)
    assert_close(got, want, torch.float32)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("sort", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_gpu_sample_importance_dtypes(backend, sort, dtype):
    if dtype == torch.float64 and backend == "triton":
        pytest.skip("the Triton kernels compute in float32")
    op = _kernel_op(backend)
    depths, weights = _flat_inputs(21, 48, dtype, seed=6)
    u = importance_uniforms(21, 48, generator=torch.Generator().manual_seed(6))
    got = op(depths.cuda(), weights.cuda(), u.cuda(), sort).cpu()
    assert got.dtype == dtype
    want = eg3d_oracle(depths.reshape(1, 21, 48, 1), weights.reshape(1, 21, 47, 1), u)
    want = want.reshape(21, 48)
    if sort:
        want = torch.cummax(torch.sort(want, dim=-1).values, dim=-1).values
    assert_close(got, want, dtype)


@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("deterministic", [False, True], ids=["random", "deterministic"])
def test_gpu_sample_importance_is_run_to_run_identical(backend, deterministic):
    """No atomics, a fixed reduction order: the same draws give bit-identical samples; the
    CUDA kernel's warp-scan cdf agrees with the CPU kernel's sequential one to rounding."""
    _require(backend, "sample_importance")
    depths, weights = make_inputs(batch=2, rays=300, samples=48, seed=8)

    def run(device, name):
        return sample_importance(
            depths.to(device),
            weights.to(device),
            48,
            deterministic=deterministic,
            generator=torch.Generator(device).manual_seed(9),
            sort=True,
            backend=name,
        )

    first, second = run("cuda", backend), run("cuda", backend)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    cpu_ok, _ = pe.backend_status("cpu", "sample_importance")["native"]
    if deterministic and cpu_ok:  # the same u on both devices; the C++ CPU kernel
        assert_close(first.cpu(), run("cpu", "native"), torch.float32)


@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_merge_samples_matches_reference(backend, dtype):
    _require(backend, "merge_samples_index")
    d1, d2, v1, v2 = make_merge_inputs(
        batch=4, rays=512, first=48, second=48, channels=(32, 1), dtype=dtype
    )
    d1, d2 = d1.cuda(), d2.cuda()
    v1 = tuple(v.cuda().requires_grad_() for v in v1)
    v2 = tuple(v.cuda().requires_grad_() for v in v2)
    depths, values = merge_samples(d1, d2, v1, v2, backend=backend)
    want_depths, want_values = merge_samples_reference(d1, d2, v1, v2)
    torch.testing.assert_close(depths, want_depths, rtol=0, atol=0)
    for got, want in zip(values, want_values, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    grads = torch.autograd.grad(sum(v.sum() * 2 for v in values), v1 + v2)
    for g in grads:
        torch.testing.assert_close(g, torch.full_like(g, 2.0), rtol=0, atol=0)


# Beyond the CPU test's shapes: several rays per CUDA block with a partial last block (C = 1,
# C = 3), an EG3D-sized batch with a partial last Triton program, and rays too large for the
# CUDA kernels' 48 KB shared-memory stage (fp32 C = 160: 61 KB; fp16 C = 300: 57 KB), which
# take the row-copy fallback; fp16 C = 160 (31 KB) is staged, one ray per block.
GPU_KERNEL_SHAPES = KERNEL_SHAPES + [
    (1000, 48, 48, 1),
    (1000, 6, 13, 3),
    (4099, 48, 48, 33),
    (3, 48, 48, 160),
    (3, 48, 48, 300),
]


# fp16 moves like bf16 (2-byte elements) and offsets 1 and 3 both misalign: fewer Triton
# compilations (one per shape, dtype and pointer alignment) on a GPU lease; the CPU test runs all
@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", GPU_KERNEL_SHAPES, ids=str)
def test_gpu_scatter_and_gather_ops_move_whole_rows(backend, shape, dtype, offset):
    _require(backend, "merge_samples_index")
    check_scatter_and_gather(backend, "cuda", *shape, dtype, offset)


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_renderer_matches_torch_backend(backend, monkeypatch):
    # float tolerance needs exact fp32 dots in the fused Triton render kernel (its default on a
    # GPU is tf32, ~3e-4 relative: seen as 510 of 1280 elements off by ~2e-4 on an H200);
    # tests/ops/test_render_rays_triton.py checks the tf32 default at its own tolerance
    monkeypatch.setattr(render_kernels, "FP32_DOT_PRECISION", "ieee")
    _require(backend, "sample_importance")
    _require(backend, "ray_march_forward")
    planes, decoder, origins, directions = make_scene(rays=256, channels=32, size=64)
    planes, origins, directions = planes.cuda(), origins.cuda(), directions.cuda()
    decoder = decoder.cuda()
    renderer = ImportanceRenderer(depth_resolution=48, depth_resolution_importance=48)

    def render(name):
        with pe.use_backend(name):
            return renderer(
                planes,
                decoder,
                origins,
                directions,
                generator=torch.Generator("cuda").manual_seed(1),
            )

    for got, want in zip(render(backend), render("torch"), strict=True):
        assert_close(got, want, torch.float32, scale=10)
