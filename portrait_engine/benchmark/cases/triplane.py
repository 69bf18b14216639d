"""Benchmark cases of triplane_sample (tri-plane and tri-grid sampling)."""

from __future__ import annotations

import functools

import torch

from portrait_engine.benchmark.cases.base import Case
from portrait_engine.ops.reference import triplane_sample_reference
from portrait_engine.ops.triplane import triplane_sample


@functools.cache
def _compiled_triplane_reference():
    return torch.compile(triplane_sample_reference, dynamic=False)


def _triplane_case(
    name: str, batch: int, channels: int, depth: int, resolution: int, rays: int, samples: int
) -> Case:
    n_points = rays * rays * samples
    plane_shape = (
        (batch, 3, channels, depth, resolution, resolution)
        if depth > 1
        else (batch, 3, channels, resolution, resolution)
    )
    plane_axes = "panohead" if depth > 1 else "eg3d"
    box_warp = 1.0

    def make_inputs(device, dtype, generator):
        planes = torch.randn(plane_shape, generator=generator, dtype=torch.float32)
        # Points fill the box and spill 10 % past it, as coarse ray samples do.
        points = (torch.rand(batch, n_points, 3, generator=generator) - 0.5) * 1.1 * box_warp
        planes = planes.to(device=device, dtype=dtype)
        points = points.to(device=device, dtype=dtype)
        return [planes, points], {"box_warp": box_warp, "plane_axes": plane_axes}

    def backend_fn(backend):
        return lambda planes, points, **kw: triplane_sample(planes, points, backend=backend, **kw)

    functions = {
        "torch": lambda planes, points, **kw: triplane_sample_reference(planes, points, **kw),
        "torch_compile": lambda planes, points, **kw: _compiled_triplane_reference()(
            planes, points, **kw
        ),
        "triton": backend_fn("triton"),
        "native": backend_fn("native"),
    }

    plane_elems = 3 * channels * depth * resolution * resolution * batch
    point_elems = batch * n_points * 3
    out_elems = batch * n_points * channels

    def bytes_moved(dtype: torch.dtype, with_backward: bool) -> int:
        size = torch.empty((), dtype=dtype).element_size()
        forward = (plane_elems + point_elems + out_elems) * size
        if not with_backward:
            return forward
        # backward: read grad_out, points and planes; write grad_planes and grad_points
        backward = (out_elems + 2 * point_elems + 2 * plane_elems) * size
        return forward + backward

    kind = "tri-grid" if depth > 1 else "tri-plane"
    return Case(
        op="triplane_sample",
        native_op="triplane_sample_forward",
        shape=name,
        params=dict(
            batch=batch,
            channels=channels,
            depth=depth,
            resolution=resolution,
            rays=rays,
            samples=samples,
            points=n_points,
        ),
        make_inputs=make_inputs,
        functions=functions,
        bytes_moved=bytes_moved,
        description=(
            f"{kind} B={batch} 3x{channels}"
            + (f"x{depth}" if depth > 1 else "")
            + f"x{resolution}^2, {rays}^2 rays x {samples} samples"
        ),
    )


def triplane_cases(quick: bool) -> list[Case]:
    if quick:  # sized for the whole --quick suite to fit in two minutes on a 2-core CPU
        return [
            _triplane_case("quick-triplane", 1, 32, 1, 128, 32, 24),
            _triplane_case("quick-trigrid", 1, 32, 3, 128, 32, 24),
        ]
    return [
        # EG3D training: planes 3x32x256^2, batch 4, 128^2 rays x 96 samples (48 + 48)
        _triplane_case("eg3d-triplane", 4, 32, 1, 256, 128, 96),
        # PanoHead / 3DPortraitGAN tri-grid: 3 x (32 x 3) x 256^2
        _triplane_case("panohead-trigrid", 4, 32, 3, 256, 128, 96),
    ]
