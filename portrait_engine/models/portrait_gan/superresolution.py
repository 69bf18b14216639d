"""EG3D's hybrid super-resolution: the neural-rendered feature image -> the final image.

Published (EG3D ``training/superresolution.py``; 3DPortraitGAN picks the module by output size):

- ``SuperresolutionHybrid8XDC`` (512² output, the paper preset): the raw RGB ``(N, 3, r, r)``
  and the feature image ``(N, 32, r, r)`` are resized bilinearly (``align_corners=False``,
  antialiased) to 128² unless already there; ``SynthesisBlock(32 -> 256, up to 256²)`` then
  ``SynthesisBlock(256 -> 128, up to 512²)``; the RGB is carried as the skip image (upsampled
  with the [1, 3, 3, 1] filter and added to each block's ToRGB); the output is that RGB.
- ``SuperresolutionHybrid4X`` (256²): input 128², a same-size block (``SynthesisBlockNoUp``,
  32 -> 128) then an up block (128 -> 64) to 256². ``SuperresolutionHybrid2X`` (128²): the
  same at 64² -> 128².
- Every layer gets the last w of the generator (``ws[:, -1:]`` repeated 3 times); noise mode
  ``"none"`` by default (``superresolution_noise_mode``); ``conv_clamp`` 256 (the published
  models run it in fp16, ``sr_num_fp16_res=4``).

Here one class covers them: ``img_resolution / input_resolution`` = 4 gives two up blocks
(8X from a 64² rendering), 2 a same-size block then an up block, 1 [ours, for tests] two
same-size blocks. Block widths come from the config (``sr_channels``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from portrait_engine.models.portrait_gan.layers import SynthesisBlock


class SuperResolution(nn.Module):
    """``forward(rgb, x, ws)``: raw RGB ``(N, 3, r, r)``, features ``(N, channels, r, r)``,
    ``ws`` ``(N, K, w_dim)`` -> image ``(N, 3, img_resolution, img_resolution)`` float32."""

    def __init__(
        self,
        channels: int,
        img_resolution: int,
        input_resolution: int,
        w_dim: int,
        block_channels: Sequence[int] = (256, 128),
        antialias: bool = True,
        noise_mode: str = "none",
        conv_clamp: float | None = 256,
        fused_modconv_default: bool | str = "inference_only",
    ) -> None:
        super().__init__()
        factor = img_resolution // input_resolution
        if factor not in (1, 2, 4) or factor * input_resolution != img_resolution:
            raise ValueError(
                "img_resolution / input_resolution must be 1, 2 or 4, got "
                f"{img_resolution} / {input_resolution}"
            )
        self.channels = channels
        self.img_resolution = img_resolution
        self.input_resolution = input_resolution
        self.w_dim = w_dim
        self.antialias = antialias
        self.noise_mode = noise_mode
        c0, c1 = block_channels
        up0, up1 = factor == 4, factor >= 2
        res0 = input_resolution * (2 if up0 else 1)
        common = dict(
            w_dim=w_dim,
            img_channels=3,
            conv_clamp=conv_clamp,
            fused_modconv_default=fused_modconv_default,
        )
        self.block0 = SynthesisBlock(
            channels, c0, resolution=res0, is_last=False, upsample=up0, **common
        )
        self.block1 = SynthesisBlock(
            c0, c1, resolution=img_resolution, is_last=True, upsample=up1, **common
        )

    @classmethod
    def from_config(cls, config) -> SuperResolution:
        return cls(
            config.feature_channels,
            config.img_resolution,
            config.sr_input_resolution,
            config.w_dim,
            block_channels=config.sr_channels,
            antialias=config.sr_antialias,
            noise_mode=config.sr_noise_mode,
        )

    def forward(
        self,
        rgb: torch.Tensor,
        x: torch.Tensor,
        ws: torch.Tensor,
        noise_mode: str | None = None,
        fused_modconv: bool | str | None = None,
    ) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"x must have shape (N, {self.channels}, r, r), got {tuple(x.shape)}")
        if rgb.ndim != 4 or rgb.shape[1] != 3 or rgb.shape[0] != x.shape[0]:
            raise ValueError(f"rgb must have shape ({x.shape[0]}, 3, r, r), got {tuple(rgb.shape)}")
        if ws.ndim != 3 or ws.shape[0] != x.shape[0] or ws.shape[2] != self.w_dim:
            raise ValueError(
                f"ws must have shape ({x.shape[0]}, K, {self.w_dim}), got {tuple(ws.shape)}"
            )
        noise_mode = self.noise_mode if noise_mode is None else noise_mode
        ws = ws[:, -1:].repeat(1, 3, 1)
        size = (self.input_resolution, self.input_resolution)
        if x.shape[-1] != self.input_resolution:
            x = F.interpolate(
                x, size=size, mode="bilinear", align_corners=False, antialias=self.antialias
            )
        if rgb.shape[-1] != self.input_resolution:
            rgb = F.interpolate(
                rgb, size=size, mode="bilinear", align_corners=False, antialias=self.antialias
            )
        x, rgb = self.block0(x, rgb, ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        x, rgb = self.block1(x, rgb, ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        return rgb
