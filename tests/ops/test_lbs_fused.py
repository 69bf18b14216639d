"""Native lbs's one-op-per-direction host path (``lbs_fused_forward`` / ``lbs_fused_backward``,
``csrc/skinning/lbs_fused.cpp``): opcheck on every route of the shape part, and the same
results and gradients as the Python path it replaces in eager mode (``_LBS.run_forward`` and
its backward, still what torch.compile traces), for every route, broadcast and subset of
inputs needing gradients."""

from __future__ import annotations

import pytest
import torch

from portrait_engine import _extension
from portrait_engine.body import procedural_body_model
from portrait_engine.ops import lbs
from portrait_engine.ops import skinning as skinning_module
from tests.helpers import results_on_threads
from tests.ops.test_lbs import rotations_of
from tests.ops.test_lbs_routes import INDEX, KINDS, NEEDS, _variant

pytestmark = pytest.mark.skipif(
    not _extension.has_op("lbs_fused_forward"), reason="needs the built extension"
)


def _fused_args(kind, pose2rot=True, route=None):
    betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, weights = _variant(kind)
    if not pose2rot:
        pose = rotations_of(pose)
    if route is None:
        route = skinning_module._shape_route("native", betas, v_template)
    index = skinning_module._ROUTE_INDEX[route]
    return (
        betas,
        pose,
        v_template,
        shapedirs,
        posedirs,
        J_regressor,
        weights,
        parents,
        pose2rot,
        index,
    )


@pytest.mark.parametrize(
    "kind, route",
    [
        ("plain", None),
        ("more_shapes_than_betas", None),  # the kernel route
        ("more_shapes_than_betas", "regressed"),  # the GPU's route for B > 256, here on the CPU
        ("one_betas_row", "rows"),  # the GPU's route for one shape, here on the CPU
        ("one_pose_row", None),
        ("batched_template", None),
    ],
)
@pytest.mark.parametrize("pose2rot", [True, False])
def test_opcheck_fused_forward_and_backward(kind, route, pose2rot):
    args = _fused_args(kind, pose2rot, route)
    forward = torch.ops.portrait_engine.lbs_fused_forward.default
    torch.library.opcheck(forward, args)
    vertices, joints, saved = forward(*args)
    for needs, grad_joints in (
        ([True] * 7, torch.randn_like(joints)),
        ([True, True, False, False, False, False, False], None),  # only the vertices reached
    ):
        grads_out = (torch.randn_like(vertices), grad_joints)
        backward_args = (*grads_out, *args[:8], saved, pose2rot, args[9], needs)
        torch.library.opcheck(torch.ops.portrait_engine.lbs_fused_backward.default, backward_args)
        grads = torch.ops.portrait_engine.lbs_fused_backward.default(*backward_args)
        for grad, need in zip(grads, needs, strict=True):
            assert (grad.numel() > 0) == need


def _run(inputs, needs, outputs=(0, 1), nodes=None):
    leaves = [
        x.detach().clone().requires_grad_(i in needs) if x.is_floating_point() else x
        for i, x in enumerate(inputs)
    ]
    vertices, joints = lbs(*leaves, backend="native")
    if nodes is not None:
        nodes.append(vertices.grad_fn.name())
    generator = torch.Generator().manual_seed(5)
    gv = torch.randn(vertices.shape, generator=generator)
    gj = torch.randn(joints.shape, generator=generator)
    reached = [(vertices, gv), (joints, gj)]
    torch.autograd.backward(*zip(*[reached[i] for i in outputs], strict=True))
    return [vertices.detach(), joints.detach()] + [leaves[i].grad for i in INDEX.values()]


def _compare(monkeypatch, inputs, needs, outputs=(0, 1)):
    """The fused path (checked to run) against the Python path, on the same inputs: through
    lbs_autograd (the C++ autograd node, eager mode on the CPU) and through _LBS."""
    calls = []
    fused_forward = skinning_module._LBS.run_fused_forward

    def counted(*args):
        calls.append(1)
        return fused_forward(*args)

    monkeypatch.setattr(skinning_module._LBS, "run_fused_forward", staticmethod(counted))
    nodes = []
    through_cpp = _run(inputs, needs, outputs, nodes)
    assert not calls and "LbsFunction" in nodes[0], "lbs_autograd did not run"
    monkeypatch.setattr(skinning_module, "_AUTOGRAD_DEVICES", ())
    fused = _run(inputs, needs, outputs)
    assert calls, "the fused path did not run"
    monkeypatch.setattr(skinning_module, "_FUSED_NATIVE", False)
    python = _run(inputs, needs, outputs)
    assert len(calls) == 1, "the fused path ran where the Python path should have"
    monkeypatch.setattr(skinning_module, "_FUSED_NATIVE", True)
    for index, (cpp, got) in enumerate(zip(through_cpp, fused, strict=True)):
        # the same ops on the same inputs: identical results
        assert (cpp is None) == (got is None), f"output {index}"
        if got is not None:
            assert torch.equal(cpp, got), f"output {index}: lbs_autograd differs from _LBS"
    for index, (got, want) in enumerate(zip(fused, python, strict=True)):
        if want is None:
            assert got is None, f"output {index}: a gradient the Python path does not give"
            continue
        # the same kernels, equal to float32 rounding: the same ATen products in the same order,
        # except the direct route's shape part on the CPU, which runs its own passes over blocks
        # of vertices (shape_direct.h) and so sums in another order: differences of ~1e-7 of
        # each tensor's largest value (up to 4e-6 on gradients near 40), hence an absolute
        # tolerance of 1e-6 of that scale
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * scale, msg=f"output {index}")


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("needs", list(NEEDS))
def test_fused_path_matches_the_python_path(monkeypatch, kind, needs):
    _compare(monkeypatch, _variant(kind), NEEDS[needs])


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("needs", [*NEEDS, "betas_only", "regressor_only", "template_only"])
def test_regressed_route_matches_the_python_path(monkeypatch, needs):
    """The regressed route is the GPU's for B > NB; forced here on the CPU, both paths."""
    subsets = {"betas_only": (0,), "regressor_only": (5,), "template_only": (2,)}
    monkeypatch.setattr(skinning_module, "_shape_route", lambda *args: "regressed")
    _compare(monkeypatch, _variant("more_shapes_than_betas"), NEEDS.get(needs, subsets.get(needs)))


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("kind", ["one_betas_row", "single"])
@pytest.mark.parametrize("needs", [*NEEDS, "regressor_only", "template_only"])
def test_rows_route_matches_the_python_path(monkeypatch, kind, needs):
    """The rows route is the GPU's for one shape; forced here on the CPU, both paths (one betas
    row under a batch of poses, and B = 1)."""
    subsets = {"regressor_only": (5,), "template_only": (2,)}
    monkeypatch.setattr(skinning_module, "_shape_route", lambda *args: "rows")
    _compare(monkeypatch, _variant(kind), NEEDS.get(needs, subsets.get(needs)))


@pytest.mark.parametrize("outputs", [(0,), (1,)])
def test_an_output_that_does_not_reach_the_loss(monkeypatch, outputs):
    """Only the vertices reach the loss, or only the joints: the other's gradient arrives as
    None and counts as zero, as on the Python path."""
    _compare(monkeypatch, _variant("plain"), NEEDS["all"], outputs)


def test_bad_route_and_saved_list_are_refused():
    args = list(_fused_args("batched_template"))
    args[9] = 2  # regressed with a batch of templates
    with pytest.raises(RuntimeError, match="v_template"):
        torch.ops.portrait_engine.lbs_fused_forward.default(*args)
    args = _fused_args("plain")
    vertices, joints, saved = torch.ops.portrait_engine.lbs_fused_forward.default(*args)
    with pytest.raises(RuntimeError, match="saved"):
        torch.ops.portrait_engine.lbs_fused_backward.default(
            vertices, joints, *args[:8], saved[:4], args[8], args[9], [True] * 7
        )


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


@pytest.mark.parametrize("kind", ["plain", "more_shapes_than_betas", "one_betas_row"])
def test_opcheck_lbs_autograd(kind):
    """The C++ autograd node's op: schema, fake kernel, autograd registration."""
    if not _extension.has_op("lbs_autograd"):
        pytest.skip("needs the built extension")
    args = list(_fused_args(kind))
    for i in range(7):
        args[i] = args[i].detach().clone().requires_grad_(True)
    direct = skinning_module._direct_takes(args[0], args[1], args[2], args[5], args[9])
    torch.library.opcheck(torch.ops.portrait_engine.lbs_autograd.default, (*args, direct))


def test_lbs_autograd_without_autograd_gives_the_same_values():
    """Under inference mode (no autograd key) the op runs its forward alone."""
    inputs = _variant("plain")
    with torch.inference_mode():
        vertices, joints = lbs(*inputs, backend="native")
    want = lbs(*inputs, backend="native")
    assert torch.equal(vertices, want[0]) and torch.equal(joints, want[1])


def test_direct_route_on_the_cpu_refuses_mismatched_sizes():
    """The direct route's CPU passes index by the inputs' sizes: the public fused ops refuse a
    mismatch (a short shapedirs, a saved tensor of the wrong shape) with an error naming it."""
    args = list(_fused_args("plain"))
    assert args[9] == skinning_module._ROUTE_INDEX["direct"]
    short = list(args)
    short[3] = args[3][..., :4].contiguous()  # 4 shape directions against 10 betas
    with pytest.raises(RuntimeError, match="shapedirs"):
        torch.ops.portrait_engine.lbs_fused_forward.default(*short)
    vertices, joints, saved = torch.ops.portrait_engine.lbs_fused_forward.default(*args)
    saved = list(saved)
    saved[4] = saved[4][:1].contiguous()  # the columns of one row for a batch of several
    with pytest.raises(RuntimeError, match="saved columns"):
        torch.ops.portrait_engine.lbs_fused_backward.default(
            torch.randn_like(vertices), None, *args[:8], saved, args[8], args[9], [True] * 7
        )


def _sized_model(batch, vertices, shapes, seed):
    """Random lbs arguments with SMPL's 24-joint tree at any vertex and shape count."""
    parents = procedural_body_model(rings=4, around=5).parents
    joints = parents.numel()
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, shapes, generator=g),
        0.4 * torch.randn(batch, joints * 3, generator=g),
        0.3 * torch.randn(vertices, 3, generator=g),
        0.1 * torch.randn(vertices, 3, shapes, generator=g),
        0.01 * torch.randn((joints - 1) * 9, vertices * 3, generator=g),
        torch.softmax(torch.randn(joints, vertices, generator=g), dim=1),
        parents,
        torch.softmax(3 * torch.randn(vertices, joints, generator=g), dim=1),
    ]


def _lbs_grads(args, needs, dtype):
    leaves = [
        a.detach().to(dtype).requires_grad_(i in needs) if a.is_floating_point() else a
        for i, a in enumerate(args)
    ]
    vertices, joints = lbs(*leaves, backend="native" if dtype == torch.float32 else "torch")
    g = torch.Generator().manual_seed(11)
    grads = [torch.randn(vertices.shape, generator=g), torch.randn(joints.shape, generator=g)]
    torch.autograd.backward([vertices, joints], [x.to(dtype) for x in grads])
    return [vertices.detach(), joints.detach()] + [leaves[i].grad for i in needs]


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize(
    "batch, vertices, shapes",
    # vertices: one lone partial group of 16, 16 + 1, a block of 64 and a partial group, 3
    # blocks (130 = 2 x 64 + 2: a slab per block) and more blocks than the backward's 8 slabs
    # (700: 11 blocks);
    # shapes: one, fewer than 16 (a (row, shape) vector spanning rows), and more than 16
    [(1, 1, 1), (1, 17, 10), (2, 70, 3), (3, 130, 17), (1, 700, 10)],
)
@pytest.mark.parametrize(
    "needs", [(0, 1, 2, 3, 4, 5, 7), (0, 1), (2, 3, 5), (3,)], ids=["all", "pose", "model", "S"]
)
def test_direct_route_on_the_cpu_matches_float64(batch, vertices, shapes, needs):
    """The direct route's CPU passes (B <= shapes, a (V, 3) template; the backward vectorised
    along vertices on an AVX-512 CPU) against the Python path in float64: values and the
    gradients asked for, at vertex and shape counts around the vector and block edges."""
    args = _sized_model(batch, vertices, shapes, seed=vertices + shapes)
    assert skinning_module._shape_route("native", args[0], args[2]) == "direct"
    got = _lbs_grads(args, needs, torch.float32)
    want = _lbs_grads(args, needs, torch.float64)
    names = ["vertices", "joints"] + [f"grad[{i}]" for i in needs]
    for name, a, b in zip(names, got, want, strict=True):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=2e-5 * scale, msg=name)


def test_direct_route_on_the_cpu_does_not_depend_on_threads():
    """Its passes sum over fixed blocks and slabs: the same bits on two threads and on three."""
    args = _sized_model(2, 700, 10, seed=4)
    results = results_on_threads((2, 3), lambda: _lbs_grads(args, (0, 1, 2, 3, 5), torch.float32))
    for two, three in zip(*results, strict=True):
        assert torch.equal(two, three)
