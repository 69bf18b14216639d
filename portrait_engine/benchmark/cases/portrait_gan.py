"""End-to-end benchmark: the 3DPortraitGAN generator's forward (images per second).

One case per preset: ``tiny`` (quick sizes, CPU friendly), ``small`` and ``paper`` (full
sizes). The whole generator runs (mapping, tri-grid backbone, pose deformation of every ray
sample, importance rendering, background, super-resolution) at the preset's neural rendering
resolution, with a random body pose; the ``torch`` provider runs every kernel-backed stage on
the PyTorch references, ``triton`` / ``native`` on the fused kernels. Images per second =
``batch / median seconds``. The model runs in float32 whatever the dtype asked (StyleGAN2's
layers are float32 here); only ``z`` is a differentiable input (camera and pose are keyword
arguments), and only the forward is timed.
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


__all__ = ["generator_cases"]
