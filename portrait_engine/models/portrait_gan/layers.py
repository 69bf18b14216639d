"""StyleGAN2 layers in plain PyTorch, as EG3D / PanoHead / 3DPortraitGAN use them.

Follows the published ``training/networks_stylegan2.py`` (StyleGAN2-ADA, configs E-F):

- equalised learning rate: weights are stored ``N(0, 1) / lr_multiplier`` and scaled at run
  time by ``lr_multiplier / sqrt(fan_in)``; biases by ``lr_multiplier``;
- ``bias_act``: ``clamp(act(x + b) * gain, -clamp, clamp)`` with leaky ReLU slope 0.2 and
  default gain ``sqrt(2)`` for ``lrelu`` (1 for ``linear``);
- modulated convolution (StyleGAN2 eq. 1-3): ``w'_ijk = s_i w_ijk``, demodulated by
  ``sigma_j = sqrt(sum_ik w'_ijk^2 + 1e-8)``; run either fused (grouped convolution over
  the batch) or as "scale input, convolve, scale output" — the two are the same function;
- noise injection: per-pixel ``N(0, 1)`` noise (or a fixed buffer) times a learned scalar
  strength initialised to 0, added after the convolution, before bias and activation;
- ``ToRGBLayer``: a 1 x 1 modulated convolution without demodulation, styles scaled by
  ``1 / sqrt(fan_in)``;
- ``SynthesisBlock``: the "skip" architecture: [const 4x4 | conv0 (up 2)] -> conv1 ->
  ToRGB, the running image upsampled with the [1, 3, 3, 1] filter and added.
  ``upsample=False`` gives EG3D's ``SynthesisBlockNoUp`` (super-resolution at fixed size).

Our choices: fp16 blocks are not modelled (the ``num_fp16_res`` of the published code is
ignored: mixed precision is issue 7's autocast); ``conv_clamp`` is kept as published.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from portrait_engine.models.portrait_gan.resample import (
    conv2d_resample,
    setup_filter,
    upsample2d,
)

_ACTIVATIONS = {"linear": 1.0, "lrelu": math.sqrt(2.0), "relu": math.sqrt(2.0)}


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps)`` along ``dim`` (StyleGAN's pixel norm of the latent)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    activation: str = "linear",
    gain: float | None = None,
    clamp: float | None = None,
    dim: int = 1,
) -> torch.Tensor:
    """``clamp(act(x + b) * gain, -clamp, clamp)``; ``b`` broadcast along ``dim``."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.reshape(shape).to(x.dtype)
    if activation == "lrelu":
        x = F.leaky_relu(x, 0.2)
    elif activation == "relu":
        x = F.relu(x)
    gain = _ACTIVATIONS[activation] if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def activation_gain(activation: str) -> float:
    """The default gain of ``activation`` (``sqrt(2)`` for (leaky) ReLU, 1 for linear)."""
    return _ACTIVATIONS[activation]


class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer: ``act(x @ (W * g).T + b * lr_mul)``, ``g =
    lr_multiplier / sqrt(in_features)``. Input ``(N, in_features)`` -> ``(N, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, activation=self.activation)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, activation={self.activation}"


class _ResampledConv(nn.Module):
    """What ``Conv2dLayer`` and ``SynthesisLayer`` share: the sizes, the FIR resampling filter,
    "same" padding, and the closing ``bias_act`` whose gain and clamp scale with the caller's
    ``gain``. Subclasses create their own parameters (in the published order, which fixes the
    random initialisation under a seed)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        activation: str,
        up: int,
        resample_filter: tuple,
        conv_clamp: float | None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = activation_gain(activation)

    def _bias_act(self, x: torch.Tensor, b: torch.Tensor | None, gain: float) -> torch.Tensor:
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, activation=self.activation, gain=self.act_gain * gain, clamp=clamp)


class Conv2dLayer(_ResampledConv):
    """Equalised-learning-rate convolution with optional up/down-sampling (FIR filter) and
    ``bias_act``. ``(N, in, H, W)`` -> ``(N, out, H*up/down, W*up/down)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: tuple = (1, 3, 3, 1),
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, activation, up, resample_filter, conv_clamp
        )
        self.down = down
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample(
            x,
            w,
            f=self.resample_filter,
            up=self.up,
            down=self.down,
            padding=self.padding,
            flip_weight=(self.up == 1),
        )
        return self._bias_act(x, b, gain)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, activation={self.activation}, "
            f"up={self.up}, down={self.down}"
        )


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """StyleGAN2 modulated convolution (eq. 1-3 of Karras et al. 2020).

    Args:
        x: ``(N, I, H, W)`` input.
        weight: ``(O, I, k, k)`` base weight.
        styles: ``(N, I)`` per-sample modulation ``s``.
        noise: optional tensor broadcastable to the output, added after demodulation.
        demodulate: divide each output channel by ``sqrt(sum (s * w)^2 + 1e-8)``.
        fused_modconv: one grouped convolution (batch as groups) instead of scaling the
            activations before and after a shared convolution; same result.

    Returns ``(N, O, H', W')``.
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if styles.shape != (batch, in_channels):
        raise ValueError(
            f"styles must have shape ({batch}, {in_channels}), got {tuple(styles.shape)}"
        )
    if x.dtype == torch.float16 and demodulate:
        # Pre-normalise to avoid fp16 overflow (as published); demodulation undoes the scale.
        w_max = weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
        weight = weight * (1 / math.sqrt(in_channels * kh * kw) / w_max)
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    if demodulate and fused_modconv:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)

    if fused_modconv:
        # the batch as groups of one grouped convolution, each with its own modulated weight
        x = x.reshape(1, -1, *x.shape[2:])
        conv_weight, groups = w.reshape(-1, in_channels, kh, kw), batch
    else:
        # scale the input, convolve with the shared weight, scale the output (below)
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        conv_weight, groups = weight, 1
    x = conv2d_resample(
        x,
        conv_weight.to(x.dtype),
        f=resample_filter,
        up=up,
        down=down,
        padding=padding,
        groups=groups,
        flip_weight=flip_weight,
    )
    if fused_modconv:
        x = x.reshape(batch, -1, *x.shape[2:])
    elif demodulate:
        x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


NOISE_MODES = ("random", "const", "none")


class SynthesisLayer(_ResampledConv):
    """Modulated 3 x 3 convolution + noise injection + bias + leaky ReLU.

    ``forward(x, w)``: ``x`` ``(N, in, R/up, R/up)``, ``w`` ``(N, w_dim)`` ->
    ``(N, out, R, R)``. ``noise_mode``: ``"random"`` (fresh noise), ``"const"`` (the fixed
    buffer), ``"none"``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: tuple = (1, 3, 3, 1),
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, activation, up, resample_filter, conv_clamp
        )
        self.w_dim = w_dim
        self.resolution = resolution
        self.use_noise = use_noise
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool = True,
        gain: float = 1.0,
    ) -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        in_res = self.resolution // self.up
        if x.shape[1:] != (self.in_channels, in_res, in_res):
            raise ValueError(
                f"x must have shape (N, {self.in_channels}, {in_res}, {in_res}), "
                f"got {tuple(x.shape)}"
            )
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = (
                torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device)
                * self.noise_strength
            )
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            flip_weight=(self.up == 1),
            fused_modconv=fused_modconv,
        )
        return self._bias_act(x, self.bias, gain)


class ToRGBLayer(nn.Module):
    """1 x 1 modulated convolution without demodulation, + bias: ``(N, in, H, W)`` ->
    ``(N, out, H, W)``. 3DPortraitGAN also uses it for the raw image (``use_torgb_raw``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int = 1,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the StyleGAN2 "skip" synthesis network.

    ``in_channels == 0``: the first block, starting from a learned constant. Otherwise
    ``conv0`` upsamples by 2 (``upsample=True``, ``SynthesisBlock``) or keeps the size
    (``upsample=False``, EG3D's ``SynthesisBlockNoUp``), then ``conv1`` and ``torgb``.

    ``forward(x, img, ws)``: ``ws`` ``(N, num_conv + num_torgb, w_dim)``; returns the
    features ``(N, out, R, R)`` and the running image ``(N, img_channels, R, R)`` (float32).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        upsample: bool = True,
        resample_filter: tuple = (1, 3, 3, 1),
        conv_clamp: float | None = 256,
        fused_modconv_default: bool | str = True,
        use_noise: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.upsample = upsample
        self.fused_modconv_default = fused_modconv_default
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        layer_kwargs = dict(
            w_dim=w_dim,
            resolution=resolution,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
            use_noise=use_noise,
        )
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, up=2 if upsample else 1, **layer_kwargs
            )
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer_kwargs)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_torgb += 1

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        expected = (self.num_conv + self.num_torgb, self.w_dim)
        if ws.ndim != 3 or ws.shape[1:] != expected:
            raise ValueError(
                f"ws must have shape (N, {expected[0]}, {expected[1]}), got {tuple(ws.shape)}"
            )
        if fused_modconv is None:
            fused_modconv = self.fused_modconv_default
        if fused_modconv == "inference_only":
            fused_modconv = not self.training
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.to(ws.dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
        else:
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        if img is not None and self.upsample:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(torch.float32)
        img = img + y if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, upsample={self.upsample}"
