"""Native lbs's one-op-per-direction host path (``lbs_fused_forward`` / ``lbs_fused_backward``,
``csrc/skinning/lbs_fused.cpp``): opcheck on every route of the shape part, and the same
results and gradients as the Python path it replaces in eager mode (``_LBS.run_forward`` and
its backward, still what torch.compile traces), for every route, broadcast and subset of
inputs needing gradients."""

from __future__ import annotations

import pytest
import torch

from portrait_engine import _extension
from portrait_engine.ops import lbs
from portrait_engine.ops import skinning as skinning_module
from tests.ops.test_lbs import rotations_of
from tests.ops.test_lbs_routes import INDEX, KINDS, NEEDS, _variant

pytestmark = pytest.mark.skipif(
    not _extension.has_op("lbs_fused_forward"), reason="needs the built extension"
)

FUSED_KINDS = ["plain", "more_shapes_than_betas", "one_pose_row", "batched_template"]


def _fused_args(kind, pose2rot=True):
    betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, weights = _variant(kind)
    if not pose2rot:
        pose = rotations_of(pose)
    return (betas, pose, v_template, shapedirs, posedirs, J_regressor, weights, parents, pose2rot)


@pytest.mark.parametrize("kind", FUSED_KINDS)
@pytest.mark.parametrize("pose2rot", [True, False])
def test_opcheck_fused_forward_and_backward(kind, pose2rot):
    args = _fused_args(kind, pose2rot)
    forward = torch.ops.portrait_engine.lbs_fused_forward.default
    torch.library.opcheck(forward, args)
    vertices, joints, saved = forward(*args)
    for needs in ([True] * 7, [True, True, False, False, False, False, False]):
        grads_out = (torch.randn_like(vertices), torch.randn_like(joints))
        backward_args = (*grads_out, *args[:8], saved, pose2rot, needs)
        torch.library.opcheck(torch.ops.portrait_engine.lbs_fused_backward.default, backward_args)
        grads = torch.ops.portrait_engine.lbs_fused_backward.default(*backward_args)
        for grad, need in zip(grads, needs, strict=True):
            assert (grad.numel() > 0) == need


def _run(inputs, needs):
    leaves = [
        x.detach().clone().requires_grad_(i in needs) if x.is_floating_point() else x
        for i, x in enumerate(inputs)
    ]
    vertices, joints = lbs(*leaves, backend="native")
    generator = torch.Generator().manual_seed(5)
    gv = torch.randn(vertices.shape, generator=generator)
    gj = torch.randn(joints.shape, generator=generator)
    torch.autograd.backward([vertices, joints], [gv, gj])
    return [vertices.detach(), joints.detach()] + [leaves[i].grad for i in INDEX.values()]


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("needs", list(NEEDS))
def test_fused_path_matches_the_python_path(monkeypatch, kind, needs):
    inputs = _variant(kind)
    assert skinning_module._FUSED_NATIVE
    fused = _run(inputs, NEEDS[needs])
    monkeypatch.setattr(skinning_module, "_FUSED_NATIVE", False)
    python = _run(inputs, NEEDS[needs])
    for index, (got, want) in enumerate(zip(fused, python, strict=True)):
        if want is None:
            assert got is None, f"output {index}: a gradient the Python path does not give"
            continue
        # the same kernels and ATen products in the same order: equal to rounding
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=f"output {index}")


def test_missing_output_gradients_count_as_zero():
    """Only the vertices reach the loss, or only the joints: the other gradient is None."""
    inputs = _variant("plain")
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    vertices, joints = lbs(*leaves, backend="native")
    vertices.sum().backward()
    assert leaves[1].grad is not None and torch.isfinite(leaves[1].grad).all()
    for leaf in leaves:
        leaf.grad = None
    vertices, joints = lbs(*leaves, backend="native")
    joints.square().sum().backward()
    assert leaves[0].grad is not None and torch.isfinite(leaves[0].grad).all()
    assert leaves[4].grad is not None and leaves[4].grad.abs().max() == 0  # posedirs


def test_a_signature_that_passed_still_checks_each_call(monkeypatch):
    """The cached validation skips only checks of shapes, dtypes and devices that passed; a new
    tree tensor of the same signature is still checked."""
    inputs = _variant("plain")
    lbs(*inputs, backend="native")
    bad_tree = inputs[6].clone()
    bad_tree[3] = 5
    inputs[6] = bad_tree
    with pytest.raises(ValueError, match="parents"):
        lbs(*inputs, backend="native")
    inputs = _variant("plain")
    inputs[7] = inputs[7].double()
    with pytest.raises(TypeError, match="lbs_weights"):
        lbs(*inputs, backend="native")
    inputs = _variant("plain")
    with pytest.raises(TypeError, match="pose2rot"):
        lbs(*inputs, pose2rot=1, backend="native")
