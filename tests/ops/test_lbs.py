"""lbs: every backend against ``smplx.lbs.lbs`` itself, values and gradients."""

from __future__ import annotations

import pytest
import smplx.lbs
import torch

import portrait_engine as pe
from portrait_engine.body import procedural_body_model
from portrait_engine.ops import lbs
from portrait_engine.ops.reference import batch_rodrigues_reference
from tests.helpers import assert_close, relative_l2

NATIVE_OP = "forward_kinematics_forward"


def _backend_param(name):
    ok, reason = pe.backend_status("cpu", NATIVE_OP)[name]
    return pytest.param(name, marks=pytest.mark.skipif(not ok, reason=reason))


KERNEL_BACKENDS = [_backend_param("triton"), _backend_param("native")]
ALL_BACKENDS = [pytest.param("torch")] + KERNEL_BACKENDS


def make_inputs(batch=3, dtype=torch.float32, rings=8, around=10, seed=0, pose_scale=0.5):
    """smplx's arguments for the stand-in body, random betas and pose (all 24 joints)."""
    model = procedural_body_model(rings=rings, around=around, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    betas = torch.randn(batch, model.num_betas, generator=generator).to(dtype)
    pose = (pose_scale * torch.randn(batch, model.num_joints * 3, generator=generator)).to(dtype)
    return [
        betas,
        pose,
        model.v_template,
        model.shapedirs,
        model.posedirs,
        model.J_regressor,
        model.parents,
        model.lbs_weights,
    ]


def rotations_of(pose: torch.Tensor) -> torch.Tensor:
    """``(B, J·3)`` axis-angle -> ``(B, J, 3, 3)`` (smplx's own Rodrigues)."""
    return smplx.lbs.batch_rodrigues(pose.reshape(-1, 3)).view(pose.shape[0], -1, 3, 3)


DIFFERENTIABLE = (0, 1, 2, 3, 4, 5, 7)  # every argument but parents


def run(backend, inputs, pose2rot=True, grad_seed=1):
    leaves = [x.detach().clone().requires_grad_(i in DIFFERENTIABLE) for i, x in enumerate(inputs)]
    if backend == "smplx":
        vertices, joints = smplx.lbs.lbs(*leaves, pose2rot=pose2rot)
    else:
        vertices, joints = lbs(*leaves, pose2rot=pose2rot, backend=backend)
    generator = torch.Generator().manual_seed(grad_seed)
    gv = torch.randn(vertices.shape, generator=generator).to(vertices)
    gj = torch.randn(joints.shape, generator=generator).to(joints)
    torch.autograd.backward([vertices, joints], [gv, gj])
    grads = [leaves[i].grad for i in DIFFERENTIABLE]
    return [vertices.detach(), joints.detach()] + grads


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pose2rot", [True, False])
def test_matches_smplx_values_and_gradients(backend, dtype, pose2rot):
    inputs = make_inputs(dtype=dtype)
    if not pose2rot:
        inputs[1] = rotations_of(inputs[1])
    got = run(backend, inputs, pose2rot)
    want = run("smplx", inputs, pose2rot)
    names = ["vertices", "joints", "betas", "pose", "v_template", "shapedirs", "posedirs"]
    names += ["J_regressor", "lbs_weights"]
    for name, g, w in zip(names, got, want, strict=True):
        assert g.shape == w.shape, name
        assert g.dtype == dtype, name
        # gradients sum many products (the posedirs' 207-row products, the chain): fp32
        # accumulates differently from smplx's order of operations
        assert_close(g, w, dtype, scale=1 if dtype == torch.float64 else 10)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_rest_pose_and_zero_pose_gradient_are_finite(backend):
    """The zero pose is where Rodrigues divides by its (offset) norm: no NaN, smplx's values."""
    inputs = make_inputs()
    inputs[1] = torch.zeros_like(inputs[1])
    got = run(backend, inputs)
    want = run("smplx", inputs)
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        assert relative_l2(g, w) < 1e-4


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_batch_broadcast_of_betas_and_pose(backend):
    """One shape for the whole batch: the same as smplx with the betas repeated."""
    inputs = make_inputs(batch=4)
    inputs[0] = inputs[0][:1]
    got = run(backend, inputs)
    repeated = list(inputs)
    repeated[0] = inputs[0].expand(4, -1)
    want = run("smplx", repeated)
    want[2] = want[2].sum(0, keepdim=True)  # the gradient of the one shared row of betas
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float32, scale=10)


@pytest.mark.parametrize("backend", ["torch", _backend_param("native")])
def test_gradcheck_float64(backend):
    inputs = make_inputs(batch=2, dtype=torch.float64, rings=3, around=4)
    leaves = [x.detach().requires_grad_(i in (0, 1)) for i, x in enumerate(inputs)]

    def fn(betas, pose):
        return lbs(betas, pose, *leaves[2:], backend=backend)

    # the model tensors' gradients are compared with smplx's autograd above
    assert torch.autograd.gradcheck(fn, (leaves[0], leaves[1]))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_half_precision_accumulates_in_float32(backend):
    inputs = make_inputs(dtype=torch.float32)
    want = run("smplx", inputs)
    half = [x.to(torch.bfloat16) if x.is_floating_point() else x for x in inputs]
    got = run(backend, half)
    for g, w in zip(got[:2], want[:2], strict=True):
        assert g.dtype == torch.bfloat16
        assert relative_l2(g.float(), w) < 2e-2


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch(backend):
    inputs = make_inputs()
    inputs[0], inputs[1] = inputs[0][:0], inputs[1][:0]
    vertices, joints = lbs(*inputs, backend=backend)
    assert vertices.shape == (0, inputs[2].shape[0], 3)
    assert joints.shape == (0, 24, 3)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_model_without_vertices(backend):
    """V = 0: empty vertices, the joints of an empty mesh posed, as smplx gives them."""
    betas, pose, v_template, shapedirs, posedirs, regressor, parents, weights = make_inputs()
    inputs = [betas, pose, v_template[:0], shapedirs[:0], posedirs[:, :0], regressor[:, :0]]
    inputs = [x.clone().requires_grad_() for x in inputs] + [parents, weights[:0]]
    vertices, joints = lbs(*inputs, backend=backend)
    want = smplx.lbs.lbs(*inputs)
    assert vertices.shape == (3, 0, 3)
    torch.testing.assert_close(joints, want[1])
    joints.square().sum().backward()
    assert torch.isfinite(inputs[1].grad).all()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_under_autocast_computes_in_the_inputs_dtype(backend):
    """Mixed precision training: autocast would run the shape part's products in bfloat16 beside
    the float32 pose (the kernels take one dtype); lbs computes in its inputs' dtype instead."""
    inputs = make_inputs(batch=4)
    want = run("smplx", inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(backend, inputs)
    assert got[0].dtype == torch.float32
    for g, w in zip(got, want, strict=True):
        assert relative_l2(g, w) < 1e-5


def test_reference_rodrigues_is_smplx():
    rot = torch.randn(50, 3, dtype=torch.float64)
    torch.testing.assert_close(batch_rodrigues_reference(rot), smplx.lbs.batch_rodrigues(rot))
