"""Triton kernels of attention-weighted embedding pooling (``portrait_engine.ops.attention_pool``).

What they compute (the contract is ``docs/kernel_contract_attention_pool.md``): RI's
perceptibility attention pooling. For every batch element b and attention map k, a softmax over
the L positions, ``a[b,k,l] = exp(s[b,k,l] - lse[b,k])``, weights the features:
``out[b,k,c] = sum_l a[b,k,l] * F[b,c,l]``. The backward kernel gives
``dF[b,c,l] = sum_k a[b,k,l] * g[b,k,c]`` and ``ds[b,k,l] = a * (t - delta)`` with
``t[b,k,l] = sum_c F[b,c,l] * g[b,k,c]`` and ``delta[b,k] = sum_c out[b,k,c] * g[b,k,c]``
(from the saved output: no second pass over the features).

Design:

* The K maps are a tile dimension (``BLOCK_K`` = next power of two >= K, masked), so the
  features are read once for all maps; the K-way products are broadcasts of a
  ``(BLOCK_K, BLOCK_C, BLOCK_L)`` tile reduced along one axis, and the launchers shrink the
  channel block as K grows to keep that tile's size fixed.
* Forward: one program per (b, channel block), looping over position blocks. The softmax
  statistics are computed first by a loop over the scores alone (K x L values, tiny next to
  the BLOCK_C x L features, and re-read from cache by the second loop): an *element-wise*
  online max and rescaled sum per lane of a ``(BLOCK_K, BLOCK_L)`` tile, reduced across lanes
  once at the end. That gives lse for any L (1 to 4096 and beyond) without overflow at
  |s| = 1e4; the second loop then forms the final weights ``exp((s - m) - log Z)`` directly
  (as accurate as ``torch.softmax``; ``exp(s - lse)`` would carry lse's fp32 rounding,
  |lse| * 6e-8, into every weight), so the output accumulator is never rescaled. lse is stored
  once, by the programs of channel block 0.
* Backward: one program per (b, position block), looping over *all* channel blocks. Every
  quantity is then local to a program: ``t`` for its positions sums over the channels of the
  loop, ``dF`` for (c, its positions) needs only a and g, ``delta`` is accumulated from the g
  and out blocks the loop loads anyway, and ``ds`` is written at the end. No cross-program
  reduction, no atomics, no workspace, and the features are read exactly once. (A split over
  channel blocks would need a second kernel or atomics to reduce t.) Position blocks are kept
  small on the GPU so that B * ceil(L / BLOCK_L) gives enough programs at the target sizes.
  The weights are ``exp(s - lse)`` from the saved fp32 lse, as the contract has it: their
  relative error is bounded by lse's rounding, about |lse| * 6e-8 (1e-5 at |s| ~ 100 with
  close scores), above that of an fp32 eager autograd.
* Either feature layout is read (and ``grad_features`` written) through its strides: (C*L, L, 1)
  for contiguous, (L*C, 1, C) for channels-last. Triton specialises unit strides, so the
  compiler sees which axis is contiguous and coalesces along it.
* Everything is accumulated in fp32 whatever the storage dtype; index math is int64 (program
  ids and strides are widened), every load and store is masked.
* Lanes outside the tile (padded maps, positions, channels) get weight exactly 0 through
  ``tl.where`` (and load -inf scores, whose exponential is 0 without overflow); the running max
  starts at the lowest finite float, so no ``-inf - (-inf)`` is ever formed. A map whose scores
  are all -inf gives NaN weights, as ``torch.softmax`` does.
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

_NEG_INF = tl.constexpr(float("-inf"))
# Lowest finite float32: the running max starts here rather than at -inf, so that
# ``m_lane - m_new`` is never ``-inf - (-inf)`` (every finite score is >= it).
_LOWEST = tl.constexpr(-3.4028234663852886e38)


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@triton.jit
def _attention_pool_forward_kernel(
    features_ptr,
    scores_ptr,
    out_ptr,
    lse_ptr,
    C,
    K,
    L,
    s_f_b,
    s_f_c,
    s_f_l,
    s_s_b,
    s_s_k,
    s_s_l,
    s_o_b,
    s_o_k,
    s_o_c,
    s_lse_b,
    s_lse_k,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    n_channels = tl.cast(C, tl.int64)
    n_maps = tl.cast(K, tl.int64)
    n_pos = tl.cast(L, tl.int64)
    s_f_b = tl.cast(s_f_b, tl.int64)
    s_f_c = tl.cast(s_f_c, tl.int64)
    s_f_l = tl.cast(s_f_l, tl.int64)
    s_s_b = tl.cast(s_s_b, tl.int64)
    s_s_k = tl.cast(s_s_k, tl.int64)
    s_s_l = tl.cast(s_s_l, tl.int64)
    s_o_b = tl.cast(s_o_b, tl.int64)
    s_o_k = tl.cast(s_o_k, tl.int64)
    s_o_c = tl.cast(s_o_c, tl.int64)
    s_lse_b = tl.cast(s_lse_b, tl.int64)
    s_lse_k = tl.cast(s_lse_k, tl.int64)

    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    mask_k = offs_k < n_maps
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    mask_c = offs_c < n_channels
    arange_l = tl.arange(0, BLOCK_L).to(tl.int64)
    score_rows = scores_ptr + b * s_s_b + (offs_k * s_s_k)[:, None]
    feature_rows = features_ptr + b * s_f_b + (offs_c * s_f_c)[:, None]

    # ---- softmax statistics: element-wise online max / rescaled sum, one lane per position
    m_lane = tl.full((BLOCK_K, BLOCK_L), _LOWEST, tl.float32)
    z_lane = tl.zeros((BLOCK_K, BLOCK_L), dtype=tl.float32)
    for l0 in range(0, n_pos, BLOCK_L):
        offs_l = l0 + arange_l
        mask_kl = mask_k[:, None] & (offs_l < n_pos)[None, :]
        s = tl.load(score_rows + (offs_l * s_s_l)[None, :], mask=mask_kl, other=_NEG_INF)
        s = s.to(tl.float32)
        # m_lane and m_new are finite, so the rescale factor is exp(<= 0); a -inf (or masked)
        # score adds exp(-inf) = 0
        m_new = tl.maximum(m_lane, s)
        z_lane = z_lane * tl.exp(m_lane - m_new) + tl.exp(s - m_new)
        m_lane = m_new
    m = tl.max(m_lane, axis=1)
    # lanes that saw no finite score have z_lane = 0; a map with no finite score gets Z = 0,
    # lse = -inf and NaN weights, like torch.softmax
    z = tl.sum(z_lane * tl.exp(m_lane - m[:, None]), axis=1)
    # padded maps get harmless finite statistics (their weights are zeroed below anyway)
    m = tl.where(mask_k, m, 0.0)
    log_z = tl.log(tl.where(mask_k, z, 1.0))
    lse = m + log_z

    # ---- weighted sum over positions for this channel block, all maps at once
    acc = tl.zeros((BLOCK_K, BLOCK_C), dtype=tl.float32)
    for l0 in range(0, n_pos, BLOCK_L):
        offs_l = l0 + arange_l
        mask_l = offs_l < n_pos
        mask_kl = mask_k[:, None] & mask_l[None, :]
        s = tl.load(score_rows + (offs_l * s_s_l)[None, :], mask=mask_kl, other=_NEG_INF)
        # (s - m) - log Z rather than s - lse: lse rounded to fp32 is off by up to
        # |lse| * 6e-8, which would scale every weight of the map by that much
        a = tl.where(mask_kl, tl.exp((s.to(tl.float32) - m[:, None]) - log_z[:, None]), 0.0)
        f = tl.load(
            feature_rows + (offs_l * s_f_l)[None, :],
            mask=mask_c[:, None] & mask_l[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(a[:, None, :] * f[None, :, :], axis=2)

    out_ptrs = out_ptr + b * s_o_b + (offs_k * s_o_k)[:, None] + (offs_c * s_o_c)[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_k[:, None] & mask_c[None, :])
    # every channel block computed the same lse: the first one stores it (the program-id test
    # is broadcast to a block first: the interpreter rejects a scalar bool & a block mask)
    first = (offs_k * 0 + pid_c) == 0
    tl.store(lse_ptr + b * s_lse_b + offs_k * s_lse_k, lse, mask=mask_k & first)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


@triton.jit
def _attention_pool_backward_kernel(
    grad_out_ptr,
    features_ptr,
    scores_ptr,
    lse_ptr,
    out_ptr,
    grad_features_ptr,
    grad_scores_ptr,
    C,
    K,
    L,
    s_go_b,
    s_go_k,
    s_go_c,
    s_f_b,
    s_f_c,
    s_f_l,
    s_s_b,
    s_s_k,
    s_s_l,
    s_lse_b,
    s_lse_k,
    s_o_b,
    s_o_k,
    s_o_c,
    s_gf_b,
    s_gf_c,
    s_gf_l,
    s_gs_b,
    s_gs_k,
    s_gs_l,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pid_l = tl.program_id(1).to(tl.int64)
    n_channels = tl.cast(C, tl.int64)
    n_maps = tl.cast(K, tl.int64)
    n_pos = tl.cast(L, tl.int64)
    s_go_b = tl.cast(s_go_b, tl.int64)
    s_go_k = tl.cast(s_go_k, tl.int64)
    s_go_c = tl.cast(s_go_c, tl.int64)
    s_f_b = tl.cast(s_f_b, tl.int64)
    s_f_c = tl.cast(s_f_c, tl.int64)
    s_f_l = tl.cast(s_f_l, tl.int64)
    s_s_b = tl.cast(s_s_b, tl.int64)
    s_s_k = tl.cast(s_s_k, tl.int64)
    s_s_l = tl.cast(s_s_l, tl.int64)
    s_lse_b = tl.cast(s_lse_b, tl.int64)
    s_lse_k = tl.cast(s_lse_k, tl.int64)
    s_o_b = tl.cast(s_o_b, tl.int64)
    s_o_k = tl.cast(s_o_k, tl.int64)
    s_o_c = tl.cast(s_o_c, tl.int64)
    s_gf_b = tl.cast(s_gf_b, tl.int64)
    s_gf_c = tl.cast(s_gf_c, tl.int64)
    s_gf_l = tl.cast(s_gf_l, tl.int64)
    s_gs_b = tl.cast(s_gs_b, tl.int64)
    s_gs_k = tl.cast(s_gs_k, tl.int64)
    s_gs_l = tl.cast(s_gs_l, tl.int64)

    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    mask_k = offs_k < n_maps
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    mask_l = offs_l < n_pos
    mask_kl = mask_k[:, None] & mask_l[None, :]
    arange_c = tl.arange(0, BLOCK_C).to(tl.int64)

    # softmax weights of this position block, from the saved lse
    s = tl.load(
        scores_ptr + b * s_s_b + (offs_k * s_s_k)[:, None] + (offs_l * s_s_l)[None, :],
        mask=mask_kl,
        other=_NEG_INF,
    ).to(tl.float32)
    lse = tl.load(lse_ptr + b * s_lse_b + offs_k * s_lse_k, mask=mask_k, other=0.0)
    a = tl.where(mask_kl, tl.exp(s - lse.to(tl.float32)[:, None]), 0.0)

    go_rows = grad_out_ptr + b * s_go_b + (offs_k * s_go_k)[:, None]
    out_rows = out_ptr + b * s_o_b + (offs_k * s_o_k)[:, None]
    f_cols = features_ptr + b * s_f_b + (offs_l * s_f_l)[None, :]
    gf_cols = grad_features_ptr + b * s_gf_b + (offs_l * s_gf_l)[None, :]

    t = tl.zeros((BLOCK_K, BLOCK_L), dtype=tl.float32)
    delta_acc = tl.zeros((BLOCK_K, BLOCK_C), dtype=tl.float32)
    for c0 in range(0, n_channels, BLOCK_C):
        offs_c = c0 + arange_c
        mask_c = offs_c < n_channels
        mask_kc = mask_k[:, None] & mask_c[None, :]
        mask_cl = mask_c[:, None] & mask_l[None, :]
        g = tl.load(go_rows + (offs_c * s_go_c)[None, :], mask=mask_kc, other=0.0)
        g = g.to(tl.float32)
        o = tl.load(out_rows + (offs_c * s_o_c)[None, :], mask=mask_kc, other=0.0)
        delta_acc += g * o.to(tl.float32)
        f = tl.load(f_cols + (offs_c * s_f_c)[:, None], mask=mask_cl, other=0.0).to(tl.float32)
        # t[k, l] = sum_c g[k, c] f[c, l]. Written as a broadcast product summed over its middle
        # axis, Triton (3.6 and 3.9) turns this into a tensor-core dot with TF32 inputs once
        # every block is >= 16: 1e-3 errors in grad_scores at K = 11 on an H200. An explicit
        # IEEE-fp32 dot where a dot is allowed; the broadcast sum (never converted) elsewhere.
        if BLOCK_K >= 16 and BLOCK_C >= 16 and BLOCK_L >= 16:
            t += tl.dot(g, f, input_precision="ieee")
        else:
            t += tl.sum(g[:, :, None] * f[None, :, :], axis=1)
        df = tl.sum(g[:, :, None] * a[:, None, :], axis=0)
        tl.store(
            gf_cols + (offs_c * s_gf_c)[:, None],
            df.to(grad_features_ptr.dtype.element_ty),
            mask=mask_cl,
        )

    delta = tl.sum(delta_acc, axis=1)
    ds = a * (t - delta[:, None])
    tl.store(
        grad_scores_ptr + b * s_gs_b + (offs_k * s_gs_k)[:, None] + (offs_l * s_gs_l)[None, :],
        ds.to(grad_scores_ptr.dtype.element_ty),
        mask=mask_kl,
    )


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _blocks(maps: int, channels: int, positions: int, backward: bool) -> tuple[int, int, int, int]:
    """``(BLOCK_K, BLOCK_C, BLOCK_L, num_warps)`` for one launch (one configuration per mode)."""
    block_k = triton.next_power_of_2(max(maps, 1))
    c_pow2 = triton.next_power_of_2(max(channels, 1))
    l_pow2 = triton.next_power_of_2(max(positions, 1))
    if _interpreting():
        # the interpreter's cost is per program instance (numpy does a tile in one call): few,
        # large programs; the caps keep the (BLOCK_K, BLOCK_C, BLOCK_L) temporaries small
        block_c = min(c_pow2, 256)
        block_l = min(l_pow2, max(16, 65536 // (block_k * block_c)))
        return block_k, block_c, block_l, 4
    # GPU (checked by compiling for sm_90 at the target sizes, both layouts, fp32 and bf16:
    # no spills, 40-80 registers at K = 1): the (BLOCK_K, BLOCK_C, BLOCK_L) product tile is
    # held at 2048 elements, 16 fp32 values per thread at 4 warps. Twice that tile needed
    # 128 (forward) and 210 (backward) registers for contiguous features, whose unaligned
    # rows (L = 49) gather element by element with one 64-bit address each; that would cut
    # the resident programs per SM, and with them the loads in flight (a judgement from the
    # compile report: no GPU timing was available when these were chosen).
    budget = 2048
    if backward:
        # grid (B, ceil(L / BLOCK_L)), channels looped: small position blocks give enough
        # programs at the target sizes (B=512, L=49: 1024; B=256, L=196: 1792)
        block_l = min(l_pow2, 32)
    else:
        # grid (B, ceil(C / BLOCK_C)), positions looped: L=49 is a single 64-wide step
        block_l = min(l_pow2, 64)
    # the channel block shrinks as K grows (16 at least, so rows stay >= 32-byte sectors in
    # channels-last), then the position block if the tile is still over budget (K = 8)
    block_c = min(c_pow2, max(16, budget // (block_k * block_l)), 1024)
    block_l = min(block_l, max(16, budget // (block_k * block_c)))
    return block_k, block_c, block_l, 4


def attention_pool_forward(
    features: torch.Tensor, scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)``: ``out`` ``(B, K, C)`` in the input dtype, ``lse`` ``(B, K)`` float32.

    ``features`` ``(B, C, L)`` with any strides, ``scores`` ``(B, K, L)`` of the same dtype
    (see ``docs/kernel_contract_attention_pool.md``).
    """
    batch, channels, positions = features.shape
    maps = scores.shape[1]
    out = empty_output((batch, maps, channels), dtype=features.dtype, device=features.device)
    if batch == 0 or channels == 0:
        # no launch; with C == 0 the softmax statistics still exist, and are cheap here
        lse = torch.logsumexp(scores.float(), dim=-1).contiguous()
        return out, lse
    lse = empty_output((batch, maps), dtype=torch.float32, device=features.device)

    block_k, block_c, block_l, num_warps = _blocks(maps, channels, positions, backward=False)
    grid = (batch, triton.cdiv(channels, block_c))
    with _device_guard(features):
        _attention_pool_forward_kernel[grid](
            features,
            scores,
            out,
            lse,
            channels,
            maps,
            positions,
            *features.stride(),
            *scores.stride(),
            *out.stride(),
            *lse.stride(),
            BLOCK_K=block_k,
            BLOCK_C=block_c,
            BLOCK_L=block_l,
            num_warps=num_warps,
        )
    return out, lse


def _grad_features_like(features: torch.Tensor) -> torch.Tensor:
    """Uninitialised ``(B, C, L)`` gradient with the layout of ``features`` (contract rule)."""
    batch, channels, positions = features.shape
    if features.stride(1) == 1 and channels > 1:
        # channels-last: a contiguous (B, L, C) tensor seen as (B, C, L)
        return empty_output(
            (batch, positions, channels), dtype=features.dtype, device=features.device
        ).permute(0, 2, 1)
    return empty_output((batch, channels, positions), dtype=features.dtype, device=features.device)


def attention_pool_backward(
    grad_out: torch.Tensor,
    features: torch.Tensor,
    scores: torch.Tensor,
    lse: torch.Tensor,
    out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_features, grad_scores)`` in the input dtype.

    ``grad_features`` is ``(B, C, L)`` in the layout of ``features`` (a permuted contiguous
    ``(B, L, C)`` for channels-last), ``grad_scores`` ``(B, K, L)`` contiguous.
    """
    batch, channels, positions = features.shape
    maps = scores.shape[1]
    grad_features = _grad_features_like(features)
    grad_scores = empty_output(
        (batch, maps, positions), dtype=features.dtype, device=features.device
    )
    if batch == 0 or channels == 0:
        # no channels: the output does not depend on the scores
        return grad_features, grad_scores.zero_()

    block_k, block_c, block_l, num_warps = _blocks(maps, channels, positions, backward=True)
    grid = (batch, triton.cdiv(positions, block_l))
    with _device_guard(features):
        _attention_pool_backward_kernel[grid](
            grad_out,
            features,
            scores,
            lse,
            out,
            grad_features,
            grad_scores,
            channels,
            maps,
            positions,
            *grad_out.stride(),
            *features.stride(),
            *scores.stride(),
            *lse.stride(),
            *out.stride(),
            *grad_features.stride(),
            *grad_scores.stride(),
            BLOCK_K=block_k,
            BLOCK_C=block_c,
            BLOCK_L=block_l,
            num_warps=num_warps,
        )
    return grad_features, grad_scores
