"""mesh_deform: every backend against the brute-force reference, away from near-ties."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.body import procedural_body_model
from portrait_engine.ops import mesh_deform
from portrait_engine.ops.reference import mesh_deform_reference, nearest_two_distances
from tests.helpers import assert_close, relative_l2

NATIVE_OP = "mesh_deform_forward"
THICKNESS = 0.03


def _backend_param(name):
    ok, reason = pe.backend_status("cpu", NATIVE_OP)[name]
    return pytest.param(name, marks=pytest.mark.skipif(not ok, reason=reason))


KERNEL_BACKENDS = [_backend_param("triton"), _backend_param("native")]
ALL_BACKENDS = [pytest.param("torch")] + KERNEL_BACKENDS


def make_inputs(batch=2, count=300, rings=8, around=10, dtype=torch.float32, seed=0):
    """The stand-in body posed by random neck / head rotations; points near and far from it."""
    model = procedural_body_model(rings=rings, around=around, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    body_pose = 0.3 * torch.randn(batch, 6, generator=generator, dtype=torch.float64)
    canonical, neck = model.canonical(batch_size=batch, backend="torch")
    posed = model.posed(body_pose, neck=neck, backend="torch")
    near = count * 2 // 3
    vertex = torch.randint(0, model.num_vertices, (batch, near), generator=generator)
    on_mesh = posed[torch.arange(batch)[:, None], vertex]
    noise = 0.02 * torch.randn(batch, near, 3, generator=generator, dtype=torch.float64)
    far = 0.4 * (2 * torch.rand(batch, count - near, 3, generator=generator) - 1)
    points = torch.cat([on_mesh + noise, far.double()], dim=1)
    return [points.to(dtype), posed.to(dtype), canonical.to(dtype), model.faces]


def tie_mask(points, posed, faces, band=1e-5):
    """Points whose two nearest faces are within ``band`` of each other (float64)."""
    two = nearest_two_distances(points.double(), posed.double(), faces)
    return (two[..., 1] - two[..., 0]) <= band, two[..., 0]


def run(backend, points, posed, canonical, faces, grad_mask=None, grad_seed=5):
    leaves = [x.detach().clone().requires_grad_() for x in (points, posed, canonical)]
    out = mesh_deform(*leaves, faces, thickness=THICKNESS, backend=backend)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out)
    if grad_mask is not None:
        grad = grad * grad_mask[..., None]
    out.backward(grad)
    return [out.detach()] + [leaf.grad for leaf in leaves]


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_away_from_ties(backend, dtype):
    inputs = make_inputs(dtype=dtype)
    ties, _ = tie_mask(*inputs[:2], inputs[3])
    assert ties.float().mean() < 0.5  # the comparison below covers most points
    keep = (~ties).to(dtype)
    got = run(backend, *inputs, grad_mask=keep)
    want = run("torch", *[x.double() if x.is_floating_point() else x for x in inputs],
               grad_mask=keep.double())  # fmt: skip
    out, want_out = got[0][~ties], want[0][~ties]
    assert_close(out, want_out.to(dtype), dtype, scale=10)
    for g, w in zip(got[1:], want[1:], strict=True):
        assert g.dtype == dtype
        assert relative_l2(g, w) < (1e-4 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_points_beyond_thickness_are_untouched(backend):
    points, posed, canonical, faces = make_inputs()
    _, distance = tie_mask(points, posed, faces)
    far = distance >= THICKNESS * 1.001
    near = distance < THICKNESS * 0.999
    assert far.any() and near.any()
    got = run(backend, points, posed, canonical, faces)
    assert torch.equal(got[0][far], points[far])
    assert (got[0][near] != points[near]).any(dim=-1).float().mean() > 0.9
    # the identity's gradient for the points left alone
    grad = torch.randn(points.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got[1][far], grad[far])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_ties_go_to_the_lowest_face_index(backend):
    """Two faces at the same posed place but different canonical places: face order decides."""
    posed = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]]])
    canonical = posed.clone()
    canonical[0, 3:] += torch.tensor([0.0, 0.0, 0.5])  # the twin face sits higher
    points = torch.tensor([[[0.2, 0.2, 0.01], [0.3, 0.1, -0.02]]])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    first = mesh_deform(points, posed, canonical, faces, thickness=0.1, backend=backend)
    second = mesh_deform(points, posed, canonical, faces.flip(0), thickness=0.1, backend=backend)
    torch.testing.assert_close(first, points)  # face 0: identical canonical
    torch.testing.assert_close(second, points + torch.tensor([0.0, 0.0, 0.5]))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_degenerate_triangles_give_no_nan(backend):
    posed = torch.tensor(
        [[[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0], [0, 0, 0], [0, 1, 0], [5, 5, 5]]]
    )
    canonical = posed + 0.1
    faces = torch.tensor([[0, 1, 2], [3, 4, 5], [0, 0, 0], [6, 6, 6]])  # collinear, zero edge
    points = torch.tensor([[[0.5, 0.01, 0.0], [0.0, 0.5, 0.01], [0.0, 0.0, 0.0], [5, 5, 5.01]]])
    leaves = [x.clone().requires_grad_() for x in (points, posed, canonical)]
    out = mesh_deform(*leaves, faces, thickness=0.1, backend=backend)
    out.sum().backward()
    for tensor in [out] + [leaf.grad for leaf in leaves]:
        assert torch.isfinite(tensor).all()
    torch.testing.assert_close(out, points)  # no face has a frame: nothing moves


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_rest_pose_is_a_translation(backend):
    """Posed = canonical + c: every point within reach moves by exactly -c."""
    points, posed, _, faces = make_inputs(batch=1)
    shift = torch.tensor([0.01, -0.02, 0.03])
    got = mesh_deform(points, posed, posed + shift, faces, thickness=THICKNESS, backend=backend)
    _, distance = tie_mask(points, posed, faces)
    near = distance < THICKNESS * 0.999
    far = distance >= THICKNESS * 1.001
    assert_close(got[near], (points + shift)[near], torch.float32, scale=10)
    assert torch.equal(got[far], points[far])


@pytest.mark.parametrize("backend", ["torch", _backend_param("native")])
def test_gradcheck_float64(backend):
    """Points just off face centres: gradcheck's 1e-6 steps must not change the chosen face."""
    _, posed, canonical, faces = make_inputs(batch=2, rings=4, around=5, dtype=torch.float64)
    tri = posed[:, faces[::3]]  # (B, F/3, 3, 3)
    normal = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])
    normal = normal / normal.norm(dim=-1, keepdim=True)
    points = tri.mean(2) + 0.005 * normal
    ties, distance = tie_mask(points, posed, faces, band=1e-3)
    clean = (~ties & (distance < THICKNESS * 0.9)).all(0)
    points = points[:, clean][:, :6].contiguous()
    assert points.shape[1] >= 3
    leaves = [x.requires_grad_() for x in (points, posed, canonical)]
    assert torch.autograd.gradcheck(
        lambda p, v, c: mesh_deform(p, v, c, faces, thickness=THICKNESS, backend=backend), leaves
    )


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(backend, dtype):
    points, posed, canonical, faces = make_inputs(dtype=torch.float32)
    ties, distance = tie_mask(points, posed, faces, band=1e-2)
    clear = ~ties & ((distance - THICKNESS).abs() > 2e-3)
    got = mesh_deform(
        points.to(dtype), posed.to(dtype), canonical.to(dtype), faces, thickness=THICKNESS,
        backend=backend,
    )  # fmt: skip
    want = mesh_deform(
        points.to(dtype).float(), posed.to(dtype).float(), canonical.to(dtype).float(), faces,
        thickness=THICKNESS, backend="torch",
    )  # fmt: skip
    assert got.dtype == dtype
    assert_close(got[clear], want[clear], dtype, scale=2)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_points_and_shared_canonical(backend):
    points, posed, canonical, faces = make_inputs()
    assert mesh_deform(
        points[:, :0], posed, canonical, faces, thickness=0.1, backend=backend
    ).shape == (2, 0, 3)
    assert mesh_deform(
        points[:0], posed[:0], canonical[:0], faces, thickness=0.1, backend=backend
    ).shape == (0, 300, 3)
    shared = mesh_deform(points, posed, canonical[0], faces, thickness=0.1, backend=backend)
    batched = mesh_deform(
        points, posed, canonical[:1].expand(2, -1, -1), faces, thickness=0.1, backend=backend
    )
    torch.testing.assert_close(shared, batched)


def test_reference_matches_the_published_formula_on_one_face():
    """One triangle, by hand: the frame of 3DPortraitGAN and a rotation of the triangle."""
    posed = torch.tensor([[[0.0, 0, 0], [2, 0, 0], [0, 1, 0]]], dtype=torch.float64)
    angle = torch.tensor(0.7, dtype=torch.float64)
    rot = torch.tensor(
        [[1, 0, 0], [0, angle.cos(), -angle.sin()], [0, angle.sin(), angle.cos()]],
        dtype=torch.float64,
    )
    canonical = posed @ rot.T + torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    points = torch.tensor([[[0.3, 0.2, 0.05]]], dtype=torch.float64)
    out = mesh_deform_reference(points, posed, canonical, torch.tensor([[0, 1, 2]]), 0.1)
    # the canonical triangle is the posed one rotated and shifted: so is every point near it
    expected = points @ rot.T + torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out, expected)
