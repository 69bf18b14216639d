"""Triton kernels of ray generation and compositing (``portrait_engine.ops.rays``).

What they compute (the contract is ``docs/kernel_contract_rays.md``):

* ``ray_march`` -- EG3D's ``MipRayMarcher2``. Per ray, over the intervals i = 0 .. S-2 between
  consecutive samples: ``δ_i = z[i+1] - z[i]``, ``x_i = (σ̃[i] + σ̃[i+1]) / 2 - 1``,
  ``τ_i = softplus(x_i) δ_i``, ``α_i = 1 - exp(-τ_i)``, ``w_i = α_i T_i`` with the running
  transmittance ``T_0 = 1``, ``T_{i+1} = T_i (1 - α_i + 1e-10)``; ``Σ w c_mid``, ``W = Σ w`` and
  ``N = Σ w z_mid`` give the rgb and the depth ``N / W`` (NaN -> +inf, ±inf -> ±max, clamped to
  the given depth range). The forward also stores ``(Σ w c_mid, W, N)`` in the accumulation
  dtype: the ray's totals.
* the backward walks the ray front to back once more. With ``γ_i = ∂L/∂w_i`` (from the rgb,
  depth and weights gradients), ``∂L/∂τ_i = γ_i e_i T_i - (e_i / p_i) Σ_{l>i} w_l γ_l`` where
  ``e_i = exp(-τ_i)``, ``p_i = 1 - α_i + 1e-10``; the suffix sum is the total ``G = Σ w γ`` (from
  the saved totals, plus a cheap pre-pass for the weights' own gradient) minus the running
  prefix. Nothing per sample is saved by the forward.
* ``ray_sample`` -- EG3D's ``RaySampler``: the unit direction ``normalize(R (x, y, 1))`` through
  each pixel centre and the camera origin, per (batch element, pixel).

Design: one program per block of rays (ray_march; all C channels in one tile, samples looped
sequentially with the previous sample's values kept in registers, so every input element is
loaded once per pass) or per block of pixels of one batch element (ray_sample). Math in the
accumulation dtype (the dtype of ``depth_range``: fp32, fp64 for fp64 inputs), int64 offsets,
every load and store masked. Under the interpreter (``TRITON_INTERPRET=1``) the blocks are large:
its cost is per program instance.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from portrait_engine.kernels._alloc import empty_output
from portrait_engine.kernels._launch import device_guard as _device_guard
from portrait_engine.kernels._launch import interpreting as _interpreting

# MipRayMarcher2's constant in (1 - alpha + 1e-10); torch.nn.functional.softplus's threshold.
_EPS = tl.constexpr(1e-10)
_SOFTPLUS_THRESHOLD = tl.constexpr(20.0)


@triton.jit
def _log1p(y):
    # log(1 + y) accurate for tiny y (no libdevice under the interpreter): the rounding of
    # u = 1 + y is corrected by y / (u - 1); u == 1 means log1p(y) = y to working precision
    u = 1.0 + y
    return tl.where(u == 1.0, y, tl.log(u) * (y / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def _interval(s_prev, s_next, z_prev, z_next):
    """``(α, e, p, ∂τ/∂x)`` of one interval: alpha, exp(-τ), (1 - α) + 1e-10, δ softplus'(x)."""
    delta = z_next - z_prev
    x = (s_prev + s_next) / 2 - 1.0
    # torch's softplus and softplus_backward, from one exp: x above the threshold (gradient 1),
    # else log1p(z) with z = exp(x) (gradient z / (z + 1)); tl.where, not tl.minimum, so that a
    # NaN density stays NaN
    above = x > _SOFTPLUS_THRESHOLD
    z = tl.exp(tl.where(above, 0.0, x))
    sigma = tl.where(above, x, _log1p(z))
    dsoftplus = tl.where(above, 1.0, z / (z + 1.0))
    e = tl.exp(-(sigma * delta))
    alpha = 1.0 - e
    p = (1.0 - alpha) + _EPS
    return alpha, e, p, delta * dsoftplus


# --------------------------------------------------------------------------------------------
# ray_march forward
# --------------------------------------------------------------------------------------------


@triton.jit
def _ray_march_forward_kernel(
    colors_ptr,
    densities_ptr,
    depths_ptr,
    range_ptr,
    rgb_ptr,
    depth_ptr,
    weights_ptr,
    totals_ptr,
    n_rays,
    S,
    C,
    WHITE_BACK: tl.constexpr,
    SCALE_RGB: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    UNROLL: tl.constexpr,
):
    acc_ty = range_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)
    n_rays = tl.cast(n_rays, tl.int64)
    n_samples = tl.cast(S, tl.int64)
    if EVEN_C:  # a compile-time row stride: the colour rows load and store as vectors
        n_channels = BLOCK_C
    else:
        n_channels = tl.cast(C, tl.int64)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    mask_r = offs_r < n_rays
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    mask_rc = mask_r[:, None] & (offs_c < n_channels)[None, :]

    sample_rows = offs_r * n_samples  # (ray, sample) row index of sample 0
    color_rows = colors_ptr + (sample_rows * n_channels)[:, None] + offs_c[None, :]
    c_prev = tl.load(color_rows, mask=mask_rc, other=0.0).to(acc_ty)
    s_prev = tl.load(densities_ptr + sample_rows, mask=mask_r, other=0.0).to(acc_ty)
    z_prev = tl.load(depths_ptr + sample_rows, mask=mask_r, other=0.0).to(acc_ty)

    transmittance = tl.full((BLOCK_R,), 1.0, acc_ty)
    rgb = tl.zeros((BLOCK_R, BLOCK_C), acc_ty)
    total = tl.zeros((BLOCK_R,), acc_ty)
    depth_sum = tl.zeros((BLOCK_R,), acc_ty)
    weight_rows = offs_r * (n_samples - 1)
    for i in tl.range(1, n_samples, loop_unroll_factor=UNROLL):
        c_next = tl.load(color_rows + i * n_channels, mask=mask_rc, other=0.0).to(acc_ty)
        s_next = tl.load(densities_ptr + sample_rows + i, mask=mask_r, other=0.0).to(acc_ty)
        z_next = tl.load(depths_ptr + sample_rows + i, mask=mask_r, other=0.0).to(acc_ty)
        alpha, e, p, dtau = _interval(s_prev, s_next, z_prev, z_next)
        weight = alpha * transmittance
        rgb += weight[:, None] * ((c_prev + c_next) / 2)
        total += weight
        depth_sum += weight * ((z_prev + z_next) / 2)
        tl.store(
            weights_ptr + weight_rows + (i - 1),
            weight.to(weights_ptr.dtype.element_ty),
            mask=mask_r,
        )
        transmittance = transmittance * p
        c_prev, s_prev, z_prev = c_next, s_next, z_next

    low = tl.load(range_ptr).to(acc_ty)
    high = tl.load(range_ptr + 1).to(acc_ty)
    depth = depth_sum / total
    depth = tl.where(depth != depth, float("inf"), depth)  # torch.nan_to_num(nan=inf)
    depth = tl.minimum(tl.maximum(depth, low), high)  # ±inf land on the bounds
    tl.store(depth_ptr + offs_r, depth.to(depth_ptr.dtype.element_ty), mask=mask_r)

    total_rows = totals_ptr + offs_r * (n_channels + 2)
    tl.store(total_rows[:, None] + offs_c[None, :], rgb, mask=mask_rc)
    tl.store(total_rows + n_channels, total, mask=mask_r)
    tl.store(total_rows + n_channels + 1, depth_sum, mask=mask_r)

    if WHITE_BACK:
        rgb = rgb + 1.0 - total[:, None]
    if SCALE_RGB:
        rgb = rgb * 2.0 - 1.0
    out = rgb_ptr + (offs_r * n_channels)[:, None] + offs_c[None, :]
    tl.store(out, rgb.to(rgb_ptr.dtype.element_ty), mask=mask_rc)


# --------------------------------------------------------------------------------------------
# ray_march backward
# --------------------------------------------------------------------------------------------


@triton.jit
def _ray_march_backward_kernel(
    grad_rgb_ptr,
    grad_depth_ptr,
    grad_weights_ptr,
    colors_ptr,
    densities_ptr,
    depths_ptr,
    range_ptr,
    totals_ptr,
    grad_colors_ptr,
    grad_densities_ptr,
    n_rays,
    S,
    C,
    WHITE_BACK: tl.constexpr,
    SCALE_RGB: tl.constexpr,
    HAS_GRAD_DEPTH: tl.constexpr,
    HAS_GRAD_WEIGHTS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    UNROLL: tl.constexpr,
):
    # HAS_GRAD_DEPTH / HAS_GRAD_WEIGHTS: False when no gradient reached that output (its
    # pointer is then a stand-in that is never read) and its terms are skipped
    acc_ty = range_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)
    n_rays = tl.cast(n_rays, tl.int64)
    n_samples = tl.cast(S, tl.int64)
    if EVEN_C:  # a compile-time row stride: the colour rows load and store as vectors
        n_channels = BLOCK_C
    else:
        n_channels = tl.cast(C, tl.int64)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    mask_r = offs_r < n_rays
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    mask_rc = mask_r[:, None] & (offs_c < n_channels)[None, :]
    scale = 2.0 if SCALE_RGB else 1.0

    # ---- per-ray constants: output gradients and the forward's totals
    grad_rgb = tl.load(
        grad_rgb_ptr + (offs_r * n_channels)[:, None] + offs_c[None, :], mask=mask_rc, other=0.0
    ).to(acc_ty)
    if HAS_GRAD_DEPTH:
        grad_depth = tl.load(grad_depth_ptr + offs_r, mask=mask_r, other=0.0).to(acc_ty)
    else:
        grad_depth = tl.zeros((BLOCK_R,), acc_ty)
    total_rows = totals_ptr + offs_r * (n_channels + 2)
    rgb_total = tl.load(total_rows[:, None] + offs_c[None, :], mask=mask_rc, other=0.0)
    total = tl.load(total_rows + n_channels, mask=mask_r, other=1.0)
    depth_sum = tl.load(total_rows + n_channels + 1, mask=mask_r, other=0.0)
    low = tl.load(range_ptr).to(acc_ty)
    high = tl.load(range_ptr + 1).to(acc_ty)

    # γ_i = ∂L/∂w_i = scale·⟨g, c_i⟩ + a + b·z_i + ∂L/∂weights_i
    raw_depth = depth_sum / total
    # the gradient passes nan_to_num (finite values) and clamp (inside [low, high], inclusive)
    passes = (raw_depth == raw_depth) & (tl.abs(raw_depth) < float("inf"))
    passes = passes & (raw_depth >= low) & (raw_depth <= high)
    grad_depth = tl.where(passes, grad_depth, 0.0)
    safe_total = tl.where(passes, total, 1.0)
    b = grad_depth / safe_total
    a = -(grad_depth * depth_sum / safe_total) / safe_total
    if WHITE_BACK:
        a = a - scale * tl.sum(grad_rgb, axis=1)

    sample_rows = offs_r * n_samples
    weight_rows = offs_r * (n_samples - 1)

    # ---- pre-pass: Σ w_i ∂L/∂weights_i (densities and depths only; none without that gradient)
    s_first = tl.load(densities_ptr + sample_rows, mask=mask_r, other=0.0).to(acc_ty)
    z_first = tl.load(depths_ptr + sample_rows, mask=mask_r, other=0.0).to(acc_ty)
    weights_term = tl.zeros((BLOCK_R,), acc_ty)
    if HAS_GRAD_WEIGHTS:
        s_prev, z_prev = s_first, z_first
        transmittance = tl.full((BLOCK_R,), 1.0, acc_ty)
        for i in tl.range(1, n_samples, loop_unroll_factor=UNROLL):
            s_next = tl.load(densities_ptr + sample_rows + i, mask=mask_r, other=0.0).to(acc_ty)
            z_next = tl.load(depths_ptr + sample_rows + i, mask=mask_r, other=0.0).to(acc_ty)
            alpha, e, p, dtau = _interval(s_prev, s_next, z_prev, z_next)
            gw = tl.load(grad_weights_ptr + weight_rows + (i - 1), mask=mask_r, other=0.0)
            weights_term += alpha * transmittance * gw.to(acc_ty)
            transmittance = transmittance * p
            s_prev, z_prev = s_next, z_next

    # G = Σ_i w_i γ_i from the totals
    grand = scale * tl.sum(grad_rgb * rgb_total, axis=1) + a * total + b * depth_sum
    grand += weights_term

    # ---- main pass, front to back
    color_rows = colors_ptr + (sample_rows * n_channels)[:, None] + offs_c[None, :]
    grad_color_rows = grad_colors_ptr + (sample_rows * n_channels)[:, None] + offs_c[None, :]
    c_prev = tl.load(color_rows, mask=mask_rc, other=0.0).to(acc_ty)
    s_prev, z_prev = s_first, z_first
    transmittance = tl.full((BLOCK_R,), 1.0, acc_ty)
    prefix = tl.zeros((BLOCK_R,), acc_ty)
    gx_prev = tl.zeros((BLOCK_R,), acc_ty)  # ∂L/∂x of the interval before the sample
    w_prev = tl.zeros((BLOCK_R,), acc_ty)
    for i in tl.range(1, n_samples, loop_unroll_factor=UNROLL):
        c_next = tl.load(color_rows + i * n_channels, mask=mask_rc, other=0.0).to(acc_ty)
        s_next = tl.load(densities_ptr + sample_rows + i, mask=mask_r, other=0.0).to(acc_ty)
        z_next = tl.load(depths_ptr + sample_rows + i, mask=mask_r, other=0.0).to(acc_ty)
        alpha, e, p, dtau = _interval(s_prev, s_next, z_prev, z_next)
        weight = alpha * transmittance
        gamma = scale * tl.sum(grad_rgb * ((c_prev + c_next) / 2), axis=1)
        gamma += a + b * ((z_prev + z_next) / 2)
        if HAS_GRAD_WEIGHTS:
            gw = tl.load(grad_weights_ptr + weight_rows + (i - 1), mask=mask_r, other=0.0)
            gamma += gw.to(acc_ty)
        prefix += weight * gamma
        gx = (gamma * e * transmittance - (e / p) * (grand - prefix)) * dtau

        # sample i-1 closes: it belongs to intervals i-2 and i-1
        tl.store(
            grad_densities_ptr + sample_rows + (i - 1),
            (0.5 * (gx_prev + gx)).to(grad_densities_ptr.dtype.element_ty),
            mask=mask_r,
        )
        grad_c = (0.5 * scale) * (w_prev + weight)[:, None] * grad_rgb
        tl.store(
            grad_color_rows + (i - 1) * n_channels,
            grad_c.to(grad_colors_ptr.dtype.element_ty),
            mask=mask_rc,
        )
        transmittance = transmittance * p
        gx_prev, w_prev = gx, weight
        c_prev, s_prev, z_prev = c_next, s_next, z_next

    last = n_samples - 1
    tl.store(
        grad_densities_ptr + sample_rows + last,
        (0.5 * gx_prev).to(grad_densities_ptr.dtype.element_ty),
        mask=mask_r,
    )
    tl.store(
        grad_color_rows + last * n_channels,
        ((0.5 * scale) * w_prev[:, None] * grad_rgb).to(grad_colors_ptr.dtype.element_ty),
        mask=mask_rc,
    )


# --------------------------------------------------------------------------------------------
# ray_sample
# --------------------------------------------------------------------------------------------


@triton.jit
def _ray_sample_kernel(
    cam2world_ptr,
    intrinsics_ptr,
    origins_ptr,
    directions_ptr,
    resolution,
    ACC_FP64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1).to(tl.int64)
    res = tl.cast(resolution, tl.int64)
    n_pixels = res * res
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n_pixels
    acc_ty = tl.float64 if ACC_FP64 else tl.float32

    m = cam2world_ptr + b * 16
    k = intrinsics_ptr + b * 9
    fx = tl.load(k).to(acc_ty)
    sk = tl.load(k + 1).to(acc_ty)
    cx = tl.load(k + 2).to(acc_ty)
    fy = tl.load(k + 4).to(acc_ty)
    cy = tl.load(k + 5).to(acc_ty)

    row = offs // res
    col = offs - row * res
    inv_res = 1.0 / res.to(acc_ty)
    u = col.to(acc_ty) * inv_res + 0.5 * inv_res
    v = row.to(acc_ty) * inv_res + 0.5 * inv_res
    x = (u - cx + cy * sk / fy - sk * v / fy) / fx
    y = (v - cy) / fy

    d0 = tl.load(m + 0).to(acc_ty) * x + tl.load(m + 1).to(acc_ty) * y + tl.load(m + 2).to(acc_ty)
    d1 = tl.load(m + 4).to(acc_ty) * x + tl.load(m + 5).to(acc_ty) * y + tl.load(m + 6).to(acc_ty)
    d2 = tl.load(m + 8).to(acc_ty) * x + tl.load(m + 9).to(acc_ty) * y + tl.load(m + 10).to(acc_ty)
    # F.normalize: divide by max(|d|, 1e-12)
    norm = tl.maximum(tl.sqrt(d0 * d0 + d1 * d1 + d2 * d2), 1e-12)

    out = (b * n_pixels + offs) * 3
    ty = directions_ptr.dtype.element_ty
    tl.store(directions_ptr + out, (d0 / norm).to(ty), mask=mask)
    tl.store(directions_ptr + out + 1, (d1 / norm).to(ty), mask=mask)
    tl.store(directions_ptr + out + 2, (d2 / norm).to(ty), mask=mask)
    zero = offs * 0
    tl.store(origins_ptr + out, tl.load(m + 3 + zero), mask=mask)
    tl.store(origins_ptr + out + 1, tl.load(m + 7 + zero), mask=mask)
    tl.store(origins_ptr + out + 2, tl.load(m + 11 + zero), mask=mask)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def march_config(n_rays: int, channels: int, backward: bool = False) -> dict:
    """The launch of a ray_march kernel: ``BLOCK_R`` rays per program, all channels in one
    ``BLOCK_C`` tile, the sample loop unrolled ``UNROLL`` times, ``num_warps``, ``num_stages``.
    ``tools/sweep_ray_march.py`` times alternatives on a GPU (``config=`` of the launchers)."""
    block_c = triton.next_power_of_2(max(channels, 1))
    even_c = block_c == channels
    if _interpreting():
        block_r = min(triton.next_power_of_2(max(n_rays, 1)), max(1, 16384 // block_c))
        return dict(
            BLOCK_R=block_r, BLOCK_C=block_c, EVEN_C=even_c, UNROLL=1, num_warps=4, num_stages=1
        )
    # GPU, up to 32 channels (EG3D's C = 32), from the sweep on an H200 (B=4, 128x128 rays,
    # S=48, kernel alone; benchmarks/results/NVIDIA-H200/logs-2026-11-26c/sweep_ray_march.json):
    # forward 32 rays x 32 channels on ONE warp (0.223 ms; the former 32 rays on 4 warps:
    # 0.324 ms), backward 8 rays on 2 warps (0.346 ms; former 0.447 ms). A ray's 128-byte row
    # per warp load either way; fewer warps per program keep more programs resident. Loop
    # unrolling and num_stages changed nothing measurable (no loads are pipelined here).
    if block_c <= 32:
        if backward:
            block_r, warps = max(1, min(64, 256 // block_c)), 2
        else:
            block_r, warps = max(1, min(64, 1024 // block_c)), 1
    else:
        # wider colours, not swept: a (BLOCK_R, BLOCK_C) tile of ~1k elements on 4 warps (8
        # fp32 per thread) for c_prev, c_next, the rgb accumulator (and grad_rgb)
        block_r, warps = max(1, 1024 // block_c), 4
    return dict(
        BLOCK_R=block_r, BLOCK_C=block_c, EVEN_C=even_c, UNROLL=1, num_warps=warps, num_stages=3
    )


def ray_march_forward(
    colors: torch.Tensor,
    densities: torch.Tensor,
    depths: torch.Tensor,
    depth_range: torch.Tensor,
    white_back: bool,
    scale_rgb: bool,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rgb (B,R,C), depth (B,R,1), weights (B,R,S-1,1), totals (B,R,C+2))``.

    Inputs contiguous: ``colors`` ``(B, R, S, C)``, ``densities`` / ``depths`` ``(B, R, S, 1)``,
    ``depth_range`` ``(2,)`` in the accumulation dtype (the dtype of ``totals``).
    """
    batch, rays, samples, channels = colors.shape
    device, dtype = colors.device, colors.dtype
    rgb = empty_output((batch, rays, channels), dtype=dtype, device=device)
    depth = empty_output((batch, rays, 1), dtype=dtype, device=device)
    weights = empty_output((batch, rays, samples - 1, 1), dtype=dtype, device=device)
    totals = empty_output((batch, rays, channels + 2), dtype=depth_range.dtype, device=device)
    n_rays = batch * rays
    if n_rays == 0:
        return rgb, depth, weights, totals
    config = config or march_config(n_rays, channels)
    with _device_guard(colors):
        _ray_march_forward_kernel[(triton.cdiv(n_rays, config["BLOCK_R"]),)](
            colors,
            densities,
            depths,
            depth_range,
            rgb,
            depth,
            weights,
            totals,
            n_rays,
            samples,
            channels,
            WHITE_BACK=bool(white_back),
            SCALE_RGB=bool(scale_rgb),
            **config,
        )
    return rgb, depth, weights, totals


def ray_march_backward(
    grad_rgb: torch.Tensor,
    grad_depth: torch.Tensor | None,
    grad_weights: torch.Tensor | None,
    colors: torch.Tensor,
    densities: torch.Tensor,
    depths: torch.Tensor,
    depth_range: torch.Tensor,
    totals: torch.Tensor,
    white_back: bool,
    scale_rgb: bool,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_colors (B,R,S,C), grad_densities (B,R,S,1))`` in the input dtype; a ``None``
    output gradient (none reached that output) contributes nothing and is not read."""
    batch, rays, samples, channels = colors.shape
    device, dtype = colors.device, colors.dtype
    grad_colors = empty_output(colors.shape, dtype=dtype, device=device)
    grad_densities = empty_output(densities.shape, dtype=dtype, device=device)
    n_rays = batch * rays
    if n_rays == 0:
        return grad_colors, grad_densities
    config = config or march_config(n_rays, channels, backward=True)
    with _device_guard(colors):
        _ray_march_backward_kernel[(triton.cdiv(n_rays, config["BLOCK_R"]),)](
            grad_rgb,
            grad_rgb if grad_depth is None else grad_depth,
            grad_rgb if grad_weights is None else grad_weights,
            colors,
            densities,
            depths,
            depth_range,
            totals,
            grad_colors,
            grad_densities,
            n_rays,
            samples,
            channels,
            WHITE_BACK=bool(white_back),
            SCALE_RGB=bool(scale_rgb),
            HAS_GRAD_DEPTH=grad_depth is not None,
            HAS_GRAD_WEIGHTS=grad_weights is not None,
            **config,
        )
    return grad_colors, grad_densities


def ray_sample_forward(
    cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(origins, directions)``, each ``(B, resolution², 3)`` in the input dtype.

    ``cam2world`` ``(B, 4, 4)`` and ``intrinsics`` ``(B, 3, 3)`` contiguous.
    """
    batch = cam2world.shape[0]
    pixels = resolution * resolution
    device, dtype = cam2world.device, cam2world.dtype
    origins = empty_output((batch, pixels, 3), dtype=dtype, device=device)
    directions = empty_output((batch, pixels, 3), dtype=dtype, device=device)
    if batch == 0:
        return origins, directions
    block = min(triton.next_power_of_2(pixels), 16384 if _interpreting() else 256)
    with _device_guard(cam2world):
        _ray_sample_kernel[(batch, triton.cdiv(pixels, block))](
            cam2world,
            intrinsics,
            origins,
            directions,
            resolution,
            ACC_FP64=dtype == torch.float64,
            BLOCK=block,
            num_warps=4,
        )
    return origins, directions
