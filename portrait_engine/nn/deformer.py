"""``PoseDeformer``: 3DPortraitGAN's observation-to-canonical deformation of ray samples.

3DPortraitGAN renders a canonical head-and-shoulders avatar and poses it by its body pose: six
numbers, the axis-angle rotations of the SMPL neck (joint 12) and head (joint 15). Every ray
sample is carried from the observed (posed) space into the canonical space before the tri-grid
is sampled (``ImportanceRenderer.get_deformed_coordinate``):

1. the body mesh in the rest pose, translated so its neck joint is at the origin, is the
   canonical mesh (computed once);
2. the posed mesh is the body posed by the 6 numbers with :func:`portrait_engine.ops.lbs`,
   translated by the same neck position;
3. only the faces whose three vertices lie strictly inside the rendering box
   (``|x|, |y|, |z| < box_warp / 2`` on the canonical mesh) take part: the face mask;
4. :func:`portrait_engine.ops.mesh_deform` moves each sample through its nearest posed face
   within ``thickness`` into the canonical face's frame; the others stay put.

The module is the renderer's deformation hook: ``deformer(points, body_pose)``, or
``deformer.hook(body_pose)`` for a ``deform(points) -> points`` callable bound to one pose.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from portrait_engine.body import BodyModel, procedural_body_model
from portrait_engine.ops import lbs, mesh_deform


def faces_inside_box(vertices: torch.Tensor, faces: torch.Tensor, box_warp: float) -> torch.Tensor:
    """``(F,)`` bool: faces whose three vertices lie strictly inside the cube of side
    ``box_warp`` centred at the origin (``vertices`` ``(V, 3)``)."""
    half = box_warp / 2
    inside = ((vertices > -half) & (vertices < half)).all(dim=-1)  # (V,)
    return inside[faces].all(dim=-1)


class PoseDeformer(nn.Module):
    """Pose the body and move ray samples from the posed to the canonical space.

    Args:
        body: the body model (:func:`portrait_engine.body.load_body_model` for a real SMPL
            file); the procedural stand-in when None.
        box_warp: side of the rendering box (EG3D's ``box_warp``): faces outside it are masked.
        thickness: samples farther than this from the posed mesh are not moved.
        betas: ``(NB,)`` body shape (zeros when None), fixed at construction as in
            3DPortraitGAN.
        backend: the ops' backend (None: the one in force).
    """

    def __init__(
        self,
        body: BodyModel | None = None,
        *,
        box_warp: float = 1.0,
        thickness: float = 0.05,
        betas: torch.Tensor | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        body = procedural_body_model() if body is None else body
        self.body = body
        self.box_warp = float(box_warp)
        self.thickness = float(thickness)
        self.backend = backend
        if betas is None:
            betas = torch.zeros(body.num_betas, dtype=body.v_template.dtype)
        betas = betas.to(body.v_template).reshape(1, -1)
        canonical, neck = body.canonical(betas, backend=backend)
        face_mask = faces_inside_box(canonical[0], body.faces, self.box_warp)
        if not face_mask.any():
            raise ValueError(
                f"no face of the body lies inside the box of side box_warp={box_warp}: "
                "check the model's scale or the box"
            )
        self.register_buffer("betas", betas)
        self.register_buffer("canonical_vertices", canonical[0].detach())  # (V, 3)
        self.register_buffer("neck", neck[0].detach())  # (1, 3)
        self.register_buffer("face_mask", face_mask)  # (F,)
        self.register_buffer("faces", body.faces[face_mask].contiguous())  # (F', 3)
        for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights"):
            self.register_buffer(name, getattr(body, name).detach().clone(), persistent=False)
        self.register_buffer("parents", body.parents.clone(), persistent=False)

    def posed_vertices(self, body_pose: torch.Tensor) -> torch.Tensor:
        """``(B, V, 3)``: the body posed by ``body_pose`` ``(B, 6)`` (neck then head
        axis-angle), translated by the rest pose's neck joint."""
        if body_pose.dim() != 2 or body_pose.shape[1] != 6:
            raise ValueError(f"body_pose must have shape (B, 6), got {tuple(body_pose.shape)}")
        batch = body_pose.shape[0]
        pose = self.body.full_pose(body_pose.to(self.v_template.dtype))
        vertices, _ = lbs(
            self.betas.expand(batch, -1),
            pose,
            self.v_template,
            self.shapedirs,
            self.posedirs,
            self.J_regressor,
            self.parents,
            self.lbs_weights,
            backend=self.backend,
        )
        return vertices - self.neck

    def forward(self, points: torch.Tensor, body_pose: torch.Tensor) -> torch.Tensor:
        """``points`` ``(B, N, 3)`` in the posed space -> ``(B, N, 3)`` canonical."""
        posed = self.posed_vertices(body_pose).to(points.dtype)
        return mesh_deform(
            points,
            posed,
            self.canonical_vertices.to(points.dtype),
            self.faces,
            thickness=self.thickness,
            backend=self.backend,
        )

    def hook(self, body_pose: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """A ``deform(points) -> points`` callable for one batch of poses (the renderer's
        deformation hook); the posed mesh is computed once, here."""
        posed = self.posed_vertices(body_pose)

        def deform(points: torch.Tensor) -> torch.Tensor:
            return mesh_deform(
                points,
                posed.to(points.dtype),
                self.canonical_vertices.to(points.dtype),
                self.faces,
                thickness=self.thickness,
                backend=self.backend,
            )

        return deform
