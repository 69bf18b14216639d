"""skin_points: every backend against the reference and against per-point 4x4 matrices."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.ops import skin_points
from portrait_engine.ops.reference import forward_kinematics_reference, skin_points_reference
from portrait_engine.ops.reference.skinning import batch_rodrigues_reference
from tests.helpers import assert_close, results_on_threads

NATIVE_OP = "skin_points_forward"


def _backend_param(name):
    ok, reason = pe.backend_status("cpu", NATIVE_OP)[name]
    return pytest.param(name, marks=pytest.mark.skipif(not ok, reason=reason))


KERNEL_BACKENDS = [_backend_param("triton"), _backend_param("native")]
ALL_BACKENDS = [pytest.param("torch")] + KERNEL_BACKENDS


def make_inputs(
    batch=2, count=37, joints=5, shared=True, dtype=torch.float32, seed=0, tree="chain"
):
    """Rigid-ish per-joint transforms from random rotations: along a chain of joints (SMPL's
    deepest path is 9 joints long), or with every joint a child of the root (``tree="star"``).

    A blend of transforms far apart is ill conditioned: along a 24-joint chain some points'
    blended matrices reach condition numbers near 1e4, which amplifies the float32 rounding of
    an inverse by as much. The star keeps all rotations within a few tenths of a radian of
    each other, so its blends stay well conditioned at any joint count."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(batch, count, 3, generator=generator)
    shape = (count, joints) if shared else (batch, count, joints)
    weights = torch.softmax(2 * torch.randn(shape, generator=generator), dim=-1)
    rot = batch_rodrigues_reference(0.4 * torch.randn(batch * joints, 3, generator=generator))
    rest = torch.randn(batch, joints, 3, generator=generator)
    if tree == "chain":
        parents = torch.tensor([-1] + list(range(joints - 1)))
    else:
        parents = torch.tensor([-1] + [0] * (joints - 1))
    _, transforms = forward_kinematics_reference(rot.view(batch, joints, 3, 3), rest, parents)
    # a little scale and shear, so M is a general affine map rather than a rotation
    transforms = transforms.clone()
    transforms[:, :, :3, :3] += 0.1 * torch.randn(batch, joints, 3, 3, generator=generator)
    return points.to(dtype), weights.to(dtype), transforms.to(dtype)


def float64_oracle(points, weights, transforms, inverse=False):
    """Per-point 4x4 matrices materialised (smplx's way) and applied in float64."""
    w = weights.double()
    if w.dim() == 2:
        w = w.expand(points.shape[0], -1, -1)
    per_point = torch.einsum("bnj,bjrc->bnrc", w, transforms.double())
    homogen = torch.cat([points.double(), torch.ones_like(points[..., :1]).double()], dim=-1)
    if inverse:  # the affine map's inverse: the bottom row is not part of the transform
        rhs = (points.double() - per_point[..., :3, 3]).unsqueeze(-1)
        return torch.linalg.solve(per_point[..., :3, :3], rhs)[..., 0]
    return (per_point @ homogen.unsqueeze(-1))[..., :3, 0]


def run(backend, points, weights, transforms, inverse=False, grad_seed=3):
    leaves = [x.detach().clone().requires_grad_() for x in (points, weights, transforms)]
    if backend == "oracle":
        out = float64_oracle(*leaves, inverse=inverse)
    else:
        out = skin_points(*leaves, inverse=inverse, backend=backend)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed))
    out.backward(grad.to(out))
    return [out.detach()] + [leaf.grad for leaf in leaves]


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("shared", [True, False], ids=["shared_weights", "batched_weights"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_oracle(backend, inverse, shared, dtype):
    inputs = make_inputs(shared=shared, dtype=dtype)
    got = run(backend, *inputs, inverse=inverse)
    want = run("oracle", *inputs, inverse=inverse)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert_close(g, w.to(dtype), dtype, scale=10)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_weights_large_batch_matches_float64_oracle(inverse, dtype):
    """The native CPU backward's per-chunk path (shared weights, B >= 8): several 256-point
    chunks and a partial one."""
    ok, reason = pe.backend_status("cpu", NATIVE_OP)["native"]
    if not ok:
        pytest.skip(reason)
    inputs = make_inputs(batch=9, count=600, joints=7, dtype=dtype)
    got = run("native", *inputs, inverse=inverse)
    want = run("oracle", *inputs, inverse=inverse)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w.to(dtype), dtype, scale=10)


@pytest.mark.usefixtures("poison_outputs")
# float32 on an AVX-512 CPU blends each point with J vector FMAs (B = 1, batched weights) and a
# chunk of shared-weights points with the register-tiled products, whose backward takes the
# per-chunk path from B = 1: B * 12 = 12, 24, 72, 108 and 204 columns (one masked vector, two,
# a 64-column tile and a masked one, three vectors, three 64-column tiles and a masked vector);
# grad_weights' J columns (7: one masked vector in tiles of 8 rows; 24: two); capping at avx2
# runs the scalar blend and the BLAS (the per-chunk backward from B = 8) instead
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("batch", [1, 2, 6, 9, 17])
@pytest.mark.parametrize("shared", [True, False], ids=["shared_weights", "batched_weights"])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("joints", [7, 24])
def test_native_cpu_float_paths_match_float64_oracle(
    isa, batch, shared, inverse, joints, monkeypatch
):
    ok, reason = pe.backend_status("cpu", NATIVE_OP)["native"]
    if not ok:
        pytest.skip(reason)
    monkeypatch.setenv("PORTRAIT_ENGINE_CPU_ISA", isa)
    # 7 joints: the vector blend's 4-joint steps and a remainder
    inputs = make_inputs(batch=batch, count=600, joints=joints, shared=shared, tree="star")
    got = run("native", *inputs, inverse=inverse)
    want = run("oracle", *inputs, inverse=inverse)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w.to(torch.float32), torch.float32, scale=10)


@pytest.mark.usefixtures("poison_outputs")
# the 16-point form's edges (float, shared weights, the forward map, AVX-512): a lone partial
# group of points (5), whole groups and a whole chunk (256), a chunk and one point (257); 40
# joints (grad_weights in three vectors), 70 (a 64-column tile and a masked vector)
@pytest.mark.parametrize(("count", "joints"), [(5, 7), (256, 24), (257, 40), (33, 70)])
@pytest.mark.parametrize("batch", [1, 3])
def test_native_cpu_shared_weights_edge_sizes_match_float64_oracle(count, joints, batch):
    ok, reason = pe.backend_status("cpu", NATIVE_OP)["native"]
    if not ok:
        pytest.skip(reason)
    inputs = make_inputs(batch=batch, count=count, joints=joints, tree="star")
    got = run("native", *inputs)
    want = run("oracle", *inputs)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w.to(torch.float32), torch.float32, scale=10)


# from 8 rows the per-chunk backward on every CPU (the register tiles on AVX-512, the BLAS on
# one thread per chunk otherwise); below it, without AVX-512, a whole-workspace BLAS product
@pytest.mark.parametrize("batch", [8, 32])
def test_native_cpu_shared_weights_do_not_depend_on_threads(batch):
    """The per-chunk products (one partial per 256-point chunk, summed in chunk order): results
    bit-identical on one thread and on two."""
    ok, reason = pe.backend_status("cpu", NATIVE_OP)["native"]
    if not ok:
        pytest.skip(reason)
    inputs = make_inputs(batch=batch, count=1100, joints=24, tree="star")
    results = results_on_threads((1, 2), lambda: run("native", *inputs, inverse=True))
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_bottom_row_is_not_read_and_gets_zero_gradient(backend):
    points, weights, transforms = make_inputs()
    altered = transforms.clone()
    altered[:, :, 3] = torch.tensor([0.3, -2.0, 5.0, 7.0])
    got = run(backend, points, weights, altered)
    want = run(backend, points, weights, transforms)
    assert_close(got[0], want[0], torch.float32)
    assert (got[3][:, :, 3] == 0).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shared", [True, False], ids=["shared_weights", "batched_weights"])
def test_inverse_of_forward_is_the_identity(backend, shared):
    points, weights, transforms = make_inputs(count=200, shared=shared, dtype=torch.float64)
    posed = skin_points(points, weights, transforms, backend=backend)
    back = skin_points(posed, weights, transforms, inverse=True, backend=backend)
    assert_close(back, points, torch.float64, scale=1e3)


@pytest.mark.parametrize("backend", ["torch", _backend_param("native")])
@pytest.mark.parametrize("inverse", [False, True])
def test_gradcheck_float64(backend, inverse):
    for shared in (True, False):
        points, weights, transforms = make_inputs(
            batch=2, count=4, joints=3, shared=shared, dtype=torch.float64
        )
        leaves = [x.requires_grad_() for x in (points, weights, transforms)]
        assert torch.autograd.gradcheck(
            lambda p, w, t: skin_points(p, w, t, inverse=inverse, backend=backend), leaves
        )


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(backend, dtype):
    inputs = make_inputs(dtype=dtype)
    got = run(backend, *inputs)
    want = run("torch", *[x.float() for x in inputs])
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert_close(g, w, dtype, scale=4)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_inputs(backend):
    points, weights, transforms = make_inputs()
    assert skin_points(points[:0], weights, transforms[:0], backend=backend).shape == (0, 37, 3)
    out = skin_points(points[:, :0], weights[:0], transforms, backend=backend)
    assert out.shape == (2, 0, 3)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_inputs(backend):
    points, weights, transforms = make_inputs()
    strided = points.transpose(0, 1).contiguous().transpose(0, 1)
    got = skin_points(strided, weights.t().contiguous().t(), transforms, backend=backend)
    assert_close(got, skin_points_reference(points, weights, transforms), torch.float32)
