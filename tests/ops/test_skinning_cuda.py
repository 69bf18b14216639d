"""lbs, skin_points and mesh_deform on a GPU: CUDA and Triton kernels against the references."""

from __future__ import annotations

import pytest
import smplx.lbs
import torch

import portrait_engine as pe
from portrait_engine.ops import lbs, mesh_deform, skin_points
from tests.helpers import assert_close, relative_l2
from tests.ops import test_lbs, test_lbs_shape_blend, test_mesh_deform, test_skin_points

pytestmark = pytest.mark.cuda


def _require(backend, op):
    ok, reason = pe.backend_status("cuda", op)[backend]
    if not ok:
        pytest.skip(reason)


def _cuda(tensors):
    return [t.cuda() for t in tensors]


@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("pose2rot", [True, False])
@pytest.mark.parametrize("batch", [1, 32])
def test_gpu_lbs_matches_smplx(backend, pose2rot, batch):
    _require(backend, "forward_kinematics_forward")
    inputs = test_lbs.make_inputs(batch=batch, rings=40, around=48)
    if not pose2rot:
        inputs[1] = test_lbs.rotations_of(inputs[1])
    inputs = _cuda(inputs)
    got = test_lbs.run(backend, inputs, pose2rot)
    want = test_lbs.run("smplx", inputs, pose2rot)
    for g, w in zip(got, want, strict=True):
        assert relative_l2(g, w) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_shape_blend_matches_float64_products(dtype):
    """The CUDA shape_blend (cuBLAS products; lbs's native path for B > NB) against the formulas
    of the CPU test, values and all four gradients."""
    _require("native", "shape_blend_forward")
    inputs = _cuda(test_lbs_shape_blend.shape_inputs(32, 10, dtype))
    ops = torch.ops.portrait_engine
    v_shaped, regressed = ops.shape_blend_forward(*inputs)
    leaves = [t.double().requires_grad_() for t in inputs]
    want_v, want_r = test_lbs_shape_blend.reference(*leaves)
    assert relative_l2(v_shaped, want_v) < 1e-5
    assert relative_l2(regressed, want_r) < 1e-5
    grad_v, grad_r = torch.randn_like(v_shaped), torch.randn_like(regressed)
    got = ops.shape_blend_backward(grad_v, grad_r, *inputs)
    want = torch.autograd.grad([want_v, want_r], leaves, [grad_v.double(), grad_r.double()])
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert relative_l2(g, w) < 1e-5


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_lbs_float64_and_bfloat16(backend):
    _require(backend, "forward_kinematics_forward")
    inputs = _cuda(test_lbs.make_inputs(dtype=torch.float64))
    for g, w in zip(test_lbs.run(backend, inputs), test_lbs.run("smplx", inputs), strict=True):
        assert_close(g, w, torch.float64, scale=10)
    half = [t.to(torch.bfloat16) if t.is_floating_point() else t for t in inputs]
    vertices, _ = lbs(*half, backend=backend)
    want, _ = smplx.lbs.lbs(*[t.float() if t.is_floating_point() else t for t in inputs])
    assert relative_l2(vertices.float(), want) < 2e-2


@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_skin_points(backend, inverse, shared, dtype):
    _require(backend, "skin_points_forward")
    # the inverse is checked on well-conditioned blends (make_inputs's "star"): along a 24-joint
    # chain, condition numbers near 1e4 amplify float32 rounding past 1e-5 on any backend (on
    # an H200 and on the CPU alike) and overflow float16
    tree = "star" if inverse else "chain"
    inputs = test_skin_points.make_inputs(batch=3, count=5000, joints=24, shared=shared, tree=tree)
    inputs = [t.to(dtype).cuda() for t in inputs]
    got = test_skin_points.run(backend, *inputs, inverse=inverse)
    want = test_skin_points.run("oracle", *inputs, inverse=inverse)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert relative_l2(g, w) < (1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_mesh_deform_matches_reference_away_from_ties(backend, dtype):
    _require(backend, "mesh_deform_forward")
    inputs = test_mesh_deform.make_inputs(batch=2, count=4000, rings=40, around=48, dtype=dtype)
    ties, _ = test_mesh_deform.tie_mask(*inputs[:2], inputs[3])
    keep = (~ties).to(dtype)
    cuda = _cuda(inputs)
    got = test_mesh_deform.run(backend, *cuda, grad_mask=keep.cuda())
    want = test_mesh_deform.run("torch", *inputs, grad_mask=keep)
    assert_close(got[0].cpu()[~ties], want[0][~ties], dtype, scale=10)
    for g, w in zip(got[1:], want[1:], strict=True):
        assert relative_l2(g.cpu(), w) < (1e-4 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_mesh_deform_ray_samples_and_determinism(backend):
    _require(backend, "mesh_deform_forward")
    from portrait_engine.benchmark.cases.skinning import ray_samples
    from portrait_engine.body import procedural_body_model

    body = procedural_body_model(rings=100, around=100)
    generator = torch.Generator().manual_seed(0)
    canonical, neck = body.canonical(batch_size=2)
    posed = body.posed(0.3 * torch.randn(2, 6, generator=generator), neck=neck)
    points = ray_samples(2, 64, 24, generator)
    args = [points.cuda(), posed.cuda(), canonical.cuda(), body.faces.cuda()]
    first = mesh_deform(*args, thickness=0.05, backend=backend)
    second = mesh_deform(*args, thickness=0.05, backend=backend)
    assert torch.equal(first, second)
    sample = torch.randperm(points.shape[1], generator=generator)[:3000]
    want = mesh_deform(
        points[:, sample], posed, canonical, body.faces, thickness=0.05, backend="torch"
    )
    close = torch.isclose(first[:, sample].cpu(), want, rtol=1e-4, atol=1e-5).all(-1)
    assert close.float().mean() > 0.995  # near-ties may pick another face


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_compile_fullgraph(backend):
    _require(backend, "mesh_deform_forward")
    points, posed, canonical, faces = _cuda(test_mesh_deform.make_inputs(count=500))
    points.requires_grad_()
    compiled = torch.compile(
        lambda p: mesh_deform(p, posed, canonical, faces, thickness=0.03, backend=backend).sum()
        + skin_points(p, torch.ones(500, 1, device="cuda"), torch.eye(4, device="cuda").expand(
            2, 1, 4, 4), backend=backend).sum(),
        fullgraph=True,
    )  # fmt: skip
    compiled(points).backward()
    assert torch.isfinite(points.grad).all()


@pytest.mark.parametrize("joints", [24, 300])
@pytest.mark.parametrize("batch", [1, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pose2rot", [True, False])
def test_gpu_forward_kinematics_chain_workspaces(joints, batch, dtype, pose2rot):
    """The CUDA chain kernels keep each chain's workspace in shared memory while it fits (J = 24:
    several blocks of a few threads at B = 70) and in global memory beyond (J = 300 backward,
    and J = 300 forward in float64): both against the CPU kernels, outputs and gradients."""
    _require("native", "forward_kinematics_forward")
    generator = torch.Generator().manual_seed(joints + batch)
    # a random tree in topological order: each joint's parent one of the previous four
    parents = torch.tensor(
        [-1]
        + [
            max(0, i - 1 - int(torch.randint(4, (1,), generator=generator)))
            for i in range(1, joints)
        ]
    )
    pose = 0.3 * torch.randn(batch, joints, 3, generator=generator, dtype=dtype)
    if not pose2rot:
        pose = smplx.lbs.batch_rodrigues(pose.reshape(-1, 3)).view(batch, joints, 3, 3)
    rest = torch.randn(batch, joints, 3, generator=generator, dtype=dtype)
    grads = [
        torch.randn(batch, joints, 3, 3, generator=generator, dtype=dtype),
        torch.randn(batch, joints, 3, generator=generator, dtype=dtype),
        torch.randn(batch, joints, 4, 4, generator=generator, dtype=dtype),
    ]
    ops = torch.ops.portrait_engine
    want = ops.forward_kinematics_forward(pose, rest, parents, pose2rot)
    got = ops.forward_kinematics_forward(pose.cuda(), rest.cuda(), parents.cuda(), pose2rot)
    want_grads = ops.forward_kinematics_backward(*grads, pose, rest, parents, pose2rot)
    got_grads = ops.forward_kinematics_backward(
        *_cuda(grads), pose.cuda(), rest.cuda(), parents.cuda(), pose2rot
    )
    if dtype == torch.float64:
        for g, w in zip([*got, *got_grads], [*want, *want_grads], strict=True):
            assert torch.isfinite(g).all()
            assert_close(g.cpu(), w, dtype, scale=10)
        return
    # float32: along a 300-joint chain, small gradient entries are sums of terms of size
    # 100-500, and the rounding of either device alone reaches an elementwise rtol of 1e-4
    # (a review emulating nvcc's FMA contraction on the CPU measured 0.98-1.14 of that
    # tolerance). Both devices are measured against the float64 result instead: the GPU's
    # relative L2 error within 10x of the CPU kernel's own.
    doubled = [t.double() for t in (pose, rest, *grads)]
    exact = [
        *ops.forward_kinematics_forward(doubled[0], doubled[1], parents, pose2rot),
        *ops.forward_kinematics_backward(*doubled[2:], *doubled[:2], parents, pose2rot),
    ]
    for g, w, x in zip([*got, *got_grads], [*want, *want_grads], exact, strict=True):
        assert torch.isfinite(g).all()
        cpu_error = relative_l2(w.double(), x)
        assert relative_l2(g.cpu().double(), x) <= max(10 * cpu_error, 1e-6), cpu_error


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_lbs_compiles_fullgraph_with_inductor(backend):
    """lbs's one autograd node (_LBS) under torch.compile's default backend on the GPU: the
    same values and betas / pose gradients as eager."""
    _require(backend, "forward_kinematics_forward")
    inputs = _cuda(test_lbs.make_inputs(batch=4, rings=10, around=12))

    def fn(betas, pose):
        vertices, joints = lbs(betas, pose, *inputs[2:], backend=backend)
        return vertices.square().sum() + joints.sum()

    compiled = torch.compile(fn, fullgraph=True)
    a = [x.clone().requires_grad_() for x in inputs[:2]]
    b = [x.clone().requires_grad_() for x in inputs[:2]]
    got, want = compiled(*a), fn(*b)
    got.backward()
    want.backward()
    assert relative_l2(got, want) < 1e-5
    for x, y in zip(a, b, strict=True):
        assert relative_l2(x.grad, y.grad) < 1e-4


@pytest.mark.parametrize(
    "kind",
    ["plain", "more_shapes_than_betas", "one_pose_row", "one_betas_row", "single", "regressed"],
)
@pytest.mark.parametrize("needs", ["all", "betas_pose", "model_only", "shape_only"])
def test_gpu_lbs_fused_path_matches_the_python_path(monkeypatch, kind, needs):
    """Native lbs in eager mode runs as one C++ op per direction (csrc/skinning/lbs_fused.cpp);
    on a GPU its shape part takes "rows" for one shape (one_betas_row, single), the "direct"
    route up to _GPU_DIRECT_MAX_BATCH shapes (the CPU: the kernel for B > NB) and "regressed"
    beyond, forced here."""
    _require("native", "lbs_fused_forward")
    from portrait_engine.ops import skinning as skinning_module
    from tests.ops import test_lbs_routes

    if kind == "regressed":
        monkeypatch.setattr(skinning_module, "_shape_route", lambda *args: "regressed")
        kind = "more_shapes_than_betas"
    inputs = _cuda(test_lbs_routes._variant(kind))
    needs = test_lbs_routes.NEEDS[needs]
    # the fused ops themselves, not the direct kernels (tests below) where those take the inputs
    monkeypatch.setattr(skinning_module, "_DIRECT_DEVICES", ())
    fused = test_lbs_routes._run("native", inputs, needs)
    monkeypatch.setattr(skinning_module, "_FUSED_NATIVE", False)
    python = test_lbs_routes._run("native", inputs, needs)
    for got, want in zip(fused, python, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_lbs_under_autocast(backend, batch):
    """Mixed precision training on a GPU: under fp16 autocast lbs computes in its inputs' dtype
    (autocast would turn the shape part's products to fp16 beside the fp32 pose)."""
    _require(backend, "forward_kinematics_forward")
    inputs = _cuda(test_lbs.make_inputs(batch=batch, rings=10, around=12))
    want = test_lbs.run("smplx", inputs)
    with torch.autocast("cuda", dtype=torch.float16):
        got = test_lbs.run(backend, inputs)
    assert got[0].dtype == torch.float32
    for g, w in zip(got, want, strict=True):
        assert relative_l2(g, w) < 1e-5


@pytest.mark.parametrize("pose2rot", [True, False])
@pytest.mark.parametrize("joints", [24, 300])
def test_gpu_fk_backward_takes_a_rootless_rotation_gradient_and_no_joint_gradient(pose2rot, joints):
    """lbs's fused backward hands the CUDA fk backward the rotations' gradient of joints
    1..J-1 and an empty posed-joints gradient: equal to the padded and zero-filled forms
    (J = 300: the chain's workspace in global memory)."""
    _require("native", "forward_kinematics_backward")
    from tests.ops.test_lbs_registration import fk_shortened_gradients

    pairs = fk_shortened_gradients("cuda", torch.float32, 5, joints, pose2rot)
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_gpu_skin_points_backward_under_stream_capture():
    """skin_points' backward inside a CUDA graph capture (float64: likely the first call for
    its dtype in this process, when the kept zero row's first fill, a blocking copy, would
    break the capture; the row is made afresh while capturing); the replay gives the eager
    gradients."""
    _require("native", "skin_points_forward")
    generator = torch.Generator().manual_seed(11)
    points = torch.randn(3, 500, 3, generator=generator, dtype=torch.float64).cuda()
    weights = torch.rand(1, 500, 24, generator=generator, dtype=torch.float64).softmax(-1).cuda()
    transforms = torch.randn(3, 24, 4, 4, generator=generator, dtype=torch.float64).cuda()
    grad_out = torch.randn(3, 500, 3, generator=generator, dtype=torch.float64).cuda()
    backward = torch.ops.portrait_engine.skin_points_backward
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        captured = backward(grad_out, points, weights, transforms, False)
    graph.replay()
    torch.cuda.synchronize()
    eager = backward(grad_out, points, weights, transforms, False)
    for got, want in zip(captured, eager, strict=True):
        torch.testing.assert_close(got, want)


def _spy_direct(monkeypatch):
    from portrait_engine.ops import skinning as skinning_module

    taken = []
    original = skinning_module._direct_takes

    def takes(*args):
        taken.append(original(*args))
        return taken[-1]

    monkeypatch.setattr(skinning_module, "_direct_takes", takes)
    return taken


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["plain", "single"])
@pytest.mark.parametrize("needs", ["all", "betas_pose", "model_only", "pose_only", "shape_only"])
def test_gpu_lbs_direct_kernels_match_smplx(monkeypatch, dtype, kind, needs):
    """Native lbs on a GPU for up to 64 rows: the direct kernels (csrc/skinning/lbs_direct.h;
    "single" takes the rows route), values and every needed gradient against smplx."""
    _require("native", "lbs_direct_forward")
    from tests.ops import test_lbs_routes

    taken = _spy_direct(monkeypatch)
    inputs = test_lbs_routes._variant(kind)
    inputs = _cuda([x.to(dtype) if x.is_floating_point() else x for x in inputs])
    needs = test_lbs_routes.NEEDS[needs]
    got = test_lbs_routes._run("native", inputs, needs)
    assert taken == [True]
    want = test_lbs_routes._expected(kind, inputs, needs)
    for name, g, w in zip(["vertices", "joints", *test_lbs_routes.NAMES], got, want, strict=True):
        assert (g is None) == (w is None), name
        if w is not None:
            assert_close(g, w, dtype, scale=10)


@pytest.mark.parametrize("route, batch", [(0, 6), (0, 64), (3, 1)])
def test_gpu_lbs_direct_kernels_match_their_cpu_twin(route, batch):
    """The CUDA kernels against the CPU twin (the same per-thread functions in loops), float64
    at SMPL's vertex count: every output, saved tensor and gradient equal to rounding (the
    GPU's sums run in another order), twice on the GPU bit for bit."""
    _require("native", "lbs_direct_forward")
    from tests.ops.test_lbs import make_inputs

    inputs = make_inputs(batch=batch, dtype=torch.float64, rings=120, around=57)
    betas, pose, v_template, shapedirs, posedirs, regressor, parents, weights = inputs
    args = (betas, pose, v_template, shapedirs, posedirs, regressor, weights, parents, True, route)
    ops = torch.ops.portrait_engine
    want = ops.lbs_direct_forward(*args)
    gpu_args = tuple(x.cuda() if torch.is_tensor(x) else x for x in args)
    got = ops.lbs_direct_forward(*gpu_args)
    for g, w in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]], strict=True):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-10, atol=1e-12)
    generator = torch.Generator().manual_seed(4)
    grad_v = torch.randn(want[0].shape, generator=generator, dtype=torch.float64)
    grad_j = torch.randn(want[1].shape, generator=generator, dtype=torch.float64)
    needs = [True] * 7
    want_grads = ops.lbs_direct_backward(grad_v, grad_j, *args[:8], want[2], True, route, needs)
    gpu_backward = (grad_v.cuda(), grad_j.cuda(), *gpu_args[:8], got[2], True, route, needs)
    got_grads = ops.lbs_direct_backward(*gpu_backward)
    again = ops.lbs_direct_backward(*gpu_backward)
    for g, a, w in zip(got_grads, again, want_grads, strict=True):
        torch.testing.assert_close(g, a, rtol=0, atol=0)
        torch.testing.assert_close(g.cpu(), w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("batch", [1, 32, 64])
def test_gpu_lbs_direct_kernels_match_the_fused_ops_at_smpl_size(monkeypatch, batch):
    """float32 at the benchmark's size (V = 6890, 24 joints, 10 betas): the direct kernels
    against the fused ops (cuBLAS products), values and all seven gradients, norm-wise (the
    sums over 20670 coordinates run in different orders)."""
    _require("native", "lbs_direct_forward")
    from portrait_engine.benchmark.cases.skinning import _smpl_sized_model
    from portrait_engine.ops import skinning as skinning_module

    generator = torch.Generator().manual_seed(9)
    v_template, shapedirs, posedirs, regressor, parents, weights = _smpl_sized_model(
        6890, generator
    )
    betas = torch.randn(batch, 10, generator=generator)
    pose = 0.3 * torch.randn(batch, 72, generator=generator)
    inputs = _cuda([betas, pose, v_template, shapedirs, posedirs, regressor, parents, weights])
    from tests.ops import test_lbs_routes

    taken = _spy_direct(monkeypatch)
    got = test_lbs_routes._run("native", inputs, test_lbs_routes.NEEDS["all"])
    monkeypatch.setattr(skinning_module, "_DIRECT_DEVICES", ())
    want = test_lbs_routes._run("native", inputs, test_lbs_routes.NEEDS["all"])
    assert taken == [True, False]
    for name, g, w in zip(["vertices", "joints", *test_lbs_routes.NAMES], got, want, strict=True):
        assert relative_l2(g, w) < 1e-5, name


@pytest.mark.parametrize("kind", ["plain", "more_shapes_than_betas", "single"])
@pytest.mark.parametrize("direct", [True, False])
def test_gpu_lbs_autograd_matches_lbs_function(monkeypatch, kind, direct):
    """lbs_autograd (the fused path's autograd node in C++; lbs() takes it on the CPU only so
    far) forced on a GPU: the same values and gradients as _LBS, bit for bit, through the fused
    ops and through the direct kernels. A pass here is what enabling it on CUDA waits for."""
    _require("native", "lbs_fused_forward")
    from portrait_engine.ops import skinning as skinning_module
    from tests.ops import test_lbs_routes

    inputs = _cuda(test_lbs_routes._variant(kind))
    needs = test_lbs_routes.NEEDS["all"]
    if not direct:
        monkeypatch.setattr(skinning_module, "_DIRECT_DEVICES", ())
    monkeypatch.setattr(skinning_module, "_AUTOGRAD_DEVICES", ("cpu", "cuda"))
    through_cpp = test_lbs_routes._run("native", inputs, needs)
    monkeypatch.setattr(skinning_module, "_AUTOGRAD_DEVICES", ())
    through_python = test_lbs_routes._run("native", inputs, needs)
    for got, want in zip(through_cpp, through_python, strict=True):
        assert (got is None) == (want is None)
        if want is not None:
            assert torch.equal(got, want)
