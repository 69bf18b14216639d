"""Benchmark cases of ray_march (EG3D MipRayMarcher2) and ray_sample (EG3D RaySampler)."""

from __future__ import annotations

import functools

import torch

from portrait_engine.benchmark.cases.base import Case
from portrait_engine.ops.rays import ray_march, ray_sample
from portrait_engine.ops.reference import ray_march_reference, ray_sample_reference


def _size_of(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------------------------
# ray_march
# --------------------------------------------------------------------------------------------


def _march_as_one_tensor(march):
    """``march`` with its three outputs concatenated, so the harness times every backward.

    The concatenation costs every provider the same (B·R·(C + S) elements, a few per cent of
    the colours); the depths travel as a keyword argument (no gradient).
    """

    def fn(colors, densities, *, depths, white_back=False, scale_rgb=True):
        rgb, depth, weights = march(
            colors, densities, depths, white_back=white_back, scale_rgb=scale_rgb
        )
        return torch.cat((rgb, depth, weights.flatten(2)), dim=-1)

    return fn


@functools.cache
def _compiled_march_reference():
    return torch.compile(_march_as_one_tensor(ray_march_reference), dynamic=False)


def _march_case(name: str, batch: int, resolution: int, samples: int, channels: int) -> Case:
    rays = resolution * resolution

    def make_inputs(device, dtype, generator):
        colors = torch.randn(batch, rays, samples, channels, generator=generator)
        # densities around the activation's knee: some rays saturate, most do not
        densities = 4 * torch.randn(batch, rays, samples, 1, generator=generator)
        steps = torch.rand(batch, rays, samples, 1, generator=generator) * 0.02 + 0.01
        depths = 2.25 + torch.cumsum(steps, dim=2)
        inputs = [colors.to(device=device, dtype=dtype), densities.to(device=device, dtype=dtype)]
        return inputs, {"depths": depths.to(device=device, dtype=dtype)}

    def backend_fn(backend):
        return _march_as_one_tensor(lambda c, d, z, **kw: ray_march(c, d, z, backend=backend, **kw))

    functions = {
        "torch": _march_as_one_tensor(ray_march_reference),
        "torch_compile": lambda c, d, **kw: _compiled_march_reference()(c, d, **kw),
        "triton": backend_fn("triton"),
        "native": backend_fn("native"),
    }
    color_elems = batch * rays * samples * channels
    sample_elems = batch * rays * samples
    ray_out_elems = batch * rays * (channels + 1)

    def bytes_moved(dtype: torch.dtype, with_backward: bool) -> int:
        size = _size_of(dtype)
        # read colours, densities, depths; write rgb, depth, weights
        forward = (color_elems + 3 * sample_elems + ray_out_elems) * size
        if not with_backward:
            return forward
        # read the output gradients, colours, densities, depths; write both input gradients
        backward = (2 * color_elems + 4 * sample_elems + ray_out_elems) * size
        return forward + backward

    return Case(
        op="ray_march",
        native_op="ray_march_forward",
        shape=name,
        params=dict(batch=batch, rays=rays, samples=samples, channels=channels),
        make_inputs=make_inputs,
        functions=functions,
        bytes_moved=bytes_moved,
        description=f"B={batch} {resolution}x{resolution} rays S={samples} C={channels}",
    )


def ray_march_cases(quick: bool) -> list[Case]:
    if quick:
        return [
            _march_case("quick-32x32-s48", 2, 32, 48, 32),
            _march_case("quick-64x64-s96", 1, 64, 96, 32),
        ]
    # EG3D / 3DPortraitGAN neural rendering: 128x128 rays, 48 coarse + 48 fine samples, C=32
    return [
        _march_case("eg3d-128x128-s48", 4, 128, 48, 32),
        _march_case("eg3d-128x128-s96", 4, 128, 96, 32),
    ]


# --------------------------------------------------------------------------------------------
# ray_sample
# --------------------------------------------------------------------------------------------


def _sample_as_one_tensor(sample):
    def fn(cam2world, intrinsics, *, resolution):
        return torch.cat(sample(cam2world, intrinsics, resolution), dim=-1)

    return fn


@functools.cache
def _compiled_sample_reference():
    return torch.compile(_sample_as_one_tensor(ray_sample_reference), dynamic=False)


def _sample_case(name: str, batch: int, resolution: int) -> Case:
    def make_inputs(device, dtype, generator):
        angles = (torch.rand(batch, generator=generator) - 0.5) * 2
        cam2world = torch.eye(4).repeat(batch, 1, 1)
        cam2world[:, 0, 0] = cam2world[:, 2, 2] = torch.cos(angles)
        cam2world[:, 0, 2] = torch.sin(angles)
        cam2world[:, 2, 0] = -torch.sin(angles)
        cam2world[:, :3, 3] = -2.7 * cam2world[:, :3, 2]
        intrinsics = torch.tensor([[4.2647, 0.0, 0.5], [0.0, 4.2647, 0.5], [0.0, 0.0, 1.0]])
        intrinsics = intrinsics.repeat(batch, 1, 1)
        inputs = [
            cam2world.to(device=device, dtype=dtype),
            intrinsics.to(device=device, dtype=dtype),
        ]
        return inputs, {"resolution": resolution}

    def backend_fn(backend):
        return _sample_as_one_tensor(lambda m, k, r: ray_sample(m, k, r, backend=backend))

    functions = {
        "torch": _sample_as_one_tensor(ray_sample_reference),
        "torch_compile": lambda m, k, **kw: _compiled_sample_reference()(m, k, **kw),
        "triton": backend_fn("triton"),
        "native": backend_fn("native"),
    }
    out_elems = batch * resolution * resolution * 6

    def bytes_moved(dtype: torch.dtype, with_backward: bool) -> int:
        # writes dominate: origins and directions (and reads of their gradients)
        return out_elems * _size_of(dtype) * (2 if with_backward else 1)

    return Case(
        op="ray_sample",
        native_op="ray_sample_forward",
        shape=name,
        params=dict(batch=batch, resolution=resolution),
        make_inputs=make_inputs,
        functions=functions,
        bytes_moved=bytes_moved,
        description=f"B={batch} {resolution}x{resolution} rays",
    )


def ray_sample_cases(quick: bool) -> list[Case]:
    if quick:
        return [_sample_case("quick-64x64", 4, 64)]
    return [_sample_case("eg3d-128x128", 4, 128), _sample_case("eg3d-512x512", 4, 512)]
