"""softplus and decoder_outputs on a GPU: the CUDA and Triton kernels against float64, forward
and backward, at the renderer's sizes and across softplus's threshold, saturation and
non-finite inputs; OSGDecoder on the GPU under each backend against the torch backend."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.ops import decoder_outputs, softplus
from tests.helpers import assert_close
from tests.ops.test_activation import head_inputs, head_oracle, oracle, run, run_head, sweep

pytestmark = pytest.mark.cuda


def _require(backend, op):
    ok, reason = pe.backend_status("cuda", op)[backend]
    if not ok:
        pytest.skip(reason)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_gpu_softplus_matches_float64(backend, dtype):
    _require(backend, "softplus_forward")
    x = sweep(torch.float64)
    if dtype in (torch.float16, torch.bfloat16):
        x = x.clamp(-60, 60)  # inside the half types' range
    x = x.to(dtype).cuda()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype).cuda()
    got = run(backend, x, grad)
    want = oracle(x.double(), grad.double())
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype and g.is_cuda
        assert_close(g, w.to(dtype), dtype)


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_softplus_non_finite_and_non_contiguous(backend):
    _require(backend, "softplus_forward")
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 25.0, -25.0]).cuda()
    got = run(backend, x, torch.ones_like(x))
    want = run("torch", x, torch.ones_like(x))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, equal_nan=True)
    view = torch.randn(6, 8, 5, generator=torch.Generator().manual_seed(5)).cuda().transpose(0, 2)
    got = run(backend, view, torch.ones_like(view))
    want = run("torch", view, torch.ones_like(view))
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float32)
    assert softplus(torch.zeros(0, 64, device="cuda"), backend=backend).shape == (0, 64)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "shape", [(4, 16384 * 48 // 64, 33), (5, 2), (1, 7, 18)], ids=["renderer", "one", "odd"]
)
def test_gpu_decoder_outputs_match_float64(backend, dtype, shape):
    _require(backend, "decoder_outputs_forward")
    x, grads = head_inputs(shape, dtype)
    x, grads = x.cuda(), tuple(g.cuda() for g in grads)
    got = run_head(backend, x, grads)
    want = head_oracle(x.double(), tuple(g.double() for g in grads))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype and g.shape == w.shape and g.is_cuda
        assert_close(g, w.to(dtype), dtype)


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_decoder_outputs_one_output_gradient(backend):
    _require(backend, "decoder_outputs_forward")
    x, _ = head_inputs((4, 6, 9))
    x = x.cuda().requires_grad_()
    (only_rgb,) = torch.autograd.grad(decoder_outputs(x, backend=backend)[1].sum(), x)
    (want,) = torch.autograd.grad(decoder_outputs(x, backend="torch")[1].sum(), x)
    assert_close(only_rgb, want, torch.float32)
    assert torch.all(only_rgb[..., 0] == 0)


@pytest.mark.parametrize("backend", ["triton", "native", "auto"])
def test_gpu_osg_decoder_matches_torch_backend(backend):
    """EG3D's decoder on GPU planes' features: the hidden softplus and the output head on the
    kernel backend (under ``auto``, what the renderer uses on a GPU) against the torch one."""
    from portrait_engine.nn import OSGDecoder

    if backend != "auto":
        _require(backend, "softplus_forward")
    torch.manual_seed(0)
    decoder = OSGDecoder(32, output_dim=32, hidden_dim=64).cuda()
    features = torch.randn(3, 4, 2048, 32, device="cuda")
    results = {}
    for name in ("torch", backend):
        x = features.clone().requires_grad_()
        decoder.zero_grad()
        with pe.use_backend(name):
            out = decoder(x, None)
        loss = sum(
            (v * torch.linspace(-1, 1, v.shape[-1], device="cuda")).sum() for v in out.values()
        )
        loss.backward()
        grads = [x.grad] + [p.grad.clone() for p in decoder.parameters()]
        results[name] = ([v.detach() for v in out.values()], grads)
    for g, w in zip(
        results[backend][0] + results[backend][1],
        results["torch"][0] + results["torch"][1],
        strict=True,
    ):
        assert_close(g, w, torch.float32, scale=4)
