"""Benchmark cases of the fused neural renderer (``render_rays``) inside ``ImportanceRenderer``.

Renderer forward+backward (gradients to the planes and the decoder's parameters) with EG3D's
48 + 48 samples per ray, on a tri-plane 3×32×256² (EG3D) or a tri-grid 3×32×3×256²
(3DPortraitGAN / PanoHead: 96 backbone channels per plane, ``plane_axes="panohead"``):

* ``render_rays``: ``torch`` is the eager reference renderer (the unfused path on the torch
  backend), ``torch_compile`` is ``torch.compile`` of it, ``triton`` and ``native`` are the
  fused renderer (coarse and fine passes through ``render_rays``);
* ``renderer_unfused``: the same renderer and sizes on the unfused kernel-backed ops
  (``triplane_sample`` → decoder → ``ray_march``, ``fused=False``): the baseline the fused
  kernel must beat, next to the same ``torch`` reference.

Time and peak memory come from the harness (the per-sample activations the unfused renderers
keep for the backward are what the fused one does not store).
"""

from __future__ import annotations

import functools

import torch

from portrait_engine._backend import use_backend
from portrait_engine.benchmark.cases.base import Case
from portrait_engine.nn import ImportanceRenderer, OSGDecoder

SEED = 0


def _generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device).manual_seed(SEED)


def _render_case(
    op: str,
    name: str,
    batch: int,
    resolution: int,
    samples: int,
    plane_size: int,
    *,
    depth: int = 1,
    channels: int = 32,
    fused_kernels: bool,
) -> Case:
    rays = resolution * resolution
    trigrid = depth > 1
    kwargs = dict(
        depth_resolution=samples,
        depth_resolution_importance=samples,
        box_warp=1.0,
        plane_axes="panohead" if trigrid else "eg3d",
    )
    reference_renderer = ImportanceRenderer(fused=False, **kwargs)
    kernel_renderer = ImportanceRenderer(fused=fused_kernels, **kwargs)
    decoders: dict = {}

    def decoder_for(device, dtype):
        # the decoder's parameters stay float32 (they are the model's): the unfused path
        # casts them to the features' dtype, the fused one folds them into fp32 weights
        key = str(device)
        if key not in decoders:
            torch.manual_seed(SEED)
            decoders[key] = OSGDecoder(channels, channels).to(device=device)
            with torch.no_grad():
                decoders[key].net[2].bias[0] = 1.0  # some density: weights are not all tiny
        return decoders[key]

    def make_inputs(device, dtype, generator):
        shape = (batch, 3, channels, depth, plane_size, plane_size)
        planes = torch.randn(shape, generator=generator)
        if not trigrid:
            planes = planes.squeeze(3)
        # camera on a sphere of radius 2.7 around the origin, looking at it: EG3D's FFHQ setup
        pixels = (torch.rand(batch, rays, 2, generator=generator) - 0.5) * 0.35
        directions = torch.cat([pixels, torch.ones(batch, rays, 1)], -1)
        directions = directions / directions.norm(dim=-1, keepdim=True)
        origins = torch.tensor([0.0, 0.0, -2.7]).expand(batch, rays, 3)
        rays_kwargs = dict(
            ray_origins=origins.to(device, torch.float32).contiguous(),
            ray_directions=directions.to(device, torch.float32),
        )
        return [planes.to(device, dtype)], rays_kwargs

    def render(renderer, backend):
        def fn(planes, *, ray_origins, ray_directions):
            decoder = decoder_for(planes.device, planes.dtype)
            with use_backend(backend):
                rgb, depth_image, _ = renderer(
                    planes,
                    decoder,
                    ray_origins.to(planes.dtype),
                    ray_directions.to(planes.dtype),
                    generator=_generator(planes.device),
                )
            # the depth joins the output so that its backward is timed too
            return torch.cat((rgb.float(), depth_image.float()), dim=-1)

        return fn

    compiled = functools.cache(
        lambda: torch.compile(render(reference_renderer, "torch"), dynamic=False)
    )
    points = batch * rays * 2 * samples
    planes_numel = batch * 3 * channels * depth * plane_size * plane_size

    def bytes_moved(dtype: torch.dtype, with_backward: bool) -> int:
        # a lower bound: the planes once, the points and depths once, the ray outputs once
        size = torch.empty((), dtype=dtype).element_size()
        forward = planes_numel * size + points * 4 * 4 + batch * rays * (channels + 1) * 4
        if not with_backward:
            return forward
        # the backward reads them again and writes the planes' gradient (fp32)
        return 2 * forward + planes_numel * 4

    def flops(dtype: torch.dtype, with_backward: bool) -> int:
        # the decoder's two matmuls per sample (32 -> 64 -> 33), 2 flops a multiply-add; the
        # fused renderer's coarse pass is recomputed, the backward is about twice the forward
        mlp = 2 * (channels * 64 + 64 * (channels + 1))
        forward = points * mlp
        return 3 * forward if with_backward else forward

    functions = {"torch": render(reference_renderer, "torch")}
    if fused_kernels:
        functions["torch_compile"] = lambda *a, **kw: compiled()(*a, **kw)
    functions["triton"] = render(kernel_renderer, "triton")
    functions["native"] = render(kernel_renderer, "native")
    what = "fused render_rays" if fused_kernels else "unfused kernel ops"
    grid = (
        f"tri-grid 3x{channels}x{depth}x{plane_size}^2"
        if trigrid
        else (f"tri-plane 3x{channels}x{plane_size}^2")
    )
    return Case(
        op=op,
        native_op="render_rays_forward" if fused_kernels else "sample_importance",
        shape=name,
        params=dict(
            batch=batch,
            rays=rays,
            samples=samples,
            importance=samples,
            channels=channels,
            depth=depth,
            plane_size=plane_size,
        ),
        make_inputs=make_inputs,
        functions=functions,
        bytes_moved=bytes_moved,
        flops=flops,
        kind="end-to-end",
        modes=("forward+backward",),
        quick_skip={
            "torch_compile": "compiling the whole renderer takes about a minute on 2 CPU cores, "
            "more than the quick suite's budget; timed in --full runs"
        },
        description=(
            f"renderer fwd+bwd, {what}: B={batch} {resolution}^2 rays x {samples}+{samples} "
            f"samples, {grid}"
        ),
    )


def _grid(op: str, quick: bool, fused_kernels: bool) -> list[Case]:
    if quick:
        # small enough for the CPU quick suite: a few seconds for all providers
        return [
            _render_case(op, "quick-trigrid", 1, 8, 12, 32, depth=3, fused_kernels=fused_kernels)
        ]
    cases = []
    for batch in (4, 32):
        for resolution in (64, 128):
            for depth in (1, 3):
                kind = "trigrid" if depth > 1 else "triplane"
                cases.append(
                    _render_case(
                        op,
                        f"{kind}-b{batch}-{resolution}x{resolution}",
                        batch,
                        resolution,
                        48,
                        256,
                        depth=depth,
                        fused_kernels=fused_kernels,
                    )
                )
    return cases


def render_rays_cases(quick: bool) -> list[Case]:
    return _grid("render_rays", quick, fused_kernels=True)


def renderer_unfused_cases(quick: bool) -> list[Case]:
    return _grid("renderer_unfused", quick, fused_kernels=False)
