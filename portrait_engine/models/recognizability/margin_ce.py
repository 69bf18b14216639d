"""Margin softmax cross-entropy, fused and chunked over the classes.

For an embedding ``x_i`` with label ``y_i`` and class prototypes ``W`` (the classifier's weight
rows), with ``x̂ = x / ‖x‖`` and ``ŵ_j = W_j / ‖W_j‖``:

    cos_ij = ⟨x̂_i, ŵ_j⟩,    z_ij = s · cos_ij  (j ≠ y_i),    z_iy = t_i = s · φ(cos_iy)
    loss_i = log Σ_j exp(z_ij) − t_i

where ``φ`` is the margin of the head (ArcFace ``cos(θ + m)``, CosFace ``cos θ − m``, AdaFace,
see :mod:`portrait_engine.models.recognizability.heads`). This is the combined-margin softmax
of insightface's ``CombinedMarginLoss`` followed by cross-entropy.

The plain form materialises the ``B × N`` logits (and autograd keeps several more ``B × N``
tensors for the backward): at ``B = 512`` and a million classes that is 2 GB per copy in fp32,
the memory wall of face-recognition training. :func:`margin_cross_entropy` with ``fused=True``
never holds more than a ``B × chunk`` block: the forward walks the classes in chunks,
normalising each chunk of ``W`` on the fly and keeping an online log-sum-exp (running maximum
and rescaled sum); the backward recomputes each chunk and forms

    ∂loss_i/∂z_ij = g_i · (exp(z_ij − lse_i) − [j = y_i])
    ∂/∂x̂ = s · P ŵ,    ∂/∂ŵ = s · Pᵀ x̂,    ∂/∂W_j = (∂/∂ŵ_j − ŵ_j ⟨∂/∂ŵ_j, ŵ_j⟩) / ‖W_j‖

with ``P`` the softmax block whose target entries hold ``g_i · (exp(t_i − lse_i) − 1) · φ'(cos_iy)``
(the margin's slope, taken by autograd on the ``B`` target cosines in the forward), so the
target prototypes' gradient lands in the same single ``N × D`` weight gradient. ``φ`` acts per
sample; the norms it may read (AdaFace) carry no gradient, as in AdaFace.
The same pass also returns CR-FIQA's NNCCS, ``max_{j≠y} cos_ij``, at no extra cost: RI needs it.
All arithmetic is in fp32 (fp64 for fp64 inputs), whatever the input dtype and autocast state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_SIZE = 16384
_NORM_EPS = 1e-12  # F.normalize's default


@dataclass
class MarginCEOutput:
    """Per-sample results of the margin cross-entropy.

    ``loss`` ``(B,)`` (differentiable); ``cos_target`` ``(B,)``: CR-FIQA's CCS, the margin-free
    cosine to the own prototype (detached); ``cos_negative`` ``(B,)``: NNCCS, the largest
    cosine to another prototype, ``-1`` when there is no other class (detached);
    ``negative_index`` ``(B,)`` int64: that prototype's class, ``-1`` when there is none.
    """

    loss: torch.Tensor
    cos_target: torch.Tensor
    cos_negative: torch.Tensor
    negative_index: torch.Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _normalized_chunk(weight: torch.Tensor, start: int, end: int, dtype: torch.dtype):
    chunk = weight[start:end].to(dtype)
    norm = chunk.norm(dim=1, keepdim=True)
    return chunk / norm.clamp_min(_NORM_EPS), norm


def _target_positions(labels: torch.Tensor, start: int, end: int):
    rows = ((labels >= start) & (labels < end)).nonzero().squeeze(1)
    return rows, labels[rows] - start


def _margin_and_slope(margin, cos_target: torch.Tensor, norms: torch.Tensor):
    """``φ(cos)`` and ``dφ/dcos`` (elementwise: φ acts per sample, norms without gradient)."""
    with torch.enable_grad():
        leaf = cos_target.detach().requires_grad_()
        phi = margin(leaf, norms.detach())
        (slope,) = torch.autograd.grad(phi.sum(), leaf)
    return phi.detach(), slope


class _ChunkedMarginCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unit_embeddings, weight, labels, norms, margin, scale, chunk_size):
        dtype = _compute_dtype(unit_embeddings.dtype)
        device_type = unit_embeddings.device.type
        with torch.autocast(device_type, enabled=False):
            x = unit_embeddings.to(dtype)
            batch = x.shape[0]
            # The target column is handled here rather than by autograd outside, so the
            # backward writes the one N x D weight gradient (indexing W[labels] under autograd
            # would scatter into a second one).
            prototypes = F.normalize(weight[labels].to(dtype), dim=1, eps=_NORM_EPS)
            cos_target = (x * prototypes).sum(dim=1)
            phi, slope = _margin_and_slope(margin, cos_target, norms)
            t = scale * phi.to(dtype)
            running_max = torch.full((batch,), -torch.inf, dtype=dtype, device=x.device)
            running_sum = torch.zeros(batch, dtype=dtype, device=x.device)
            negative = torch.full((batch,), -1.0, dtype=dtype, device=x.device)
            negative_index = torch.full((batch,), -1, dtype=torch.long, device=x.device)
            for start in range(0, weight.shape[0], chunk_size):
                end = min(start + chunk_size, weight.shape[0])
                unit_weight, _ = _normalized_chunk(weight, start, end, dtype)
                cos = x @ unit_weight.T
                rows, cols = _target_positions(labels, start, end)
                cos[rows, cols] = -torch.inf
                chunk_max, chunk_index = cos.max(dim=1)
                better = chunk_max > negative
                negative = torch.where(better, chunk_max, negative)
                negative_index = torch.where(better, chunk_index + start, negative_index)
                logits = cos.mul_(scale)
                logits[rows, cols] = t[rows]
                new_max = torch.maximum(running_max, logits.max(dim=1).values)
                running_sum = running_sum * torch.exp(running_max - new_max) + torch.exp(
                    logits - new_max[:, None]
                ).sum(dim=1)
                running_max = new_max
            lse = running_max + torch.log(running_sum)
            loss = lse - t
        ctx.save_for_backward(unit_embeddings, weight, labels, t, lse, slope.to(dtype))
        ctx.scale = scale
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(cos_target, negative, negative_index)
        return loss, cos_target, negative, negative_index

    @staticmethod
    def backward(ctx, grad_loss, _grad_cos, _grad_negative, _grad_index):
        unit_embeddings, weight, labels, t, lse, slope = ctx.saved_tensors
        scale, chunk_size = ctx.scale, ctx.chunk_size
        dtype = t.dtype
        device_type = unit_embeddings.device.type
        with torch.autocast(device_type, enabled=False):
            x = unit_embeddings.to(dtype)
            g = grad_loss.to(dtype)
            # ∂loss/∂cos at the target, over s: g (p_y − 1) φ'(cos_y)
            target_coefficient = g * (torch.exp(t - lse) - 1) * slope
            grad_x = torch.zeros_like(x)
            grad_weight = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
            for start in range(0, weight.shape[0], chunk_size):
                end = min(start + chunk_size, weight.shape[0])
                unit_weight, norm = _normalized_chunk(weight, start, end, dtype)
                rows, cols = _target_positions(labels, start, end)
                logits = (x @ unit_weight.T).mul_(scale)
                probs = torch.exp(logits.sub_(lse[:, None])).mul_(g[:, None])
                probs[rows, cols] = target_coefficient[rows]
                grad_x.addmm_(probs, unit_weight, alpha=scale)
                if grad_weight is not None:
                    grad_unit = (probs.T @ x).mul_(scale)
                    radial = (grad_unit * unit_weight).sum(dim=1, keepdim=True)
                    small = norm < _NORM_EPS  # F.normalize divides by eps there: no projection
                    chunk_grad = torch.where(
                        small, grad_unit / _NORM_EPS, (grad_unit - unit_weight * radial) / norm
                    )
                    grad_weight[start:end] = chunk_grad.to(weight.dtype)
        return grad_x.to(unit_embeddings.dtype), grad_weight, None, None, None, None, None


def _validate(embeddings, weight, labels, chunk_size) -> None:
    for name, tensor in (("embeddings", embeddings), ("weight", weight)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be an int64 or int32 tensor, got {labels.dtype}")
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must have shape (B, D), got {tuple(embeddings.shape)}")
    if weight.dim() != 2 or weight.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"weight must have shape (num_classes, {embeddings.shape[1]}), got "
            f"{tuple(weight.shape)}"
        )
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}"
        )
    if embeddings.shape[0] == 0:
        raise ValueError("embeddings must hold at least one sample, got an empty batch")
    if weight.shape[0] == 0:
        raise ValueError("weight must hold at least one class, got 0 rows")
    if not (embeddings.device == weight.device == labels.device):
        raise ValueError(
            f"embeddings, weight and labels must be on one device, got {embeddings.device}, "
            f"{weight.device} and {labels.device}"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= weight.shape[0]:
        raise ValueError(
            f"labels must lie in [0, {weight.shape[0]}) (the number of classes), got values in "
            f"[{low}, {high}]"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")


def margin_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    margin: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scale: float,
    *,
    fused: bool = True,
    chunk_size: int | None = None,
) -> MarginCEOutput:
    """Per-sample margin softmax cross-entropy over class prototypes.

    Args:
        embeddings: ``(B, D)`` unnormalised embeddings.
        weight: ``(N, D)`` class prototypes (unnormalised classifier weight).
        labels: ``(B,)`` int64 class indices in ``[0, N)``.
        margin: ``φ(cos_target (B,), norms (B,)) -> (B,)``: the margin-adjusted target cosine
            (the norms feed AdaFace).
        scale: ``s``, the logit scale.
        fused: chunk over the classes (never holding ``B × N``); ``False``: the plain form.
        chunk_size: classes per chunk (default 16384).

    Returns:
        :class:`MarginCEOutput` with the per-sample loss ``(B,)`` and the detached CCS/NNCCS.
    """
    _validate(embeddings, weight, labels, chunk_size)
    labels = labels.long()
    dtype = _compute_dtype(embeddings.dtype)
    with torch.autocast(embeddings.device.type, enabled=False):
        # fp32 from here on: a bf16 target logit at s = 64 would be off by a whole unit
        embeddings = embeddings.to(dtype)
        norms = embeddings.norm(dim=1)
        unit = F.normalize(embeddings, dim=1, eps=_NORM_EPS)
        if fused:
            loss, cos_target, negative, index = _ChunkedMarginCE.apply(
                unit, weight, labels, norms, margin, float(scale), chunk_size or DEFAULT_CHUNK_SIZE
            )
            return MarginCEOutput(loss, cos_target, negative, index)
        prototypes = F.normalize(weight[labels].to(dtype), dim=1, eps=_NORM_EPS)
        cos_target = (unit * prototypes).sum(dim=1)
        target_logit = scale * margin(cos_target, norms)
    loss, negative, index = margin_cross_entropy_unfused(unit, weight, labels, target_logit, scale)
    return MarginCEOutput(loss, cos_target.detach(), negative.to(cos_target.dtype), index)


def margin_cross_entropy_unfused(
    unit_embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    target_logit: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain form (the oracle of the fused one): full ``B × N`` logits, then cross-entropy.

    Returns ``(loss (B,), nnccs (B,), nnccs class (B,))``.
    """
    dtype = _compute_dtype(unit_embeddings.dtype)
    with torch.autocast(unit_embeddings.device.type, enabled=False):
        cos = unit_embeddings.to(dtype) @ F.normalize(weight.to(dtype), dim=1, eps=_NORM_EPS).T
        is_target = F.one_hot(labels, weight.shape[0]).bool()
        negative, index = cos.detach().masked_fill(is_target, -torch.inf).max(dim=1)
        index = torch.where(negative > -1, index, -1)
        negative = negative.clamp_min(-1)
        logits = torch.where(is_target, target_logit.to(dtype)[:, None], scale * cos)
        loss = F.cross_entropy(logits, labels, reduction="none")
    return loss, negative, index
