"""Tri-plane / tri-grid feature sampling: the public op, its registration and its autograd.

``triplane_sample`` validates its inputs, picks a backend and lays the inputs out for the
kernels (planes channels-last ``(B, P, D, H, W, C)``, the plane axes and ``2 / box_warp``
folded into one ``(P, 3, 3)`` projection); the kernels are in ``kernels/triplane.py``
(Triton) and ``csrc/triplane/`` (C++ CPU and CUDA). Both kernel families are registered as
torch custom ops with a fake (meta) implementation and an autograd formula whose backward is
itself a registered op, so the op runs under ``torch.compile`` without graph breaks.
"""

from __future__ import annotations

import functools

import torch

from portrait_engine import _backend, _extension
from portrait_engine.ops import _validation as v
from portrait_engine.ops._library import (
    accumulation_dtype,
    eager,
    register_native_pair,
    register_pair,
)
from portrait_engine.ops.reference import NAMED_PLANE_AXES, triplane_sample_reference

REDUCTIONS = ("mean", "none")


# --------------------------------------------------------------------------------------------
# Kernel-level custom ops (prepared inputs; no validation)
# --------------------------------------------------------------------------------------------


def _output_shape(planes: torch.Tensor, points: torch.Tensor, reduce_mean: bool) -> tuple:
    batch, n_planes, channels = planes.shape[0], planes.shape[1], planes.shape[-1]
    if reduce_mean:
        return (batch, points.shape[1], channels)
    return (batch, n_planes, points.shape[1], channels)


@torch.library.custom_op("portrait_engine::triplane_sample_triton_forward", mutates_args=())
def _triton_forward(
    planes: torch.Tensor,
    points: torch.Tensor,
    proj: torch.Tensor,
    trilinear: bool,
    reduce_mean: bool,
    nan_propagate: bool,
) -> torch.Tensor:
    from portrait_engine.kernels import triplane as kernels

    return kernels.triplane_forward(planes, points, proj, trilinear, reduce_mean, nan_propagate)


@torch.library.custom_op("portrait_engine::triplane_sample_triton_backward", mutates_args=())
def _triton_backward(
    grad_out: torch.Tensor,
    planes: torch.Tensor,
    points: torch.Tensor,
    proj: torch.Tensor,
    trilinear: bool,
    reduce_mean: bool,
    nan_propagate: bool,
    points_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    # points_grad=False allows zeros for the points' gradient; the Triton kernel computes it
    # anyway (in the same pass as the planes' gradient)
    from portrait_engine.kernels import triplane as kernels

    return kernels.triplane_backward(
        grad_out, planes, points, proj, trilinear, reduce_mean, nan_propagate
    )


def _fake_forward(planes, points, proj, trilinear, reduce_mean, nan_propagate):
    return planes.new_empty(_output_shape(planes, points, reduce_mean))


def _fake_backward(
    grad_out, planes, points, proj, trilinear, reduce_mean, nan_propagate, points_grad=True
):
    accumulation = accumulation_dtype(planes.dtype)
    return (
        planes.new_empty(planes.shape, dtype=accumulation),
        points.new_empty(points.shape, dtype=accumulation),
    )


def _setup_context(ctx, inputs, output):
    planes, points, proj, trilinear, reduce_mean, nan_propagate = inputs
    ctx.save_for_backward(planes, points, proj)
    ctx.flags = (trilinear, reduce_mean, nan_propagate)


def _make_autograd(backward_op):
    def backward(ctx, grad_out):
        planes, points, proj = ctx.saved_tensors
        # the points' gradient only when autograd asks for it (the native CPU kernel then
        # skips its gather pass; the result is None either way when it is not asked for)
        points_grad = ctx.needs_input_grad[1]
        grad_planes, grad_points = backward_op(
            grad_out.contiguous(), planes, points, proj, *ctx.flags, points_grad
        )
        return (
            grad_planes.to(planes.dtype),
            grad_points.to(points.dtype) if points_grad else None,
            None,
            None,
            None,
            None,
        )

    return backward


# --------------------------------------------------------------------------------------------
# Layout changes around the kernels: (B, P, C, *spatial) <-> (B, P, *spatial, C)
# --------------------------------------------------------------------------------------------


def _fake_to_channels_last(planes):
    return planes.new_empty(planes.movedim(2, -1).shape)


def _fake_from_channels_last(planes):
    return planes.new_empty(planes.movedim(-1, 2).shape)


def _register_layout_ops() -> bool:
    # csrc/triplane/layout.cpp: a blocked transpose on the CPU, ATen's movedim + contiguous
    # elsewhere; each op's gradient is the other op
    to_name, from_name = "planes_to_channels_last", "planes_from_channels_last"
    if not (_extension.has_op(to_name) and _extension.has_op(from_name)):
        return False
    to_op = getattr(torch.ops.portrait_engine, to_name)
    from_op = getattr(torch.ops.portrait_engine, from_name)
    torch.library.register_fake(f"portrait_engine::{to_name}")(_fake_to_channels_last)
    torch.library.register_fake(f"portrait_engine::{from_name}")(_fake_from_channels_last)
    no_context = lambda ctx, inputs, output: None  # noqa: E731 -- nothing to save
    torch.library.register_autograd(
        f"portrait_engine::{to_name}", lambda ctx, grad: from_op(grad), setup_context=no_context
    )
    torch.library.register_autograd(
        f"portrait_engine::{from_name}", lambda ctx, grad: to_op(grad), setup_context=no_context
    )
    return True


_LAYOUT_OPS = _register_layout_ops()


def planes_to_channels_last(grid: torch.Tensor) -> torch.Tensor:
    """``grid`` ``(B, P, C, *spatial)`` as a contiguous ``(B, P, *spatial, C)`` tensor, for the
    kernels: a view when its memory is already in that order (:func:`channels_last_planes`),
    else the extension's ``planes_to_channels_last`` (whose gradient, the CPU's blocked
    transpose back, is 3-4x faster than ATen's permuted copy: 0.74 vs 2.2 ms at 3 x 32 x 128^2
    floats on the 2-core machine, 2026-11-27), else ATen's permuted copy. Differentiable."""
    moved = grid.movedim(2, -1)
    if moved.is_contiguous():
        return moved
    if _LAYOUT_OPS:
        return torch.ops.portrait_engine.planes_to_channels_last(grid)
    return moved.contiguous()


_REGISTRATION = dict(
    fake_forward=_fake_forward,
    fake_backward=_fake_backward,
    setup_context=_setup_context,
    make_backward=_make_autograd,
)
register_pair("triplane_sample_triton_forward", "triplane_sample_triton_backward", **_REGISTRATION)
_NATIVE_REGISTERED = register_native_pair(
    "triplane_sample_forward", "triplane_sample_backward", **_REGISTRATION
)


# --------------------------------------------------------------------------------------------
# The public op
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _named_projection_values(plane_axes: str, box_warp: float) -> tuple:
    inverse = torch.linalg.inv(torch.tensor(NAMED_PLANE_AXES[plane_axes], dtype=torch.float64))
    return tuple(tuple(tuple(x) for x in m) for m in (inverse * (2.0 / box_warp)).tolist())


@torch.compiler.assume_constant_result
def _named_projection(plane_axes: str, box_warp: float) -> tuple:
    """``inverse(axes) * 2 / box_warp`` of a named convention, as nested Python floats.

    Plain numbers, so ``torch.compile`` folds them into the graph as a constant; computed once
    per (convention, box_warp) (the cache sits under this function: dynamo would trace into
    an ``lru_cache`` wrapper instead of calling it).
    """
    return _named_projection_values(plane_axes, box_warp)


@functools.lru_cache(maxsize=64)
def _cached_named_projection(
    plane_axes: str, box_warp: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The projection tensor of a named convention, made once per (convention, box_warp,
    device, dtype) in eager mode: a renderer calls ``triplane_sample`` per chunk and pass, and
    building the tensor (a host-to-device copy on a GPU) cost more than the small sampling
    calls. Read-only: the kernels never write it. Made outside inference mode, since the
    autograd formula saves it for the backward."""
    with torch.inference_mode(False):
        return torch.tensor(_named_projection(plane_axes, box_warp), dtype=dtype, device=device)


def _projection(
    plane_axes: str | torch.Tensor, box_warp: float, planes: torch.Tensor
) -> torch.Tensor:
    """The ``(P, 3, 3)`` projection the kernels apply: ``inverse(axes) * 2 / box_warp``.

    Built in the accumulation dtype on the planes' device.
    """
    dtype = accumulation_dtype(planes.dtype)
    n_planes = planes.shape[1]
    if isinstance(plane_axes, str):
        v.check_choice("plane_axes", plane_axes, tuple(NAMED_PLANE_AXES))
        if n_planes != 3:
            raise ValueError(
                f"planes must hold 3 planes for plane_axes={plane_axes!r}, "
                f"got {n_planes} (planes shape {tuple(planes.shape)})"
            )
        if torch.compiler.is_compiling():  # a constant of the graph
            return torch.tensor(
                _named_projection(plane_axes, float(box_warp)), dtype=dtype, device=planes.device
            )
        return _cached_named_projection(plane_axes, float(box_warp), planes.device, dtype)
    if not isinstance(plane_axes, torch.Tensor):
        raise TypeError(
            "plane_axes must be 'eg3d', 'panohead' or a (P, 3, 3) tensor, "
            f"got {type(plane_axes).__name__}"
        )
    v.check_float("plane_axes", plane_axes)
    if plane_axes.shape != (n_planes, 3, 3):
        raise ValueError(
            f"plane_axes must have shape ({n_planes}, 3, 3) to match planes, "
            f"got {tuple(plane_axes.shape)}"
        )
    axes = plane_axes.detach().to(torch.float64)
    if not torch.compiler.is_compiling():
        # checked eagerly only: reading the result back is a device sync and a graph break
        if bool((torch.linalg.inv_ex(axes.cpu())[1] != 0).any()):
            raise ValueError(f"plane_axes must hold invertible 3x3 matrices, got {axes.tolist()}")
    proj = torch.linalg.inv(axes) * (2.0 / box_warp)
    return proj.to(device=planes.device, dtype=dtype).contiguous()


def _validate(planes, points, box_warp, plane_axes, reduce):
    v.check_tensor("planes", planes)
    v.check_tensor("points", points)
    v.check_rank("planes", planes, (5, 6), "(B, P, C, H, W) or (B, P, C, D, H, W)")
    v.check_rank("points", points, (3,), "(B, N, 3)")
    if points.shape[-1] != 3:
        raise ValueError(f"points must have shape (B, N, 3), got {tuple(points.shape)}")
    if planes.shape[0] != points.shape[0]:
        raise ValueError(
            f"planes and points must have the same batch size, got planes "
            f"{tuple(planes.shape)} (B={planes.shape[0]}) and points {tuple(points.shape)} "
            f"(B={points.shape[0]})"
        )
    if any(size == 0 for size in planes.shape[1:]):
        raise ValueError(
            f"planes must have non-empty plane, channel and spatial dimensions, "
            f"got {tuple(planes.shape)}"
        )
    v.check_float("planes", planes)
    v.check_float("points", points)
    v.check_same_device(("planes", "points"), planes, points)
    v.check_same_dtype(("planes", "points"), planes, points)
    v.check_positive_number("box_warp", box_warp)
    v.check_choice("reduce", reduce, REDUCTIONS)


def channels_last_planes(planes: torch.Tensor) -> torch.Tensor:
    """The same planes (shape, values, gradients) stored channels-last in memory.

    The kernel backends read the planes as ``(B, P, [D,] H, W, C)`` rows of channels and copy
    ``(B, P, C, [D,] H, W)`` planes into that order on every call (and autograd copies the
    gradient back). A caller that samples the same planes several times (the renderer's coarse
    and fine passes) converts them once with this function: each call then finds the layout
    already in place and copies nothing, and the gradients of all calls are summed before one
    copy back. Any ``(B, P, C, H, W)`` or ``(B, P, C, D, H, W)`` tensor; a view of a
    contiguous copy, differentiable.
    """
    if planes.dim() in (5, 6):
        return planes_to_channels_last(planes).movedim(-1, 2)
    raise ValueError(
        f"planes must have shape (B, P, C, H, W) or (B, P, C, D, H, W), got {tuple(planes.shape)}"
    )


def triplane_sample(
    planes: torch.Tensor,
    points: torch.Tensor,
    *,
    box_warp: float = 1.0,
    plane_axes: str | torch.Tensor = "eg3d",
    reduce: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Sample tri-plane or tri-grid features at 3-D points (EG3D's ``sample_from_planes``).

    Args:
        planes: ``(B, P, C, H, W)`` tri-plane (bilinear) or ``(B, P, C, D, H, W)`` tri-grid
            (trilinear; PanoHead / 3DPortraitGAN). P is 3 for the named axis conventions.
        points: ``(B, N, 3)`` world coordinates, same dtype and device as ``planes``.
        box_warp: side length of the cube mapped onto the planes' ``[-1, 1]`` range; points
            are scaled by ``2 / box_warp``.
        plane_axes: ``"eg3d"`` (planes at (x, y), (x, z), (z, x): EG3D's released code),
            ``"panohead"`` (PanoHead's tri-grid axes; the third projected coordinate indexes
            D), or a ``(P, 3, 3)`` tensor of axis matrices, each point projected by its inverse.
        reduce: ``"mean"`` averages the planes -> ``(B, N, C)``; ``"none"`` -> ``(B, P, N, C)``.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``; ``None`` uses the
            backend in force (:func:`portrait_engine.use_backend`).

    Sampling is ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``;
    fp16 / bf16 inputs accumulate in fp32 and return their own dtype. Gradients flow to
    ``planes`` and ``points``. A non-finite point gives what ``grid_sample`` gives on that
    device: NaN features for a tri-plane on the CPU, zeros otherwise.
    """
    _validate(planes, points, box_warp, plane_axes, reduce)
    proj = _projection(plane_axes, box_warp, planes)
    name = _backend.resolve(backend, planes.device, "triplane_sample_forward")
    if name == "torch":
        return triplane_sample_reference(
            planes, points, box_warp=box_warp, plane_axes=plane_axes, reduce=reduce
        )

    trilinear = planes.dim() == 6
    reduce_mean = reduce == "mean"
    # The CPU grid_sample 2-D kernel turns a non-finite coordinate into NaN; its 3-D kernel and
    # the CUDA kernels give zeros. Match whichever the reference would run.
    nan_propagate = planes.device.type == "cpu" and not trilinear
    grid = planes if trilinear else planes.unsqueeze(3)
    channels_last = planes_to_channels_last(grid)
    points = points.contiguous()
    if name == "triton":
        op = torch.ops.portrait_engine.triplane_sample_triton_forward
    else:
        op = torch.ops.portrait_engine.triplane_sample_forward
    return eager(op)(channels_last, points, proj, trilinear, reduce_mean, nan_propagate)
