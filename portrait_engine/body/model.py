"""The body model record: the tensors of an SMPL-family model, and posing it with ``lbs``."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from portrait_engine.ops.skinning import lbs

# 3DPortraitGAN poses only these two SMPL joints (its 6-number body pose: neck then head)
NECK_JOINT = 12
HEAD_JOINT = 15


@dataclass(frozen=True)
class BodyModel:
    """An SMPL-family body model, in smplx's layout.

    ``v_template`` ``(V, 3)``, ``shapedirs`` ``(V, 3, NB)``, ``posedirs`` ``((J−1)·9, V·3)``,
    ``J_regressor`` ``(J, V)``, ``parents`` ``(J,)`` int64, ``lbs_weights`` ``(V, J)``,
    ``faces`` ``(F, 3)`` int64. ``name`` says where it came from (a file or the stand-in).
    """

    v_template: torch.Tensor
    shapedirs: torch.Tensor
    posedirs: torch.Tensor
    J_regressor: torch.Tensor
    parents: torch.Tensor
    lbs_weights: torch.Tensor
    faces: torch.Tensor
    name: str = "body"

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[-1]

    @property
    def num_joints(self) -> int:
        return self.J_regressor.shape[0]

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    def to(self, device=None, dtype: torch.dtype | None = None) -> BodyModel:
        """The model on ``device``, float tensors in ``dtype`` (integer tensors keep theirs)."""
        changes = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, torch.Tensor):
                target = dtype if value.is_floating_point() else None
                changes[field.name] = value.to(device=device, dtype=target)
        return replace(self, **changes)

    def full_pose(self, body_pose: torch.Tensor) -> torch.Tensor:
        """3DPortraitGAN's ``(B, 6)`` body pose -> ``(B, J·3)`` axis-angle of every joint.

        ``body_pose[:, :3]`` is the neck's axis-angle (SMPL joint 12), ``body_pose[:, 3:]`` the
        head's (joint 15); every other joint keeps its rest rotation.
        """
        if body_pose.dim() != 2 or body_pose.shape[1] != 6:
            raise ValueError(f"body_pose must have shape (B, 6), got {tuple(body_pose.shape)}")
        batch = body_pose.shape[0]
        pose = body_pose.new_zeros(batch, self.num_joints, 3)
        pose = pose.index_copy(
            1,
            torch.tensor([NECK_JOINT, HEAD_JOINT], device=pose.device),
            body_pose.view(batch, 2, 3),
        )
        return pose.reshape(batch, -1)

    def forward(
        self,
        betas: torch.Tensor | None = None,
        pose: torch.Tensor | None = None,
        *,
        batch_size: int = 1,
        backend: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``lbs`` of the model: ``(vertices (B, V, 3), joints (B, J, 3))``.

        ``betas`` ``(B, NB)`` (zeros when None), ``pose`` ``(B, J·3)`` axis-angle (rest pose
        when None).
        """
        device, dtype = self.v_template.device, self.v_template.dtype
        if betas is None:
            batch = pose.shape[0] if pose is not None else batch_size
            betas = torch.zeros(batch, self.num_betas, device=device, dtype=dtype)
        if pose is None:
            pose = torch.zeros(betas.shape[0], self.num_joints * 3, device=device, dtype=dtype)
        return lbs(
            betas,
            pose,
            self.v_template,
            self.shapedirs,
            self.posedirs,
            self.J_regressor,
            self.parents,
            self.lbs_weights,
            backend=backend,
        )

    def canonical(
        self, betas: torch.Tensor | None = None, *, batch_size: int = 1, backend=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The rest-pose mesh translated so its neck joint is at the origin (3DPortraitGAN's
        ``generate_shaped_smpl``): ``(vertices (B, V, 3), neck (B, 1, 3))``, ``neck`` the
        translation that was removed."""
        vertices, joints = self.forward(betas, batch_size=batch_size, backend=backend)
        neck = joints[:, NECK_JOINT : NECK_JOINT + 1]
        return vertices - neck, neck

    def posed(
        self,
        body_pose: torch.Tensor,
        betas: torch.Tensor | None = None,
        *,
        neck: torch.Tensor | None = None,
        backend: str | None = None,
    ) -> torch.Tensor:
        """The mesh posed by a ``(B, 6)`` body pose, translated by the rest pose's neck joint
        (``neck``, computed when None) as 3DPortraitGAN's ``generate_posed_smpl``:
        ``(B, V, 3)``."""
        vertices, _ = self.forward(betas, self.full_pose(body_pose), backend=backend)
        if neck is None:
            _, neck = self.canonical(betas, batch_size=body_pose.shape[0], backend=backend)
        return vertices - neck
