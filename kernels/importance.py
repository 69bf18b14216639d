"""Triton kernels of importance sampling and sample merging (``portrait_engine.ops.importance``).

What they compute (the contract is ``docs/kernel_contract_importance.md``, the formulas are in
``portrait_engine/ops/reference/importance.py``):

* ``sample_importance``: for each ray, EG3D's smoothed weights (max-pool 2 with -inf padding,
  avg-pool 2, + 0.01), the K = S - 3 inner bins (+ 1e-5), their cdf, and for every draw u the
  inverse-CDF sample ``m[below] + (u - cdf[below]) / denom · (m[above] - m[below])`` with
  ``below, above`` from ``searchsorted(cdf, u, right=True)``. With ``sort`` the draws sorted
  first and a running maximum along the ray.
* ``merge_index``: the merged position of every sample of two sorted lists per ray,
  ``i + #{j : d2[j] < d1[i]}`` and ``j + #{i : d1[i] <= d2[j]}`` (ties: the first list first).
* ``merge_scatter`` / ``merge_gather``: copy rows of C channels to / from those positions.

Design:

* One program owns ``BLOCK_R`` whole rays (their S samples fit one ``BLOCK_S`` tile), so the
  cdf is built in registers: the pooled neighbours are three shifted masked loads, the cdf a
  ``tl.cumsum`` along the tile. The search is a count over a ``(BLOCK_R, BLOCK_D, BLOCK_S)``
  broadcast (``cdf <= u``, int32) rather than a loop of dependent loads; the two cdf entries it
  needs come from the same comparison mask: the cdf is non-decreasing (a cumulative sum of
  positive bin weights, each at least 0.01 / Σ, far above an ulp), so ``cdf[index - 1]`` is the
  largest entry ``<= u`` (a max) and ``cdf[index]`` the smallest ``> u`` (a min): the entries
  themselves, no arithmetic on them. The midpoints are gathered from global memory (depths are
  tiny and cache-resident).
* ``sort``: where the whole row of draws fits one ``BLOCK_D`` tile beside the cdf
  (``next_pow2(n) · BLOCK_S <= 8192``: EG3D's 48 draws with up to 128 coarse samples), the
  kernel sorts it in registers (``tl.sort``, a bitonic network along the draw axis; padding is
  +inf, so it sorts last and is never stored) and takes the running maximum with one
  ``associative_scan``: no separate sort launch, no sorted copy of ``u`` in memory. Longer
  rows keep the launcher's ``torch.sort`` and loop over ``BLOCK_D`` blocks, the running maximum
  carried across blocks.
* The merge rank is the same count, over a ``(BLOCK_R, S1, S2)`` broadcast: S1, S2 are the
  48 + 48 of EG3D, so this is cheaper than a search and needs no sort.
* The copies are a permutation of whole rows, so they must run at copy bandwidth; both are
  flat streams over the *destination*, ``BLOCK`` consecutive elements per program, with S1, S2
  and C constexpr (the divisions by them become multiplies) and int32 offsets whenever the
  tensors allow (``WIDE`` switches to int64 above 2^31 elements):

  - scatter (forward): merged element e is row ``e // C``, channel ``e % C``; the row's source
    comes from the inverse permutation (``_merge_inverse_kernel``: merged row -> i, or S1 + j
    for the second list, built per scatter call from the positions, N (S1 + S2) int32), and
    the element is loaded from that list. The output is written once, in contiguous tiles
    (vectorised stores): the old source-major scatter wrote every merged ray from two
    launches, half its rows each, so the L2 saw partially written sectors.
  - gather (backward): one launch for both gradients. Its element space is, per ray, that
    ray's S1 C elements of ``grad1`` followed by its S2 C elements of ``grad2``: a program
    writes contiguous runs of both and reads the merged ray (a copy-sized read, the rows in
    positions' order) while it is hot in L1 / L2, rather than each list reading it in its own
    launch.

  Each destination element has exactly one source: no atomics, deterministic forward and
  backward. A position outside ``0..S1+S2-1`` (outside the contract) is clamped, never read out
  of bounds.
* fp16 / bf16 / fp32 storage; all math in fp32; every access masked.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from portrait_engine.kernels._alloc import empty_output
from portrait_engine.kernels._launch import device_guard as _device_guard
from portrait_engine.kernels._launch import interpreting as _interpreting

_NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _sample_importance_kernel(
    depths_ptr,
    weights_ptr,
    u_ptr,
    out_ptr,
    N,
    S,
    D,
    SORT: tl.constexpr,
    SORT_IN_KERNEL: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n_rays = tl.cast(N, tl.int64)
    n_samples = tl.cast(S, tl.int64)
    n_draws = tl.cast(D, tl.int64)
    n_weights = n_samples - 1
    n_bins = tl.maximum(n_samples - 3, 0)

    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    mask_r = offs_r < n_rays
    offs_k = tl.arange(0, BLOCK_S).to(tl.int64)  # bin k uses the smoothed weight k + 1
    mask_k = offs_k < n_bins
    mask_rk = mask_r[:, None] & mask_k[None, :]

    # smoothed weight j = k + 1: its neighbours j - 1 = k and j + 1 = k + 2 (always in range
    # for an inner bin, so the -inf padding of the pooling never enters a bin)
    w_rows = weights_ptr + (offs_r * n_weights)[:, None]
    w_left = tl.load(w_rows + offs_k[None, :], mask=mask_rk, other=0.0).to(tl.float32)
    w_here = tl.load(w_rows + (offs_k + 1)[None, :], mask=mask_rk, other=0.0).to(tl.float32)
    w_right = tl.load(w_rows + (offs_k + 2)[None, :], mask=mask_rk, other=0.0).to(tl.float32)
    smoothed = (tl.maximum(w_left, w_here) + tl.maximum(w_here, w_right)) * 0.5 + 0.01
    bin_weight = tl.where(mask_rk, smoothed + 1e-5, 0.0)
    total = tl.sum(bin_weight, axis=1)
    total = tl.where(total > 0.0, total, 1.0)  # rays without bins: an all-zero cdf tail
    cdf_next = tl.cumsum(bin_weight / total[:, None], axis=1)  # cdf[k + 1]
    cdf_next = tl.where(mask_rk, cdf_next, float("inf"))  # padded entries never <= u
    last_bin = n_bins.to(tl.int32)

    z_rows = depths_ptr + (offs_r * n_samples)[:, None]
    running = tl.full((BLOCK_R,), _NEG_INF, tl.float32)
    arange_d = tl.arange(0, BLOCK_D).to(tl.int64)
    for d0 in range(0, n_draws, BLOCK_D):  # one block when SORT_IN_KERNEL
        offs_d = d0 + arange_d
        mask_rd = mask_r[:, None] & (offs_d < n_draws)[None, :]
        u_offsets = (offs_r * n_draws)[:, None] + offs_d[None, :]
        # padding +inf: sorted to the end of the row, past the n draws, then 0 (no inf - inf)
        u = tl.load(u_ptr + u_offsets, mask=mask_rd, other=float("inf")).to(tl.float32)
        if SORT_IN_KERNEL:
            u = tl.sort(u, 1)
        u = tl.where(mask_rd, u, 0.0)
        # searchsorted(cdf, u, right=True): cdf[0] = 0 <= u always counts
        at_most = cdf_next[:, None, :] <= u[:, :, None]  # (BLOCK_R, BLOCK_D, BLOCK_S)
        index = 1 + tl.sum(at_most.to(tl.int32), axis=2)
        below = index - 1
        above = tl.minimum(index, last_bin)
        # the non-decreasing cdf: cdf[index - 1] is the largest entry <= u (cdf[0] = 0 when
        # none of cdf[1..K] is), cdf[index] the smallest entry > u; index = K + 1 (every entry
        # <= u) clamps above to K = below
        cdf_below = tl.max(tl.where(at_most, cdf_next[:, None, :], 0.0), axis=2)
        cdf_above = tl.min(tl.where(at_most, float("inf"), cdf_next[:, None, :]), axis=2)
        cdf_above = tl.where(index > last_bin, cdf_below, cdf_above)
        denom = cdf_above - cdf_below
        denom = tl.where(denom < 1e-5, 1.0, denom)
        z_b0 = tl.load(z_rows + below, mask=mask_rd, other=0.0).to(tl.float32)
        z_b1 = tl.load(z_rows + below + 1, mask=mask_rd, other=0.0).to(tl.float32)
        z_a0 = tl.load(z_rows + above, mask=mask_rd, other=0.0).to(tl.float32)
        z_a1 = tl.load(z_rows + above + 1, mask=mask_rd, other=0.0).to(tl.float32)
        m_below = 0.5 * (z_b0 + z_b1)
        m_above = 0.5 * (z_a0 + z_a1)
        t = m_below + (u - cdf_below) / denom * (m_above - m_below)
        if SORT:
            t = tl.maximum(tl.associative_scan(t, 1, _max_combine), running[:, None])
            running = tl.max(tl.where(mask_rd, t, _NEG_INF), axis=1)
        tl.store(out_ptr + u_offsets, t.to(out_ptr.dtype.element_ty), mask=mask_rd)


@triton.jit
def _merge_index_kernel(
    d1_ptr,
    d2_ptr,
    p1_ptr,
    p2_ptr,
    N,
    S1,
    S2,
    BLOCK_R: tl.constexpr,
    BLOCK_1: tl.constexpr,
    BLOCK_2: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n_rays = tl.cast(N, tl.int64)
    n1 = tl.cast(S1, tl.int64)
    n2 = tl.cast(S2, tl.int64)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    mask_r = offs_r < n_rays
    offs_1 = tl.arange(0, BLOCK_1).to(tl.int64)
    offs_2 = tl.arange(0, BLOCK_2).to(tl.int64)
    mask_1 = mask_r[:, None] & (offs_1 < n1)[None, :]
    mask_2 = mask_r[:, None] & (offs_2 < n2)[None, :]
    # padded entries: +inf, so they are never < or <= a real depth
    d1 = tl.load(d1_ptr + (offs_r * n1)[:, None] + offs_1[None, :], mask=mask_1, other=float("inf"))
    d2 = tl.load(d2_ptr + (offs_r * n2)[:, None] + offs_2[None, :], mask=mask_2, other=float("inf"))
    d1 = d1.to(tl.float32)
    d2 = d2.to(tl.float32)
    valid_1 = (offs_1 < n1)[None, :, None]
    valid_2 = (offs_2 < n2)[None, None, :]
    before_first = (d2[:, None, :] < d1[:, :, None]) & valid_2  # (R, S1, S2)
    rank1 = offs_1[None, :] + tl.sum(before_first.to(tl.int32), axis=2)
    before_second = (d1[:, :, None] <= d2[:, None, :]) & valid_1  # (R, S1, S2)
    rank2 = offs_2[None, :] + tl.sum(before_second.to(tl.int32), axis=1)
    tl.store(p1_ptr + (offs_r * n1)[:, None] + offs_1[None, :], rank1.to(tl.int32), mask=mask_1)
    tl.store(p2_ptr + (offs_r * n2)[:, None] + offs_2[None, :], rank2.to(tl.int32), mask=mask_2)


@triton.jit
def _flat_offsets(BLOCK: tl.constexpr, WIDE: tl.constexpr):
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _merge_inverse_kernel(
    positions1_ptr,
    positions2_ptr,
    inverse_ptr,
    ROWS1,
    ROWS2,
    S1: tl.constexpr,
    S2: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``inverse[r, pos1[r, i]] = i`` and ``inverse[r, pos2[r, j]] = S1 + j``: rows ``0..ROWS1``
    of the element space are the first list's, the next ``ROWS2`` the second's."""
    TOTAL: tl.constexpr = S1 + S2
    q = _flat_offsets(BLOCK, WIDE)
    in_first = q < ROWS1
    j = q - ROWS1
    in_second = (q >= ROWS1) & (j < ROWS2)
    position1 = tl.load(positions1_ptr + q, mask=in_first, other=0)
    position2 = tl.load(positions2_ptr + j, mask=in_second, other=0)
    ray1 = q
    ray2 = j
    if S1 > 0:  # an empty list has no rows (and no division by its zero length)
        ray1 = q // S1
    if S2 > 0:
        ray2 = j // S2
    ray = tl.where(in_first, ray1, ray2)
    code = tl.where(in_first, q - ray * S1, S1 + j - ray * S2)
    position = tl.where(in_first, position1, position2)
    valid = (in_first | in_second) & (position >= 0) & (position < TOTAL)
    tl.store(inverse_ptr + ray * TOTAL + position, code.to(tl.int32), mask=valid)


@triton.jit
def _merge_scatter_kernel(
    values1_ptr,
    values2_ptr,
    inverse_ptr,
    out_ptr,
    NUMEL,
    S1: tl.constexpr,
    S2: tl.constexpr,
    C: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``out`` ``(N, S1 + S2, C)`` element by element: its source row from ``inverse``."""
    TOTAL: tl.constexpr = S1 + S2
    e = _flat_offsets(BLOCK, WIDE)
    mask = e < NUMEL
    row = e // C
    c = e - row * C
    ray = row // TOTAL
    code = tl.load(inverse_ptr + row, mask=mask, other=0)
    code = tl.minimum(tl.maximum(code, 0), TOTAL - 1)
    from_first = code < S1
    x1 = tl.load(values1_ptr + (ray * S1 + code) * C + c, mask=mask & from_first)
    x2 = tl.load(values2_ptr + (ray * S2 + (code - S1)) * C + c, mask=mask & (code >= S1))
    tl.store(out_ptr + e, tl.where(from_first, x1, x2), mask=mask)


@triton.jit
def _merge_gather_kernel(
    grad_ptr,
    positions1_ptr,
    positions2_ptr,
    grad1_ptr,
    grad2_ptr,
    NUMEL,
    S1: tl.constexpr,
    S2: tl.constexpr,
    C: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``grad1[r, i] = grad[r, pos1[r, i]]``, ``grad2[r, j] = grad[r, pos2[r, j]]``; element v of
    the space is ray ``v // ((S1 + S2) C)``, then ``grad1``'s S1 C elements and ``grad2``'s."""
    TOTAL: tl.constexpr = S1 + S2
    v = _flat_offsets(BLOCK, WIDE)
    mask = v < NUMEL
    ray = v // (TOTAL * C)
    w = v - ray * (TOTAL * C)  # element within the ray: grad1's first
    in_first = w < S1 * C
    w2 = w - S1 * C
    row1 = w // C
    row2 = w2 // C
    c = tl.where(in_first, w - row1 * C, w2 - row2 * C)
    position1 = tl.load(positions1_ptr + ray * S1 + row1, mask=mask & in_first, other=0)
    position2 = tl.load(positions2_ptr + ray * S2 + row2, mask=mask & (w2 >= 0), other=0)
    position = tl.minimum(tl.maximum(tl.where(in_first, position1, position2), 0), TOTAL - 1)
    x = tl.load(grad_ptr + (ray * TOTAL + position) * C + c, mask=mask)
    tl.store(grad1_ptr + ray * (S1 * C) + w, x, mask=mask & in_first)
    tl.store(grad2_ptr + ray * (S2 * C) + w2, x, mask=mask & (w2 >= 0))


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


# Largest (BLOCK_D, BLOCK_S) comparison tile per ray for which the sort runs in the kernel
# (a whole row of draws in one block), and the (BLOCK_R, BLOCK_D, BLOCK_S) tile otherwise.
_SORT_TILE = 8192
_SEARCH_TILE = 4096
# The interpreter runs a program in ~30 ms whatever its size: fewer, larger programs.
_INTERPRET_TILE = 65536


def _importance_blocks(
    rays: int, samples: int, draws: int, sort: bool
) -> tuple[int, int, int, bool, int]:
    """``(BLOCK_R, BLOCK_S, BLOCK_D, SORT_IN_KERNEL, num_warps)`` of :func:`sample_importance`.

    The in-kernel sort at EG3D's 48 + 48 is a (1, 64, 64) tile; ptxas (Triton 3.6, sm_90) gives
    it 106 registers with 8 warps, 116 with 4 (both 16 resident warps per SM; no spills:
    ``tools/check_triton_compile.py --kernels importance``). Not yet timed on a GPU:
    ``tools/time_sample_importance.py --sweep`` times the alternatives.
    """
    block_s = triton.next_power_of_2(max(samples - 3, 1))
    row_d = triton.next_power_of_2(draws)
    interpreting = _interpreting()
    sort_tile = _INTERPRET_TILE if interpreting else _SORT_TILE
    if sort and row_d * block_s <= sort_tile:
        if interpreting:
            block_r = max(1, min(triton.next_power_of_2(rays), sort_tile // (row_d * block_s)))
        else:
            block_r = max(1, _SEARCH_TILE // (row_d * block_s))
        return block_r, block_s, row_d, True, 8
    if interpreting:
        block_r = max(1, min(triton.next_power_of_2(rays), 16384 // (block_s * 16)))
        block_d = min(row_d, max(16, _INTERPRET_TILE // (block_r * block_s)))
    else:
        # (BLOCK_R, BLOCK_D, BLOCK_S) comparison tile of about 4096 elements
        block_r = 4 if block_s <= 64 else 1
        block_d = min(row_d, max(1, _SEARCH_TILE // (block_r * block_s)))
    return block_r, block_s, block_d, False, 4


def sample_importance(
    depths: torch.Tensor, weights: torch.Tensor, u: torch.Tensor, sort: bool
) -> torch.Tensor:
    """``(N, n)`` samples in the dtype of ``depths`` (``(N, S)``), from ``weights`` ``(N, S-1)``
    and the float32 draws ``u`` ``(N, n)``; all contiguous. With ``sort`` each ray's draws are
    sorted first: in the kernel where a row of draws fits one block, else by ``torch.sort``."""
    rays, samples = depths.shape
    draws = u.shape[1]
    out = empty_output((rays, draws), dtype=depths.dtype, device=depths.device)
    if rays == 0 or draws == 0:
        return out
    block_r, block_s, block_d, sort_in_kernel, warps = _importance_blocks(
        rays, samples, draws, sort
    )
    if sort and not sort_in_kernel:
        u = torch.sort(u, dim=-1).values
    grid = (triton.cdiv(rays, block_r),)
    with _device_guard(depths):
        _sample_importance_kernel[grid](
            depths,
            weights,
            u,
            out,
            rays,
            samples,
            draws,
            SORT=bool(sort),
            SORT_IN_KERNEL=sort_in_kernel,
            BLOCK_R=block_r,
            BLOCK_S=block_s,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    return out


def merge_index(depths1: torch.Tensor, depths2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 merged positions ``(N, S1)`` and ``(N, S2)`` of two sorted contiguous lists."""
    rays, first = depths1.shape
    second = depths2.shape[1]
    positions1 = torch.empty((rays, first), dtype=torch.int32, device=depths1.device)
    positions2 = torch.empty((rays, second), dtype=torch.int32, device=depths1.device)
    if rays == 0 or first + second == 0:
        return positions1, positions2
    block_1 = triton.next_power_of_2(max(first, 1))
    block_2 = triton.next_power_of_2(max(second, 1))
    budget = 65536 if _interpreting() else 8192
    block_r = max(1, min(triton.next_power_of_2(rays), budget // (block_1 * block_2)))
    grid = (triton.cdiv(rays, block_r),)
    with _device_guard(depths1):
        _merge_index_kernel[grid](
            depths1,
            depths2,
            positions1,
            positions2,
            rays,
            first,
            second,
            BLOCK_R=block_r,
            BLOCK_1=block_1,
            BLOCK_2=block_2,
            num_warps=4,
        )
    return positions1, positions2


# int32 offsets up to here (the largest offset plus a block must stay below 2^31)
_INT32_LIMIT = 2**31 - 1


def _copy_block(numel: int) -> tuple[int, int]:
    """Elements per program and warps of the copy kernels."""
    if _interpreting():
        return max(16, min(triton.next_power_of_2(max(numel, 1)), 65536)), 4
    # 16 elements (4 x 16 bytes of fp32) per thread: enough loads in flight to hide latency
    return 4096, 8


def merge_scatter(
    values1: torch.Tensor,
    values2: torch.Tensor,
    positions1: torch.Tensor,
    positions2: torch.Tensor,
) -> torch.Tensor:
    """``(N, S1+S2, C)``: the rows of ``values1`` ``(N, S1, C)`` and ``values2`` at their
    merged positions."""
    rays, first, channels = values1.shape
    second = values2.shape[1]
    total = first + second
    out = empty_output((rays, total, channels), dtype=values1.dtype, device=values1.device)
    numel = out.numel()
    if numel == 0:
        return out
    inverse = torch.empty((rays, total), dtype=torch.int32, device=values1.device)
    block, warps = _copy_block(numel)
    wide = numel + block > _INT32_LIMIT
    with _device_guard(values1):
        rows_block, rows_warps = _copy_block(rays * total)
        _merge_inverse_kernel[(triton.cdiv(rays * total, rows_block),)](
            positions1,
            positions2,
            inverse,
            rays * first,
            rays * second,
            S1=first,
            S2=second,
            WIDE=rays * total + rows_block > _INT32_LIMIT,
            BLOCK=rows_block,
            num_warps=rows_warps,
        )
        _merge_scatter_kernel[(triton.cdiv(numel, block),)](
            values1,
            values2,
            inverse,
            out,
            numel,
            S1=first,
            S2=second,
            C=channels,
            WIDE=wide,
            BLOCK=block,
            num_warps=warps,
        )
    return out


def merge_gather(
    grad: torch.Tensor, positions1: torch.Tensor, positions2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward of :func:`merge_scatter`: ``grad`` ``(N, S1+S2, C)`` read back per list."""
    rays, total, channels = grad.shape
    first, second = positions1.shape[1], positions2.shape[1]
    grad1 = empty_output((rays, first, channels), dtype=grad.dtype, device=grad.device)
    grad2 = empty_output((rays, second, channels), dtype=grad.dtype, device=grad.device)
    numel = grad.numel()
    if numel == 0:
        return grad1, grad2
    block, warps = _copy_block(numel)
    with _device_guard(grad):
        _merge_gather_kernel[(triton.cdiv(numel, block),)](
            grad,
            positions1,
            positions2,
            grad1,
            grad2,
            numel,
            S1=first,
            S2=second,
            C=channels,
            WIDE=numel + block > _INT32_LIMIT,
            BLOCK=block,
            num_warps=warps,
        )
    return grad1, grad2
