"""The OSG decoder's element-wise ops, softplus (hidden activation) and decoder_outputs (output
head): every backend against float64, forward and backward, across the threshold, saturation,
NaN and inf; each CPU instruction-set path; registration (opcheck) and torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import portrait_engine as pe
from portrait_engine.ops import decoder_outputs, softplus
from tests.helpers import assert_close

KERNEL_BACKENDS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            not pe.backend_status("cpu", "softplus_forward")[name][0],
            reason=pe.backend_status("cpu", "softplus_forward")[name][1],
        ),
    )
    for name in ("triton", "native")
]
NATIVE = [p for p in KERNEL_BACKENDS if p.values[0] == "native"]
OPS = {
    "triton": ("softplus_triton_forward", "softplus_triton_backward"),
    "native": ("softplus_forward", "softplus_backward"),
}
CPU_ISAS = ["baseline", "avx2", "avx512"]


def sweep(dtype=torch.float32) -> torch.Tensor:
    """[-120, 120] finely (underflow of exp, the threshold 20 and its neighbours, saturation),
    then random hidden pre-activations, an odd length so vector remainders run."""
    x = torch.linspace(-120.0, 120.0, 24001, dtype=torch.float64)
    near = torch.tensor([20.0, 19.999, 20.001, 0.0, -0.0, 1e-30, -1e-30, 88.7, -88.7, -104.5])
    hidden = torch.randn(4097, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return torch.cat((x, near.double(), 3 * hidden)).to(dtype)


def run(backend, x, grad):
    x = x.detach().clone().requires_grad_()
    out = softplus(x, backend=backend)
    out.backward(grad)
    return out.detach(), x.grad


def oracle(x, grad):
    """float64 softplus and its gradient, with torch's threshold."""
    x64 = x.double().detach().requires_grad_()
    out = F.softplus(x64)
    out.backward(grad.double())
    return out.detach(), x64.grad


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_across_the_range(backend, dtype):
    x = sweep(dtype)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = run(backend, x, grad)
    want = oracle(x, grad)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    assert_close(got[0], want[0].to(dtype), dtype)
    assert_close(got[1], want[1].to(dtype), dtype)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("isa", CPU_ISAS)
def test_native_cpu_isa_paths_match_float64(backend, isa, monkeypatch):
    """Each compiled path (PORTRAIT_ENGINE_CPU_ISA caps the run-time choice; a path the CPU
    lacks falls back to the widest it has): the polynomial exp / log1p of the float loops."""
    monkeypatch.setenv("PORTRAIT_ENGINE_CPU_ISA", isa)
    x = sweep()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    got = run(backend, x, grad)
    want = oracle(x, grad)
    assert_close(got[0], want[0].float(), torch.float32)
    assert_close(got[1], want[1].float(), torch.float32)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(backend, dtype):
    x = (torch.randn(3, 1001, generator=torch.Generator().manual_seed(3)) * 8).to(dtype)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    got = run(backend, x, grad)
    want = oracle(x.float(), grad.float())
    assert got[0].dtype == dtype and got[1].dtype == dtype
    assert_close(got[0], want[0].to(dtype), dtype)
    assert_close(got[1], want[1].to(dtype), dtype)


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_non_finite_inputs_follow_torch(backend):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 25.0, -25.0])
    grad = torch.ones_like(x)
    got = run(backend, x, grad)
    want = run("torch", x, grad)
    torch.testing.assert_close(got[0], want[0], equal_nan=True)
    torch.testing.assert_close(got[1], want[1], equal_nan=True)


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_shapes_empty_and_non_contiguous(backend):
    base = torch.randn(6, 8, 5, generator=torch.Generator().manual_seed(5))
    view = base.transpose(0, 2)[:, ::2]  # non-contiguous
    got = run(backend, view, torch.ones_like(view))
    want = run("torch", view, torch.ones_like(view))
    assert got[0].shape == view.shape
    assert_close(got[0], want[0], torch.float32)
    assert_close(got[1], want[1], torch.float32)
    empty = softplus(torch.zeros(0, 64), backend=backend)
    assert empty.shape == (0, 64)


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_bad_input_raises_a_clear_error(backend):
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        softplus([1.0, 2.0], backend=backend)
    with pytest.raises(TypeError, match="x must be"):
        softplus(torch.arange(4), backend=backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(backend, requires_grad):
    forward, backward = OPS[backend]
    x = (torch.randn(7, 33, generator=torch.Generator().manual_seed(6)) * 10).requires_grad_(
        requires_grad
    )
    torch.library.opcheck(getattr(torch.ops.portrait_engine, forward), (x,))
    grad = torch.randn(7, 33, generator=torch.Generator().manual_seed(7))
    torch.library.opcheck(getattr(torch.ops.portrait_engine, backward), (grad, x.detach()))


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_torch_compile_fullgraph(backend):
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(8), requires_grad=True)

    def fn(t):
        return softplus(t, backend=backend).square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    (got,) = torch.autograd.grad(compiled(x), x)
    (want,) = torch.autograd.grad(fn(x), x)
    assert_close(got, want, torch.float32)


# --- decoder_outputs: the OSG decoder's output head --------------------------------------------

HEAD_BACKENDS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            not pe.backend_status("cpu", "decoder_outputs_forward")[name][0],
            reason=pe.backend_status("cpu", "decoder_outputs_forward")[name][1],
        ),
    )
    for name in ("triton", "native")
]
HEAD_OPS = {
    "triton": ("decoder_outputs_triton_forward", "decoder_outputs_triton_backward"),
    "native": ("decoder_outputs_forward", "decoder_outputs_backward"),
}


def run_head(backend, x, grads):
    x = x.detach().clone().requires_grad_()
    sigma, rgb = decoder_outputs(x, backend=backend)
    torch.autograd.backward((sigma, rgb), grads)
    return sigma.detach(), rgb.detach(), x.grad


def head_oracle(x, grads):
    """float64 EG3D head: split, widened sigmoid."""
    x64 = x.double().detach().requires_grad_()
    sigma, colors = x64.split([1, x.shape[-1] - 1], dim=-1)
    rgb = torch.sigmoid(colors) * (1 + 2 * 0.001) - 0.001
    torch.autograd.backward((sigma, rgb), tuple(g.double() for g in grads))
    return sigma.detach(), rgb.detach(), x64.grad


def head_inputs(shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * 6
    x.view(-1)[:4] = torch.tensor([-120.0, 120.0, 0.0, 30.0])  # saturation both ways
    grads = (
        torch.randn((*shape[:-1], 1), generator=generator).to(dtype),
        torch.randn((*shape[:-1], shape[-1] - 1), generator=generator).to(dtype),
    )
    return x.to(dtype), grads


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["torch"] + HEAD_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 301, 33), (5, 2), (1, 7, 18)], ids=["eg3d", "one", "odd"])
def test_decoder_outputs_match_float64(backend, dtype, shape):
    x, grads = head_inputs(shape, dtype)
    got = run_head(backend, x, grads)
    want = head_oracle(x, grads)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype and g.shape == w.shape
        assert_close(g, w.to(dtype), dtype)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", [p for p in HEAD_BACKENDS if p.values[0] == "native"])
@pytest.mark.parametrize("isa", CPU_ISAS)
def test_decoder_outputs_native_isa_paths(backend, isa, monkeypatch):
    monkeypatch.setenv("PORTRAIT_ENGINE_CPU_ISA", isa)
    for shape in [(3, 97, 33), (4, 9), (2, 5, 41)]:
        x, grads = head_inputs(shape, seed=shape[-1])
        got = run_head(backend, x, grads)
        want = head_oracle(x, grads)
        for g, w in zip(got, want, strict=True):
            assert_close(g, w.float(), torch.float32)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", HEAD_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decoder_outputs_half_precision(backend, dtype):
    x, grads = head_inputs((3, 64, 33), dtype)
    got = run_head(backend, x, grads)
    want = head_oracle(x.float(), tuple(g.float() for g in grads))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert_close(g, w.to(dtype), dtype)


@pytest.mark.parametrize("backend", ["torch"] + HEAD_BACKENDS)
def test_decoder_outputs_gradient_of_one_output_and_bad_input(backend):
    x, _ = head_inputs((4, 6, 9))
    x.requires_grad_()
    (only_rgb,) = torch.autograd.grad(decoder_outputs(x, backend=backend)[1].sum(), x)
    (want,) = torch.autograd.grad(decoder_outputs(x, backend="torch")[1].sum(), x)
    assert_close(only_rgb, want, torch.float32)
    assert torch.all(only_rgb[..., 0] == 0)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 1 \+ C_out\)"):
        decoder_outputs(torch.zeros(3, 1), backend=backend)
    with pytest.raises(TypeError, match="x must be"):
        decoder_outputs(torch.zeros(3, 4, dtype=torch.int64), backend=backend)


@pytest.mark.parametrize("backend", HEAD_BACKENDS)
@pytest.mark.parametrize("requires_grad", [True, False])
def test_decoder_outputs_opcheck(backend, requires_grad):
    forward, backward = HEAD_OPS[backend]
    x, grads = head_inputs((13, 33))
    x.requires_grad_(requires_grad)
    torch.library.opcheck(getattr(torch.ops.portrait_engine, forward), (x,))
    args = (grads[0].contiguous(), grads[1].contiguous(), x.detach())
    torch.library.opcheck(getattr(torch.ops.portrait_engine, backward), args)


@pytest.mark.parametrize("backend", ["torch"] + HEAD_BACKENDS)
def test_decoder_outputs_torch_compile_fullgraph(backend):
    x, _ = head_inputs((2, 8, 33))
    x.requires_grad_()

    def fn(t):
        sigma, rgb = decoder_outputs(t, backend=backend)
        return sigma.square().sum() + rgb.square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    (got,) = torch.autograd.grad(compiled(x), x)
    (want,) = torch.autograd.grad(fn(x), x)
    assert_close(got, want, torch.float32)
