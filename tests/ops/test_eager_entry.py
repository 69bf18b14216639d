"""The eager entry of registered ops (``_library.eager``): the same kernels and autograd formula
as the torch.library registration, without its Python frame; usable under torch.func; the
registered op itself under torch.compile."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.ops import _library, ray_march, skin_points, softplus

NATIVE = pytest.mark.skipif(
    not pe.backend_status("cpu", "softplus_forward")["native"][0],
    reason="the C++ extension is not built",
)


def _registered(fn):
    """Run ``fn`` with every eager entry removed: the ops go through torch.library's autograd."""
    saved = dict(_library._EAGER)
    _library._EAGER.clear()
    try:
        return fn()
    finally:
        _library._EAGER.update(saved)


def _grads(make_inputs, op):
    inputs = make_inputs()
    out = op(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
    return out.detach(), [t.grad for t in inputs if t.requires_grad]


def _skin_inputs():
    g = torch.Generator().manual_seed(1)
    points = torch.randn(2, 37, 3, generator=g).requires_grad_()
    weights = torch.rand(37, 5, generator=g).softmax(-1).requires_grad_()
    transforms = torch.randn(2, 5, 4, 4, generator=g).requires_grad_()
    return points, weights, transforms


def _march_inputs():
    g = torch.Generator().manual_seed(2)
    colors = torch.rand(2, 11, 7, 4, generator=g).requires_grad_()
    densities = torch.randn(2, 11, 7, 1, generator=g).requires_grad_()
    depths = torch.sort(torch.rand(2, 11, 7, 1, generator=g), dim=2).values + 1
    return colors, densities, depths


@pytest.mark.parametrize("backend", [pytest.param("native", marks=NATIVE), "triton"])
@pytest.mark.parametrize(
    "make_inputs, op",
    [
        (lambda: (torch.randn(5, 33, generator=torch.Generator().manual_seed(0)),), softplus),
        (_skin_inputs, skin_points),
        (_march_inputs, ray_march),
    ],
    ids=["softplus", "skin_points", "ray_march"],
)
def test_eager_entry_matches_the_registered_op(make_inputs, op, backend):
    def make():
        inputs = make_inputs()
        if op is softplus:
            inputs[0].requires_grad_()
        return inputs

    def run():
        return _grads(make, lambda *x: op(*x, backend=backend))

    out, grads = run()
    ref_out, ref_grads = _registered(run)
    # the same kernels and formula: identical, not merely close
    assert torch.equal(out, ref_out)
    assert len(grads) == len(ref_grads) > 0
    for grad, ref in zip(grads, ref_grads, strict=True):
        assert torch.equal(grad, ref)


@NATIVE
def test_eager_entry_builds_one_autograd_node_and_none_without_grad():
    x = torch.randn(3, 8, requires_grad=True)
    y = softplus(x, backend="native")
    assert type(y.grad_fn).__name__ == "Eager_softplus_forwardBackward"
    with torch.no_grad():
        assert softplus(x, backend="native").grad_fn is None
    assert softplus(x.detach(), backend="native").grad_fn is None
    with torch.inference_mode():
        assert torch.equal(softplus(x, backend="native"), y.detach())


@NATIVE
def test_eager_entry_under_torch_func_and_the_registered_op_under_compile():
    op = torch.ops.portrait_engine.softplus_forward
    assert _library.eager(op) is not op
    merge_index = torch.ops.portrait_engine.merge_samples_index
    assert _library.eager(merge_index) is merge_index  # no autograd registered: the op itself

    seen = []

    def f(x):
        seen.append(_library.eager(op) is op)
        return softplus(x, backend="native").sum()

    x = torch.randn(4, 6)
    # torch.func through the eager entry (the registered op's generated Function refuses it)
    grad = torch.func.grad(f)(x)
    assert seen == [False]
    assert torch.allclose(grad, torch.sigmoid(x), atol=1e-6)
    with pytest.raises(RuntimeError, match="setup_context"):
        _registered(lambda: torch.func.grad(f)(x))

    seen.clear()
    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x), f(x))
    assert seen[0] is True  # traced: the registered op
