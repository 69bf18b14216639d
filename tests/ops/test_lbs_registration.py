"""lbs and its forward-kinematics kernels: validation, opcheck, torch.compile."""

from __future__ import annotations

import pytest
import torch

from portrait_engine.ops import lbs
from tests.ops.test_lbs import KERNEL_BACKENDS, make_inputs, rotations_of

OPS = {
    "triton": ("forward_kinematics_triton_forward", "forward_kinematics_triton_backward"),
    "native": ("forward_kinematics_forward", "forward_kinematics_backward"),
}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("pose2rot", [True, False])
def test_opcheck_forward_kinematics(backend, pose2rot):
    forward, backward = OPS[backend]
    inputs = make_inputs(batch=2)
    pose = inputs[1].view(2, 24, 3)
    if not pose2rot:
        pose = rotations_of(inputs[1])
    joints = torch.randn(2, 24, 3)
    parents = inputs[6]
    args = (pose.contiguous().requires_grad_(), joints.requires_grad_(), parents, pose2rot)
    forward_op = getattr(torch.ops.portrait_engine, forward)
    torch.library.opcheck(forward_op, args)
    rot, pj, rel = forward_op(*args)
    grads = (torch.randn_like(rot), torch.randn_like(pj), torch.randn_like(rel))
    torch.library.opcheck(
        getattr(torch.ops.portrait_engine, backward),
        (*grads, pose.detach().contiguous(), joints.detach(), parents, pose2rot),
    )


def fk_shortened_gradients(device="cpu", dtype=torch.float64, batch=3, joints=24, pose2rot=True):
    """forward_kinematics_backward's two short forms against the full ones on the same values:
    the rotations' gradient of joints 1..J-1 only (the root's zero: lbs's pose features leave
    it out) and an empty gradient of the posed joints (zeros). Returns (got, want) pairs."""
    generator = torch.Generator().manual_seed(joints * 7 + batch)
    parents = torch.tensor([-1] + [max(0, i - 1 - i % 3) for i in range(1, joints)])
    pose = 0.3 * torch.randn(batch, joints, 3, generator=generator, dtype=dtype)
    if not pose2rot:
        pose = rotations_of(pose.reshape(batch, -1)).to(dtype)
    rest = torch.randn(batch, joints, 3, generator=generator, dtype=dtype)
    grad_rot = torch.randn(batch, joints - 1, 3, 3, generator=generator, dtype=dtype)
    grad_pj = torch.randn(batch, joints, 3, generator=generator, dtype=dtype)
    grad_rel = torch.randn(batch, joints, 4, 4, generator=generator, dtype=dtype)
    move = [t.to(device) for t in (grad_rot, grad_pj, grad_rel, pose, rest, parents)]
    grad_rot, grad_pj, grad_rel, pose, rest, parents = move
    backward = torch.ops.portrait_engine.forward_kinematics_backward
    padded = torch.cat([torch.zeros_like(grad_rot[:, :1]), grad_rot], 1)
    empty = grad_pj.new_empty(0)
    pairs = []
    for short, full in (
        ((grad_rot, grad_pj), (padded, grad_pj)),
        ((padded, empty), (padded, torch.zeros_like(grad_pj))),
        ((grad_rot, empty), (padded, torch.zeros_like(grad_pj))),
    ):
        got = backward(*short, grad_rel, pose, rest, parents, pose2rot)
        want = backward(*full, grad_rel, pose, rest, parents, pose2rot)
        pairs += list(zip(got, want, strict=True))
    return pairs


@pytest.mark.parametrize("pose2rot", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS[1:])  # native: the short forms are lbs's
def test_fk_backward_takes_a_rootless_rotation_gradient_and_no_joint_gradient(
    backend, pose2rot, dtype
):
    for got, want in fk_shortened_gradients(dtype=dtype, pose2rot=pose2rot):
        # the same arithmetic: a zero added or not
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # any other number of rotation rows, or a joints gradient neither empty nor full, is refused
    backward = getattr(torch.ops.portrait_engine, OPS[backend][1])
    pose, rest = torch.zeros(2, 24, 3).normal_(), torch.zeros(2, 24, 3).normal_()
    parents = torch.tensor([-1] + list(range(23)))
    rel = torch.randn(2, 24, 4, 4)
    for rot, pj in (
        (torch.randn(2, 22, 3, 3), torch.randn(2, 24, 3)),
        (torch.randn(2, 24, 3, 3), torch.randn(2, 23, 3)),
        (torch.randn(2, 23, 3, 3), torch.empty(2, 24, 0)),  # empty means a (0,) tensor
    ):
        with pytest.raises(RuntimeError, match="grad_rot_mats may leave out the root joint"):
            backward(rot, pj, rel, pose, rest, parents, True)


def test_gpu_shape_route_is_direct_up_to_its_batch_bound():
    """On a GPU (meta tensors stand for one here) the shape part of one shape runs "rows", and
    "direct" up to _GPU_DIRECT_MAX_BATCH shapes, where the CPU takes the kernel or regressed
    route."""
    from portrait_engine.ops import skinning as skinning_module

    bound = skinning_module._GPU_DIRECT_MAX_BATCH
    template = torch.empty(6890, 3, device="meta")
    for rows, want in ((1, "rows"), (32, "direct"), (bound, "direct"), (bound + 1, "regressed")):
        betas = torch.empty(rows, 10, device="meta")
        assert skinning_module._shape_route("native", betas, template) == want
        assert skinning_module._shape_route("triton", betas, template) == want
    # one betas row over a batch of templates: "direct"
    templates = torch.empty(4, 6890, 3, device="meta")
    assert skinning_module._shape_route("native", torch.empty(1, 10, device="meta"), templates) == (
        "direct"
    )
    # the CPU's route for 32 shapes of 10 betas (its kernel with the native backend)
    cpu = (torch.empty(32, 10), torch.empty(6890, 3))
    assert skinning_module._shape_route("torch", *cpu) == "regressed"


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_torch_compile_fullgraph(backend):
    inputs = make_inputs(batch=2)

    def fn(betas, pose):
        vertices, joints = lbs(betas, pose, *inputs[2:], backend=backend)
        return vertices.square().sum() + joints.sum()

    # the reference walks the tree by the values of parents (as smplx): no fullgraph there
    compiled = torch.compile(fn, fullgraph=backend != "torch", backend="aot_eager")
    a = [x.clone().requires_grad_() for x in inputs[:2]]
    compiled(*a).backward()
    b = [x.clone().requires_grad_() for x in inputs[:2]]
    fn(*b).backward()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-4, atol=1e-4)


def bad_cases():
    betas, pose, v_template, shapedirs, posedirs, regressor, parents, weights = make_inputs()
    bad_tree = parents.clone()
    bad_tree[5] = 7
    return [
        ("betas not a tensor", dict(betas=None), TypeError, "betas must be a torch.Tensor"),
        ("betas rank 1", dict(betas=betas[0]), ValueError, r"betas must have shape \(B, NB\)"),
        ("pose length", dict(pose=pose[:, :-3]), ValueError, "pose must have shape"),
        ("batch mismatch", dict(pose=pose[:2]), ValueError, "same batch size"),
        ("template verts", dict(v_template=v_template[:-1]), ValueError, "vertex count V"),
        ("shapedirs betas", dict(shapedirs=shapedirs[..., :3]), ValueError, "shape count NB"),
        ("posedirs rows", dict(posedirs=posedirs[:-9]), ValueError, "pose features"),
        ("weights joints", dict(lbs_weights=weights[:, :-1]), ValueError, "joint count J"),
        ("parents order", dict(parents=bad_tree), ValueError, "topological order"),
        ("float parents", dict(parents=parents.float()), TypeError, "parents must be an integer"),
        ("integer betas", dict(betas=betas.long()), TypeError, "betas must be a floating"),
        ("dtype mismatch", dict(posedirs=posedirs.double()), TypeError, "same dtype"),
        ("device mismatch", dict(v_template=v_template.to("meta")), ValueError, "same device"),
        ("pose2rot not bool", dict(pose2rot="yes"), TypeError, "pose2rot must be a bool"),
    ]


@pytest.mark.parametrize("case", bad_cases(), ids=lambda case: case[0])
def test_bad_inputs_raise_clear_errors(case):
    _, override, error, message = case
    names = ["betas", "pose", "v_template", "shapedirs", "posedirs", "J_regressor", "parents"]
    names += ["lbs_weights"]
    kwargs = dict(zip(names, make_inputs(), strict=True))
    pose2rot = override.pop("pose2rot", True)
    kwargs.update(override)
    with pytest.raises(error, match=message):
        lbs(*[kwargs[name] for name in names], pose2rot=pose2rot)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_a_checked_tree_changed_in_place_is_checked_again(backend):
    """The tree's values are read once per tensor (a GPU read waits for the GPU), and again
    after an in-place change: a tree broken in place after a good call is still refused."""
    inputs = list(make_inputs())
    parents = inputs[6]
    lbs(*inputs, backend=backend)
    lbs(*inputs, backend=backend)  # checked once, cached
    parents[5] = 7
    with pytest.raises(ValueError, match="topological order"):
        lbs(*inputs, backend=backend)
    parents[5] = 5  # changed again: checked again
    with pytest.raises(ValueError, match="topological order"):
        lbs(*inputs, backend=backend)
