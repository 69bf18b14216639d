"""lbs's direct kernels (``lbs_direct_forward`` / ``lbs_direct_backward``,
``csrc/skinning/lbs_direct.h``): native lbs's path on a GPU for up to 64 rows. Their CPU twin runs
the same per-thread functions and host driver in loops, so every index of the GPU kernels is
checked here against ``smplx.lbs.lbs``: values and the gradients of every input, each subset of
inputs needing gradients, both routes they take (the layouts of the saved shapes differ), both
pose forms, float32 and float64; opcheck; the inputs they refuse."""

from __future__ import annotations

import pytest
import torch

from portrait_engine import _extension
from portrait_engine.ops import skinning as skinning_module
from tests.helpers import assert_close
from tests.ops.test_lbs import rotations_of
from tests.ops.test_lbs_fused import _fused_args
from tests.ops.test_lbs_routes import NAMES, NEEDS, _expected, _run, _variant

pytestmark = pytest.mark.skipif(
    not _extension.has_op("lbs_direct_forward"), reason="needs the built extension"
)


@pytest.fixture
def direct_on_cpu(monkeypatch):
    """lbs takes the direct kernels on the CPU too (their twin); records each decision."""
    taken = []
    original = skinning_module._direct_takes

    def takes(*args):
        result = original(*args)
        taken.append(result)
        return result

    monkeypatch.setattr(skinning_module, "_DIRECT_DEVICES", ("cpu", "cuda"))
    monkeypatch.setattr(skinning_module, "_direct_takes", takes)
    return taken


def _check(got, want, dtype=torch.float32):
    for name, g, w in zip(["vertices", "joints", *NAMES], got, want, strict=True):
        assert (g is None) == (w is None), name
        if w is not None:
            assert g.shape == w.shape, name
            assert_close(g, w, dtype, scale=10)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("kind", ["plain", "single"])
@pytest.mark.parametrize("needs", list(NEEDS))
@pytest.mark.parametrize("route", ["direct", "rows"])
def test_direct_kernels_match_smplx(direct_on_cpu, monkeypatch, kind, needs, route):
    if route == "rows":
        if kind != "single":
            pytest.skip("the rows route takes one betas row")
        monkeypatch.setattr(skinning_module, "_shape_route", lambda *args: "rows")
    inputs = _variant(kind)
    got = _run("native", inputs, NEEDS[needs])
    assert direct_on_cpu == [True], "lbs did not take the direct kernels"
    _check(got, _expected(kind, inputs, NEEDS[needs]))


@pytest.mark.parametrize("pose2rot", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_direct_kernels_pose_forms_and_dtypes(direct_on_cpu, pose2rot, dtype):
    inputs = [x.to(dtype) if x.is_floating_point() else x for x in _variant("plain")]
    # batch 6: a partial tile of every batch tile (4 in the vertex pass, 8 and 4 in the sums)
    inputs[0] = torch.cat([inputs[0], inputs[0][:2] * 0.5])
    inputs[1] = torch.cat([inputs[1], inputs[1][:2] * -0.7])
    if not pose2rot:
        inputs[1] = rotations_of(inputs[1])
    needs = NEEDS["all"]
    leaves = [
        x.detach().clone().requires_grad_(i in needs) if x.is_floating_point() else x
        for i, x in enumerate(inputs)
    ]
    vertices, joints = skinning_module.lbs(*leaves, pose2rot=pose2rot, backend="native")
    assert direct_on_cpu == [True]
    import smplx.lbs

    reference = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    want_v, want_j = smplx.lbs.lbs(*reference, pose2rot=pose2rot)
    generator = torch.Generator().manual_seed(5)
    gv = torch.randn(vertices.shape, generator=generator, dtype=dtype)
    gj = torch.randn(joints.shape, generator=generator, dtype=dtype)
    torch.autograd.backward([vertices, joints], [gv, gj])
    torch.autograd.backward([want_v, want_j], [gv, gj])
    assert_close(vertices, want_v, dtype, scale=10)
    assert_close(joints, want_j, dtype, scale=10)
    for i in needs:
        assert_close(leaves[i].grad, reference[i].grad, dtype, scale=10)


def test_ineligible_inputs_take_the_fused_ops(direct_on_cpu):
    """One betas row under a batch of poses, a batch of templates: the fused ops (the direct
    kernels take neither)."""
    for kind in ("one_betas_row", "batched_template"):
        inputs = _variant(kind)
        got = _run("native", inputs, NEEDS["all"])
        _check(got, _expected(kind, inputs, NEEDS["all"]))
    assert direct_on_cpu == [False, False]


def _direct_args(kind="plain", route=0, pose2rot=True):
    """The fused ops' arguments (the direct kernels share their schema) on route 0 or 3."""
    return _fused_args(kind, pose2rot, {0: "direct", 3: "rows"}[route])


@pytest.mark.parametrize("kind, route", [("plain", 0), ("single", 0), ("single", 3)])
@pytest.mark.parametrize("pose2rot", [True, False])
def test_opcheck_direct_forward_and_backward(kind, route, pose2rot):
    args = _direct_args(kind, route, pose2rot)
    forward = torch.ops.portrait_engine.lbs_direct_forward.default
    torch.library.opcheck(forward, args)
    vertices, joints, saved = forward(*args)
    fused = torch.ops.portrait_engine.lbs_fused_forward.default(*args)
    torch.testing.assert_close(vertices, fused[0])
    torch.testing.assert_close(joints, fused[1])
    for got, want in zip(saved, fused[2], strict=True):  # the same saved shapes as the route's
        assert got.shape == want.shape
    generator = torch.Generator().manual_seed(2)
    backward_args = (
        torch.randn(vertices.shape, generator=generator),
        torch.randn(joints.shape, generator=generator),
        *args[:8],
        saved,
        pose2rot,
        route,
        [True] * 7,
    )
    torch.library.opcheck(torch.ops.portrait_engine.lbs_direct_backward.default, backward_args)
    once = torch.ops.portrait_engine.lbs_direct_backward.default(*backward_args)
    again = torch.ops.portrait_engine.lbs_direct_backward.default(*backward_args)
    for a, b in zip(once, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    fused_grads = torch.ops.portrait_engine.lbs_fused_backward.default(
        *backward_args[:10], fused[2], *backward_args[11:]
    )
    for a, b in zip(once, fused_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: (a[0][:1], *a[1:]), "as many betas rows as pose rows"),
        (lambda a: (*a[:2], a[2].expand(4, -1, -1), *a[3:]), "v_template"),
        (lambda a: (*a[:9], 1), "route 0 or 3"),
        (
            lambda a: tuple(
                x.half() if torch.is_tensor(x) and x.is_floating_point() else x for x in a
            ),
            "float or double",
        ),
    ],
)
def test_direct_forward_refuses_inputs_it_does_not_take(change, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.portrait_engine.lbs_direct_forward.default(*change(_direct_args()))


def _replace(args, index, value):
    return (*args[:index], value, *args[index + 1 :])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: _replace(a, 3, a[3][..., :-1].contiguous()), "shapedirs must be"),
        (lambda a: _replace(a, 4, a[4][:9].contiguous()), "posedirs must be"),
        (lambda a: _replace(a, 6, a[6][:, :5].contiguous()), "lbs_weights must be"),
        (lambda a: _replace(a, 2, a[2][:-1].contiguous()), "v_template must be"),
        (lambda a: _replace(a, 1, a[1][:, :-3].contiguous()), "pose must hold"),
        (lambda a: _replace(a, 7, a[7][:-1].contiguous()), "parents must hold"),
        (lambda a: _replace(a, 9, 3), "the rows route"),
    ],
)
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_direct_ops_refuse_sizes_that_do_not_fit(change, message, direction):
    """Sizes lbs() would refuse before the op (a wrong one would read past a tensor)."""
    ops = torch.ops.portrait_engine
    args = change(_direct_args())
    if direction == "forward":
        with pytest.raises(RuntimeError, match=message):
            ops.lbs_direct_forward.default(*args)
        return
    vertices, joints, saved = ops.lbs_direct_forward.default(*_direct_args())
    with pytest.raises(RuntimeError, match=message):
        ops.lbs_direct_backward.default(
            vertices, joints, *args[:8], saved, args[8], args[9], [True] * 7
        )


@pytest.mark.parametrize("needs", [[False, True, False, False, False, False, True], [True] * 7])
def test_opcheck_direct_backward_with_unneeded_gradients(needs):
    """Each gradient not needed is an empty tensor of its own: the outputs may not alias."""
    args = _direct_args()
    vertices, joints, saved = torch.ops.portrait_engine.lbs_direct_forward.default(*args)
    backward_args = (vertices, joints, *args[:8], saved, args[8], args[9], needs)
    torch.library.opcheck(torch.ops.portrait_engine.lbs_direct_backward.default, backward_args)
    grads = torch.ops.portrait_engine.lbs_direct_backward.default(*backward_args)
    for need, grad in zip(needs, grads, strict=True):
        assert (grad.numel() > 0) == need


def test_python_and_cpp_limits_agree(direct_on_cpu):
    """lbs's choice (_direct_takes) and the C++ entry's eligible() meet at the same batch (64)
    and joint (64) limits: one past them lbs takes the fused ops, and the op refuses."""
    args = list(_direct_args())
    betas, pose = args[0], args[1]
    for rows, takes in ((skinning_module._DIRECT_MAX_BATCH, True), (65, False)):
        many = (betas[:1].expand(rows, -1), pose[:1].expand(rows, -1))
        assert skinning_module._direct_takes(*many, args[2], args[5], 0) == takes
        if not takes:
            with pytest.raises(RuntimeError, match="1 to 64"):
                torch.ops.portrait_engine.lbs_direct_forward.default(
                    many[0].contiguous(), many[1].contiguous(), *args[2:]
                )
    regressor_65 = torch.zeros(65, args[5].shape[1])
    assert not skinning_module._direct_takes(betas, pose, args[2], regressor_65, 0)
    regressor_64 = torch.zeros(64, args[5].shape[1])
    assert skinning_module._direct_takes(betas, pose, args[2], regressor_64, 0)


@pytest.mark.parametrize("needs", [(2,), (5,), (0, 7), (1, 4), (0,), (2, 5)])
def test_direct_kernels_single_gradients(direct_on_cpu, needs):
    """One model tensor at a time: each gradient's map runs alone in its shared launch (the
    template's without the shape directions', the regressor's without G)."""
    inputs = _variant("plain")
    got = _run("native", inputs, needs)
    assert direct_on_cpu == [True]
    _check(got, _expected("plain", inputs, needs))


def test_direct_kernels_joints_not_a_multiple_of_the_tiles(direct_on_cpu):
    """22 joints (SMPL's first 22): partial joint tiles in grad_w and grad_A, a partial
    pose-feature tile (189 features) in grad_f and grad_P."""
    betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, weights = _variant("plain")
    joints = 22
    inputs = [
        betas,
        pose[:, : joints * 3].contiguous(),
        v_template,
        shapedirs,
        posedirs[: (joints - 1) * 9].contiguous(),
        J_regressor[:joints].contiguous(),
        parents[:joints].contiguous(),
        (weights[:, :joints] / weights[:, :joints].sum(1, keepdim=True)).contiguous(),
    ]
    got = _run("native", inputs, NEEDS["all"])
    assert direct_on_cpu == [True]
    _check(got, _expected("plain", inputs, NEEDS["all"]))
