"""References of importance sampling and sample merging (EG3D / PanoHead ``ImportanceRenderer``).

``sample_importance_reference`` is EG3D's ``ImportanceRenderer.sample_importance`` followed by
its ``sample_pdf`` (the NeRF inverse-transform sampler), written from the published semantics:

1. smooth the ``S - 1`` interval weights of each ray: ``max_pool1d(kernel 2, stride 1,
   padding 1)`` (length S) then ``avg_pool1d(kernel 2, stride 1)`` (back to S - 1), i.e.
   ``w̃_j = ½ (max(w_{j-1}, w_j) + max(w_j, w_{j+1}))`` with the out-of-range neighbours
   absent, then ``w̃ + 0.01``;
2. the bins are the ``S - 1`` interval midpoints ``m_j = ½ (z_j + z_{j+1})`` and the pdf is
   built from the *inner* ``S - 3`` smoothed weights ``w̃[1:-1]``, each ``+ 1e-5``:
   ``pdf = w / Σw``, ``cdf = [0, cumsum(pdf)]`` (``S - 2`` entries);
3. for each draw ``u`` (``U[0, 1)``, or ``linspace(0, 1, n)`` when deterministic):
   ``i = searchsorted(cdf, u, right=True)``, ``below = max(i - 1, 0)``,
   ``above = min(i, S - 3)``, ``denom = cdf[above] - cdf[below]`` (set to 1 where it is below
   1e-5), ``t = m[below] + (u - cdf[below]) / denom · (m[above] - m[below])``.

Only ``m[0 .. S-3]`` is ever reached (``above <= S - 3``): EG3D pairs ``S - 1`` midpoints with
``S - 3`` weights, and that quirk is kept. No gradient flows (EG3D runs it under
``no_grad``). The one deliberate difference: EG3D's ``.squeeze()`` after the pooling also
squeezes a batch of one ray, which breaks; here only the channel axis is squeezed.

``merge_samples_reference`` is EG3D's ``unify_samples`` / ``sort_samples`` generalised to any
number of per-sample tensors: concatenate the two sample sets along the sample axis, sort by
depth and gather every tensor with the same permutation. The sort is *stable*, so equal depths
keep the first set's sample first (EG3D's ``torch.sort`` leaves that order unspecified).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

SMOOTHING_OFFSET = 0.01  # added to the smoothed weights (EG3D ``weights + 0.01``)
PDF_EPS = 1e-5  # ``sample_pdf``'s eps: added to the weights, and the smallest bin denominator


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # EG3D smooths the weights in float32 (``.float()``); float64 inputs stay in float64
    return torch.float64 if dtype == torch.float64 else torch.float32


def importance_uniforms(
    n_rays: int,
    n_importance: int,
    *,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The ``(n_rays, n_importance)`` float32 draws ``u`` of :func:`sample_importance_reference`.

    ``torch.rand`` on ``device`` with ``generator`` (the global generator when ``None``: the
    same draws as EG3D's ``torch.rand(N_rays, N_importance)``), or ``linspace(0, 1, n)`` for
    every ray when ``deterministic``.
    """
    if deterministic:
        u = torch.linspace(0.0, 1.0, n_importance, device=device)
        return u.expand(n_rays, n_importance).contiguous()
    return torch.rand(n_rays, n_importance, generator=generator, device=device)


def smooth_weights(weights: torch.Tensor) -> torch.Tensor:
    """EG3D's weight smoothing: ``(N, S-1)`` -> ``(N, S-1)``, max-pool 2 / avg-pool 2, + 0.01."""
    pooled = F.max_pool1d(weights.unsqueeze(1), 2, 1, padding=1)
    return F.avg_pool1d(pooled, 2, 1).squeeze(1) + SMOOTHING_OFFSET


def sample_pdf_reference(
    bins: torch.Tensor, weights: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """NeRF / EG3D ``sample_pdf``: inverse-transform samples of the piecewise-linear CDF.

    ``bins`` ``(N, K + 1)`` or longer (only the first K + 1 are reachable), ``weights``
    ``(N, K)``, ``u`` ``(N, n)`` in ``[0, 1]`` -> ``(N, n)``.
    """
    n_bins = weights.shape[-1]
    weights = weights + PDF_EPS
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    u = u.to(cdf.dtype).contiguous()
    index = torch.searchsorted(cdf, u, right=True)
    below = torch.clamp_min(index - 1, 0)
    above = torch.clamp_max(index, n_bins)
    cdf_below, cdf_above = torch.gather(cdf, 1, below), torch.gather(cdf, 1, above)
    bins_below, bins_above = torch.gather(bins, 1, below), torch.gather(bins, 1, above)
    denom = cdf_above - cdf_below
    denom = torch.where(denom < PDF_EPS, torch.ones_like(denom), denom)
    return bins_below + (u - cdf_below) / denom * (bins_above - bins_below)


def sample_importance_reference(
    depths: torch.Tensor,
    weights: torch.Tensor,
    n_importance: int,
    *,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    sort: bool = False,
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """EG3D's ``sample_importance``: ``n_importance`` new depths per ray from the coarse weights.

    ``depths`` ``(B, R, S, 1)`` (the coarse sample depths), ``weights`` ``(B, R, S-1, 1)`` (the
    ray marcher's interval weights) -> ``(B, R, n_importance, 1)`` in the dtype of ``depths``.
    ``u`` ``(B·R, n_importance)`` overrides the draws (see :func:`importance_uniforms`, which
    gives them otherwise). The formulas are in this module's docstring. Never differentiable.

    ``sort=True`` sorts each ray's draws first, so the samples come out in depth order (the
    inverse CDF is monotone: the same samples as EG3D's, permuted), and then takes a running
    maximum along the ray, which only removes the one-ulp inversions that rounding can leave
    where consecutive samples straddle a bin boundary.
    """
    batch, rays, samples, _ = depths.shape
    compute = _compute_dtype(depths.dtype)
    if u is None:
        u = importance_uniforms(
            batch * rays,
            n_importance,
            deterministic=deterministic,
            generator=generator,
            device=depths.device,
        )
    if sort:
        u = torch.sort(u, dim=-1).values
    with torch.no_grad():
        z = depths.detach().reshape(batch * rays, samples).to(compute)
        w = weights.detach().reshape(batch * rays, samples - 1).to(compute)
        smoothed = smooth_weights(w)
        midpoints = 0.5 * (z[:, :-1] + z[:, 1:])
        fine = sample_pdf_reference(midpoints, smoothed[:, 1:-1], u)
        if sort:
            fine = torch.cummax(fine, dim=-1).values
    return fine.reshape(batch, rays, n_importance, 1).to(depths.dtype)


def merge_samples_reference(
    depths1: torch.Tensor,
    depths2: torch.Tensor,
    values1: Sequence[torch.Tensor] = (),
    values2: Sequence[torch.Tensor] = (),
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """EG3D's ``unify_samples``: the union of two sample sets, sorted by depth.

    ``depths1`` ``(B, R, S1, 1)``, ``depths2`` ``(B, R, S2, 1)``; ``values1[k]``
    ``(B, R, S1, C_k)`` pairs with ``values2[k]`` ``(B, R, S2, C_k)``. Returns the merged depths
    ``(B, R, S1+S2, 1)`` and the merged values ``(B, R, S1+S2, C_k)``: ``cat`` along the sample
    axis, a stable sort by depth (ties: the first set first), the same gather for every tensor.
    Differentiable w.r.t. every value tensor (and the depths) through the gather.
    """
    all_depths = torch.cat([depths1, depths2], dim=-2)
    _, order = torch.sort(all_depths.detach(), dim=-2, stable=True)
    merged_depths = torch.gather(all_depths, -2, order)
    merged = []
    for first, second in zip(values1, values2, strict=True):
        both = torch.cat([first, second], dim=-2)
        merged.append(torch.gather(both, -2, order.expand(-1, -1, -1, both.shape[-1])))
    return merged_depths, tuple(merged)
