"""sample_importance / merge_samples / ImportanceRenderer on a GPU: the CUDA and Triton kernels
against the reference on the GPU, at the EG3D sizes."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.kernels import render as render_kernels
from portrait_engine.nn import ImportanceRenderer
from portrait_engine.ops import merge_samples, sample_importance
from portrait_engine.ops.reference import merge_samples_reference, sample_importance_reference
from tests.helpers import assert_close
from tests.nn.test_renderer import make_scene
from tests.ops.test_merge_samples import KERNEL_SHAPES, check_scatter_and_gather
from tests.ops.test_merge_samples import make_inputs as make_merge_inputs
from tests.ops.test_sample_importance import make_inputs

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
