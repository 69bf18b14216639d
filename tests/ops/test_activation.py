"""softplus (the OSG decoder's hidden activation): every backend against torch's softplus and
float64, forward and backward, across the threshold, the under- and overflow, NaN and inf;
each CPU instruction-set path; registration (opcheck) and torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import portrait_engine as pe
from portrait_engine.ops import softplus
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
