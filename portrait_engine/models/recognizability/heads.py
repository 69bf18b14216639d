"""Training heads: the combined-margin softmax over class prototypes and the RI regressor.

Margins, as functions ``φ`` of the target cosine ``cos θ_y`` (the non-target logits are
``s · cos θ_j``), following the published formulas:

- ArcFace (Deng et al., CVPR 2019): ``φ = cos(θ + m)``, insightface's defaults ``s = 64``,
  ``m = 0.5``;
- CosFace (Wang et al., CVPR 2018): ``φ = cos θ − m``, ``m = 0.35``;
- combined (insightface ``CombinedMarginLoss``): ``φ = cos(m1 · θ + m2) − m3``;
- AdaFace (Kim et al., CVPR 2022): with the embedding norm ``‖z‖`` standardised by running
  batch statistics, ``ẑ = clip(h · (‖z‖ − μ) / (σ + ε), −1, 1)``,
  ``φ = cos(clip(θ − m · ẑ, ε, π − ε)) − (m + m · ẑ)``; ``m = 0.4``, ``h = 0.333``,
  ``μ, σ`` updated as EMAs with rate ``t_alpha = 0.01`` from ``20`` and ``100``.

Unlike insightface (which applies the ArcFace angle shift under ``no_grad``, so the target
logit's gradient is that of ``s · cos θ``), ArcFace here is differentiated exactly, through
``cos θ cos m − sin θ sin m`` with ``sin θ`` kept away from zero.

The RI regression head follows CR-FIQA's quality head (dropout then ``Linear(512, 1)`` on the
embedding); see :mod:`portrait_engine.models.recognizability.ri` for its target.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from portrait_engine.models.recognizability.margin_ce import MarginCEOutput, margin_cross_entropy

_SIN_EPS = 1e-7


class CombinedMargin(nn.Module):
    """``φ(cos θ) = cos(m1 · θ + m2) − m3`` (ArcFace: m1=1, m3=0; CosFace: m1=1, m2=0)."""

    def __init__(self, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0) -> None:
        super().__init__()
        if m1 <= 0:
            raise ValueError(f"m1 must be positive, got {m1}")
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def forward(self, cos_target: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cos_target - self.m3
        if self.m1 == 1.0:
            # cos(θ + m) without acos: its gradient stays finite at cos θ = ±1.
            sin = torch.sqrt((1 - cos_target * cos_target).clamp_min(_SIN_EPS))
            shifted = cos_target * math.cos(self.m2) - sin * math.sin(self.m2)
            return shifted - self.m3
        theta = torch.acos(cos_target.clamp(-1 + _SIN_EPS, 1 - _SIN_EPS))
        return torch.cos(self.m1 * theta + self.m2) - self.m3


class AdaFaceMargin(nn.Module):
    """AdaFace's norm-adaptive margin; the running norm statistics are buffers."""

    def __init__(self, m: float = 0.4, h: float = 0.333, t_alpha: float = 0.01) -> None:
        super().__init__()
        self.m, self.h, self.t_alpha, self.eps = float(m), float(h), float(t_alpha), 1e-3
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def forward(self, cos_target: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        safe_norms = norms.detach().clamp(0.001, 100).to(self.batch_mean.dtype)
        if self.training and safe_norms.numel() > 1:
            with torch.no_grad():
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * safe_norms.mean())
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * safe_norms.std())
        scaler = (safe_norms - self.batch_mean) / (self.batch_std + self.eps)
        scaler = (scaler * self.h).clamp(-1, 1)
        scaler = scaler.to(cos_target.dtype)
        theta = torch.acos(cos_target.clamp(-1 + self.eps, 1 - self.eps))
        theta_m = (theta - self.m * scaler).clamp(self.eps, math.pi - self.eps)
        return torch.cos(theta_m) - (self.m + self.m * scaler)


MARGINS = {
    "arcface": dict(scale=64.0, m1=1.0, m2=0.5, m3=0.0),
    "cosface": dict(scale=64.0, m1=1.0, m2=0.0, m3=0.35),
    "adaface": dict(scale=64.0, m=0.4, h=0.333),
}


def build_margin(name: str, **overrides) -> tuple[nn.Module, float]:
    """``(margin module, scale)`` for ``"arcface"``, ``"cosface"``, ``"adaface"`` or
    ``"combined"`` (give ``m1``, ``m2``, ``m3``); keyword overrides replace the defaults."""
    if name not in (*MARGINS, "combined"):
        raise ValueError(f"margin must be one of {[*MARGINS, 'combined']}, got {name!r}")
    params = dict(MARGINS.get(name, MARGINS["arcface"]))
    params.update({k: v for k, v in overrides.items() if v is not None})
    scale = float(params.pop("scale"))
    if name == "adaface":
        return AdaFaceMargin(**params), scale
    return CombinedMargin(**params), scale


class MarginSoftmaxHead(nn.Module):
    """Class prototypes ``W (N, D)`` and a margin: ``forward(embeddings, labels)`` gives the
    per-sample margin cross-entropy, CCS and NNCCS (:class:`MarginCEOutput`).

    Args:
        embedding_dim: D.
        num_classes: N.
        margin: ``"arcface"``, ``"cosface"``, ``"adaface"`` or ``"combined"``.
        fused: use the class-chunked cross-entropy (never holds ``B × N`` logits).
        chunk_size: classes per chunk of the fused path.
        **margin_params: ``scale``, ``m1``/``m2``/``m3`` or ``m``/``h``/``t_alpha``.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        margin: str = "arcface",
        fused: bool = True,
        chunk_size: int | None = None,
        **margin_params,
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or num_classes < 1:
            raise ValueError(
                f"embedding_dim and num_classes must be positive, got {embedding_dim}, "
                f"{num_classes}"
            )
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim).normal_(0, 0.01))
        self.margin, self.scale = build_margin(margin, **margin_params)
        self.fused = fused
        self.chunk_size = chunk_size

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> MarginCEOutput:
        return margin_cross_entropy(
            embeddings,
            self.weight,
            labels,
            self.margin,
            self.scale,
            fused=self.fused,
            chunk_size=self.chunk_size,
        )


class RIRegressionHead(nn.Module):
    """``(B, D)`` embedding → ``(B,)`` predicted RI: dropout then a linear layer (CR-FIQA)."""

    def __init__(self, embedding_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(embedding_dim, 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(embedding)).squeeze(1)
