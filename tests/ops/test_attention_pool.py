"""attention_pool: every backend against the reference and against softmax + einsum in float64."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.ops import attention_pool
from portrait_engine.ops.attention_pool import grad_features_like
from portrait_engine.ops.reference import attention_pool_reference
from tests.helpers import assert_close

NATIVE_OP = "attention_pool_forward"


def _backend_param(name):
    ok, reason = pe.backend_status("cpu", NATIVE_OP)[name]
    return pytest.param(name, marks=pytest.mark.skipif(not ok, reason=reason))


KERNEL_BACKENDS = [_backend_param("triton"), _backend_param("native")]
ALL_BACKENDS = [pytest.param("torch")] + KERNEL_BACKENDS


def make_inputs(
    batch=3,
    channels=5,
    maps=1,
    height=7,
    width=7,
    scale=3.0,
    seed=0,
    dtype=torch.float32,
    channels_last=False,
):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=generator).to(dtype)
    scores = (scale * torch.randn(batch, maps, height, width, generator=generator)).to(dtype)
    if channels_last:
        features = features.to(memory_format=torch.channels_last)
    return features, scores


def float64_oracle(features, scores):
    """softmax over positions + einsum, in float64: the definition, written once more."""
    a = torch.softmax(scores.double().flatten(2), dim=-1)
    return torch.einsum("bkl,bcl->bkc", a, features.double().flatten(2))


def run(backend, features, scores, grad_seed=7):
    features = features.detach().clone().requires_grad_()
    scores = scores.detach().clone().requires_grad_()
    if backend == "oracle":
        out = float64_oracle(features, scores)
    else:
        out = attention_pool(features, scores, backend=backend)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed))
    out.backward(grad.to(out))
    return out.detach(), features.grad, scores.grad


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("size", [(7, 7), (14, 14), (5, 6), (1, 1)], ids=str)
@pytest.mark.parametrize("maps", [1, 3, 11])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_matches_float64_oracle(backend, size, maps, channels_last):
    features, scores = make_inputs(
        channels=33,
        maps=maps,
        height=size[0],
        width=size[1],
        channels_last=channels_last,
        seed=size[0] * 10 + maps,
    )
    got = run(backend, features, scores)
    want = run("oracle", features, scores)
    # grad_scores = a (t - delta) cancels where t ~ delta: its float32 error is relative to |t|,
    # not to the result, so it gets twice the float32 tolerance (seen: 1.14e-5 off on 0.085,
    # native, K = 11, 14x14, where the plain tolerance allows 1.09e-5).
    for g, w, scale in zip(got, want, (1, 1, 2), strict=True):
        assert_close(g, w, torch.float32, scale=scale)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_native_cpu_isa_paths_match_float64(isa, dtype, channels_last, monkeypatch):
    """Each compiled CPU path (PORTRAIT_ENGINE_CPU_ISA caps the run-time choice; a path the CPU
    lacks falls back to the widest it has). The forward's row dots take 4 channels at a time in
    vectors of the path's width: 13 channels leave a partial block, and 2, 15, 49 and 64
    positions leave remainders of 2, 15 / 7 / 3, 1 and 0 positions against 16-, 8- and 4-lane
    vectors (and fewer positions than lanes)."""
    if not pe.backend_status("cpu", NATIVE_OP)["native"][0]:
        pytest.skip("the native extension is not built")
    monkeypatch.setenv("PORTRAIT_ENGINE_CPU_ISA", isa)
    for k, (size, maps) in enumerate([((1, 2), 1), ((3, 5), 2), ((7, 7), 1), ((8, 8), 3)]):
        features, scores = make_inputs(
            batch=2, channels=13, maps=maps, height=size[0], width=size[1], seed=40 + k,
            dtype=dtype, channels_last=channels_last,
        )  # fmt: skip
        got = run("native", features, scores)
        want = run("oracle", features, scores)
        for g, w, scale in zip(got, want, (1, 1, 2), strict=True):  # (2: as above)
            assert g.dtype == dtype
            assert_close(g, w.to(dtype), dtype, scale=scale)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_half_precision_accumulates_in_float32(backend, dtype, channels_last):
    features, scores = make_inputs(channels=40, maps=2, dtype=dtype, channels_last=channels_last)
    got = run(backend, features, scores)
    want = run("torch", features, scores)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert_close(g, w, dtype)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("scale", [100.0, 1e4])
def test_large_scores_neither_overflow_nor_nan(backend, scale):
    features, scores = make_inputs(maps=2, scale=scale)
    out, grad_features, grad_scores = run(backend, features, scores)
    for tensor in (out, grad_features, grad_scores):
        assert torch.isfinite(tensor).all()
    want = run("oracle", features, scores)
    assert_close(out, want[0], torch.float32)
    assert_close(grad_features, want[1], torch.float32)
    # the softmax is nearly one-hot: its gradient is tiny and carries cancellation
    assert_close(grad_scores, want[2], torch.float32, scale=10)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_grad_features_keep_the_features_layout(backend):
    for channels_last in (False, True):
        features, scores = make_inputs(channels_last=channels_last)
        _, grad_features, _ = run(backend, features, scores)
        assert grad_features.is_contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_other_layouts_are_copied_not_misread(backend):
    features, scores = make_inputs(channels=6, height=5, width=6)
    strided = features.transpose(2, 3).contiguous().transpose(2, 3)  # H and W strides swapped
    assert not strided.is_contiguous()
    got = run(backend, strided, scores)
    want = run("oracle", features, scores)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float32)


@pytest.mark.parametrize("backend", ["torch", _backend_param("native")])
def test_gradcheck_float64(backend):
    features, scores = make_inputs(
        batch=2, channels=3, maps=2, height=3, width=2, dtype=torch.float64
    )
    for channels_last in (False, True):
        f = features.to(memory_format=torch.channels_last) if channels_last else features
        f = f.detach().requires_grad_()
        s = scores.detach().requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: attention_pool(a, b, backend=backend), (f, s))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch_and_channels(backend):
    features, scores = make_inputs()
    assert attention_pool(features[:0], scores[:0], backend=backend).shape == (0, 1, 5)
    out = attention_pool(features[:, :0], scores, backend=backend)
    assert out.shape == (3, 1, 0)


def test_reference_is_the_published_pooling():
    """K = 1: the embedding is Σ softmax(s) · F, the RI paper's attention-weighted pooling."""
    features, scores = make_inputs(maps=1)
    weights = torch.softmax(scores.reshape(3, -1), dim=1).reshape(3, 1, 7, 7)
    expected = (features * weights).sum(dim=(2, 3))
    assert_close(attention_pool_reference(features, scores)[:, 0], expected, torch.float32)


def test_grad_features_like_mirrors_the_kernel_layout():
    features, _ = make_inputs(channels_last=True)
    flat = features.flatten(2)
    assert grad_features_like(flat).stride() == (49 * 5, 1, 5)
    assert grad_features_like(make_inputs()[0].flatten(2)).stride() == (49 * 5, 49, 1)
