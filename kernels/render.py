"""Triton kernels of the fused neural renderer ``render_rays`` (issue #10): sample, decode, march.

What they compute (the math is ``portrait_engine.ops.reference.render_rays_reference``; the
kernel-level contract is shared with the native backend): for every ray, each of its S sample
points is sampled from the tri-plane / tri-grid by ``kernels/triplane.py``'s own helpers (mean
over the P planes of bilinear / trilinear ``grid_sample`` with zero padding and
``align_corners=False``, ``uvw = x · proj[p]``), decoded by EG3D's ``OSGDecoder``
(``h = softplus(f W1ᵀ + b1)``, ``o = h W2ᵀ + b2``, ``σ = o[0]`` (+ noise; −1e3 outside the
PanoHead crop), ``c = act(o[1:])`` with ``act`` EG3D's ``sigmoid(·) · 1.002 − 0.001``, the
identity or PanoHead's ``leaky_relu(·, 0.2) · √2`` (``color_activation`` 0 / 1 / 2)) and
composited by ``MipRayMarcher2`` (the formulas of ``kernels/rays.py``: midpoints,
``softplus(σ_mid − 1)``, ``α = 1 − exp(−σδ)``, ``w = α ∏(1 − α + 1e−10)``). No per-sample
tensor is written: only each ray's features, ``depth_raw = Σ w z_mid / Σ w`` (unclamped; NaN
where ``Σ w = 0``) and ``Σ w`` or, for the coarse pass that feeds ``sample_importance``, the
S − 1 interval weights.

Design
------

* **One program per block of ``BLOCK_R`` rays, marching along S in a loop.** For each sample
  the ``BLOCK_R`` points are projected onto the P planes and the corner texels are gathered as
  ``(BLOCK_R, BLOCK_C)`` tiles (planes are channels-last, so a corner's C channels are one
  contiguous run); the mean feature tile never leaves registers.
* **The MLP on tensor cores.** ``(BLOCK_R, C) × (C, Hd)`` then softplus then
  ``(BLOCK_R, Hd) × (Hd, Co)`` are ``tl.dot`` with fp32 accumulation. Operands are bf16 / fp16
  when the planes are (the feature tile and the decoder weights are rounded to the planes'
  dtype), fp32 otherwise with ``input_precision=FP32_DOT_PRECISION`` (``"tf32"`` on a GPU,
  the issue's choice; ``PORTRAIT_ENGINE_RENDER_FP32_DOT=ieee`` selects exact fp32; the CPU
  interpreter always uses ``"ieee"``). The density row of W2 is kept out of the dot (a
  ``(BLOCK_R, Hd)`` multiply-and-sum in fp32) so the colour dot is ``Co`` wide, not ``1 + Co``
  padded to the next power of two. Sizes are padded to powers of two (>= 16, tl.dot's minimum)
  with masked loads: padded weights are zero, so padded hidden units and outputs contribute
  nothing. The decoder tiles are loaded where they are used, after each sample's gathers
  (L1 hits), not hoisted out of the sample loop: hoisted, they sat in registers in the MMA
  operand layout for the whole loop.
* **Compositing in registers.** The previous sample's density, colour and depth, the running
  transmittance and the ray's accumulators are loop-carried registers; every input element is
  loaded once per pass.
* **Backward by recomputation, one sweep.** Per ray, ``G = Σ_k w_k ∂L/∂w_k`` comes from the
  forward's outputs alone: ``G = ⟨g_F, F⟩ + (s − wb·k)·Σ g_F + Σ_k w_k g_{w,k}`` (``k`` = 2
  with ``scale_rgb`` else 1, ``s`` = 1 with ``scale_rgb`` else 0, ``wb`` = white_back; the
  depth terms cancel), where the last term is ``g_W · Σ w`` or, with full weights, a cheap
  pre-loop over the saved weights. The sweep then recomputes sample i, forms interval i − 1's
  ``∂L/∂x = (γ e T − (e / p)(G − prefix)) δ softplus'`` as ``kernels/rays.py`` does, and
  *closes* sample i − 1 (whose gradient is the average of its two intervals'): the MLP
  backward (``tl.dot`` again: ``dH = dO W2 + g_σ w2σ``, ``dF = (dH ⊙ softplus') W1``), the
  decoder-weight gradients (``dW1 += dPreᵀ F``, ``dW2 += dOᵀ H``: ``tl.dot`` over the ray
  block, accumulated in registers across all the program's blocks), and the sampling backward
  (plane corners and the point). So the previous sample's feature, hidden and derivative tiles
  are loop-carried too: that is the register budget of the backward.
* **Weight gradients deterministic.** The backward grid is persistent (at most
  ``4 × #SMs`` programs, each looping over ray blocks ``pid, pid + n_prog, …``); each program
  writes its accumulated ``(dW1, db1, dW2, db2)`` to one row of a ``(n_prog, K)`` fp32 partial
  buffer that torch sums: no atomics, and the partition depends only on the sizes.
* **Plane gradients.** Default: ``tl.atomic_add`` of ``w · dF / P`` into an fp32 buffer
  (run-to-run order dependent). ``deterministic=True``: the kernel instead writes each
  sample's feature gradient ``dF`` (``B·R·S·C`` fp32 -- 4 bytes per sample channel: 200 MB at
  B=4, 64² rays, 96 samples, C=32) and torch scatters it with the same bilinear / trilinear
  weights via ``index_add_`` (sequential on the CPU; on CUDA run under
  ``torch.use_deterministic_algorithms``, which makes it sort-based), ``P × 4`` (tri-plane) or
  ``P × 8`` (tri-grid) passes over chunks of samples. Expected to be several times slower
  than the atomics (unmeasured) and bound by that buffer's traffic: a debugging /
  reproducibility mode.
* **Point gradients** are per sample, owned by one program: written once, no atomics. The
  crop is a step function of the point (no gradient), and so is a texel's floor.
* Index math in int64, strides widened, every load and store masked; fp32 math whatever the
  storage dtype (Triton's float64 path is not offered: the native CPU kernel serves gradcheck).
  A non-finite point samples zeros (no NaN propagation), as the CUDA ``grid_sample`` does.

Launch configuration (GPU): ``BLOCK_R = 16`` rays and ``num_warps = 8`` for both kernels,
``num_stages = 1``. Not timed -- no GPU was available when this was written -- but compiled
for sm_90 without one (``triton.compile`` to PTX, then ``ptxas -arch=sm_90a -v``; C = 32,
Hd = 64, Co = 32, tri-grid, all flags on):

===========================  =====================  ===========================================
kernel                       registers / spills     tensor-core instructions in the SASS
===========================  =====================  ===========================================
forward fp32 (tf32)          200 / 0 B              HMMA.1688.F32.TF32
forward bf16                 202 / 0 B              HMMA.16816.F32.BF16
backward fp32 (tf32)         255 / 336 B            HMMA.1688.F32.TF32, HGMMA.64
backward bf16                255 / 344 B            HMMA.16816.F32.BF16, HGMMA.64
===========================  =====================  ===========================================

The alternatives measured the same way: forward 32 rays / 4 warps 255 registers and 1.8 KB
of spills with the decoder tiles hoisted out of the loop and the plane loop unrolled (hence
the reloads and the runtime plane loop below), 16 rays / 4 warps 249 / 0; backward 16 rays /
4 warps 255 / 2 KB, 16 warps 128 / 730 B. Time these on a GPU before trusting them; the
backward's remaining spills are the next thing to look at (e.g. recompute the previous
sample's hidden layer from its feature tile instead of carrying it). Under
``TRITON_INTERPRET=1``: one block of up to 64 rays per program.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from portrait_engine.kernels._alloc import empty_output
from portrait_engine.kernels._launch import device_guard as _device_guard
from portrait_engine.kernels._launch import interpreting as _interpreting
from portrait_engine.kernels.rays import _interval, _log1p
from portrait_engine.kernels.triplane import (
    _gather_corners,
    _plane_texels,
    _project_backward,
    _scatter_corners,
)

# EG3D's widened sigmoid (sigmoid · (1 + 2·0.001) − 0.001), PanoHead's crop density,
# torch.nn.functional.softplus's threshold, the largest finite float32.
_RGB_PADDING = tl.constexpr(0.001)
_CROP_DENSITY = tl.constexpr(-1000.0)
_SOFTPLUS_THRESHOLD = tl.constexpr(20.0)
_FLT_MAX = tl.constexpr(3.4028234663852886e38)
# The colour activations (the kernel-level ``color_activation``), and PanoHead's leaky ReLU
# (slope 0.2, gain √2).
_ACT_SIGMOID = tl.constexpr(0)
_ACT_NONE = tl.constexpr(1)
_ACT_LRELU = tl.constexpr(2)
_LRELU_SLOPE = tl.constexpr(0.2)
_SQRT2 = tl.constexpr(1.4142135623730951)

# tl.dot input precision of float32 operands on a GPU ("tf32": tensor cores, ~1e-3 relative
# rounding of the operands; "ieee": exact fp32 FMA). The interpreter always runs "ieee".
FP32_DOT_PRECISION = os.environ.get("PORTRAIT_ENGINE_RENDER_FP32_DOT", "tf32")
# No software pipelining of the sample loop: with Triton's default (3 stages) the pipeliner
# stages the data-dependent corner gathers through shared memory with cp.async -- 197 KB of
# shared memory for the sm_90 forward (one block per SM); with 1 stage, 20 KB.
_NUM_STAGES = 1


# --------------------------------------------------------------------------------------------
# Per-sample helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _softplus(x):
    """``(softplus(x), softplus'(x))`` as torch computes them (threshold 20), from one exp."""
    above = x > _SOFTPLUS_THRESHOLD
    z = tl.exp(tl.where(above, 0.0, x))
    return tl.where(above, x, _log1p(z)), tl.where(above, 1.0, z / (z + 1.0))


@triton.jit
def _sample_planes(
    planes_ptr,
    plane_base,
    px,
    py,
    pz,
    proj_ptr,
    D,
    H,
    W,
    s_pl_p,
    s_pl_d,
    s_pl_h,
    s_pl_w,
    col,
    mask_r,
    mask_c,
    P: tl.constexpr,
    TRILINEAR: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Mean over planes of the sampled features of ``BLOCK_R`` points: ``(BLOCK_R, BLOCK_C)``.

    ``plane_base`` is each point's batch offset into the planes (rays of one block may belong
    to different batch elements).
    """
    total = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    strides = (s_pl_d, s_pl_h, s_pl_w)
    # a runtime loop over planes, not unrolled: only one plane's corner gathers are in flight
    # at a time (unrolled, ptxas ran out of registers: 255 and spills at BLOCK_R = 32)
    for p in range(P):
        # kernels/triplane.py's helpers, with the strides of a contiguous (P, 3, 3) projection
        texels, finite = _plane_texels(px, py, pz, proj_ptr, p, 9, 3, 1, D, H, W, TRILINEAR)
        plane_ptr = (planes_ptr + plane_base + p * s_pl_p)[:, None]
        total = _gather_corners(total, plane_ptr, col, texels, strides, mask_r, mask_c, TRILINEAR)
    return total * (1.0 / P)


@triton.jit
def _scatter_planes(
    g,
    planes_ptr,
    grad_planes_ptr,
    plane_base,
    gplane_base,
    px,
    py,
    pz,
    proj_ptr,
    D,
    H,
    W,
    s_pl_p,
    s_pl_d,
    s_pl_h,
    s_pl_w,
    s_gpl_p,
    s_gpl_d,
    s_gpl_h,
    s_gpl_w,
    col,
    gcol,
    mask_r,
    mask_c,
    P: tl.constexpr,
    TRILINEAR: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Sampling backward of ``g = ∂L/∂(mean feature)``: plane atomics (unless
    ``DETERMINISTIC``, where torch scatters the feature gradients afterwards) and
    the points' gradient ``(∂L/∂x, ∂L/∂y, ∂L/∂z)``, each ``(BLOCK_R,)``."""
    g = g * (1.0 / P)
    grad_px = tl.zeros((BLOCK_R,), dtype=tl.float32)
    grad_py = tl.zeros((BLOCK_R,), dtype=tl.float32)
    grad_pz = tl.zeros((BLOCK_R,), dtype=tl.float32)
    strides = (s_pl_d, s_pl_h, s_pl_w)
    grad_strides = (s_gpl_d, s_gpl_h, s_gpl_w)
    # a runtime loop over planes, not unrolled: only one plane's corner gathers are in flight
    # at a time (unrolled, ptxas ran out of registers: 255 and spills at BLOCK_R = 32)
    for p in range(P):
        texels, finite = _plane_texels(px, py, pz, proj_ptr, p, 9, 3, 1, D, H, W, TRILINEAR)
        plane_ptr = (planes_ptr + plane_base + p * s_pl_p)[:, None]
        gplane_ptr = (grad_planes_ptr + gplane_base + p * s_gpl_p)[:, None]
        d_gx, d_gy, d_gz = _scatter_corners(
            g,
            plane_ptr,
            gplane_ptr,
            col,
            gcol,
            texels,
            strides,
            grad_strides,
            mask_r,
            mask_c,
            TRILINEAR,
            not DETERMINISTIC,
            BLOCK_R,
        )
        grad_x, grad_y, grad_z = _project_backward(
            d_gx, d_gy, d_gz, proj_ptr, p, 9, 3, 1, TRILINEAR
        )
        grad_px += grad_x
        grad_py += grad_y
        grad_pz += grad_z
    return grad_px, grad_py, grad_pz


@triton.jit
def _load_decoder(
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    dot_ptr,
    C,
    HIDDEN,
    CO,
    HALF_DOT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    """The decoder's tiles: ``W1ᵀ (C, Hd)`` and ``W2[1:]ᵀ (Hd, Co)`` in the dot operand dtype
    (``dot_ptr``'s when ``HALF_DOT``), the density row ``W2[0]`` and the biases in fp32."""
    offs_c = tl.arange(0, BLOCK_C)
    offs_h = tl.arange(0, BLOCK_H)
    offs_o = tl.arange(0, BLOCK_O)
    mask_c = offs_c < C
    mask_h = offs_h < HIDDEN
    mask_o = offs_o < CO
    w1t = tl.load(
        w1_ptr + offs_h[None, :] * C + offs_c[:, None],
        mask=mask_c[:, None] & mask_h[None, :],
        other=0.0,
    ).to(tl.float32)
    b1 = tl.load(b1_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    w2s = tl.load(w2_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    w2t = tl.load(
        w2_ptr + (1 + offs_o[None, :]) * HIDDEN + offs_h[:, None],
        mask=mask_h[:, None] & mask_o[None, :],
        other=0.0,
    ).to(tl.float32)
    b2s = tl.load(b2_ptr).to(tl.float32)
    b2o = tl.load(b2_ptr + 1 + offs_o, mask=mask_o, other=0.0).to(tl.float32)
    if HALF_DOT:
        w1t = w1t.to(dot_ptr.dtype.element_ty)
        w2t = w2t.to(dot_ptr.dtype.element_ty)
    return w1t, b1, w2t, w2s, b2s, b2o


@triton.jit
def _render_sample(
    i,
    offs_r,
    mask_r,
    n_samples,
    points_ptr,
    depths_ptr,
    noise_ptr,
    planes_ptr,
    plane_base,
    proj_ptr,
    D,
    H,
    W,
    s_pl_p,
    s_pl_d,
    s_pl_h,
    s_pl_w,
    col,
    mask_c,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    C,
    HIDDEN,
    CO,
    crop_limit,
    P: tl.constexpr,
    TRILINEAR: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    USE_CROP: tl.constexpr,
    ACTIVATION: tl.constexpr,
    HALF_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    """Sample ``i`` of the block's rays, sampled and decoded.

    Returns ``(σ, live, c, c', h, softplus'(pre), f, z, x, y, z_coord)``: the raw density
    (noise and crop applied), whether σ depends on the decoder (not cropped), the colours and
    their derivative w.r.t. the decoder's colour output (``ACTIVATION``: 0 EG3D's widened
    sigmoid, 1 none, 2 ``leaky_relu(·, 0.2)·√2``), the hidden layer and its derivative, the
    mean feature tile, the depth and the point.
    """
    idx = offs_r * n_samples + i
    pt = points_ptr + idx * 3
    px = tl.load(pt, mask=mask_r, other=0.0).to(tl.float32)
    py = tl.load(pt + 1, mask=mask_r, other=0.0).to(tl.float32)
    pz = tl.load(pt + 2, mask=mask_r, other=0.0).to(tl.float32)
    z = tl.load(depths_ptr + idx, mask=mask_r, other=0.0).to(tl.float32)
    f = _sample_planes(
        planes_ptr,
        plane_base,
        px,
        py,
        pz,
        proj_ptr,
        D,
        H,
        W,
        s_pl_p,
        s_pl_d,
        s_pl_h,
        s_pl_w,
        col,
        mask_r,
        mask_c,
        P,
        TRILINEAR,
        BLOCK_R,
        BLOCK_C,
    )
    # the decoder is (re)loaded here, after the gathers, rather than hoisted out of the sample
    # loop: kept in registers in the MMA operand layout it cost ~128 registers per thread for
    # the whole loop (ptxas: 255 registers and spills); reloaded, it is an L1 hit per sample
    w1t, b1, w2t, w2s, b2s, b2o = _load_decoder(
        w1_ptr, b1_ptr, w2_ptr, b2_ptr, planes_ptr, C, HIDDEN, CO, HALF_DOT, BLOCK_C, BLOCK_H,
        BLOCK_O,
    )  # fmt: skip
    pre = tl.dot(f.to(w1t.dtype), w1t, input_precision=DOT_PRECISION) + b1[None, :]
    h, dh = _softplus(pre)
    o = tl.dot(h.to(w2t.dtype), w2t, input_precision=DOT_PRECISION) + b2o[None, :]
    sigma = tl.sum(h * w2s[None, :], axis=1) + b2s
    if HAS_NOISE:
        sigma += tl.load(noise_ptr + idx, mask=mask_r, other=0.0).to(tl.float32)
    if USE_CROP:
        outside = (tl.abs(px) > crop_limit) | (tl.abs(pz) > crop_limit)
        sigma = tl.where(outside, _CROP_DENSITY, sigma)
        live = mask_r & (outside == 0)
    else:
        live = mask_r
    if ACTIVATION == _ACT_SIGMOID:
        sig = tl.sigmoid(o)
        c = sig * (1.0 + 2.0 * _RGB_PADDING) - _RGB_PADDING
        dc = (1.0 + 2.0 * _RGB_PADDING) * sig * (1.0 - sig)
    elif ACTIVATION == _ACT_NONE:
        c = o
        dc = tl.full(o.shape, 1.0, tl.float32)
    else:
        # torch's leaky_relu and its backward: slope 1 where o > 0, else 0.2 (0 included)
        positive = o > 0.0
        c = tl.where(positive, o, o * _LRELU_SLOPE) * _SQRT2
        dc = tl.where(positive, _SQRT2, _LRELU_SLOPE * _SQRT2)
    return sigma, live, c, dc, h, dh, f, z, px, py, pz


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@triton.jit
def _render_forward_kernel(
    planes_ptr,
    points_ptr,
    depths_ptr,
    proj_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    noise_ptr,
    features_ptr,
    depth_ptr,
    weights_ptr,
    n_rays,
    rays_per_batch,
    S,
    C,
    HIDDEN,
    CO,
    D,
    H,
    W,
    s_pl_b,
    s_pl_p,
    s_pl_d,
    s_pl_h,
    s_pl_w,
    s_pl_c,
    crop_limit,
    P: tl.constexpr,
    TRILINEAR: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    USE_CROP: tl.constexpr,
    WHITE_BACK: tl.constexpr,
    SCALE_RGB: tl.constexpr,
    ACTIVATION: tl.constexpr,
    FULL_WEIGHTS: tl.constexpr,
    HALF_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n_rays = tl.cast(n_rays, tl.int64)
    n_samples = tl.cast(S, tl.int64)
    n_out = tl.cast(CO, tl.int64)
    s_pl_b = tl.cast(s_pl_b, tl.int64)
    s_pl_p = tl.cast(s_pl_p, tl.int64)
    s_pl_d = tl.cast(s_pl_d, tl.int64)
    s_pl_h = tl.cast(s_pl_h, tl.int64)
    s_pl_w = tl.cast(s_pl_w, tl.int64)
    s_pl_c = tl.cast(s_pl_c, tl.int64)
    crop_limit = tl.cast(crop_limit, tl.float32)

    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    mask_r = offs_r < n_rays
    plane_base = (offs_r // tl.cast(rays_per_batch, tl.int64)) * s_pl_b
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    mask_c = offs_c < C
    col = offs_c * s_pl_c
    offs_o = tl.arange(0, BLOCK_O).to(tl.int64)
    mask_ro = mask_r[:, None] & (offs_o < n_out)[None, :]

    s_prev, live, c_prev, dc, h, dh, f, z_prev, px, py, pz = _render_sample(
        0, offs_r, mask_r, n_samples, points_ptr, depths_ptr, noise_ptr, planes_ptr, plane_base,
        proj_ptr, D, H, W, s_pl_p, s_pl_d, s_pl_h, s_pl_w, col, mask_c, w1_ptr, b1_ptr, w2_ptr,
        b2_ptr, C, HIDDEN, CO, crop_limit, P, TRILINEAR, HAS_NOISE, USE_CROP, ACTIVATION,
        HALF_DOT, DOT_PRECISION, BLOCK_R, BLOCK_C, BLOCK_H, BLOCK_O,
    )  # fmt: skip

    transmittance = tl.full((BLOCK_R,), 1.0, tl.float32)
    rgb = tl.zeros((BLOCK_R, BLOCK_O), tl.float32)
    total = tl.zeros((BLOCK_R,), tl.float32)
    depth_sum = tl.zeros((BLOCK_R,), tl.float32)
    weight_rows = offs_r * (n_samples - 1)
    for i in range(1, S):
        s_next, live, c_next, dc, h, dh, f, z_next, px, py, pz = _render_sample(
            i, offs_r, mask_r, n_samples, points_ptr, depths_ptr, noise_ptr, planes_ptr, plane_base,
            proj_ptr, D, H, W, s_pl_p, s_pl_d, s_pl_h, s_pl_w, col, mask_c, w1_ptr, b1_ptr, w2_ptr,
            b2_ptr, C, HIDDEN, CO, crop_limit, P, TRILINEAR, HAS_NOISE, USE_CROP, ACTIVATION,
            HALF_DOT, DOT_PRECISION, BLOCK_R, BLOCK_C, BLOCK_H, BLOCK_O,
        )  # fmt: skip
        alpha, e, p, dtau = _interval(s_prev, s_next, z_prev, z_next)
        weight = alpha * transmittance
        rgb += weight[:, None] * ((c_prev + c_next) / 2)
        total += weight
        depth_sum += weight * ((z_prev + z_next) / 2)
        if FULL_WEIGHTS:
            tl.store(
                weights_ptr + weight_rows + (i - 1),
                weight.to(weights_ptr.dtype.element_ty),
                mask=mask_r,
            )
        transmittance = transmittance * p
        c_prev, s_prev, z_prev = c_next, s_next, z_next

    # unclamped; 0 / 0 = NaN for an empty ray (the front-end applies nan_to_num and the clamp)
    tl.store(depth_ptr + offs_r, (depth_sum / total).to(depth_ptr.dtype.element_ty), mask=mask_r)
    if not FULL_WEIGHTS:
        tl.store(weights_ptr + offs_r, total.to(weights_ptr.dtype.element_ty), mask=mask_r)
    if WHITE_BACK:
        rgb = rgb + 1.0 - total[:, None]
    if SCALE_RGB:
        rgb = rgb * 2.0 - 1.0
    out = features_ptr + (offs_r * n_out)[:, None] + offs_o[None, :]
    tl.store(out, rgb.to(features_ptr.dtype.element_ty), mask=mask_ro)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


@triton.jit
def _close_sample(
    j,
    g_sigma,
    g_c,
    live,
    dc,
    h,
    dh,
    f,
    px,
    py,
    pz,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    HIDDEN,
    CO,
    acc_w1,
    acc_b1,
    acc_w2,
    acc_w2s,
    acc_b2o,
    acc_b2s,
    offs_r,
    mask_r,
    n_samples,
    planes_ptr,
    grad_planes_ptr,
    grad_points_ptr,
    grad_samples_ptr,
    plane_base,
    gplane_base,
    proj_ptr,
    D,
    H,
    W,
    s_pl_p,
    s_pl_d,
    s_pl_h,
    s_pl_w,
    s_gpl_p,
    s_gpl_d,
    s_gpl_h,
    s_gpl_w,
    col,
    gcol,
    offs_c,
    mask_c,
    C,
    P: tl.constexpr,
    TRILINEAR: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    HALF_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    """Backward of sample ``j`` given ``∂L/∂σ`` ``(BLOCK_R,)`` and ``∂L/∂c`` ``(BLOCK_R, Co)``:
    the decoder backward (weight gradients accumulated), the sampling backward, the point's
    gradient stored. Returns the updated accumulators."""
    g_sigma = tl.where(live, g_sigma, 0.0)  # a cropped density is a constant
    w1t, b1, w2t, w2s, b2s, b2o = _load_decoder(
        w1_ptr, b1_ptr, w2_ptr, b2_ptr, planes_ptr, C, HIDDEN, CO, HALF_DOT, BLOCK_C, BLOCK_H,
        BLOCK_O,
    )  # fmt: skip
    dot_ty = w1t.dtype
    d_o = g_c * dc  # ∂L/∂(colour output, before the activation)
    d_h = tl.dot(d_o.to(dot_ty), tl.trans(w2t), input_precision=DOT_PRECISION)
    d_h += g_sigma[:, None] * w2s[None, :]
    d_pre = d_h * dh
    acc_w2 += tl.dot(tl.trans(d_o.to(dot_ty)), h.to(dot_ty), input_precision=DOT_PRECISION)
    acc_w2s += tl.sum(g_sigma[:, None] * h, axis=0)
    acc_b2o += tl.sum(d_o, axis=0)
    acc_b2s += g_sigma
    acc_w1 += tl.dot(tl.trans(d_pre.to(dot_ty)), f.to(dot_ty), input_precision=DOT_PRECISION)
    acc_b1 += tl.sum(d_pre, axis=0)
    d_f = tl.dot(d_pre.to(dot_ty), tl.trans(w1t), input_precision=DOT_PRECISION)

    idx = offs_r * n_samples + j
    if DETERMINISTIC:
        # the feature gradient per sample, scattered to the planes by torch afterwards
        tl.store(
            grad_samples_ptr + (idx * C)[:, None] + offs_c[None, :],
            d_f,
            mask=mask_r[:, None] & mask_c[None, :],
        )
    gpx, gpy, gpz = _scatter_planes(
        d_f, planes_ptr, grad_planes_ptr, plane_base, gplane_base, px, py, pz, proj_ptr, D, H, W,
        s_pl_p, s_pl_d, s_pl_h, s_pl_w, s_gpl_p, s_gpl_d, s_gpl_h, s_gpl_w, col, gcol, mask_r,
        mask_c, P, TRILINEAR, DETERMINISTIC, BLOCK_R,
    )  # fmt: skip
    gp = grad_points_ptr + idx * 3
    tl.store(gp, gpx.to(grad_points_ptr.dtype.element_ty), mask=mask_r)
    tl.store(gp + 1, gpy.to(grad_points_ptr.dtype.element_ty), mask=mask_r)
    tl.store(gp + 2, gpz.to(grad_points_ptr.dtype.element_ty), mask=mask_r)
    return acc_w1, acc_b1, acc_w2, acc_w2s, acc_b2o, acc_b2s


@triton.jit
def _render_backward_kernel(
    grad_features_ptr,
    grad_depth_ptr,
    grad_weights_ptr,
    planes_ptr,
    points_ptr,
    depths_ptr,
    proj_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    noise_ptr,
    features_ptr,
    depth_ptr,
    weights_ptr,
    grad_planes_ptr,
    grad_points_ptr,
    grad_samples_ptr,
    partial_ptr,
    n_rays,
    rays_per_batch,
    blocks_per_program,
    S,
    C,
    HIDDEN,
    CO,
    D,
    H,
    W,
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
    crop_limit,
    P: tl.constexpr,
    TRILINEAR: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    USE_CROP: tl.constexpr,
    WHITE_BACK: tl.constexpr,
    SCALE_RGB: tl.constexpr,
    ACTIVATION: tl.constexpr,
    FULL_WEIGHTS: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    HALF_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n_programs = tl.num_programs(0).to(tl.int64)
    n_rays = tl.cast(n_rays, tl.int64)
    n_samples = tl.cast(S, tl.int64)
    n_out = tl.cast(CO, tl.int64)
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
    crop_limit = tl.cast(crop_limit, tl.float32)
    # MipRayMarcher2's output map: F = k (Σ w c + wb (1 − Σ w)) − s
    scale = 2.0 if SCALE_RGB else 1.0
    shift = 1.0 if SCALE_RGB else 0.0

    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    mask_c = offs_c < C
    col = offs_c * s_pl_c
    gcol = offs_c * s_gpl_c
    offs_h = tl.arange(0, BLOCK_H).to(tl.int64)
    mask_h = offs_h < HIDDEN
    offs_o = tl.arange(0, BLOCK_O).to(tl.int64)
    mask_o = offs_o < n_out

    acc_w1 = tl.zeros((BLOCK_H, BLOCK_C), tl.float32)
    acc_b1 = tl.zeros((BLOCK_H,), tl.float32)
    acc_w2 = tl.zeros((BLOCK_O, BLOCK_H), tl.float32)
    acc_w2s = tl.zeros((BLOCK_H,), tl.float32)
    acc_b2o = tl.zeros((BLOCK_O,), tl.float32)
    acc_b2s = tl.zeros((BLOCK_R,), tl.float32)

    # persistent: this program's ray blocks are pid, pid + n_programs, ... (a block past the
    # end has every ray masked and contributes nothing)
    for step in range(0, blocks_per_program):
        block = pid + step * n_programs
        offs_r = block * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        mask_r = offs_r < n_rays
        batch = offs_r // tl.cast(rays_per_batch, tl.int64)
        plane_base = batch * s_pl_b
        gplane_base = batch * s_gpl_b
        mask_ro = mask_r[:, None] & mask_o[None, :]
        weight_rows = offs_r * (n_samples - 1)

        # ---- per-ray constants from the outputs and their gradients
        out_rows = (offs_r * n_out)[:, None] + offs_o[None, :]
        g_feat = tl.load(grad_features_ptr + out_rows, mask=mask_ro, other=0.0).to(tl.float32)
        feat = tl.load(features_ptr + out_rows, mask=mask_ro, other=0.0).to(tl.float32)
        g_depth = tl.load(grad_depth_ptr + offs_r, mask=mask_r, other=0.0).to(tl.float32)
        depth_raw = tl.load(depth_ptr + offs_r, mask=mask_r, other=0.0).to(tl.float32)
        if FULL_WEIGHTS:
            # Σ w and Σ w ∂L/∂w from the saved interval weights (no recomputation)
            total = tl.zeros((BLOCK_R,), tl.float32)
            weights_term = tl.zeros((BLOCK_R,), tl.float32)
            for k in range(0, S - 1):
                w_k = tl.load(weights_ptr + weight_rows + k, mask=mask_r, other=0.0)
                g_k = tl.load(grad_weights_ptr + weight_rows + k, mask=mask_r, other=0.0)
                total += w_k.to(tl.float32)
                weights_term += w_k.to(tl.float32) * g_k.to(tl.float32)
            g_total = tl.zeros((BLOCK_R,), tl.float32)
        else:
            total = tl.load(weights_ptr + offs_r, mask=mask_r, other=0.0).to(tl.float32)
            g_total = tl.load(grad_weights_ptr + offs_r, mask=mask_r, other=0.0).to(tl.float32)
            weights_term = g_total * total
        # a NaN depth (Σ w = 0) passes no gradient; |x| <= FLT_MAX is false for NaN and ±inf
        depth_ok = tl.abs(depth_raw) <= _FLT_MAX
        g_depth = tl.where(depth_ok, g_depth, 0.0)
        depth_raw = tl.where(depth_ok, depth_raw, 0.0)
        safe_total = tl.where(depth_ok, total, 1.0)
        sum_g_feat = tl.sum(g_feat, axis=1)
        # γ_i = ∂L/∂w_i = k ⟨g_F, c_mid,i⟩ + a + b z_mid,i (+ ∂L/∂w_i)
        b_coef = g_depth / safe_total
        a_coef = -(g_depth * depth_raw) / safe_total + g_total
        if WHITE_BACK:
            a_coef -= scale * sum_g_feat
        # G = Σ_i w_i γ_i from the outputs (the depth terms cancel: Σ w z_mid / Σ w = depth)
        grand = tl.sum(g_feat * feat, axis=1) + weights_term
        if WHITE_BACK:
            grand += (shift - scale) * sum_g_feat
        else:
            grand += shift * sum_g_feat

        # ---- the sweep, front to back; sample i − 1 closes when interval i − 1 is known
        s_prev, live_prev, c_prev, dc_prev, h_prev, dh_prev, f_prev, z_prev, px_prev, py_prev, pz_prev = _render_sample(  # noqa: E501
            0, offs_r, mask_r, n_samples, points_ptr, depths_ptr, noise_ptr, planes_ptr, plane_base,
            proj_ptr, D, H, W, s_pl_p, s_pl_d, s_pl_h, s_pl_w, col, mask_c, w1_ptr, b1_ptr, w2_ptr,
            b2_ptr, C, HIDDEN, CO, crop_limit, P, TRILINEAR, HAS_NOISE, USE_CROP, ACTIVATION,
            HALF_DOT, DOT_PRECISION, BLOCK_R, BLOCK_C, BLOCK_H, BLOCK_O,
        )  # fmt: skip
        transmittance = tl.full((BLOCK_R,), 1.0, tl.float32)
        prefix = tl.zeros((BLOCK_R,), tl.float32)
        gx_prev = tl.zeros((BLOCK_R,), tl.float32)  # ∂L/∂x of the interval before the sample
        w_prev = tl.zeros((BLOCK_R,), tl.float32)
        for i in range(1, S):
            s_next, live_next, c_next, dc_next, h_next, dh_next, f_next, z_next, px_next, py_next, pz_next = _render_sample(  # noqa: E501
                i, offs_r, mask_r, n_samples, points_ptr, depths_ptr, noise_ptr, planes_ptr,
                plane_base, proj_ptr, D, H, W, s_pl_p, s_pl_d, s_pl_h, s_pl_w, col, mask_c, w1_ptr,
                b1_ptr, w2_ptr, b2_ptr, C, HIDDEN, CO, crop_limit, P, TRILINEAR, HAS_NOISE,
                USE_CROP, ACTIVATION, HALF_DOT, DOT_PRECISION, BLOCK_R, BLOCK_C, BLOCK_H, BLOCK_O,
            )  # fmt: skip
            alpha, e, p, dtau = _interval(s_prev, s_next, z_prev, z_next)
            weight = alpha * transmittance
            gamma = scale * tl.sum(g_feat * ((c_prev + c_next) / 2), axis=1)
            gamma += a_coef + b_coef * ((z_prev + z_next) / 2)
            if FULL_WEIGHTS:
                g_w = tl.load(grad_weights_ptr + weight_rows + (i - 1), mask=mask_r, other=0.0)
                gamma += g_w.to(tl.float32)
            prefix += weight * gamma
            gx = (gamma * e * transmittance - (e / p) * (grand - prefix)) * dtau

            acc_w1, acc_b1, acc_w2, acc_w2s, acc_b2o, acc_b2s = _close_sample(
                i - 1, 0.5 * (gx_prev + gx), (0.5 * scale) * (w_prev + weight)[:, None] * g_feat,
                live_prev, dc_prev, h_prev, dh_prev, f_prev, px_prev, py_prev, pz_prev, w1_ptr,
                b1_ptr, w2_ptr, b2_ptr, HIDDEN, CO, acc_w1, acc_b1, acc_w2, acc_w2s, acc_b2o,
                acc_b2s, offs_r, mask_r, n_samples, planes_ptr, grad_planes_ptr, grad_points_ptr,
                grad_samples_ptr, plane_base, gplane_base, proj_ptr, D, H, W, s_pl_p, s_pl_d,
                s_pl_h, s_pl_w, s_gpl_p, s_gpl_d, s_gpl_h, s_gpl_w, col, gcol, offs_c, mask_c, C,
                P, TRILINEAR, DETERMINISTIC, HALF_DOT, DOT_PRECISION, BLOCK_R, BLOCK_C, BLOCK_H,
                BLOCK_O,
            )  # fmt: skip

            transmittance = transmittance * p
            gx_prev, w_prev = gx, weight
            s_prev, live_prev, c_prev, dc_prev, z_prev = s_next, live_next, c_next, dc_next, z_next
            h_prev, dh_prev, f_prev = h_next, dh_next, f_next
            px_prev, py_prev, pz_prev = px_next, py_next, pz_next

        # the last sample belongs to one interval only
        acc_w1, acc_b1, acc_w2, acc_w2s, acc_b2o, acc_b2s = _close_sample(
            n_samples - 1, 0.5 * gx_prev, (0.5 * scale) * w_prev[:, None] * g_feat, live_prev,
            dc_prev, h_prev, dh_prev, f_prev, px_prev, py_prev, pz_prev, w1_ptr, b1_ptr, w2_ptr,
            b2_ptr, HIDDEN, CO, acc_w1, acc_b1, acc_w2, acc_w2s, acc_b2o, acc_b2s, offs_r, mask_r,
            n_samples, planes_ptr, grad_planes_ptr, grad_points_ptr, grad_samples_ptr,
            plane_base, gplane_base, proj_ptr, D, H, W, s_pl_p, s_pl_d, s_pl_h, s_pl_w, s_gpl_p,
            s_gpl_d, s_gpl_h, s_gpl_w, col, gcol, offs_c, mask_c, C, P, TRILINEAR, DETERMINISTIC,
            HALF_DOT, DOT_PRECISION, BLOCK_R, BLOCK_C, BLOCK_H, BLOCK_O,
        )  # fmt: skip

    # ---- this program's decoder-weight gradients: one row of the partial buffer, laid out
    # as [W1 (Hd, C) | b1 (Hd) | W2 (1 + Co, Hd) | b2 (1 + Co)]; torch sums the rows
    n_hidden = tl.cast(HIDDEN, tl.int64)
    n_channels = tl.cast(C, tl.int64)
    row = partial_ptr + pid * (n_hidden * n_channels + n_hidden + (1 + n_out) * (n_hidden + 1))
    tl.store(
        row + offs_h[:, None] * n_channels + offs_c[None, :],
        acc_w1,
        mask=mask_h[:, None] & mask_c[None, :],
    )
    row += n_hidden * n_channels
    tl.store(row + offs_h, acc_b1, mask=mask_h)
    row += n_hidden
    tl.store(row + offs_h, acc_w2s, mask=mask_h)
    tl.store(
        row + (1 + offs_o[:, None]) * n_hidden + offs_h[None, :],
        acc_w2,
        mask=mask_o[:, None] & mask_h[None, :],
    )
    row += (1 + n_out) * n_hidden
    tl.store(row, tl.sum(acc_b2s, axis=0))
    tl.store(row + 1 + offs_o, acc_b2o, mask=mask_o)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _pow2(n: int) -> int:
    """Padded tile size: the next power of two, at least 16 (the smallest tl.dot operand)."""
    return max(16, triton.next_power_of_2(max(n, 1)))


def _block_rays(n_rays: int, backward: bool) -> tuple[int, int]:
    """``(BLOCK_R, num_warps)``: see the module docstring."""
    if _interpreting():
        # the interpreter's cost is per program instance: one large block
        return min(_pow2(n_rays), 64), 4
    return 16, 8  # see the module docstring's ptxas table


def _dot_config(planes: torch.Tensor) -> tuple[bool, str]:
    """``(HALF_DOT, input_precision)``: half operands for half planes, else fp32.

    Under the interpreter bfloat16 operands stay fp32: Triton 3.9's interpreter computes a
    bfloat16 ``tl.dot`` wrongly (garbage of order 1e10 on a 16 × 16 product) and truncates
    float32 -> bfloat16 casts instead of rounding them; its float16 dot is right.
    """
    half = planes.dtype == torch.float16 or (planes.dtype == torch.bfloat16 and not _interpreting())
    precision = "ieee" if _interpreting() else FP32_DOT_PRECISION
    return half, precision


def _check_activation(color_activation: int) -> int:
    if color_activation not in (0, 1, 2):
        raise ValueError(
            f"color_activation must be 0 (sigmoid), 1 (none) or 2 (lrelu), got {color_activation}"
        )
    return int(color_activation)


def _sizes(planes, points, w1, w2):
    batch, n_planes, depth, height, width, channels = planes.shape
    rays, samples = points.shape[1], points.shape[2]
    hidden = w1.shape[0]
    out = w2.shape[0] - 1
    return batch, n_planes, depth, height, width, channels, rays, samples, hidden, out


def render_rays_forward(
    planes: torch.Tensor,
    points: torch.Tensor,
    depths: torch.Tensor,
    proj: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    noise: torch.Tensor,
    trilinear: bool,
    use_crop: bool,
    crop_limit: float,
    white_back: bool,
    scale_rgb: bool,
    color_activation: int,
    full_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features (B, R, Co), depth_raw (B, R, 1), weights)`` in the points' dtype.

    ``planes`` ``(B, P, D, H, W, C)`` channels-last (float32 / bfloat16 / float16);
    ``points`` ``(B, R, S, 3)``, ``depths`` ``(B, R, S)``, ``proj`` ``(P, 3, 3)``, the
    decoder's effective weights ``w1 (Hd, C)``, ``b1 (Hd,)``, ``w2 (1 + Co, Hd)``,
    ``b2 (1 + Co,)`` and ``noise`` ``(B, R, S)`` (numel 0: none), all float32 and contiguous.
    ``weights`` is ``Σ w`` ``(B, R, 1)``, or ``(B, R, S − 1)`` with ``full_weights``;
    ``depth_raw = Σ w z_mid / Σ w`` unclamped (NaN for an empty ray).
    """
    batch, n_planes, depth, height, width, channels, rays, samples, hidden, out = _sizes(
        planes, points, w1, w2
    )
    device, dtype = points.device, points.dtype
    features = empty_output((batch, rays, out), dtype=dtype, device=device)
    depth_raw = empty_output((batch, rays, 1), dtype=dtype, device=device)
    n_weights = samples - 1 if full_weights else 1
    weights = empty_output((batch, rays, n_weights), dtype=dtype, device=device)
    n_rays = batch * rays
    if n_rays == 0:
        return features, depth_raw, weights

    has_noise = noise.numel() > 0
    half_dot, precision = _dot_config(planes)
    block_r, num_warps = _block_rays(n_rays, backward=False)
    with _device_guard(points):
        _render_forward_kernel[(triton.cdiv(n_rays, block_r),)](
            planes,
            points,
            depths,
            proj,
            w1,
            b1,
            w2,
            b2,
            noise if has_noise else depths,  # never read without noise
            features,
            depth_raw,
            weights,
            n_rays,
            rays,
            samples,
            channels,
            hidden,
            out,
            depth,
            height,
            width,
            *planes.stride(),
            float(crop_limit),
            P=n_planes,
            TRILINEAR=bool(trilinear),
            HAS_NOISE=has_noise,
            USE_CROP=bool(use_crop),
            WHITE_BACK=bool(white_back),
            SCALE_RGB=bool(scale_rgb),
            ACTIVATION=_check_activation(color_activation),
            FULL_WEIGHTS=bool(full_weights),
            HALF_DOT=half_dot,
            DOT_PRECISION=precision,
            BLOCK_R=block_r,
            BLOCK_C=_pow2(channels),
            BLOCK_H=_pow2(hidden),
            BLOCK_O=_pow2(out),
            num_warps=num_warps,
            num_stages=_NUM_STAGES,
        )
    return features, depth_raw, weights


def _backward_programs(n_blocks: int, device: torch.device) -> int:
    """Persistent grid size: enough programs to fill the GPU, few enough that the per-program
    weight-gradient partials stay small (4 per SM); one per block under the interpreter."""
    if _interpreting() or device.type != "cuda":
        return n_blocks
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_blocks, 4 * sms))


def render_rays_backward(
    grad_features: torch.Tensor,
    grad_depth_raw: torch.Tensor,
    grad_weights: torch.Tensor,
    planes: torch.Tensor,
    points: torch.Tensor,
    depths: torch.Tensor,
    proj: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    noise: torch.Tensor,
    features: torch.Tensor,
    depth_raw: torch.Tensor,
    weights: torch.Tensor,
    trilinear: bool,
    use_crop: bool,
    crop_limit: float,
    white_back: bool,
    scale_rgb: bool,
    color_activation: int,
    full_weights: bool,
    deterministic: bool,
) -> tuple[torch.Tensor, ...]:
    """``(grad_planes, grad_points, grad_w1, grad_b1, grad_w2, grad_b2)``.

    ``grad_planes`` is float32 in the planes' shape; the others are in the points' dtype.
    Inputs as :func:`render_rays_forward`'s plus its outputs and their gradients (contiguous,
    zeros for an unused output). ``deterministic``: bit-identical ``grad_planes`` run to run
    (see the module docstring for its cost).
    """
    batch, n_planes, depth, height, width, channels, rays, samples, hidden, out = _sizes(
        planes, points, w1, w2
    )
    device, dtype = points.device, points.dtype
    # scatter-added: must start from zero
    grad_planes = torch.zeros(planes.shape, dtype=torch.float32, device=device)
    grad_points = empty_output(points.shape, dtype=dtype, device=device)
    n_rays = batch * rays
    if n_rays == 0:
        return (
            grad_planes,
            grad_points,
            torch.zeros_like(w1),
            torch.zeros_like(b1),
            torch.zeros_like(w2),
            torch.zeros_like(b2),
        )

    has_noise = noise.numel() > 0
    half_dot, precision = _dot_config(planes)
    block_r, num_warps = _block_rays(n_rays, backward=True)
    n_blocks = triton.cdiv(n_rays, block_r)
    n_programs = _backward_programs(n_blocks, device)
    row = hidden * channels + hidden + (1 + out) * (hidden + 1)
    # every program writes its whole row
    partial = empty_output((n_programs, row), dtype=torch.float32, device=device)
    if deterministic:
        grad_samples = empty_output(
            (n_rays * samples, channels), dtype=torch.float32, device=device
        )
    else:
        grad_samples = grad_planes  # never written without deterministic
    with _device_guard(points):
        _render_backward_kernel[(n_programs,)](
            grad_features,
            grad_depth_raw,
            grad_weights,
            planes,
            points,
            depths,
            proj,
            w1,
            b1,
            w2,
            b2,
            noise if has_noise else depths,  # never read without noise
            features,
            depth_raw,
            weights,
            grad_planes,
            grad_points,
            grad_samples,
            partial,
            n_rays,
            rays,
            triton.cdiv(n_blocks, n_programs),
            samples,
            channels,
            hidden,
            out,
            depth,
            height,
            width,
            *planes.stride(),
            *grad_planes.stride(),
            float(crop_limit),
            P=n_planes,
            TRILINEAR=bool(trilinear),
            HAS_NOISE=has_noise,
            USE_CROP=bool(use_crop),
            WHITE_BACK=bool(white_back),
            SCALE_RGB=bool(scale_rgb),
            ACTIVATION=_check_activation(color_activation),
            FULL_WEIGHTS=bool(full_weights),
            DETERMINISTIC=bool(deterministic),
            HALF_DOT=half_dot,
            DOT_PRECISION=precision,
            BLOCK_R=block_r,
            BLOCK_C=_pow2(channels),
            BLOCK_H=_pow2(hidden),
            BLOCK_O=_pow2(out),
            num_warps=num_warps,
            num_stages=_NUM_STAGES,
        )
    if deterministic:
        _scatter_deterministic(grad_planes, grad_samples, points, proj, trilinear)

    sums = partial.sum(0)  # a fixed-order reduction over programs: deterministic
    w1_end = hidden * channels
    w2_end = w1_end + hidden + (1 + out) * hidden
    grad_w1 = sums[:w1_end].view(hidden, channels)
    grad_b1 = sums[w1_end : w1_end + hidden]
    grad_w2 = sums[w1_end + hidden : w2_end].view(1 + out, hidden)
    grad_b2 = sums[w2_end:]
    return (
        grad_planes,
        grad_points,
        grad_w1.to(w1.dtype).contiguous(),
        grad_b1.to(b1.dtype).contiguous(),
        grad_w2.to(w2.dtype).contiguous(),
        grad_b2.to(b2.dtype).contiguous(),
    )


# --------------------------------------------------------------------------------------------
# Deterministic plane gradients
# --------------------------------------------------------------------------------------------

# samples per index_add_ chunk: bounds the temporaries to ~ chunk × C × 4 bytes × a few
_SCATTER_CHUNK = 1 << 18


@contextlib.contextmanager
def _deterministic_algorithms():
    """``torch.use_deterministic_algorithms(True)`` for the block (index_add_ on CUDA is then
    deterministic), restoring the caller's setting."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _axis_corners(coordinate: torch.Tensor, size: int):
    """``[(index, weight, inside)]`` of the floor and floor + 1 corners of one axis, with the
    arithmetic of ``kernels/triplane.py``'s ``_axis_setup`` / ``_axis_corner``."""
    i = ((coordinate + 1.0) * float(size) - 1.0) * 0.5
    i0 = torch.floor(i)
    t = i - i0
    corners = []
    for d, w in ((0, 1.0 - t), (1, t)):
        index = i0 + d
        inside = (index >= 0.0) & (index <= size - 1.0)
        corners.append((torch.where(inside, index, 0.0).long(), w, inside))
    return corners


def _scatter_deterministic(
    grad_planes: torch.Tensor,
    grad_samples: torch.Tensor,
    points: torch.Tensor,
    proj: torch.Tensor,
    trilinear: bool,
) -> None:
    """``grad_planes += Σ_samples Σ_planes Σ_corners weight · grad_sample / P`` in a fixed order.

    ``grad_samples`` ``(B·R·S, C)``: each sample's ∂L/∂(mean feature), as the kernel wrote it.
    """
    batch, n_planes, depth, height, width, channels = grad_planes.shape
    flat = grad_planes.view(-1, channels)
    samples_per_batch = points.shape[1] * points.shape[2]
    xyz = points.reshape(-1, 3).to(torch.float32)
    proj = proj.to(torch.float32)
    with _deterministic_algorithms():
        for start in range(0, xyz.shape[0], _SCATTER_CHUNK):
            stop = min(start + _SCATTER_CHUNK, xyz.shape[0])
            px, py, pz = xyz[start:stop].unbind(1)
            g = grad_samples[start:stop] * (1.0 / n_planes)
            batch_index = torch.arange(start, stop, device=points.device) // samples_per_batch
            for p in range(n_planes):
                # the kernel's projection: x·m[0, k] + y·m[1, k] + z·m[2, k], in that order
                m = proj[p]
                gx = px * m[0, 0] + py * m[1, 0] + pz * m[2, 0]
                gy = px * m[0, 1] + py * m[1, 1] + pz * m[2, 1]
                x_corners = _axis_corners(gx, width)
                y_corners = _axis_corners(gy, height)
                if trilinear:
                    gz = px * m[0, 2] + py * m[1, 2] + pz * m[2, 2]
                    z_corners = _axis_corners(gz, depth)
                else:
                    zero = torch.zeros_like(batch_index)
                    z_corners = [(zero, torch.ones_like(gx), torch.ones_like(gx, dtype=bool))]
                plane_row = (batch_index * n_planes + p) * depth
                for zi, wz, ok_z in z_corners:
                    for yi, wy, ok_y in y_corners:
                        for xi, wx, ok_x in x_corners:
                            ok = ok_x & ok_y & ok_z
                            w = wx * wy
                            if trilinear:
                                w = w * wz
                            index = ((plane_row + zi) * height + yi) * width + xi
                            flat.index_add_(0, index[ok], w[ok, None] * g[ok])
