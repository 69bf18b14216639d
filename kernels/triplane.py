"""Triton kernels of tri-plane / tri-grid feature sampling (``portrait_engine.ops.triplane``).

What they compute (the contract is ``docs/kernel_contract_triplane.md``): EG3D's
``sample_from_planes`` -- every 3-D point is projected onto each of P planes and the plane is
sampled bilinearly -- and PanoHead's tri-grid, where each "plane" has a depth D and is sampled
trilinearly. Sampling is exactly ``grid_sample(mode="bilinear", padding_mode="zeros",
align_corners=False)``; the planes are then averaged (``reduce_mean``) or returned per plane.
The backward kernel gives the gradients w.r.t. the planes (scatter-add) and the points
(through the projection's transpose).

Design:

* One program owns ``BLOCK_N`` points of one batch element and *all* channels
  (``BLOCK_C`` = next power of two >= C, masked). Planes are channels-last
  ``(B, P, D, H, W, C)``, so each corner fetch is one contiguous run of C values per point: a
  ``(BLOCK_N, BLOCK_C)`` gather whose rows are coalesced, instead of C strided reads. When
  C is a power of two (``EVEN_C``) the channel mask is a compile-time constant, so the
  gathers and the backward atomics compile to vector instructions.
* The coordinate math (projection, unnormalisation, floor, weights, bounds) is done once per
  point and plane on ``(BLOCK_N,)`` vectors and shared by all channels; the P planes are
  unrolled (``tl.static_range``) so the mean is a register accumulation, not a second pass.
* Bilinear and trilinear share one code path: the per-axis helpers below are applied to x, y
  (and z), and the corner loop simply has one z layer for a tri-plane.
* Bounds are tested on the floating-point corner index before the integer conversion, so a
  huge, infinite or NaN coordinate (NaN compares false) can never form an out-of-range address.
* Everything is accumulated in fp32 whatever the storage dtype; index math is int64 (N up to
  ~1e7 points times 128 channels overflows int32), strides are passed in and widened to int64.
* Backward scatters ``weight * grad`` into an fp32 ``grad_planes`` with ``tl.atomic_add``
  (points of different programs hit the same texels), and reduces over channels with
  ``tl.sum(axis=1)`` for the point gradient, which each program owns and writes exactly once.
* Launchers pick one block configuration per mode: large blocks under the interpreter
  (``TRITON_INTERPRET=1``, whose cost is per program instance), GPU-sized blocks otherwise.
  No autotuning: multi-config autotuning does not run under the interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from portrait_engine.kernels._alloc import empty_output
from portrait_engine.kernels._launch import device_guard as _device_guard
from portrait_engine.kernels._launch import interpreting as _interpreting

# Largest finite float32: |x| <= this is false exactly for NaN and +-inf.
_FLT_MAX = tl.constexpr(3.4028234663852886e38)


# --------------------------------------------------------------------------------------------
# Per-axis helpers (shared by bilinear and trilinear, forward and backward)
# --------------------------------------------------------------------------------------------


@triton.jit
def _axis_setup(g, size):
    """Unnormalise a [-1, 1] coordinate onto an axis of ``size`` texels (align_corners=False).

    Returns the floor of the texel coordinate, the fractional part, the size as fp32 and
    whether the texel coordinate is finite.
    """
    size_f = tl.cast(size, tl.float32)
    # same operation order as ATen's grid_sampler_unnormalize, so texel borders land exactly
    i = ((g + 1.0) * size_f - 1.0) * 0.5
    i0 = tl.floor(i)
    t = i - i0
    finite = tl.abs(i) <= _FLT_MAX
    return i0, t, size_f, finite


@triton.jit
def _axis_corner(i0, t, size_f, d: tl.constexpr):
    """Index, weight and in-bounds flag of corner ``d`` (0: floor, 1: floor + 1) of one axis."""
    i = i0 + d
    inside = (i >= 0.0) & (i <= size_f - 1.0)
    # out-of-bounds (and NaN) indices are replaced before the int conversion: no wild address
    index = tl.where(inside, i, 0.0).to(tl.int64)
    if d == 0:
        w = 1.0 - t
    else:
        w = t
    return index, w, inside


@triton.jit
def _project(px, py, pz, proj_ptr, p: tl.constexpr, s_pj_p, s_pj_j, s_pj_k, k: tl.constexpr):
    """Coordinate ``k`` of the points on plane ``p``: ``sum_j x[j] * proj[p, j, k]`` in fp32."""
    # scalar loads of a (P, 3, 3) tensor whose P is the kernel's constexpr: always in range
    base = proj_ptr + p * s_pj_p + k * s_pj_k
    m0 = tl.load(base).to(tl.float32)
    m1 = tl.load(base + s_pj_j).to(tl.float32)
    m2 = tl.load(base + 2 * s_pj_j).to(tl.float32)
    return px * m0 + py * m1 + pz * m2


@triton.jit
def _load_points(points_ptr, b, offs_n, mask_n, s_pt_b, s_pt_n, s_pt_j):
    row = points_ptr + b * s_pt_b + offs_n * s_pt_n
    px = tl.load(row, mask=mask_n, other=0.0).to(tl.float32)
    py = tl.load(row + s_pt_j, mask=mask_n, other=0.0).to(tl.float32)
    pz = tl.load(row + 2 * s_pt_j, mask=mask_n, other=0.0).to(tl.float32)
    return px, py, pz


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@triton.jit
def _triplane_forward_kernel(
    planes_ptr,
    points_ptr,
    proj_ptr,
    out_ptr,
    N,
    C,
    D,
    H,
    W,
    s_pl_b,
    s_pl_p,
    s_pl_d,
    s_pl_h,
    s_pl_w,
    s_pl_c,
    s_pt_b,
    s_pt_n,
    s_pt_j,
    s_pj_p,
    s_pj_j,
    s_pj_k,
    s_o_b,
    s_o_p,
    s_o_n,
    s_o_c,
    P: tl.constexpr,
    trilinear: tl.constexpr,
    reduce_mean: tl.constexpr,
    nan_propagate: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
):
    pid_n = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    n_points = tl.cast(N, tl.int64)
    n_channels = tl.cast(C, tl.int64)
    # widened once: products with a plane index or a large row index must not wrap in int32
    s_pl_b = tl.cast(s_pl_b, tl.int64)
    s_pl_p = tl.cast(s_pl_p, tl.int64)
    s_pl_d = tl.cast(s_pl_d, tl.int64)
    s_pl_h = tl.cast(s_pl_h, tl.int64)
    s_pl_w = tl.cast(s_pl_w, tl.int64)
    s_pl_c = tl.cast(s_pl_c, tl.int64)
    s_pt_b = tl.cast(s_pt_b, tl.int64)
    s_pt_n = tl.cast(s_pt_n, tl.int64)
    s_pt_j = tl.cast(s_pt_j, tl.int64)
    s_o_b = tl.cast(s_o_b, tl.int64)
    s_o_p = tl.cast(s_o_p, tl.int64)
    s_o_n = tl.cast(s_o_n, tl.int64)
    s_o_c = tl.cast(s_o_c, tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask_n = offs_n < n_points
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    if EVEN_C:
        # a compile-time all-true channel mask keeps the gathers vectorisable (a runtime
        # mask varies along the contiguous axis, which forbids vector loads)
        mask_c = tl.full((BLOCK_C,), 1, tl.int1)
    else:
        mask_c = offs_c < n_channels
    mask_nc = mask_n[:, None] & mask_c[None, :]
    col_pl = (offs_c * s_pl_c)[None, :]
    out_rows = out_ptr + b * s_o_b + (offs_n * s_o_n)[:, None] + (offs_c * s_o_c)[None, :]

    px, py, pz = _load_points(points_ptr, b, offs_n, mask_n, s_pt_b, s_pt_n, s_pt_j)

    total = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for p in tl.static_range(P):
        gx = _project(px, py, pz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, 0)
        gy = _project(px, py, pz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, 1)
        x0, tx, w_f, finite_x = _axis_setup(gx, W)
        y0, ty, h_f, finite_y = _axis_setup(gy, H)
        finite = finite_x & finite_y
        if trilinear:
            gz = _project(px, py, pz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, 2)
            z0, tz, d_f, finite_z = _axis_setup(gz, D)
            finite = finite & finite_z
        plane_ptr = planes_ptr + b * s_pl_b + p * s_pl_p

        sample = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        for dz in tl.static_range(1 + trilinear):
            if trilinear:
                zi, wz, ok_z = _axis_corner(z0, tz, d_f, dz)
                z_off = zi * s_pl_d
            for dy in tl.static_range(2):
                yi, wy, ok_y = _axis_corner(y0, ty, h_f, dy)
                for dx in tl.static_range(2):
                    xi, wx, ok_x = _axis_corner(x0, tx, w_f, dx)
                    row = yi * s_pl_h + xi * s_pl_w
                    w = wx * wy
                    ok = ok_x & ok_y & mask_n
                    if trilinear:
                        row += z_off
                        w = w * wz
                        ok = ok & ok_z
                    # a NaN weight (non-finite coordinate) must not poison the sum: 0 * NaN
                    w = tl.where(ok, w, 0.0)
                    v = tl.load(
                        plane_ptr + row[:, None] + col_pl,
                        mask=ok[:, None] & mask_c[None, :],
                        other=0.0,
                    ).to(tl.float32)
                    sample += w[:, None] * v
        if nan_propagate:
            sample = tl.where(finite[:, None], sample, float("nan"))

        if reduce_mean:
            total += sample
        else:
            tl.store(out_rows + p * s_o_p, sample.to(out_ptr.dtype.element_ty), mask=mask_nc)

    if reduce_mean:
        tl.store(out_rows, (total * (1.0 / P)).to(out_ptr.dtype.element_ty), mask=mask_nc)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


@triton.jit
def _triplane_backward_kernel(
    grad_out_ptr,
    planes_ptr,
    points_ptr,
    proj_ptr,
    grad_planes_ptr,
    grad_points_ptr,
    N,
    C,
    D,
    H,
    W,
    s_go_b,
    s_go_p,
    s_go_n,
    s_go_c,
    s_pl_b,
    s_pl_p,
    s_pl_d,
    s_pl_h,
    s_pl_w,
    s_pl_c,
    s_gpl_b,
    s_gpl_p,
    s_gpl_d,
    s_gpl_h,
    s_gpl_w,
    s_gpl_c,
    s_pt_b,
    s_pt_n,
    s_pt_j,
    s_gpt_b,
    s_gpt_n,
    s_gpt_j,
    s_pj_p,
    s_pj_j,
    s_pj_k,
    P: tl.constexpr,
    trilinear: tl.constexpr,
    reduce_mean: tl.constexpr,
    nan_propagate: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
):
    pid_n = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    n_points = tl.cast(N, tl.int64)
    n_channels = tl.cast(C, tl.int64)
    s_go_b = tl.cast(s_go_b, tl.int64)
    s_go_p = tl.cast(s_go_p, tl.int64)
    s_go_n = tl.cast(s_go_n, tl.int64)
    s_go_c = tl.cast(s_go_c, tl.int64)
    s_pl_b = tl.cast(s_pl_b, tl.int64)
    s_pl_p = tl.cast(s_pl_p, tl.int64)
    s_pl_d = tl.cast(s_pl_d, tl.int64)
    s_pl_h = tl.cast(s_pl_h, tl.int64)
    s_pl_w = tl.cast(s_pl_w, tl.int64)
    s_pl_c = tl.cast(s_pl_c, tl.int64)
    s_gpl_b = tl.cast(s_gpl_b, tl.int64)
    s_gpl_p = tl.cast(s_gpl_p, tl.int64)
    s_gpl_d = tl.cast(s_gpl_d, tl.int64)
    s_gpl_h = tl.cast(s_gpl_h, tl.int64)
    s_gpl_w = tl.cast(s_gpl_w, tl.int64)
    s_gpl_c = tl.cast(s_gpl_c, tl.int64)
    s_pt_b = tl.cast(s_pt_b, tl.int64)
    s_pt_n = tl.cast(s_pt_n, tl.int64)
    s_pt_j = tl.cast(s_pt_j, tl.int64)
    s_gpt_b = tl.cast(s_gpt_b, tl.int64)
    s_gpt_n = tl.cast(s_gpt_n, tl.int64)
    s_gpt_j = tl.cast(s_gpt_j, tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask_n = offs_n < n_points
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    if EVEN_C:
        # a compile-time all-true channel mask keeps the gathers vectorisable (a runtime
        # mask varies along the contiguous axis, which forbids vector loads)
        mask_c = tl.full((BLOCK_C,), 1, tl.int1)
    else:
        mask_c = offs_c < n_channels
    mask_nc = mask_n[:, None] & mask_c[None, :]
    col_pl = (offs_c * s_pl_c)[None, :]
    col_gpl = (offs_c * s_gpl_c)[None, :]
    go_rows = grad_out_ptr + b * s_go_b + (offs_n * s_go_n)[:, None] + (offs_c * s_go_c)[None, :]

    px, py, pz = _load_points(points_ptr, b, offs_n, mask_n, s_pt_b, s_pt_n, s_pt_j)

    if reduce_mean:
        # every plane sees the same upstream gradient: load it once
        g_mean = tl.load(go_rows, mask=mask_nc, other=0.0).to(tl.float32) / P

    grad_px = tl.zeros((BLOCK_N,), dtype=tl.float32)
    grad_py = tl.zeros((BLOCK_N,), dtype=tl.float32)
    grad_pz = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for p in tl.static_range(P):
        if reduce_mean:
            g = g_mean
        else:
            g = tl.load(go_rows + p * s_go_p, mask=mask_nc, other=0.0).to(tl.float32)

        gx = _project(px, py, pz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, 0)
        gy = _project(px, py, pz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, 1)
        x0, tx, w_f, finite_x = _axis_setup(gx, W)
        y0, ty, h_f, finite_y = _axis_setup(gy, H)
        finite = finite_x & finite_y
        if trilinear:
            gz = _project(px, py, pz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, 2)
            z0, tz, d_f, finite_z = _axis_setup(gz, D)
            finite = finite & finite_z
        plane_ptr = planes_ptr + b * s_pl_b + p * s_pl_p
        gplane_ptr = grad_planes_ptr + b * s_gpl_b + p * s_gpl_p

        # dL/d(texel coordinate) per axis, summed over corners
        d_ix = tl.zeros((BLOCK_N,), dtype=tl.float32)
        d_iy = tl.zeros((BLOCK_N,), dtype=tl.float32)
        d_iz = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for dz in tl.static_range(1 + trilinear):
            if trilinear:
                zi, wz, ok_z = _axis_corner(z0, tz, d_f, dz)
                z_off = zi * s_pl_d
                gz_off = zi * s_gpl_d
            for dy in tl.static_range(2):
                yi, wy, ok_y = _axis_corner(y0, ty, h_f, dy)
                for dx in tl.static_range(2):
                    xi, wx, ok_x = _axis_corner(x0, tx, w_f, dx)
                    row = yi * s_pl_h + xi * s_pl_w
                    grow = yi * s_gpl_h + xi * s_gpl_w
                    ok = ok_x & ok_y & mask_n
                    if trilinear:
                        row += z_off
                        grow += gz_off
                        ok = ok & ok_z
                    mask = ok[:, None] & mask_c[None, :]
                    # d weight / d index is -1 for the floor corner, +1 for floor + 1
                    sx = dx * 2.0 - 1.0
                    sy = dy * 2.0 - 1.0
                    if trilinear:
                        w = wx * wy * wz
                        dwx = sx * wy * wz
                        dwy = wx * sy * wz
                        dwz = wx * wy * (dz * 2.0 - 1.0)
                    else:
                        w = wx * wy
                        dwx = sx * wy
                        dwy = wx * sy
                    # NaN weights of out-of-bounds corners must not leak into sums (0 * NaN)
                    w = tl.where(ok, w, 0.0)
                    tl.atomic_add(
                        gplane_ptr + grow[:, None] + col_gpl,
                        w[:, None] * g,
                        mask=mask,
                        sem="relaxed",
                    )
                    v = tl.load(plane_ptr + row[:, None] + col_pl, mask=mask, other=0.0)
                    gv = tl.sum(g * v.to(tl.float32), axis=1)
                    d_ix += tl.where(ok, gv * dwx, 0.0)
                    d_iy += tl.where(ok, gv * dwy, 0.0)
                    if trilinear:
                        d_iz += tl.where(ok, gv * dwz, 0.0)

        # chain rule through the unnormalisation: d index / d coordinate = size / 2
        d_gx = d_ix * (w_f * 0.5)
        d_gy = d_iy * (h_f * 0.5)
        if nan_propagate:
            d_gx = tl.where(finite, d_gx, float("nan"))
            d_gy = tl.where(finite, d_gy, float("nan"))
        if trilinear:
            d_gz = d_iz * (d_f * 0.5)
            if nan_propagate:
                d_gz = tl.where(finite, d_gz, float("nan"))
        for j in tl.static_range(3):
            base = proj_ptr + p * s_pj_p + j * s_pj_j
            m0 = tl.load(base).to(tl.float32)
            m1 = tl.load(base + s_pj_k).to(tl.float32)
            contrib = d_gx * m0 + d_gy * m1
            if trilinear:
                m2 = tl.load(base + 2 * s_pj_k).to(tl.float32)
                contrib += d_gz * m2
            if j == 0:
                grad_px += contrib
            elif j == 1:
                grad_py += contrib
            else:
                grad_pz += contrib

    gpt = grad_points_ptr + b * s_gpt_b + offs_n * s_gpt_n
    tl.store(gpt, grad_px, mask=mask_n)
    tl.store(gpt + s_gpt_j, grad_py, mask=mask_n)
    tl.store(gpt + 2 * s_gpt_j, grad_pz, mask=mask_n)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _blocks(n_points: int, channels: int, backward: bool) -> tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_C, num_warps)`` for one launch (one fixed configuration per mode)."""
    block_c = triton.next_power_of_2(max(channels, 1))
    if _interpreting():
        # the interpreter's cost is per program instance (numpy does a tile in one call):
        # few, large programs; the cap keeps a tile's numpy temporaries small
        block_n = min(triton.next_power_of_2(max(n_points, 1)), max(16, 65536 // block_c))
        return max(block_n, 16), block_c, 4
    # GPU (sizes checked with ptxas for sm_90: no spills, <= ~200 registers, trilinear): the
    # unrolled corners keep several gathers in flight per thread, so tiles stay modest.
    # Uneven C gathers element by element (no vector loads) and needs more registers than a
    # power-of-two C; backward also holds the upstream-gradient tile and the atomics.
    even = block_c == channels
    if backward:
        block_n = max(4, min(64, 512 // block_c))
    else:
        block_n = max(8, min(128, (2048 if even else 1024) // block_c))
    return block_n, block_c, 4


def triplane_forward(
    planes: torch.Tensor,
    points: torch.Tensor,
    proj: torch.Tensor,
    trilinear: bool,
    reduce_mean: bool,
    nan_propagate: bool,
) -> torch.Tensor:
    """Sampled features: ``(B, N, C)`` when ``reduce_mean`` else ``(B, P, N, C)``, planes' dtype.

    ``planes`` ``(B, P, D, H, W, C)`` channels-last, ``points`` ``(B, N, 3)``, ``proj``
    ``(P, 3, 3)`` float32 (see ``docs/kernel_contract_triplane.md``).
    """
    batch, n_planes, depth, height, width, channels = planes.shape
    n_points = points.shape[1]
    if reduce_mean:
        out = empty_output((batch, n_points, channels), dtype=planes.dtype, device=planes.device)
        s_o_b, s_o_n, s_o_c = out.stride()
        s_o_p = 0
    else:
        out = empty_output(
            (batch, n_planes, n_points, channels), dtype=planes.dtype, device=planes.device
        )
        s_o_b, s_o_p, s_o_n, s_o_c = out.stride()
    if out.numel() == 0:
        return out

    block_n, block_c, num_warps = _blocks(n_points, channels, backward=False)
    grid = (triton.cdiv(n_points, block_n), batch)
    with _device_guard(planes):
        _triplane_forward_kernel[grid](
            planes,
            points,
            proj,
            out,
            n_points,
            channels,
            depth,
            height,
            width,
            *planes.stride(),
            *points.stride(),
            *proj.stride(),
            s_o_b,
            s_o_p,
            s_o_n,
            s_o_c,
            P=n_planes,
            trilinear=bool(trilinear),
            reduce_mean=bool(reduce_mean),
            nan_propagate=bool(nan_propagate),
            BLOCK_N=block_n,
            BLOCK_C=block_c,
            EVEN_C=block_c == channels,
            num_warps=num_warps,
        )
    return out


def triplane_backward(
    grad_out: torch.Tensor,
    planes: torch.Tensor,
    points: torch.Tensor,
    proj: torch.Tensor,
    trilinear: bool,
    reduce_mean: bool,
    nan_propagate: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_planes, grad_points)`` in float32, shaped like ``planes`` and ``points``."""
    batch, n_planes, depth, height, width, channels = planes.shape
    n_points = points.shape[1]
    # scatter-added from many programs: must start from zero
    grad_planes = torch.zeros(planes.shape, dtype=torch.float32, device=planes.device)
    # written in full by the kernel (every point, all three coordinates)
    grad_points = empty_output(points.shape, dtype=torch.float32, device=points.device)
    if grad_points.numel() == 0 or grad_planes.numel() == 0:
        return grad_planes, grad_points.zero_()

    if reduce_mean:
        s_go_b, s_go_n, s_go_c = grad_out.stride()
        s_go_p = 0
    else:
        s_go_b, s_go_p, s_go_n, s_go_c = grad_out.stride()

    block_n, block_c, num_warps = _blocks(n_points, channels, backward=True)
    grid = (triton.cdiv(n_points, block_n), batch)
    with _device_guard(planes):
        _triplane_backward_kernel[grid](
            grad_out,
            planes,
            points,
            proj,
            grad_planes,
            grad_points,
            n_points,
            channels,
            depth,
            height,
            width,
            s_go_b,
            s_go_p,
            s_go_n,
            s_go_c,
            *planes.stride(),
            *grad_planes.stride(),
            *points.stride(),
            *grad_points.stride(),
            *proj.stride(),
            P=n_planes,
            trilinear=bool(trilinear),
            reduce_mean=bool(reduce_mean),
            nan_propagate=bool(nan_propagate),
            BLOCK_N=block_n,
            BLOCK_C=block_c,
            EVEN_C=block_c == channels,
            num_warps=num_warps,
        )
    return grad_planes, grad_points
