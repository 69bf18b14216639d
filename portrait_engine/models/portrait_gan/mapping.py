"""The StyleGAN2 mapping network, conditioned on the camera (25) and the body pose (6).

Published semantics (StyleGAN2-ADA ``MappingNetwork``, used by EG3D and 3DPortraitGAN):

    x = normalize_2nd_moment(z)                       (if z_dim > 0)
    y = normalize_2nd_moment(embed(c))                (if c_dim > 0; embed: FC c_dim -> w_dim)
    w = fc_{L-1}( ... fc_0( cat[x, y] ) )             (lrelu, lr multiplier 0.01)
    w_avg <- lerp(mean_batch(w), w_avg, beta)         (when update_emas)
    ws = broadcast w to num_ws;  ws[:, :cutoff] = lerp(w_avg, ws[:, :cutoff], psi)  (truncation)

3DPortraitGAN's generator feeds the mapping ``cat[c, p] * c_scale`` (``TriPlaneGenerator.mapping``:
camera label then the 6 pose numbers, zeros when no pose is given), so the generator's
mapping has ``c_dim = 31``. The discriminator's projection mapping is the same class with
``z_dim = 0``, ``num_ws = None`` and no ``w_avg``.
"""

from __future__ import annotations

import torch
from torch import nn

from portrait_engine.models.portrait_gan.layers import FullyConnectedLayer, normalize_2nd_moment


class MappingNetwork(nn.Module):
    """``(z, c) -> ws``: ``z`` ``(N, z_dim)``, ``c`` ``(N, c_dim)`` -> ``(N, num_ws, w_dim)``,
    or ``(N, w_dim)`` when ``num_ws`` is None."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.998,
    ) -> None:
        super().__init__()
        if z_dim == 0 and c_dim == 0:
            raise ValueError("a mapping network needs z_dim > 0 or c_dim > 0")
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx],
                features[idx + 1],
                activation=activation,
                lr_multiplier=lr_multiplier,
            )
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        x = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                got = None if z is None else tuple(z.shape)
                raise ValueError(f"z must have shape (N, {self.z_dim}), got {got}")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                got = None if c is None else tuple(c.shape)
                raise ValueError(f"c must have shape (N, {self.c_dim}), got {got}")
            if x is not None and c.shape[0] != x.shape[0]:
                raise ValueError(f"z and c batch sizes differ: {x.shape[0]} and {c.shape[0]}")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas and self.w_avg_beta is not None and hasattr(self, "w_avg"):
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            if not hasattr(self, "w_avg"):
                raise ValueError("truncation needs a tracked w_avg (num_ws and w_avg_beta set)")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


def conditioning_label(
    camera: torch.Tensor, pose: torch.Tensor | None, c_scale: float = 1.0
) -> torch.Tensor:
    """The generator's mapping label ``cat[camera, pose] * c_scale`` (zeros for a missing pose).

    ``camera`` ``(N, 25)``, ``pose`` ``(N, 6)`` or None -> ``(N, 31)``.
    """
    if camera.ndim != 2:
        raise ValueError(f"camera must have shape (N, 25), got {tuple(camera.shape)}")
    if pose is None:
        pose = camera.new_zeros(camera.shape[0], 6)
    if pose.ndim != 2 or pose.shape[0] != camera.shape[0]:
        raise ValueError(f"pose must have shape ({camera.shape[0]}, 6), got {tuple(pose.shape)}")
    return torch.cat([camera, pose.to(camera.dtype)], dim=1) * c_scale


class PortraitMapping(MappingNetwork):
    """The generator's mapping: ``forward(z, camera, pose)`` with ``c = cat[camera, pose] *
    c_scale`` (3DPortraitGAN ``TriPlaneGenerator.mapping``). Built from a config by
    :meth:`from_config`."""

    def __init__(self, *args, c_scale: float = 1.0, pose_dim: int = 6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.c_scale = c_scale
        self.pose_dim = pose_dim

    @classmethod
    def from_config(cls, config) -> PortraitMapping:
        return cls(
            z_dim=config.z_dim,
            c_dim=config.conditioning_dim,
            w_dim=config.w_dim,
            num_ws=config.num_ws,
            num_layers=config.mapping_layers,
            lr_multiplier=config.mapping_lr_multiplier,
            w_avg_beta=config.w_avg_beta,
            c_scale=config.c_scale,
            pose_dim=config.pose_dim,
        )

    def forward(  # type: ignore[override]
        self,
        z: torch.Tensor,
        camera: torch.Tensor,
        pose: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        c = conditioning_label(camera, pose, self.c_scale)
        return super().forward(
            z,
            c,
            truncation_psi=truncation_psi,
            truncation_cutoff=truncation_cutoff,
            update_emas=update_emas,
        )
