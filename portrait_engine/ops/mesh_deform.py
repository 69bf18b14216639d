"""Mesh-guided deformation of sample points (3DPortraitGAN): the public op ``mesh_deform``.

Each point is carried from the posed (observation) space into the canonical space through its
nearest posed triangle: the point's coordinates in the triangle's frame are re-expanded in the
frame of the same triangle of the canonical mesh. Points not within ``thickness`` of the posed
mesh stay where they are.

The published code finds the nearest triangle by brute force (every point against every face,
then a Python loop over the batch). The C++ CPU and CUDA kernels (``csrc/mesh/``)
bin the faces of each posed mesh into a uniform grid, each face into every cell that its
bounding box grown by ``thickness`` touches; a point then only tests the faces of its own cell.
That is exact, not an approximation: a face nearer than ``thickness`` has its grown box around
the point, so it is in the point's cell, and a point outside every grown box (most ray samples:
the box culling) tests nothing and is returned unchanged. A grid rather than a BVH: it builds
in one counting pass, its lookups are branch-free, and the faces of a cell are listed in
ascending order, so the "ties -> lowest face index" rule needs no extra work and the result
is deterministic. The Triton kernels (``kernels/mesh_deform.py``) test whole tiles of
Morton-sorted faces instead, skipping the tiles whose grown box misses a block of points
(lanes stay in step, where per-lane grid cells would diverge). Contract:
``docs/kernel_contract_skinning.md``.
"""

from __future__ import annotations

import torch

from portrait_engine import _backend
from portrait_engine.ops import _validation as v
from portrait_engine.ops._library import eager, register_native_pair, register_pair
from portrait_engine.ops.reference.skinning import mesh_deform_reference

# --------------------------------------------------------------------------------------------
# Kernel-level custom ops: points (B, N, 3), posed and canonical vertices (B, V, 3), all
# contiguous and of one dtype, faces (F, 3) int64 contiguous. The forward returns the moved
# points and the chosen face per point (int64, -1 where the point is returned unchanged); the
# backward uses that choice (no second search).
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("portrait_engine::mesh_deform_triton_forward", mutates_args=())
def _triton_forward(
    points: torch.Tensor,
    posed_vertices: torch.Tensor,
    canonical_vertices: torch.Tensor,
    faces: torch.Tensor,
    thickness: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import mesh_deform as kernels

    return kernels.mesh_deform_forward(points, posed_vertices, canonical_vertices, faces, thickness)


@torch.library.custom_op("portrait_engine::mesh_deform_triton_backward", mutates_args=())
def _triton_backward(
    grad_out: torch.Tensor,
    points: torch.Tensor,
    posed_vertices: torch.Tensor,
    canonical_vertices: torch.Tensor,
    faces: torch.Tensor,
    face_index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import mesh_deform as kernels

    return kernels.mesh_deform_backward(
        grad_out, points, posed_vertices, canonical_vertices, faces, face_index
    )


def _fake_forward(points, posed_vertices, canonical_vertices, faces, thickness):
    return points.new_empty(points.shape), points.new_empty(points.shape[:2], dtype=torch.int64)


def _fake_backward(grad_out, points, posed_vertices, canonical_vertices, faces, face_index):
    return (
        points.new_empty(points.shape),
        posed_vertices.new_empty(posed_vertices.shape),
        canonical_vertices.new_empty(canonical_vertices.shape),
    )


def _setup_context(ctx, inputs, output):
    points, posed_vertices, canonical_vertices, faces, _ = inputs
    _, face_index = output
    ctx.save_for_backward(points, posed_vertices, canonical_vertices, faces, face_index)
    ctx.mark_non_differentiable(face_index)


def _make_autograd(backward_op):
    def backward(ctx, grad_out, _grad_index):
        points, posed, canonical, faces, face_index = ctx.saved_tensors
        grads = backward_op(grad_out.contiguous(), points, posed, canonical, faces, face_index)
        return (*grads, None, None)

    return backward


_REGISTRATION = dict(
    fake_forward=_fake_forward,
    fake_backward=_fake_backward,
    setup_context=_setup_context,
    make_backward=_make_autograd,
)
register_pair("mesh_deform_triton_forward", "mesh_deform_triton_backward", **_REGISTRATION)
_NATIVE_REGISTERED = register_native_pair(
    "mesh_deform_forward", "mesh_deform_backward", **_REGISTRATION
)


# --------------------------------------------------------------------------------------------
# The public op
# --------------------------------------------------------------------------------------------


def _validate(points, posed_vertices, canonical_vertices, faces, thickness) -> float:
    v.check_tensor("points", points)
    v.check_tensor("posed_vertices", posed_vertices)
    v.check_tensor("canonical_vertices", canonical_vertices)
    v.check_tensor("faces", faces)
    v.check_rank("points", points, (3,), "(B, N, 3)")
    v.check_rank("posed_vertices", posed_vertices, (3,), "(B, V, 3)")
    v.check_rank("canonical_vertices", canonical_vertices, (2, 3), "(V, 3) or (B, V, 3)")
    v.check_rank("faces", faces, (2,), "(F, 3)")
    if points.shape[2] != 3:
        raise ValueError(f"points must have shape (B, N, 3), got {tuple(points.shape)}")
    if posed_vertices.shape[2] != 3 or posed_vertices.shape[0] != points.shape[0]:
        raise ValueError(
            f"posed_vertices must have shape (B, V, 3) with the batch size B = {points.shape[0]} "
            f"of points, got {tuple(posed_vertices.shape)}"
        )
    expected = tuple(posed_vertices.shape[-2:])
    if tuple(canonical_vertices.shape[-2:]) != expected or (
        canonical_vertices.dim() == 3 and canonical_vertices.shape[0] != points.shape[0]
    ):
        raise ValueError(
            "canonical_vertices must have the shape of posed_vertices "
            f"{tuple(posed_vertices.shape)} (or (V, 3)), got {tuple(canonical_vertices.shape)}"
        )
    if faces.shape[1] != 3 or faces.shape[0] == 0:
        raise ValueError(f"faces must have shape (F, 3) with F > 0, got {tuple(faces.shape)}")
    if faces.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"faces must be an integer tensor (int32 or int64), got {faces.dtype}")
    v.check_float("points", points)
    v.check_float("posed_vertices", posed_vertices)
    v.check_float("canonical_vertices", canonical_vertices)
    v.check_same_dtype(("points", "posed_vertices"), points, posed_vertices)
    v.check_same_dtype(("points", "canonical_vertices"), points, canonical_vertices)
    v.check_same_device(("points", "posed_vertices"), points, posed_vertices)
    v.check_same_device(("points", "canonical_vertices"), points, canonical_vertices)
    v.check_same_device(("points", "faces"), points, faces)
    thickness = v.check_positive_number("thickness", thickness)
    if faces.device.type != "meta" and not torch.compiler.is_compiling():
        low, high = int(faces.min()), int(faces.max())
        if low < 0 or high >= posed_vertices.shape[1]:
            raise ValueError(
                f"faces must index vertices in [0, V) = [0, {posed_vertices.shape[1]}), got "
                f"indices in [{low}, {high}]"
            )
    return thickness


def mesh_deform(
    points: torch.Tensor,
    posed_vertices: torch.Tensor,
    canonical_vertices: torch.Tensor,
    faces: torch.Tensor,
    *,
    thickness: float,
    backend: str | None = None,
) -> torch.Tensor:
    """Carry points from the posed mesh's space to the canonical mesh's (3DPortraitGAN).

    Args:
        points: ``(B, N, 3)`` sample points in the observation (posed) space.
        posed_vertices: ``(B, V, 3)`` the posed mesh.
        canonical_vertices: ``(B, V, 3)`` or ``(V, 3)`` the same mesh in the canonical space.
        faces: ``(F, 3)`` integer triangles shared by both meshes (e.g. the faces inside the
            rendering box).
        thickness: points whose distance to the posed mesh is not below this are unchanged.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``.

    Returns:
        ``(B, N, 3)``. For each point ``p`` the posed face nearest by point-to-triangle
        distance ``d`` (ties -> lowest face index); if ``d < thickness`` the point's coordinates
        in that face's frame ``x = unit(v1 − v0)``, ``y = unit((v1 − v0) × (v2 − v0))``,
        ``z = x × y`` (origin ``v0``) re-expanded in the canonical face's frame; else ``p``.
        A point whose face is degenerate (zero edge or area, no frame) is also unchanged.
        Gradients flow to points and both vertex sets, not through the choice of face.
    """
    thickness = _validate(points, posed_vertices, canonical_vertices, faces, thickness)
    name = _backend.resolve(backend, points.device, "mesh_deform_forward")
    if name == "torch":
        return mesh_deform_reference(points, posed_vertices, canonical_vertices, faces, thickness)
    if canonical_vertices.dim() == 2:
        canonical_vertices = canonical_vertices.unsqueeze(0).expand_as(posed_vertices)
    if name == "triton":
        op = torch.ops.portrait_engine.mesh_deform_triton_forward
    else:
        op = torch.ops.portrait_engine.mesh_deform_forward
    out, _ = eager(op)(
        points.contiguous(),
        posed_vertices.contiguous(),
        canonical_vertices.contiguous(),
        faces.to(torch.int64).contiguous(),
        thickness,
    )
    return out
