"""PoseDeformer: the published face mask, rest pose identity, posed vertices map home."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.body import procedural_body_model
from portrait_engine.nn import PoseDeformer
from portrait_engine.nn.deformer import faces_inside_box

BACKENDS = ["torch"] + [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            not pe.backend_status("cpu", "mesh_deform_forward")[name][0],
            reason=pe.backend_status("cpu", "mesh_deform_forward")[name][1],
        ),
    )
    for name in ("triton", "native")
]


@pytest.fixture(scope="module")
def body():
    return procedural_body_model(rings=10, around=12)


def test_face_mask_is_the_published_rule(body):
    deformer = PoseDeformer(body, box_warp=0.5, backend="torch")
    vertices = deformer.canonical_vertices
    expected = []
    for face in body.faces.tolist():  # 3DPortraitGAN's loop: all three vertices inside
        inside = [bool(((vertices[v] > -0.25) & (vertices[v] < 0.25)).all()) for v in face]
        expected.append(all(inside))
    assert deformer.face_mask.tolist() == expected
    assert 0 < deformer.faces.shape[0] < body.faces.shape[0]
    assert torch.equal(deformer.faces, body.faces[deformer.face_mask])


def test_box_with_no_face_is_an_error(body):
    with pytest.raises(ValueError, match="no face of the body"):
        PoseDeformer(body, box_warp=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rest_pose_leaves_points_in_place(body, backend):
    deformer = PoseDeformer(body, thickness=0.05, backend=backend)
    generator = torch.Generator().manual_seed(0)
    points = deformer.canonical_vertices[None, ::3] + 0.01 * torch.randn(
        1, (body.num_vertices + 2) // 3, 3, generator=generator
    )
    out = deformer(points, torch.zeros(1, 6))
    torch.testing.assert_close(out, points, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_posed_vertices_map_to_their_canonical_place(body, backend):
    deformer = PoseDeformer(body, thickness=0.05, backend=backend)
    body_pose = torch.tensor([[0.1, 0.3, 0.0, 0.2, -0.4, 0.1], [0.0, 0.0, 0.2, -0.3, 0.5, 0.0]])
    posed = deformer.posed_vertices(body_pose)
    used = torch.zeros(body.num_vertices, dtype=torch.bool)
    used[deformer.faces.flatten()] = True
    out = deformer(posed[:, used], body_pose)
    canonical = deformer.canonical_vertices[used].expand(2, -1, -1)
    # the transfer is rigid per face (orthonormal frames), so a vertex comes home up to the
    # stretch of its face by the skinning: a small fraction of how far the pose moved it
    error = (out - canonical).norm(dim=-1)
    moved = (posed[:, used] - canonical).norm(dim=-1)
    assert moved.max() > 0.05
    assert error.mean() < 0.2 * moved.mean()  # no deformation at all would give 1
    assert error.max() < 0.3 * moved.max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_hook_is_forward_and_gradients_flow(body, backend):
    deformer = PoseDeformer(body, thickness=0.05, backend=backend)
    body_pose = torch.tensor([[0.0, 0.2, 0.0, 0.1, 0.3, 0.0]], requires_grad=True)
    generator = torch.Generator().manual_seed(1)
    points = 0.3 * torch.randn(1, 200, 3, generator=generator)
    points.requires_grad_()
    out = deformer(points, body_pose)
    torch.testing.assert_close(deformer.hook(body_pose)(points), out)
    out.square().sum().backward()
    assert torch.isfinite(points.grad).all() and torch.isfinite(body_pose.grad).all()
    assert body_pose.grad.abs().sum() > 0  # the pose is learned through the deformation


def test_backends_agree(body):
    body_pose = torch.tensor([[0.1, -0.2, 0.05, 0.3, 0.2, -0.1]])
    generator = torch.Generator().manual_seed(2)
    points = 0.25 * torch.randn(1, 300, 3, generator=generator)
    want = PoseDeformer(body, backend="torch")(points, body_pose)
    for backend in ("native",):
        if not pe.backend_status("cpu", "mesh_deform_forward")[backend][0]:
            continue
        got = PoseDeformer(body, backend=backend)(points, body_pose)
        close = torch.isclose(got, want, rtol=1e-4, atol=1e-4).all(-1)
        assert close.float().mean() > 0.98  # near-ties may pick another face


def test_faces_inside_box_helper():
    vertices = torch.tensor([[0.0, 0, 0], [0.4, 0, 0], [0.6, 0, 0]])
    faces = torch.tensor([[0, 1, 0], [0, 1, 2]])
    assert faces_inside_box(vertices, faces, 1.0).tolist() == [True, False]
