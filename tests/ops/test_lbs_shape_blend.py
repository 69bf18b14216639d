"""lbs's native shape-blend kernel (``shape_blend_{forward,backward}``): ``v_shaped = T + S β`` and
``regressed = 𝒥 [T | S]`` with the gradients of all four inputs, against float64 products."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from tests.helpers import assert_close, results_on_threads

_OK, _REASON = pe.backend_status("cpu", "shape_blend_forward")["native"]
pytestmark = pytest.mark.skipif(not _OK, reason=_REASON)

# 188 vertices: two full 64-vertex blocks of the CPU kernel (192 columns: three 64-column tiles)
# and a partial one of 60 (180 columns: two tiles and a last one of 52, its fourth vector masked)
VERTICES = 188
JOINTS = 5


def shape_inputs(batch, betas, dtype, seed=0, vertices=VERTICES):
    generator = torch.Generator().manual_seed(seed)
    v_template = torch.randn(vertices, 3, generator=generator)
    coeffs = torch.randn(batch, betas, generator=generator)
    shapedirs = torch.randn(vertices, 3, betas, generator=generator)
    regressor = torch.softmax(torch.randn(JOINTS, vertices, generator=generator), dim=1)
    return [t.to(dtype) for t in (v_template, coeffs, shapedirs, regressor)]


def reference(v_template, betas, shapedirs, regressor):
    """The formulas in float64, differentiable by autograd."""
    v_shaped = v_template + torch.einsum("bl,vkl->bvk", betas, shapedirs)
    template_and_dirs = torch.cat([v_template, shapedirs.reshape(v_template.shape[0], -1)], 1)
    return v_shaped, regressor @ template_and_dirs


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize(
    ("dtype", "scale"), [(torch.float32, 1), (torch.float64, 1), (torch.bfloat16, 4)]
)
# 1 and 32: lbs's benchmark batches; 3 betas: a blend-shape count other than SMPL's 10
@pytest.mark.parametrize(("batch", "betas"), [(1, 10), (32, 10), (5, 3)])
# avx2 and baseline cap the run-time choice below the AVX-512 compilation of the same loops
@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_shape_blend_matches_float64_products(dtype, scale, batch, betas, isa, monkeypatch):
    monkeypatch.setenv("PORTRAIT_ENGINE_CPU_ISA", isa)
    inputs = shape_inputs(batch, betas, dtype)
    ops = torch.ops.portrait_engine
    v_shaped, regressed = ops.shape_blend_forward(*inputs)
    leaves = [t.double().requires_grad_() for t in inputs]
    want_v, want_r = reference(*leaves)
    # the bf16 kernel accumulates in fp32 from bf16 inputs; the oracle rounds them the same way
    assert_close(v_shaped, want_v, dtype, scale=scale)
    assert_close(regressed, want_r, dtype, scale=scale)
    generator = torch.Generator().manual_seed(1)
    grad_v = torch.randn(want_v.shape, generator=generator).to(dtype)
    grad_r = torch.randn(want_r.shape, generator=generator).to(dtype)
    got = ops.shape_blend_backward(grad_v, grad_r, *inputs)
    want = torch.autograd.grad([want_v, want_r], leaves, [grad_v.double(), grad_r.double()])
    names = ("v_template", "betas", "shapedirs", "J_regressor")
    for name, g, w in zip(names, got, want, strict=True):
        assert g.dtype == dtype, name
        # grad_betas sums 564 products of unit normals: fp32 rounding ~ 1e-7 * 24 * sqrt(564)
        assert_close(g, w, dtype, scale=10 * scale)


def test_shape_blend_is_thread_count_independent():
    inputs = shape_inputs(32, 10, torch.float32, vertices=700)
    grads = (torch.randn(32, 700, 3), torch.randn(JOINTS, 33))
    ops = torch.ops.portrait_engine
    results = results_on_threads(
        (1, 2),
        lambda: (*ops.shape_blend_forward(*inputs), *ops.shape_blend_backward(*grads, *inputs)),
    )
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


def test_opcheck_shape_blend():
    inputs = [t.requires_grad_() for t in shape_inputs(4, 10, torch.float32)]
    ops = torch.ops.portrait_engine
    torch.library.opcheck(ops.shape_blend_forward, inputs)
    grads = (torch.randn(4, VERTICES, 3), torch.randn(JOINTS, 33))
    torch.library.opcheck(ops.shape_blend_backward, (*grads, *[t.detach() for t in inputs]))


def test_gradcheck_shape_blend_float64():
    inputs = [t.requires_grad_() for t in shape_inputs(3, 4, torch.float64, vertices=70)]
    assert torch.autograd.gradcheck(torch.ops.portrait_engine.shape_blend_forward, inputs)


def test_shape_blend_rejects_a_wrong_layout():
    v_template, betas, shapedirs, regressor = shape_inputs(2, 10, torch.float32)
    with pytest.raises(RuntimeError, match="shapedirs must be a contiguous"):
        torch.ops.portrait_engine.shape_blend_forward(
            v_template, betas, shapedirs.transpose(1, 2).contiguous(), regressor
        )
