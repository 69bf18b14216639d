"""EG3D's tri-plane decoder (``OSGDecoder``): sampled plane features -> density and colour features.

What EG3D (Chan et al., CVPR 2022, sec. 3.2 and its released ``OSGDecoder``) specifies:

- the features of the P planes at a point are averaged (the engine's ``triplane_sample`` with
  ``reduce="mean"`` already returns that mean; a ``(B, P, N, C)`` input is averaged here);
- a two-layer MLP: FullyConnected(C -> 64), softplus, FullyConnected(64 -> 1 + C_out) (the
  softplus runs on the backend in force: :func:`portrait_engine.ops.softplus`);
- the fully-connected layers are StyleGAN2's: weights stored as ``randn / lr_mul`` and used as
  ``W · lr_mul / sqrt(in_features)``, biases (initialised to 0) used as ``b · lr_mul``
  (the equalized learning rate: the optimiser sees unit-scale parameters);
- outputs: ``sigma = x[..., :1]`` (raw; the ray marcher applies ``softplus(σ - 1)``) and
  ``rgb = sigmoid(x[..., 1:]) · (1 + 2·0.001) - 0.001`` (a sigmoid widened by 0.001 on each
  side, so that 0 and 1 are reachable, as in MipNeRF; :func:`portrait_engine.ops.decoder_outputs`,
  on the backend in force).

The parameter names (``net.0.weight``, ``net.0.bias``, ``net.2.weight``, ``net.2.bias``) are
EG3D's, so its released decoder weights load by name.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from portrait_engine.ops import decoder_outputs, softplus

HIDDEN_DIM = 64  # EG3D's decoder width
RGB_PADDING = 0.001  # sigmoid(x) * (1 + 2 * 0.001) - 0.001


class FullyConnectedLayer(nn.Module):
    """StyleGAN2's equalized-learning-rate linear layer: ``x @ (W·g)ᵀ + b·lr_mul``,
    ``g = lr_mul / sqrt(in_features)``, ``W`` initialised ``randn / lr_mul``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"in_features and out_features must be positive, got {in_features}, {out_features}"
            )
        if not (lr_multiplier > 0):
            raise ValueError(f"lr_multiplier must be positive, got {lr_multiplier}")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) * self.weight_gain
        if self.bias is None:
            return x @ weight.t()
        bias = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            bias = bias * self.bias_gain
        return torch.addmm(bias.unsqueeze(0), x.reshape(-1, x.shape[-1]), weight.t()).reshape(
            *x.shape[:-1], self.out_features
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Softplus(nn.Module):
    """``torch.nn.Softplus()`` (beta 1, threshold 20) on the backend in force
    (:func:`portrait_engine.ops.softplus`; ``use_backend("torch")`` gives torch's own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softplus(x)


class OSGDecoder(nn.Module):
    """EG3D's tri-plane decoder: ``(B, N, C)`` (or ``(B, P, N, C)``) features -> rgb, sigma.

    Args:
        n_features: C, the plane channels (32 in EG3D / PanoHead / 3DPortraitGAN).
        output_dim: the colour-feature channels ``C_out`` (32 in EG3D: the first 3 are the raw
            RGB image, the rest feed the super-resolution network).
        lr_multiplier: the layers' learning-rate multiplier (EG3D's ``decoder_lr_mul``, 1).
        hidden_dim: the hidden width (64 in EG3D).

    ``forward(features, ray_directions=None)`` returns ``{"rgb": (B, N, C_out),
    "sigma": (B, N, 1)}`` (EG3D's interface; the directions are accepted and unused, as there).
    """

    # the renderer passes per-sample directions only to decoders that read them (a subclass
    # whose forward uses ``ray_directions`` sets this to True)
    uses_ray_directions = False

    def __init__(
        self,
        n_features: int = 32,
        output_dim: int = 32,
        *,
        lr_multiplier: float = 1.0,
        hidden_dim: int = HIDDEN_DIM,
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.output_dim = output_dim
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, hidden_dim, lr_multiplier=lr_multiplier),
            Softplus(),
            FullyConnectedLayer(hidden_dim, 1 + output_dim, lr_multiplier=lr_multiplier),
        )

    def forward(
        self, features: torch.Tensor, ray_directions: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if features.dim() == 4:
            features = features.mean(1)  # (B, P, N, C): EG3D's mean over planes
        if features.dim() != 3 or features.shape[-1] != self.n_features:
            raise ValueError(
                f"features must have shape (B, N, {self.n_features}) or (B, P, N, "
                f"{self.n_features}), got {tuple(features.shape)}"
            )
        # sigma = x[..., :1], rgb = sigmoid(x[..., 1:]) * (1 + 2 * RGB_PADDING) - RGB_PADDING,
        # on the backend in force (the torch reference splits rather than slicing twice: its
        # backward is one concatenation instead of two zero-filled scatters)
        sigma, rgb = decoder_outputs(self.net(features))
        return {"rgb": rgb, "sigma": sigma}


__all__ = ["FullyConnectedLayer", "OSGDecoder", "Softplus"]
