"""The 3DPortraitGAN losses: what one phase (G main, D main, D R1) of a training step computes.

Published (EG3D ``StyleGAN2Loss``, PanoHead's mask-aware version, 3DPortraitGAN's pose terms):

- ``run_G``: the generator pose branch predicts the body pose ``p = G_pose(z, c)`` (detached
  when the branch is not trained, the later published stages); the mapping label
  ``[c, p]`` is swapped with the previous sample's (``roll`` by one) with the swap probability
  (generator pose conditioning, EG3D ``gpc_reg_prob``); the background network's ``ws`` is
  swapped the same way with ``bcg_reg_prob`` (PanoHead); the image is rendered from camera
  ``c`` with the body posed by ``p`` at the scheduled neural rendering resolution, density
  noise set on the renderer by the schedule;
- ``run_D``: the pose-aware dual discriminator on ``{image, image_raw, image_mask}``, the
  final image blurred with the scheduled sigma, conditioned on ``[c, D_pose(image)]`` (its own
  prediction, detached);
- G main: ``softplus(-D(G(z)))`` (non-saturating) plus the pose regulariser ``w(nimg) ·
  mean((p - p_data)^2)``, ``p_data`` the dataset pose drawn with the camera ``c``;
- D main: ``softplus(D(G(z)))`` + ``softplus(-D(x))`` plus the pose loss on generated images
  ``pose_loss_weight · mean((D_pose(G(z)) - p)^2)``, ``p`` the (detached) pose G rendered at;
- D R1 (lazy, every ``d_reg_interval`` steps, gain = interval): ``gamma / 2 · (|∇_image|^2 +
  |∇_raw|^2) + gamma_seg / 2 · |∇_mask|^2`` on real inputs; as published the gradient is taken
  with respect to the *blurred* real image (EG3D's ``run_D`` blurs the image in the dict whose
  entries the gradient is taken for).

Every random draw of a step that must agree across data-parallel ranks (latents, swaps) is
made for the global batch (:class:`PhaseInputs`); each rank renders its own rows, while the
pose branch and the mapping (small MLPs) run on the global batch so a swapped label or
background code can come from another rank's row. So two processes with batch ``b`` compute
exactly the gradients of one process with batch ``2b``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from portrait_engine.models.portrait_gan.discriminator import blur, real_inputs
from portrait_engine.models.portrait_gan.training import schedules
from portrait_engine.models.portrait_gan.training.config import TrainConfig


@dataclass
class PhaseInputs:
    """The generator inputs of one phase for the global batch (``G`` rows), and which rows this
    rank renders. ``camera`` and ``pose`` are the dataset labels drawn with each latent."""

    z: torch.Tensor  # (G, z_dim)
    camera: torch.Tensor  # (G, 25)
    pose: torch.Tensor  # (G, 6) dataset pose of the drawn camera
    swap: torch.Tensor  # (G,) uniform draws for the conditioning swap
    swap_background: torch.Tensor  # (G,) uniform draws for the background swap
    rows: slice  # this rank's rows

    def to(self, device) -> PhaseInputs:
        return PhaseInputs(
            *(t.to(device) for t in (self.z, self.camera, self.pose, self.swap)),
            self.swap_background.to(device),
            self.rows,
        )


@dataclass
class Schedule:
    cur_nimg: float
    blur_sigma: float
    density_noise: float
    swapping_prob: float | None
    neural_rendering_resolution: int
    pose_reg_weight: float

    def as_dict(self) -> dict[str, float]:
        return {
            "schedule/blur_sigma": self.blur_sigma,
            "schedule/density_noise": self.density_noise,
            "schedule/swapping_prob": -1.0 if self.swapping_prob is None else self.swapping_prob,
            "schedule/neural_rendering_resolution": float(self.neural_rendering_resolution),
            "schedule/pose_reg_weight": self.pose_reg_weight,
        }


class PortraitGANLoss:
    """The losses of :mod:`portrait_engine.models.portrait_gan.training`.

    Args:
        G, D: the generator and discriminator being trained (plain modules).
        config: the training settings.
        global_batch: images per step over all ranks (the schedules count them).
        autocast_dtype: bf16 autocast of the forward passes, or None.
    """

    def __init__(
        self,
        G,
        D,
        config: TrainConfig,
        global_batch: int,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.G = G
        self.D = D
        self.config = config
        self.global_batch = global_batch
        self.autocast_dtype = autocast_dtype
        model = G.config
        self.resolution_initial = model.neural_rendering_resolution
        self.resolution_final = model.neural_rendering_resolution_final

    # ---- schedules ------------------------------------------------------------------------

    def schedule(self, cur_nimg: float) -> Schedule:
        cfg = self.config
        return Schedule(
            cur_nimg=cur_nimg,
            blur_sigma=schedules.blur_sigma_at(
                cur_nimg, cfg.blur_init_sigma, cfg.blur_fade(self.global_batch)
            ),
            density_noise=schedules.density_noise_at(cur_nimg, cfg.density_noise_fade_kimg),
            swapping_prob=schedules.swapping_prob_at(
                cur_nimg, cfg.gpc_reg_prob, cfg.gpc_reg_fade_kimg
            ),
            neural_rendering_resolution=schedules.neural_rendering_resolution_at(
                cur_nimg,
                self.resolution_initial,
                self.resolution_final,
                cfg.neural_rendering_resolution_fade_kimg,
            ),
            pose_reg_weight=schedules.pose_regularisation_weight_at(
                cur_nimg, cfg.pose_reg_weight, cfg.pose_reg_kimg
            ),
        )

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    # ---- networks ---------------------------------------------------------------------------

    def run_G(
        self,
        inputs: PhaseInputs,
        schedule: Schedule,
        *,
        generator: torch.Generator | None = None,
        update_emas: bool = False,
    ) -> tuple[dict, torch.Tensor]:
        """The images of this rank's rows and the poses they were rendered at ``(n, 6)``."""
        G, cfg = self.G, self.config
        # the pose branch and the mapping (small MLPs) in float32 whatever the autocast: the
        # pose drives the skinning ops, which take the body model's dtype, and the mapping
        # updates its float32 running average of w
        with torch.autocast(inputs.z.device.type, enabled=False):
            pose = G.get_pose(inputs.z, inputs.camera)
            if not cfg.train_g_pose_branch:
                pose = pose.detach()
            label_camera, label_pose = inputs.camera, pose
            if schedule.swapping_prob is not None:
                swap = (inputs.swap < schedule.swapping_prob).unsqueeze(1)
                label_camera = torch.where(swap, inputs.camera.roll(1, 0), inputs.camera)
                label_pose = torch.where(swap, pose.roll(1, 0), pose)
            else:  # no generator pose conditioning: a zero label (EG3D c_gen_conditioning_zero)
                label_camera, label_pose = torch.zeros_like(inputs.camera), torch.zeros_like(pose)
            ws = G.mapping(inputs.z, label_camera, label_pose, update_emas=update_emas)
        ws_background = None
        if cfg.bcg_reg_prob > 0:
            swap = (inputs.swap_background < cfg.bcg_reg_prob).reshape(-1, 1, 1)
            ws_background = torch.where(swap, ws.roll(1, 0), ws)[inputs.rows]
        rows = inputs.rows
        G.renderer.density_noise = schedule.density_noise
        G.renderer.deterministic = cfg.deterministic_render
        # G.synthesis stage by stage, so that under autocast the volume rendering stays in
        # float32 (the renderer's ops take one dtype; the tri-grid is cast back) while the
        # StyleGAN2 backbone, the image head and D run in bf16
        planes = G.planes(ws[rows], noise_mode=cfg.noise_mode)
        with torch.autocast(planes.device.type, enabled=False):
            feature, depth, weight = G.render(
                planes.float(),
                inputs.camera[rows],
                pose[rows],
                resolution=schedule.neural_rendering_resolution,
                generator=generator,
            )
        out = G.image_head(
            feature,
            weight,
            ws[rows],
            ws_background=ws_background,
            noise_mode=cfg.noise_mode,
            sr_noise_mode=None if cfg.noise_mode == "random" else cfg.noise_mode,
        )
        out["image_depth"] = depth
        return out, pose[rows]

    def run_D(self, images: dict, camera: torch.Tensor, blur_sigma: float):
        """``(logits (n, 1), predicted pose (n, 6))``."""
        return self.D(
            {k: images[k] for k in ("image", "image_raw", "image_mask")},
            camera,
            None,
            blur_sigma=blur_sigma,
        )

    def real_inputs(self, image: torch.Tensor, mask: torch.Tensor, schedule: Schedule) -> dict:
        return real_inputs(
            image, mask, schedule.neural_rendering_resolution, blur_sigma=schedule.blur_sigma
        )

    # ---- phases -----------------------------------------------------------------------------

    def generator_loss(
        self, inputs: PhaseInputs, schedule: Schedule, generator=None
    ) -> dict[str, torch.Tensor]:
        """G main: the non-saturating loss and the pose regulariser (``loss`` to minimise)."""
        device = inputs.z.device
        with self._autocast(device):
            gen, pose = self.run_G(inputs, schedule, generator=generator)
            logits, _ = self.run_D(gen, inputs.camera[inputs.rows], schedule.blur_sigma)
        loss_adv = F.softplus(-logits.float()).mean()
        loss = loss_adv
        pose_reg = torch.zeros((), device=device)
        if schedule.pose_reg_weight > 0:
            pose_reg = F.mse_loss(pose.float(), inputs.pose[inputs.rows].float())
            loss = loss + schedule.pose_reg_weight * pose_reg
        return {
            "loss": loss,
            "G/loss_adv": loss_adv.detach(),
            "G/pose_reg": pose_reg.detach(),
            "scores/fake_G": logits.detach().float().mean(),
        }

    def discriminator_loss(
        self,
        inputs: PhaseInputs,
        real: dict,
        real_camera: torch.Tensor,
        schedule: Schedule,
        generator=None,
    ) -> dict[str, torch.Tensor]:
        """D main: fake and real logistic losses and the pose loss on generated images."""
        device = inputs.z.device
        with torch.no_grad(), self._autocast(device):
            gen, pose = self.run_G(inputs, schedule, generator=generator, update_emas=True)
        gen = {k: gen[k].detach().float() for k in ("image", "image_raw", "image_mask")}
        with self._autocast(device):
            logits_fake, pose_fake = self.run_D(
                gen, inputs.camera[inputs.rows], schedule.blur_sigma
            )
            logits_real, _ = self.run_D(real, real_camera, schedule.blur_sigma)
        loss_fake = F.softplus(logits_fake.float()).mean()
        loss_real = F.softplus(-logits_real.float()).mean()
        pose_loss = F.mse_loss(pose_fake.float(), pose.detach().float())
        loss = loss_fake + loss_real + self.config.pose_loss_weight * pose_loss
        return {
            "loss": loss,
            "D/loss_fake": loss_fake.detach(),
            "D/loss_real": loss_real.detach(),
            "D/pose_loss": pose_loss.detach(),
            "scores/fake": logits_fake.detach().float().mean(),
            "scores/real": logits_real.detach().float().mean(),
        }

    def r1_loss(
        self, real: dict, real_camera: torch.Tensor, schedule: Schedule
    ) -> dict[str, torch.Tensor]:
        """D R1: the penalty on real inputs, times the lazy interval (its gain)."""
        cfg = self.config
        image = blur(real["image"], schedule.blur_sigma) if schedule.blur_sigma > 0 else None
        inputs = {
            "image": (real["image"] if image is None else image).detach().requires_grad_(True),
            "image_raw": real["image_raw"].detach().requires_grad_(True),
            "image_mask": real["image_mask"].detach().requires_grad_(True),
        }
        with self._autocast(real["image"].device):
            logits, _ = self.run_D(inputs, real_camera, 0.0)
        grads = torch.autograd.grad(
            logits.float().sum(),
            [inputs["image"], inputs["image_raw"], inputs["image_mask"]],
            create_graph=True,
        )
        penalty = grads[0].float().square().sum([1, 2, 3]) + grads[1].float().square().sum(
            [1, 2, 3]
        )
        penalty_seg = grads[2].float().square().sum([1, 2, 3])
        loss = (penalty * (cfg.r1_gamma / 2) + penalty_seg * (cfg.r1_gamma_seg / 2)).mean()
        return {
            "loss": loss * cfg.d_reg_interval,
            "D/r1_penalty": penalty.detach().mean(),
            "D/r1_penalty_seg": penalty_seg.detach().mean(),
            "D/r1": loss.detach(),
        }
