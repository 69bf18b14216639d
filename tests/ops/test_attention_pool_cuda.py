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
    want = run("torch", features.float(), scores.float())
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert_close(g, w, dtype, scale=2)


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
