"""3DPortraitGAN's body-pose branches: the generator's (z, camera -> pose) and the
discriminator's (image features, camera -> pose).

Published (``training/smpl_triplane.py`` ``GPoseBranch``, ``training/dual_discriminator.py``
``DPoseBranch``):

- generator: MLP on ``cat[z, c]`` (512 + 25): FC 128 lrelu -> FC 32 lrelu -> FC 6 linear;
- discriminator: MLP on ``cat[f, c]``, ``f`` the flattened 4 x 4 epilogue features after
  minibatch-std and the 3 x 3 conv (``512 * 16 = 8192``): FC 2048 -> 512 -> 128 -> 32 (lrelu)
  -> 6 linear;
- the 6 numbers are the neck and head axis-angle rotations;
- ``explicitly_symmetry`` (used for the published models): a camera on the left side
  (``atan2(t_z, t_x)`` in ``[-pi/2, pi/2]``) is mirrored before the branch and the predicted
  pose mirrored back (y, z components of both rotations negated), so the branch only ever
  sees right-side views and predictions of mirrored views are mirrored exactly. In the
  generator the camera label is mirrored; in the discriminator the images are mirrored (see
  :mod:`portrait_engine.models.portrait_gan.discriminator`).

Equalised-learning-rate layers as everywhere in StyleGAN2 (lr multiplier 1). Hidden sizes
come from the config (the published ones at ``paper``; smaller at ``small``/``tiny``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from portrait_engine.data.portrait.labels import is_left_camera, mirror_camera, mirror_pose
from portrait_engine.models.portrait_gan.layers import FullyConnectedLayer


def _mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    layers = []
    for width in hidden:
        layers.append(FullyConnectedLayer(in_features, width, activation="lrelu"))
        in_features = width
    layers.append(FullyConnectedLayer(in_features, out_features))
    return nn.Sequential(*layers)


def _check(name: str, x: torch.Tensor, width: int, batch: int | None = None) -> None:
    if x.ndim != 2 or x.shape[1] != width or (batch is not None and x.shape[0] != batch):
        want = f"({batch if batch is not None else 'N'}, {width})"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


class GeneratorPoseBranch(nn.Module):
    """``forward(z, camera)``: ``z`` ``(N, z_dim)``, ``camera`` ``(N, 25)`` -> pose ``(N, 6)``."""

    def __init__(
        self,
        z_dim: int,
        camera_dim: int = 25,
        hidden: Sequence[int] = (128, 32),
        pose_dim: int = 6,
        explicitly_symmetry: bool = True,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.camera_dim = camera_dim
        self.explicitly_symmetry = explicitly_symmetry
        self.net = _mlp(z_dim + camera_dim, hidden, pose_dim)

    @classmethod
    def from_config(cls, config) -> GeneratorPoseBranch:
        return cls(
            config.z_dim,
            config.camera_dim,
            config.g_pose_hidden,
            config.pose_dim,
            config.explicitly_symmetry,
        )

    def forward(self, z: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        _check("z", z, self.z_dim)
        _check("camera", camera, self.camera_dim, z.shape[0])
        if not self.explicitly_symmetry:
            return self.net(torch.cat([z, camera.to(z.dtype)], dim=1))
        left = is_left_camera(camera)
        camera_in = torch.where(left, mirror_camera(camera), camera)
        pose = self.net(torch.cat([z, camera_in.to(z.dtype)], dim=1))
        return torch.where(left, mirror_pose(pose), pose)


class DiscriminatorPoseBranch(nn.Module):
    """``forward(features, camera)``: ``(N, in_features)``, ``(N, 25)`` -> pose ``(N, 6)``."""

    def __init__(
        self,
        in_features: int,
        camera_dim: int = 25,
        hidden: Sequence[int] = (2048, 512, 128, 32),
        pose_dim: int = 6,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.camera_dim = camera_dim
        self.net = _mlp(in_features + camera_dim, hidden, pose_dim)

    def forward(self, features: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        _check("features", features, self.in_features)
        _check("camera", camera, self.camera_dim, features.shape[0])
        return self.net(torch.cat([features, camera.to(features.dtype)], dim=1))
