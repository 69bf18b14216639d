"""``PortraitGenerator``: the assembled 3DPortraitGAN generator.

Published (3DPortraitGAN ``training/smpl_triplane.py`` ``TriPlaneGenerator``, itself PanoHead's
and EG3D's generator with a body pose):

1. ``ws = mapping(z, cat[camera, pose] · c_scale)``; the pose is the given 6 numbers (neck and
   head axis-angle), zeros when absent, or the generator pose branch's prediction
   ``pose = GPoseBranch(z, camera)`` with the explicit left/right symmetry (``get_pose_params``);
2. ``planes = backbone(ws)``: the tri-grid ``(N, 3, 32, D, 256, 256)``;
3. camera rays of the ``neural_rendering_resolution`` image (EG3D ``RaySampler``), then the
   importance renderer (48 + 48 samples between ``ray_start`` and ``ray_end``, ``box_warp``,
   density noise, PanoHead's triplane crop when set) with every sample carried from the posed
   to the canonical space by the pose deformation (``apply_def``: the body mesh posed by the 6
   numbers, each sample moved through its nearest face, ``thickness`` 0.05);
4. the decoder (mean of planes -> 64 -> softplus -> 1 + 32); its colour activation is
   3DPortraitGAN's ``decoder_activation`` (``"none"`` published with ``use_torgb_raw``:
   the raw features; ``"sigmoid"``: EG3D's widened sigmoid; ``"lrelu"``: ``lrelu(x, 0.2)·√2``);
   the ray marcher does not rescale colours (``scale_rgb=False``, as PanoHead's marcher);
5. the image head: background network composited behind the rendered features, ToRGB raw
   image, EG3D's hybrid super-resolution, mask ``weight · 1.002 − 0.001``.

Every kernel-backed stage (``ray_sample``, ``triplane_sample``, ``ray_march``,
``sample_importance``, ``merge_samples``, ``lbs``, ``mesh_deform``) runs on the backend in force
(:func:`portrait_engine.use_backend`) unless ``backend`` is given; the StyleGAN2 layers are plain
PyTorch. Random draws of the renderer (stratified jitter, importance samples, density noise) come
from the ``generator`` argument of :meth:`PortraitGenerator.forward`, so two backends render the
same image at the same seed; the StyleGAN2 noise inputs draw from the global generator unless
``noise_mode="const"``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from portrait_engine.body import BodyModel, procedural_body_model
from portrait_engine.models.portrait_gan.config import PortraitGANConfig
from portrait_engine.models.portrait_gan.image_head import NeuralImageHead
from portrait_engine.models.portrait_gan.mapping import PortraitMapping
from portrait_engine.models.portrait_gan.pose_branch import GeneratorPoseBranch
from portrait_engine.models.portrait_gan.synthesis import TriGridSynthesis
from portrait_engine.nn import ImportanceRenderer, OSGDecoder, PoseDeformer
from portrait_engine.ops import ray_sample, triplane_sample, unpack_camera_label

RGB_PADDING = 0.001


class PortraitDecoder(OSGDecoder):
    """EG3D's ``OSGDecoder`` with 3DPortraitGAN's choice of colour activation.

    ``"sigmoid"``: ``sigmoid(x)·(1 + 2·0.001) − 0.001`` (EG3D); ``"lrelu"``:
    ``leaky_relu(x, 0.2)·√2`` (PanoHead); ``"none"``: the raw features (3DPortraitGAN's
    published setting, whose ToRGB layer makes the raw image). ``sigma`` is always raw.
    """

    def __init__(self, n_features: int, output_dim: int, *, activation: str = "none", **kwargs):
        super().__init__(n_features, output_dim, **kwargs)
        if activation not in ("none", "sigmoid", "lrelu"):
            raise ValueError(f"activation must be none/sigmoid/lrelu, got {activation!r}")
        self.activation = activation

    def forward(
        self, features: torch.Tensor, ray_directions: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if self.activation == "sigmoid":
            return super().forward(features, ray_directions)
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if features.dim() == 4:
            features = features.mean(1)
        if features.dim() != 3 or features.shape[-1] != self.n_features:
            raise ValueError(
                f"features must have shape (B, N, {self.n_features}), got {tuple(features.shape)}"
            )
        x = self.net(features)
        rgb = x[..., 1:]
        if self.activation == "lrelu":
            rgb = F.leaky_relu(rgb, 0.2) * math.sqrt(2)
        return {"rgb": rgb, "sigma": x[..., 0:1]}


def _check_batch(name: str, x: torch.Tensor, width: int, batch: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.ndim != 2 or x.shape[1] != width or (batch is not None and x.shape[0] != batch):
        want = f"({batch if batch is not None else 'N'}, {width})"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


class PortraitGenerator(nn.Module):
    """The 3DPortraitGAN generator built from a :class:`PortraitGANConfig`.

    Args:
        config: sizes and rendering settings (a preset name is accepted too).
        body: the body model of the pose deformation (when None, the procedural stand-in
            with the config's ``body_rings`` x ``body_around`` mesh).
        backend: the ops' backend for every kernel-backed stage (None: the one in force).

    ``forward(z, camera, pose=None, *, predict_pose=False, ...)`` returns a dict with
    ``image`` ``(N, 3, R, R)``, ``image_raw`` ``(N, 3, r, r)``, ``image_depth`` ``(N, 1, r, r)``,
    ``image_mask`` ``(N, 1, r, r)``, ``image_background`` (or None), ``pose`` ``(N, 6)`` (the one
    rendered) and ``ws``.
    """

    def __init__(
        self,
        config: PortraitGANConfig | str = "tiny",
        *,
        body: BodyModel | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(config, str):
            config = PortraitGANConfig.preset(config)
        if not isinstance(config, PortraitGANConfig):
            raise TypeError(f"config must be a PortraitGANConfig, got {type(config).__name__}")
        self.config = config
        self.backend = backend
        self.mapping = PortraitMapping.from_config(config)
        self.backbone = TriGridSynthesis.from_config(config)
        self.decoder = PortraitDecoder(
            config.triplane_channels,
            config.feature_channels,
            activation=config.decoder_activation,
            lr_multiplier=config.decoder_lr_multiplier,
            hidden_dim=config.decoder_hidden,
        )
        self.renderer = ImportanceRenderer(
            depth_resolution=config.depth_resolution,
            depth_resolution_importance=config.depth_resolution_importance,
            ray_start=config.ray_start,
            ray_end=config.ray_end,
            box_warp=config.box_warp,
            plane_axes=config.plane_axes,
            white_back=False,
            scale_rgb=False,
            density_noise=config.density_noise,
            triplane_crop=config.triplane_crop,
            backend=backend,
        )
        if body is None:
            body = procedural_body_model(config.body_rings, config.body_around)
        self.deformer = PoseDeformer(
            body, box_warp=config.box_warp, thickness=config.deform_thickness, backend=backend
        )
        self.image_head = NeuralImageHead(config)
        self.pose_branch = GeneratorPoseBranch.from_config(config)
        self.neural_rendering_resolution = config.neural_rendering_resolution

    # ---- stages -------------------------------------------------------------------------------

    def get_pose(self, z: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """The generator pose branch: ``(N, 6)`` neck and head axis-angle for ``z`` and
        ``camera`` (3DPortraitGAN ``get_pose_params``)."""
        _check_batch("z", z, self.config.z_dim)
        _check_batch("camera", camera, self.config.camera_dim, z.shape[0])
        return self.pose_branch(z, camera)

    def _resolve_pose(self, z, camera, pose, predict_pose):
        if predict_pose and pose is not None:
            raise ValueError("give pose or predict_pose=True, not both")
        if predict_pose:
            return self.get_pose(z, camera)
        if pose is None:
            return camera.new_zeros(camera.shape[0], self.config.pose_dim)
        _check_batch("pose", pose, self.config.pose_dim, camera.shape[0])
        return pose.to(camera.dtype)

    def map(
        self,
        z: torch.Tensor,
        camera: torch.Tensor,
        pose: torch.Tensor | None = None,
        *,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """``ws`` ``(N, num_ws, w_dim)`` from ``z``, ``camera`` (25) and ``pose`` (6, zeros when
        None)."""
        _check_batch("z", z, self.config.z_dim)
        _check_batch("camera", camera, self.config.camera_dim, z.shape[0])
        pose = self._resolve_pose(z, camera, pose, False)
        return self.mapping(
            z,
            camera,
            pose,
            truncation_psi=truncation_psi,
            truncation_cutoff=truncation_cutoff,
            update_emas=update_emas,
        )

    def planes(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        """The tri-grid (or tri-plane) of ``ws``."""
        return self.backbone(ws, noise_mode=noise_mode)

    def deformation(self, pose: torch.Tensor):
        """The renderer's deformation hook for a batch of poses ``(N, 6)``."""
        return self.deformer.hook(pose)

    def render(
        self,
        planes: torch.Tensor,
        camera: torch.Tensor,
        pose: torch.Tensor | None,
        *,
        resolution: int | None = None,
        generator: torch.Generator | None = None,
        apply_deformation: bool = True,
        chunk_rays: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Volume-render ``planes`` from ``camera``: feature, depth and weight images
        ``(N, C, r, r)``, ``(N, 1, r, r)``, ``(N, 1, r, r)``."""
        n = planes.shape[0]
        _check_batch("camera", camera, self.config.camera_dim, n)
        r = int(resolution or self.neural_rendering_resolution)
        cam2world, intrinsics = unpack_camera_label(camera)
        origins, directions = ray_sample(
            cam2world.contiguous(), intrinsics.contiguous(), r, backend=self.backend
        )
        deform = None
        if apply_deformation and pose is not None:
            deform = self.deformation(pose)
        previous = self.renderer.chunk_rays
        self.renderer.chunk_rays = chunk_rays
        try:
            rgb, depth, weight = self.renderer(
                planes, self.decoder, origins, directions, generator=generator, deform=deform
            )
        finally:
            self.renderer.chunk_rays = previous
        feature = rgb.permute(0, 2, 1).reshape(n, rgb.shape[-1], r, r)
        depth = depth.permute(0, 2, 1).reshape(n, 1, r, r)
        weight = weight.permute(0, 2, 1).reshape(n, 1, r, r)
        return feature, depth, weight

    def synthesis(
        self,
        ws: torch.Tensor,
        camera: torch.Tensor,
        pose: torch.Tensor | None = None,
        *,
        neural_rendering_resolution: int | None = None,
        noise_mode: str = "random",
        generator: torch.Generator | None = None,
        apply_deformation: bool = True,
        ws_background: torch.Tensor | None = None,
        chunk_rays: int | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Images of ``ws`` seen from ``camera`` with the body posed by ``pose``."""
        if ws.ndim != 3 or ws.shape[2] != self.config.w_dim:
            raise ValueError(f"ws must have shape (N, K, {self.config.w_dim}), got {ws.shape}")
        planes = self.planes(ws, noise_mode=noise_mode)
        feature, depth, weight = self.render(
            planes,
            camera,
            pose,
            resolution=neural_rendering_resolution,
            generator=generator,
            apply_deformation=apply_deformation,
            chunk_rays=chunk_rays,
        )
        out = self.image_head(
            feature,
            weight,
            ws,
            ws_background=ws_background,
            noise_mode=noise_mode,
            sr_noise_mode=None if noise_mode == "random" else noise_mode,
        )
        out["image_depth"] = depth
        out.pop("feature", None)
        return out

    def forward(
        self,
        z: torch.Tensor,
        camera: torch.Tensor,
        pose: torch.Tensor | None = None,
        *,
        predict_pose: bool = False,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        neural_rendering_resolution: int | None = None,
        noise_mode: str = "random",
        generator: torch.Generator | None = None,
        apply_deformation: bool = True,
        update_emas: bool = False,
        chunk_rays: int | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Images for latents ``z`` ``(N, z_dim)`` seen from ``camera`` ``(N, 25)`` with the body
        at ``pose`` ``(N, 6)`` (zeros when None) or at the pose the generator predicts
        (``predict_pose=True``); the pose also conditions the mapping, as published."""
        _check_batch("z", z, self.config.z_dim)
        _check_batch("camera", camera, self.config.camera_dim, z.shape[0])
        pose = self._resolve_pose(z, camera, pose, predict_pose)
        ws = self.mapping(
            z,
            camera,
            pose,
            truncation_psi=truncation_psi,
            truncation_cutoff=truncation_cutoff,
            update_emas=update_emas,
        )
        out = self.synthesis(
            ws,
            camera,
            pose,
            neural_rendering_resolution=neural_rendering_resolution,
            noise_mode=noise_mode,
            generator=generator,
            apply_deformation=apply_deformation,
            chunk_rays=chunk_rays,
        )
        out["pose"] = pose
        out["ws"] = ws
        return out

    # ---- geometry -----------------------------------------------------------------------------

    def sample_density(
        self,
        planes: torch.Tensor,
        points: torch.Tensor,
        pose: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw density ``(N, P, 1)`` at ``points`` ``(N, P, 3)``: in the canonical space, or in
        the space posed by ``pose`` when given (the points are deformed first)."""
        if points.ndim != 3 or points.shape[-1] != 3 or points.shape[0] != planes.shape[0]:
            raise ValueError(
                f"points must have shape ({planes.shape[0]}, P, 3), got {tuple(points.shape)}"
            )
        if pose is not None:
            points = self.deformation(pose)(points)
        features = triplane_sample(
            planes,
            points.to(planes.dtype),
            box_warp=self.config.box_warp,
            plane_axes=self.config.plane_axes,
            backend=self.backend,
        )
        return self.decoder(features)["sigma"]


__all__ = ["PortraitDecoder", "PortraitGenerator"]
