"""attention_pool on a GPU: the CUDA and Triton kernels against the reference on the GPU."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.ops import attention_pool
from tests.helpers import assert_close
from tests.ops.test_attention_pool import make_inputs, run

pytestmark = pytest.mark.cuda


def _require(backend):
    ok, reason = pe.backend_status("cuda", "attention_pool_forward")[backend]
    if not ok:
        pytest.skip(reason)


@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("size", [(7, 7), (14, 14), (5, 6), (1, 1)], ids=str)
@pytest.mark.parametrize("maps", [1, 4, 11])
@pytest.mark.parametrize("channels", [512, 33])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_matches_reference(backend, size, maps, channels, channels_last, dtype):
    _require(backend)
    features, scores = make_inputs(
        batch=17,
        channels=channels,
        maps=maps,
        height=size[0],
        width=size[1],
        channels_last=channels_last,
        dtype=dtype,
    )
    features, scores = features.cuda(), scores.cuda()
    got = run(backend, features, scores)
    if dtype != torch.float32:
        want = run("torch", features.float(), scores.float())
        for g, w in zip(got, want, strict=True):
            assert g.dtype == dtype
            assert_close(g, w, dtype, scale=2)
        return
    # float32 against float64 (of the same inputs). The score gradient a (t - δ) subtracts two
    # C-term sums, t = Σ_c g_c f_c and δ = Σ_c g_c o_c: its rounding error scales with the
    # magnitude of those sums, not with the result (exactly 0 at L = 1, where a = 1). Against
    # a float32 reference (whose own rounding adds to the kernel's), K = 11, L = 30 failed the
    # plain float32 tolerance on an H200 (2026-11-26). Bound: the summation estimate
    # 4·eps·sqrt(C) times a (Σ|g f| + |δ|), plus the float32 tolerance.
    want = run("torch", features.double(), scores.double())
    for g, w in zip(got[:2], want[:2], strict=True):
        assert g.dtype == dtype
        assert_close(g, w, dtype, scale=2)
    f = features.double().flatten(2)  # (B, C, L)
    a = torch.softmax(scores.double().flatten(2), dim=-1)  # (B, K, L)
    # the output gradient `run` used (drawn on the CPU, seed 7), on the GPU like the rest
    grad = torch.randn(want[0].shape, generator=torch.Generator().manual_seed(7)).to(want[0])
    delta = (grad * want[0]).sum(-1, keepdim=True)  # (B, K, 1)
    magnitude = a * (torch.einsum("bkc,bcl->bkl", grad.abs(), f.abs()) + delta.abs())
    bound = 4 * torch.finfo(torch.float32).eps * channels**0.5 * magnitude + 1e-5
    error = (got[2].double() - want[2]).abs().flatten(2)
    assert got[2].dtype == dtype
    assert bool((error <= bound).all()), (
        f"score gradient error {float(error.max()):.3g} over its bound at "
        f"{[int(i) for i in divmod(int((error - bound).argmax()), error.shape[-1])]}"
    )


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_face_recognition_size_and_large_scores(backend):
    _require(backend)
    features, scores = make_inputs(batch=512, channels=512, height=7, width=7, scale=100.0)
    features, scores = features.cuda(), scores.cuda()
    got = run(backend, features, scores)
    want = run("torch", features, scores)
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        assert_close(g, w, torch.float32, scale=10)


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_compile_fullgraph(backend):
    _require(backend)
    features, scores = make_inputs(batch=8, channels=64)
    features = features.cuda().requires_grad_()
    scores = scores.cuda().requires_grad_()
    compiled = torch.compile(
        lambda f, s: attention_pool(f, s, backend=backend).sum(), fullgraph=True
    )
    compiled(features, scores).backward()
    assert torch.isfinite(features.grad).all() and torch.isfinite(scores.grad).all()
