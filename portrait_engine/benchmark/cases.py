"""Benchmark cases: for each op, its sizes, inputs, providers and the bytes it must move."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from portrait_engine.ops.attention_pool import attention_pool
from portrait_engine.ops.reference import attention_pool_reference, triplane_sample_reference
from portrait_engine.ops.triplane import triplane_sample

# "sdpa": the op posed as torch's scaled_dot_product_attention, where that applies
PROVIDERS = ("torch", "torch_compile", "sdpa", "triton", "native")


@dataclass
class Case:
    """One op at one size: what the harness times for every provider and dtype."""

    op: str
    shape: str
    params: dict
    # (device, dtype, generator) -> (differentiable inputs, keyword arguments)
    make_inputs: Callable[..., tuple[list[torch.Tensor], dict]]
    # provider -> function(*inputs, **kwargs) -> output tensor
    functions: dict[str, Callable[..., torch.Tensor]]
    # (dtype, with_backward) -> bytes that must cross memory at least once
    bytes_moved: Callable[[torch.dtype, bool], int]
    description: str = ""
    native_op: str | None = None  # the C++ op the native provider needs
    extra: dict = field(default_factory=dict)


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
    if quick:
        return [
            _triplane_case("quick-triplane", 1, 32, 1, 128, 64, 24),
            _triplane_case("quick-trigrid", 1, 32, 3, 128, 64, 24),
        ]
    return [
        # EG3D training: planes 3x32x256^2, batch 4, 128^2 rays x 96 samples (48 + 48)
        _triplane_case("eg3d-triplane", 4, 32, 1, 256, 128, 96),
        # PanoHead / 3DPortraitGAN tri-grid: 3 x (32 x 3) x 256^2
        _triplane_case("panohead-trigrid", 4, 32, 3, 256, 128, 96),
    ]


@functools.cache
def _compiled_attention_pool_reference():
    return torch.compile(attention_pool_reference, dynamic=False)


def _attention_pool_as_sdpa(features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Attention pooling posed as single-query attention for ``scaled_dot_product_attention``.

    A query of ones against keys equal to the scores (head dimension 1, scale 1) gives the
    logits ``s``; the values are the features at each position: ``softmax(s) @ Fᵀ``.
    """
    batch, channels = features.shape[:2]
    maps = scores.shape[1]
    keys = scores.flatten(2).unsqueeze(-1)  # (B, K, L, 1)
    query = keys.new_ones(batch, maps, 1, 1)
    values = features.flatten(2).transpose(1, 2).unsqueeze(1).expand(-1, maps, -1, -1)
    out = torch.nn.functional.scaled_dot_product_attention(query, keys, values, scale=1.0)
    return out.squeeze(2)  # (B, K, C)


def _attention_pool_case(name: str, batch: int, channels: int, size: int, maps: int = 1) -> Case:
    positions = size * size

    def make_inputs(device, dtype, generator):
        features = torch.randn(batch, channels, size, size, generator=generator)
        scores = 4 * torch.randn(batch, maps, size, size, generator=generator)
        features = features.to(device=device, dtype=dtype)
        return [features, scores.to(device=device, dtype=dtype)], {}

    def backend_fn(backend):
        return lambda features, scores: attention_pool(features, scores, backend=backend)

    functions = {
        "torch": attention_pool_reference,
        "torch_compile": lambda f, s: _compiled_attention_pool_reference()(f, s),
        "sdpa": _attention_pool_as_sdpa,
        "triton": backend_fn("triton"),
        "native": backend_fn("native"),
    }
    feature_elems = batch * channels * positions
    score_elems = batch * maps * positions
    out_elems = batch * maps * channels

    def bytes_moved(dtype: torch.dtype, with_backward: bool) -> int:
        size_of = torch.empty((), dtype=dtype).element_size()
        forward = (feature_elems + score_elems + out_elems) * size_of
        if not with_backward:
            return forward
        # backward: read grad_out, features, scores (and out); write both input gradients
        backward = (2 * out_elems + 2 * feature_elems + 2 * score_elems) * size_of
        return forward + backward

    return Case(
        op="attention_pool",
        shape=name,
        params=dict(batch=batch, channels=channels, height=size, width=size, maps=maps),
        make_inputs=make_inputs,
        functions=functions,
        bytes_moved=bytes_moved,
        description=f"B={batch} C={channels} {size}x{size} K={maps}",
        native_op="attention_pool_forward",
    )


def attention_pool_cases(quick: bool) -> list[Case]:
    if quick:
        return [
            _attention_pool_case("quick-7x7", 128, 512, 7),
            _attention_pool_case("quick-14x14", 32, 512, 14),
        ]
    # face-recognition training: IResNet's last feature map at batch 512 (7x7), and a 14x14 map
    return [
        _attention_pool_case("fr-7x7", 512, 512, 7),
        _attention_pool_case("fr-14x14", 256, 512, 14),
    ]


OPS: dict[str, Callable[[bool], list[Case]]] = {
    "triplane_sample": triplane_cases,
    "attention_pool": attention_pool_cases,
}
