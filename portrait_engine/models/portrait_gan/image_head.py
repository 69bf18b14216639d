"""After volume rendering: background compositing, the raw RGB image, super-resolution, mask.

Published (3DPortraitGAN ``TriPlaneGenerator.synthesis``, after the renderer):

    feature = feature * 2 - 1                       (only with the EG3D sigmoid decoder)
    bg      = bilinear_resize(background(ws_bg), r) (antialias = sr_antialias)
    feature = feature + (1 - weight) * bg           (weight: accumulated ray opacity)
    raw     = ToRGB(feature, ws[:, -1])             (``use_torgb_raw``; else feature[:, :3])
    bg_rgb  = ToRGB(bg, ws_bg[:, -1])               (same ToRGB layer)
    image   = SR(raw, feature, ws)
    mask    = weight * (1 + 2 * 0.001) - 0.001

ToRGB runs unfused (``fused_modconv=False``), as published. ``ws_bg`` defaults to ``ws``
(the background-swap regulariser of issue 7 passes other w's). Without a background network
the feature image is used as rendered and ``image_background`` is None [ours: the published
code assumes the background exists there].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from portrait_engine.models.portrait_gan.layers import ToRGBLayer
from portrait_engine.models.portrait_gan.superresolution import SuperResolution
from portrait_engine.models.portrait_gan.synthesis import BackgroundSynthesis

DECODER_ACTIVATIONS = ("none", "sigmoid", "lrelu")


class NeuralImageHead(nn.Module):
    """``forward(feature, weight, ws)``: feature image ``(N, C, r, r)``, accumulated weights
    ``(N, 1, r, r)``, ``ws`` ``(N, num_ws, w_dim)`` -> dict with ``image`` ``(N, 3, R, R)``,
    ``image_raw`` ``(N, 3, r, r)``, ``image_mask`` ``(N, 1, r, r)``, ``image_background``
    ``(N, 3, r, r)`` or None, ``feature`` (the composited feature image)."""

    def __init__(self, config, decoder_activation: str | None = None) -> None:
        super().__init__()
        if decoder_activation is None:
            decoder_activation = config.decoder_activation
        if decoder_activation not in DECODER_ACTIVATIONS:
            raise ValueError(
                f"decoder_activation must be one of {DECODER_ACTIVATIONS}, "
                f"got {decoder_activation!r}"
            )
        self.channels = config.feature_channels
        self.w_dim = config.w_dim
        self.antialias = config.sr_antialias
        self.decoder_activation = decoder_activation
        self.background = BackgroundSynthesis.from_config(config) if config.use_background else None
        self.torgb = ToRGBLayer(self.channels, 3, config.w_dim) if config.use_torgb_raw else None
        self.superresolution = SuperResolution.from_config(config)

    def _rgb(self, feature: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.torgb is None:
            return feature[:, :3]
        return self.torgb(feature, w, fused_modconv=False).to(torch.float32)

    def forward(
        self,
        feature: torch.Tensor,
        weight: torch.Tensor,
        ws: torch.Tensor,
        ws_background: torch.Tensor | None = None,
        noise_mode: str = "random",
        sr_noise_mode: str | None = None,
    ) -> dict[str, torch.Tensor | None]:
        n = feature.shape[0]
        if feature.ndim != 4 or feature.shape[1] != self.channels:
            raise ValueError(
                f"feature must have shape (N, {self.channels}, r, r), got {tuple(feature.shape)}"
            )
        if weight.shape != (n, 1, *feature.shape[2:]):
            raise ValueError(
                f"weight must have shape ({n}, 1, {feature.shape[2]}, {feature.shape[3]}), "
                f"got {tuple(weight.shape)}"
            )
        if ws.ndim != 3 or ws.shape[0] != n or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must have shape ({n}, K, {self.w_dim}), got {tuple(ws.shape)}")
        if self.decoder_activation == "sigmoid":
            feature = feature * 2 - 1
        background_rgb = None
        if self.background is not None:
            ws_bg = ws if ws_background is None else ws_background
            background = self.background(ws_bg, noise_mode=noise_mode)
            background = F.interpolate(
                background,
                size=feature.shape[2:],
                mode="bilinear",
                align_corners=False,
                antialias=self.antialias,
            )
            feature = feature + (1 - weight) * background
            background_rgb = self._rgb(background, ws_bg[:, -1])
        raw = self._rgb(feature, ws[:, -1])
        image = self.superresolution(raw, feature, ws, noise_mode=sr_noise_mode)
        mask = weight * (1 + 2 * 0.001) - 0.001
        return {
            "image": image,
            "image_raw": raw,
            "image_mask": mask,
            "image_background": background_rgb,
            "feature": feature,
        }
