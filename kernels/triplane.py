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
  (and z), and the corner loop simply has 4 corners instead of 8 for a tri-plane.
* The per-plane work (``_plane_texels``, ``_gather_corners``, ``_scatter_corners``,
  ``_project_backward``) is shared with the fused renderer (``kernels/render.py``), so both
  sample the planes with one piece of code. Plain ``@triton.jit`` helpers are inlined.
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
def _project(px, py, pz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, k: tl.constexpr):
    """Coordinate ``k`` of the points on plane ``p``: ``sum_j x[j] * proj[p, j, k]`` in fp32.

    ``p`` is a constexpr here (unrolled planes) and a runtime index in ``kernels/render.py``
    (which passes the strides of a contiguous projection, 9, 3, 1, as constants).
    """
    # scalar loads of a (P, 3, 3) tensor at a plane index below P: always in range
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
# Per-plane helpers: texel coordinates and the corner loops (shared with kernels/render.py)
# --------------------------------------------------------------------------------------------
# Plain @triton.jit functions are inlined into their caller (no noinline), so sharing them costs
# no call and no registers beyond the caller's own.


@triton.jit
def _plane_texels(
    px, py, pz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, D, H, W, TRILINEAR: tl.constexpr
):
    """Project the points onto plane ``p`` and unnormalise. Returns the texels, the tuple
    ``(x0, tx, w_f, y0, ty, h_f, z0, tz, d_f)`` of each axis's floor texel, fraction and size
    (``_axis_setup``) that the corner helpers take, and whether every coordinate is finite.

    A tri-plane has no depth axis: its z entries are placeholders (the x axis's) that the
    corner helpers never read when ``TRILINEAR`` is false.
    """
    gx = _project(px, py, pz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, 0)
    gy = _project(px, py, pz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, 1)
    x0, tx, w_f, finite_x = _axis_setup(gx, W)
    y0, ty, h_f, finite_y = _axis_setup(gy, H)
    finite = finite_x & finite_y
    if TRILINEAR:
        gz = _project(px, py, pz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, 2)
        z0, tz, d_f, finite_z = _axis_setup(gz, D)
        finite = finite & finite_z
    else:
        z0 = x0
        tz = tx
        d_f = w_f
    return (x0, tx, w_f, y0, ty, h_f, z0, tz, d_f), finite


@triton.jit
def _corner(texels, corner: tl.constexpr, mask_n, TRILINEAR: tl.constexpr):
    """Corner ``corner`` of each point's cell (bit 0: x floor + 1, bit 1: y, bit 2: z): the
    texel indices, the per-axis weights, and whether it is in bounds for a real point.

    ``texels``: ``_plane_texels``'s. A tri-plane has corners 0-3 only; its z index and weight
    are placeholders (the x axis's) that the callers never read.
    """
    x0, tx, w_f, y0, ty, h_f, z0, tz, d_f = texels
    xi, wx, ok_x = _axis_corner(x0, tx, w_f, corner % 2)
    yi, wy, ok_y = _axis_corner(y0, ty, h_f, corner // 2 % 2)
    ok = ok_x & ok_y & mask_n
    if TRILINEAR:
        zi, wz, ok_z = _axis_corner(z0, tz, d_f, corner // 4)
        ok = ok & ok_z
    else:
        zi = xi
        wz = wx
    return xi, yi, zi, wx, wy, wz, ok


@triton.jit
def _texel_offset(xi, yi, zi, strides, TRILINEAR: tl.constexpr):
    """Element offset of texel ``(zi, yi, xi)`` in a plane with ``(depth, height, width)``
    ``strides``."""
    s_d, s_h, s_w = strides
    offset = yi * s_h + xi * s_w
    if TRILINEAR:
        offset += zi * s_d
    return offset


@triton.jit
def _gather_corners(acc, plane_ptr, col, texels, strides, mask_n, mask_c, TRILINEAR: tl.constexpr):
    """``acc`` plus the bilinear (trilinear) sample of one plane, corner by corner: ``(N, C)``.

    ``plane_ptr``: the plane's base, a scalar or one per point as a column (``(N, 1)``);
    ``col``: the channel offsets ``(C,)``; ``texels``: ``_plane_texels``'s; ``strides``: the
    plane's ``(depth, height, width)`` strides in elements. Out-of-bounds corners (and all
    corners of a non-finite point) add nothing.
    """
    for corner in tl.static_range(4 + 4 * TRILINEAR):
        xi, yi, zi, wx, wy, wz, ok = _corner(texels, corner, mask_n, TRILINEAR)
        w = wx * wy
        if TRILINEAR:
            w = w * wz
        row = _texel_offset(xi, yi, zi, strides, TRILINEAR)
        ok2 = ok[:, None] & mask_c[None, :]
        v = tl.load(plane_ptr + row[:, None] + col[None, :], mask=ok2, other=0.0).to(tl.float32)
        # a NaN weight (non-finite coordinate) must not poison the sum: 0 * NaN. The select
        # is on the (N, C) tile: Triton 3.6's layout pass rejected the (N,) select here in the
        # fused render kernels (tri-grid, BLOCK_R = 16; 'arith.select' shape mismatch)
        acc += tl.where(ok2, w[:, None] * v, 0.0)
    return acc


@triton.jit
def _scatter_corners(
    g,
    plane_ptr,
    grad_plane_ptr,
    col,
    gcol,
    texels,
    strides,
    grad_strides,
    mask_n,
    mask_c,
    TRILINEAR: tl.constexpr,
    ATOMIC_PLANES: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Backward of ``_gather_corners`` for the gradient ``g`` ``(N, C)`` of one plane's sample.

    Adds ``weight * g`` into the plane's gradient with atomics (when ``ATOMIC_PLANES``; else
    the caller scatters the plane gradients itself) and returns the gradient of the points'
    [-1, 1] coordinates on the plane, ``(d/dgx, d/dgy, d/dgz)``, each ``(N,)`` (the z one is
    zero for a tri-plane). Arguments as in ``_gather_corners``; ``grad_plane_ptr``, ``gcol``
    and ``grad_strides`` address the gradient planes.
    """
    x_size, y_size, z_size = texels[2], texels[5], texels[8]
    # dL/d(texel coordinate) per axis, summed over the corners
    d_ix = tl.zeros((BLOCK_N,), dtype=tl.float32)
    d_iy = tl.zeros((BLOCK_N,), dtype=tl.float32)
    d_iz = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for corner in tl.static_range(4 + 4 * TRILINEAR):
        xi, yi, zi, wx, wy, wz, ok = _corner(texels, corner, mask_n, TRILINEAR)
        # d weight / d index is -1 for the floor corner, +1 for floor + 1
        sx = (corner % 2) * 2.0 - 1.0
        sy = (corner // 2 % 2) * 2.0 - 1.0
        if TRILINEAR:
            w = wx * wy * wz
            dwx = sx * wy * wz
            dwy = wx * sy * wz
            dwz = wx * wy * ((corner // 4) * 2.0 - 1.0)
        else:
            w = wx * wy
            dwx = sx * wy
            dwy = wx * sy
        mask = ok[:, None] & mask_c[None, :]
        # NaN weights of out-of-bounds corners must not leak into sums (0 * NaN)
        w = tl.where(ok, w, 0.0)
        if ATOMIC_PLANES:
            grow = _texel_offset(xi, yi, zi, grad_strides, TRILINEAR)
            tl.atomic_add(
                grad_plane_ptr + grow[:, None] + gcol[None, :],
                w[:, None] * g,
                mask=mask,
                sem="relaxed",
            )
        row = _texel_offset(xi, yi, zi, strides, TRILINEAR)
        v = tl.load(plane_ptr + row[:, None] + col[None, :], mask=mask, other=0.0)
        gv = tl.sum(g * v.to(tl.float32), axis=1)
        d_ix += tl.where(ok, gv * dwx, 0.0)
        d_iy += tl.where(ok, gv * dwy, 0.0)
        if TRILINEAR:
            d_iz += tl.where(ok, gv * dwz, 0.0)
    # chain rule through the unnormalisation: d index / d coordinate = size / 2
    d_gx = d_ix * (x_size * 0.5)
    d_gy = d_iy * (y_size * 0.5)
    if TRILINEAR:
        d_gz = d_iz * (z_size * 0.5)
    else:
        d_gz = d_iz
    return d_gx, d_gy, d_gz


@triton.jit
def _project_backward(
    d_gx, d_gy, d_gz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, TRILINEAR: tl.constexpr
):
    """The points' gradient ``(d/dx, d/dy, d/dz)`` from that of their coordinates on plane
    ``p``: the projection's transpose, ``d/dx[j] = sum_k d/dg[k] * proj[p, j, k]``."""
    base = proj_ptr + p * s_pj_p
    m0 = tl.load(base).to(tl.float32)
    m1 = tl.load(base + s_pj_k).to(tl.float32)
    grad_x = d_gx * m0 + d_gy * m1
    m0 = tl.load(base + s_pj_j).to(tl.float32)
    m1 = tl.load(base + s_pj_j + s_pj_k).to(tl.float32)
    grad_y = d_gx * m0 + d_gy * m1
    m0 = tl.load(base + 2 * s_pj_j).to(tl.float32)
    m1 = tl.load(base + 2 * s_pj_j + s_pj_k).to(tl.float32)
    grad_z = d_gx * m0 + d_gy * m1
    if TRILINEAR:
        grad_x += d_gz * tl.load(base + 2 * s_pj_k).to(tl.float32)
        grad_y += d_gz * tl.load(base + s_pj_j + 2 * s_pj_k).to(tl.float32)
        grad_z += d_gz * tl.load(base + 2 * s_pj_j + 2 * s_pj_k).to(tl.float32)
    return grad_x, grad_y, grad_z


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
    col_pl = offs_c * s_pl_c
    strides = (s_pl_d, s_pl_h, s_pl_w)
    out_rows = out_ptr + b * s_o_b + (offs_n * s_o_n)[:, None] + (offs_c * s_o_c)[None, :]

    px, py, pz = _load_points(points_ptr, b, offs_n, mask_n, s_pt_b, s_pt_n, s_pt_j)

    total = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for p in tl.static_range(P):
        texels, finite = _plane_texels(
            px, py, pz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, D, H, W, trilinear
        )
        sample = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        plane_ptr = planes_ptr + b * s_pl_b + p * s_pl_p
        sample = _gather_corners(
            sample, plane_ptr, col_pl, texels, strides, mask_n, mask_c, trilinear
        )
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
    col_pl = offs_c * s_pl_c
    col_gpl = offs_c * s_gpl_c
    strides = (s_pl_d, s_pl_h, s_pl_w)
    grad_strides = (s_gpl_d, s_gpl_h, s_gpl_w)
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

        texels, finite = _plane_texels(
            px, py, pz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, D, H, W, trilinear
        )
        plane_ptr = planes_ptr + b * s_pl_b + p * s_pl_p
        gplane_ptr = grad_planes_ptr + b * s_gpl_b + p * s_gpl_p
        d_gx, d_gy, d_gz = _scatter_corners(
            g,
            plane_ptr,
            gplane_ptr,
            col_pl,
            col_gpl,
            texels,
            strides,
            grad_strides,
            mask_n,
            mask_c,
            trilinear,
            True,
            BLOCK_N,
        )
        if nan_propagate:
            d_gx = tl.where(finite, d_gx, float("nan"))
            d_gy = tl.where(finite, d_gy, float("nan"))
            if trilinear:
                d_gz = tl.where(finite, d_gz, float("nan"))
        grad_x, grad_y, grad_z = _project_backward(
            d_gx, d_gy, d_gz, proj_ptr, p, s_pj_p, s_pj_j, s_pj_k, trilinear
        )
        grad_px += grad_x
        grad_py += grad_y
        grad_pz += grad_z

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
    # Backward also holds the upstream-gradient tile and the atomics.
    if backward:
        block_n = max(4, min(64, 512 // block_c))
    else:
        # 1024 // BLOCK_C for any C. A power-of-two C once had 2048 // C, which spilled at
        # C = 32 (BLOCK_N = 64: 255 registers, 104 B of spills with Triton 3.6, 4.4 KB with
        # 3.9); BLOCK_N = 32 compiles to 152 registers and no spills on 3.6
        # (tools/check_triton_compile.py --kernels triplane). Not yet timed on a GPU.
        block_n = max(8, min(128, 1024 // block_c))
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
