"""The StyleGAN2 synthesis backbone that emits the tri-grid (or tri-plane), and the background
network.

Published semantics:

- ``SynthesisNetwork`` (StyleGAN2-ADA): blocks at 4, 8, ..., R; channels at resolution r are
  ``min(channel_base // r, channel_max)``; each block consumes ``num_conv + num_torgb`` w's,
  consecutive blocks share one (the next block's first w is the previous ToRGB's);
  ``num_ws = 2 log2 R - 2``. Output: the skip-summed ToRGB image, float32.
- EG3D ``TriPlaneGenerator``: ``img_channels = 3 * 32``, viewed as ``(N, 3, 32, R, R)``.
- PanoHead / 3DPortraitGAN tri-grid (``triplane_depth`` D): ``img_channels = 3 * 32 * D``,
  viewed as ``(N, 3, 32 * D, R, R)`` and sampled as ``(N * 3, 32, D, R, R)`` volumes, i.e.
  channel-major: channel ``c`` of depth slice ``d`` is backbone channel ``(p * 32 + c) * D + d``
  of plane ``p``. We return the ``(N, 3, 32, D, R, R)`` view directly (the layout
  :func:`portrait_engine.ops.triplane_sample` takes); ``D = 1`` gives ``(N, 3, 32, R, R)``.
- 3DPortraitGAN background (``bcg_synthesis``): a second ``SynthesisNetwork`` with half the
  channel base at the super-resolution input resolution, ``img_channels = 32`` (the feature
  image's channels), driven by the first ``num_ws`` of the generator's w's (the last one
  repeated when it needs more). It is composited by the renderer as
  ``feature + (1 - weight) * background``; the compositing lives with the renderer.
"""

from __future__ import annotations

import torch
from torch import nn

from portrait_engine.models.portrait_gan.layers import SynthesisBlock


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """StyleGAN2's channel count at a resolution: ``min(channel_base // r, channel_max)``."""
    return max(min(channel_base // resolution, channel_max), 1)


class SynthesisNetwork(nn.Module):
    """StyleGAN2 synthesis ("skip" architecture): ``ws`` ``(N, num_ws, w_dim)`` ->
    image ``(N, img_channels, R, R)`` float32."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: float | None = 256,
        fused_modconv_default: bool | str = True,
    ) -> None:
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        log2 = img_resolution.bit_length() - 1
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels_at(res // 2, channel_base, channel_max) if res > 4 else 0
            out_channels = channels_at(res, channel_base, channel_max)
            is_last = res == img_resolution
            block = SynthesisBlock(
                in_channels,
                out_channels,
                w_dim=w_dim,
                resolution=res,
                img_channels=img_channels,
                is_last=is_last,
                conv_clamp=conv_clamp,
                fused_modconv_default=fused_modconv_default,
            )
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool | str | None = None,
    ) -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(
                f"ws must have shape (N, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}"
            )
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, block_ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        return img


class TriGridSynthesis(nn.Module):
    """The generator backbone: ``ws`` ``(N, num_ws, w_dim)`` -> planes.

    Returns ``(N, 3, C, D, R, R)`` (tri-grid, ``depth`` D > 1) or ``(N, 3, C, R, R)``
    (plain tri-plane, D = 1), float32, with C = ``plane_channels``.
    """

    def __init__(
        self,
        w_dim: int,
        resolution: int = 256,
        plane_channels: int = 32,
        depth: int = 3,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: float | None = None,
        fused_modconv_default: bool | str = "inference_only",
    ) -> None:
        super().__init__()
        if plane_channels < 1 or depth < 1:
            raise ValueError(
                f"plane_channels and depth must be positive, got {plane_channels}, {depth}"
            )
        self.plane_channels = plane_channels
        self.depth = depth
        self.resolution = resolution
        self.synthesis = SynthesisNetwork(
            w_dim,
            resolution,
            3 * plane_channels * depth,
            channel_base=channel_base,
            channel_max=channel_max,
            conv_clamp=conv_clamp,
            fused_modconv_default=fused_modconv_default,
        )
        self.num_ws = self.synthesis.num_ws
        self.w_dim = w_dim

    @classmethod
    def from_config(cls, config) -> TriGridSynthesis:
        return cls(
            config.w_dim,
            resolution=config.backbone_resolution,
            plane_channels=config.triplane_channels,
            depth=config.triplane_depth,
            channel_base=config.channel_base,
            channel_max=config.channel_max,
            conv_clamp=config.conv_clamp,
            fused_modconv_default=config.fused_modconv_default,
        )

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool | str | None = None,
    ) -> torch.Tensor:
        img = self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        n, _, h, w = img.shape
        if self.depth == 1:
            return img.view(n, 3, self.plane_channels, h, w)
        return img.view(n, 3, self.plane_channels, self.depth, h, w)


class BackgroundSynthesis(nn.Module):
    """3DPortraitGAN's background network: ``ws`` ``(N, >=1, w_dim)`` -> background feature
    image ``(N, channels, R, R)`` at the super-resolution input resolution R.

    Takes the first ``num_ws`` of the given w's, repeating the last when there are fewer
    (as published)."""

    def __init__(
        self,
        w_dim: int,
        resolution: int,
        channels: int = 32,
        channel_base: int = 16384,
        channel_max: int = 512,
        conv_clamp: float | None = None,
        fused_modconv_default: bool | str = "inference_only",
    ) -> None:
        super().__init__()
        self.synthesis = SynthesisNetwork(
            w_dim,
            resolution,
            channels,
            channel_base=channel_base,
            channel_max=channel_max,
            conv_clamp=conv_clamp,
            fused_modconv_default=fused_modconv_default,
        )
        self.num_ws = self.synthesis.num_ws

    @classmethod
    def from_config(cls, config) -> BackgroundSynthesis:
        return cls(
            config.w_dim,
            config.sr_input_resolution,
            channels=config.feature_channels,
            channel_base=config.channel_base // 2,
            channel_max=config.channel_max,
            conv_clamp=config.conv_clamp,
            fused_modconv_default=config.fused_modconv_default,
        )

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", fused_modconv=None):
        if ws.ndim != 3 or ws.shape[1] < 1:
            raise ValueError(f"ws must have shape (N, K>=1, w_dim), got {tuple(ws.shape)}")
        ws = ws[:, : self.num_ws]
        if ws.shape[1] < self.num_ws:
            ws = torch.cat([ws, ws[:, -1:].repeat(1, self.num_ws - ws.shape[1], 1)], dim=1)
        return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
