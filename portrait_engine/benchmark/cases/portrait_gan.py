"""End-to-end benchmarks: the 3DPortraitGAN generator's forward and its training step
(images per second).

One case per preset: ``tiny`` (quick sizes, CPU friendly), ``small`` and ``paper`` (full
sizes). The whole generator runs (mapping, tri-grid backbone, pose deformation of every ray
sample, importance rendering, background, super-resolution) at the preset's neural rendering
resolution, with a random body pose; the ``torch`` provider runs every kernel-backed stage on
the PyTorch references, ``triton`` / ``native`` on the kernel backends, with the renderer on
its default path (``ImportanceRenderer.use_fused``: ``render_rays`` on a GPU, the unfused ops on
the CPU since 2026-11-27 (evening); CPU results from 2026-11-26 until then timed
``render_rays``). Images per second = ``batch / median seconds``. The model runs in float32
whatever the dtype asked (StyleGAN2's layers are float32 here); only ``z`` is a differentiable
input (camera and pose are keyword arguments), and only the forward is timed.
"""

from __future__ import annotations

import functools

import torch

from portrait_engine import use_backend
from portrait_engine.benchmark.cases.base import Case

RENDER_SEED = 0


@functools.cache
def _model(preset: str, device: str):
    from portrait_engine.models.portrait_gan import PortraitGANConfig, PortraitGenerator

    torch.manual_seed(0)
    config = PortraitGANConfig.preset(preset)
    return PortraitGenerator(config).to(device).eval()


def _case(preset: str, batch: int) -> Case:
    from portrait_engine.models.portrait_gan import PortraitGANConfig
    from portrait_engine.models.portrait_gan.inference import orbit_camera

    config = PortraitGANConfig.preset(preset)

    def make_inputs(device, dtype, generator):
        z = torch.randn(batch, config.z_dim, generator=generator)
        yaws = torch.rand(batch, generator=generator) * 6.283
        camera = torch.cat([orbit_camera(float(y)) for y in yaws])
        pose = (torch.rand(batch, 6, generator=generator) - 0.5) * 0.6
        return [z.to(device)], {"camera": camera.to(device), "pose": pose.to(device)}

    def forward(backend):
        def fn(z, *, camera, pose):
            g = _model(preset, str(z.device))
            with use_backend(backend):
                out = g(
                    z.float(),
                    camera,
                    pose,
                    noise_mode="const",
                    generator=torch.Generator(device=z.device).manual_seed(RENDER_SEED),
                )
            return out["image"]

        return fn

    r = config.neural_rendering_resolution
    samples = config.depth_resolution + config.depth_resolution_importance
    return Case(
        op="generator",
        shape=preset,
        params=dict(
            preset=preset,
            batch=batch,
            img_resolution=config.img_resolution,
            neural_rendering_resolution=r,
            samples=samples,
        ),
        make_inputs=make_inputs,
        functions={b: forward(b) for b in ("torch", "triton", "native")},
        bytes_moved=lambda dtype, with_backward: None,
        description=(
            f"3DPortraitGAN generator forward, {preset}: batch {batch}, {r}^2 rays x "
            f"{config.depth_resolution}+{config.depth_resolution_importance} samples, "
            f"{config.img_resolution}^2 output, posed body; images/s = batch / median"
        ),
        native_op="mesh_deform_forward",
        kind="end-to-end",
        modes=("forward",),
        # The nearest-face pose transfer ties wherever a sample's nearest mesh point is an edge
        # or vertex shared by several faces (a region, not a surface: ~0.5% of the samples
        # here); posed vertices that differ by float rounding (~1e-7) between backends then pick
        # other faces and move those samples by up to ~1e-2. Measured on tiny: output rel-L2
        # 2e-5, grad(z) 2.3e-3; at zero pose both are < 1e-6.
        tolerance=5e-3,
    )


def generator_cases(quick: bool) -> list[Case]:
    if quick:
        return [_case("tiny", 2)]
    return [_case("small", 4), _case("paper", 4)]


# ---- the training step ----------------------------------------------------------------------


@functools.cache
def _train_nets(preset: str, device: str, batch: int):
    """G, D and the loss of ``preset`` (one set per device, shared by the providers: the step
    takes no optimizer step, so the weights never change)."""
    from portrait_engine.models.portrait_gan import (
        PortraitGANConfig,
        PortraitGenerator,
        PoseAwareDualDiscriminator,
    )
    from portrait_engine.models.portrait_gan.training import PortraitGANLoss, TrainConfig

    torch.manual_seed(0)
    config = PortraitGANConfig.preset(preset)
    G = PortraitGenerator(config).to(device).train()
    D = PoseAwareDualDiscriminator.from_config(config).to(device).train()
    train = TrainConfig.for_preset(preset, batch_size=batch, noise_mode="const", amp="none")
    return G, D, PortraitGANLoss(G, D, train, global_batch=batch)


def _train_step_case(preset: str, batch: int) -> Case:
    from portrait_engine.models.portrait_gan import PortraitGANConfig
    from portrait_engine.models.portrait_gan.inference import orbit_camera

    config = PortraitGANConfig.preset(preset)
    size = config.img_resolution

    def make_inputs(device, dtype, generator):
        z = torch.randn(2 * batch, config.z_dim, generator=generator)
        yaws = torch.rand(2 * batch, generator=generator) * 6.283
        camera = torch.cat([orbit_camera(float(y)) for y in yaws])
        pose = (torch.rand(2 * batch, 6, generator=generator) - 0.5) * 0.6
        draws = torch.rand(2, 2 * batch, generator=generator)
        image = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
        mask = (torch.rand(batch, 1, size, size, generator=generator) > 0.3).float()
        kwargs = {
            k: v.to(device)
            for k, v in dict(camera=camera, pose=pose, draws=draws, image=image, mask=mask).items()
        }
        return [z.to(device)], kwargs

    def step(backend):
        def fn(z, *, camera, pose, draws, image, mask):
            from portrait_engine.models.portrait_gan.training import PhaseInputs

            G, D, loss = _train_nets(preset, str(z.device), batch)
            for p in list(G.parameters()) + list(D.parameters()):
                p.grad = None
            schedule = loss.schedule(0.0)
            phases = [
                PhaseInputs(
                    z[i * batch : (i + 1) * batch].float(),
                    camera[i * batch : (i + 1) * batch],
                    pose[i * batch : (i + 1) * batch],
                    draws[0, i * batch : (i + 1) * batch],
                    draws[1, i * batch : (i + 1) * batch],
                    slice(0, batch),
                )
                for i in range(2)
            ]
            render = torch.Generator(device=z.device).manual_seed(RENDER_SEED)
            with use_backend(backend):
                # G main builds no graph into D's weights (D frozen, as in the loop); both
                # networks then require grad, as the harness backpropagates after this returns
                # (a leaf switched off before the backward receives no gradient)
                G.requires_grad_(True)
                D.requires_grad_(False)
                g_loss = loss.generator_loss(phases[0], schedule, generator=render)["loss"]
                D.requires_grad_(True)
                real = loss.real_inputs(image, mask, schedule)
                d_loss = loss.discriminator_loss(
                    phases[1], real, camera[batch:], schedule, generator=render
                )["loss"]
            return torch.stack([g_loss, d_loss])

        return fn

    r = config.neural_rendering_resolution
    return Case(
        op="portrait_gan_train_step",
        shape=preset,
        params=dict(
            preset=preset,
            batch=batch,
            img_resolution=size,
            neural_rendering_resolution=r,
            samples=config.depth_resolution + config.depth_resolution_importance,
        ),
        make_inputs=make_inputs,
        functions={b: step(b) for b in ("torch", "triton", "native")},
        bytes_moved=lambda dtype, with_backward: None,
        description=(
            f"3DPortraitGAN training step, {preset}: G main + D main (fake, real, D pose "
            f"loss), batch {batch}, {r}^2 neural rendering, {size}^2 images, without the "
            "optimizer steps and the lazy R1 (every 16th step); images/s = batch / median"
        ),
        kind="end-to-end",
        modes=("forward+backward",),
        # the generator case's tolerance: the nearest-face pose transfer flips at ties between
        # backends (see _case); the losses inherit those differences
        tolerance=5e-3,
    )


def portrait_gan_train_step_cases(quick: bool) -> list[Case]:
    if quick:
        return [_train_step_case("tiny", 2)]
    return [_train_step_case("small", 4), _train_step_case("paper", 4)]


__all__ = ["generator_cases", "portrait_gan_train_step_cases"]
