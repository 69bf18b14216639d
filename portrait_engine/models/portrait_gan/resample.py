"""StyleGAN2's resampling in plain PyTorch: FIR filters, ``upfirdn2d`` and ``conv2d_resample``.

Semantics follow StyleGAN2-ADA / EG3D (``torch_utils/ops/upfirdn2d.py`` and
``conv2d_resample.py``): an image is upsampled by inserting ``up - 1`` zeros after every
pixel, padded, convolved with a separable FIR filter and subsampled by ``down``:

    y = downsample_down( filter_f( pad( zero_insert_up(x) ) ) )

The default filter is ``[1, 3, 3, 1]`` (outer product, normalised to sum 1). Upsampling by
``up`` multiplies the filter gain by ``up ** 2`` so that a constant image keeps its value.
Resampled convolutions use the same fast paths as the published code (transposed strided
convolution then filter for ``up``, filter then strided convolution for ``down``), so the
pixel alignment is the published one. No custom kernel: these layers are not on the
rendering path (issue 6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def setup_filter(taps: Sequence[float] = (1, 3, 3, 1), normalize: bool = True) -> torch.Tensor:
    """The 2-D separable FIR filter ``outer(taps, taps)``, normalised to sum 1 by default.

    Returns a ``(len(taps), len(taps))`` float32 tensor.
    """
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    if f.ndim != 1 or f.numel() == 0:
        raise ValueError(f"taps must be a non-empty 1-D sequence, got {list(taps)}")
    f = f.ger(f)
    if normalize:
        f = f / f.sum()
    return f


def _padding4(padding: int | Sequence[int]) -> list[int]:
    if isinstance(padding, int):
        return [padding] * 4
    padding = list(padding)
    if len(padding) == 2:
        px, py = padding
        return [px, px, py, py]
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, (px, py) or (x0, x1, y0, y1), got {padding}")
    return padding


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample, pad, FIR-filter and downsample a batch of images ``x`` of shape (N, C, H, W).

    ``padding`` is ``(x0, x1, y0, y1)`` (negative values crop), applied after upsampling.
    ``flip_filter=False`` is a true convolution with ``f``; ``gain`` scales the filter.
    """
    n, c, h, w = x.shape
    px0, px1, py0, py1 = _padding4(padding)
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[
        :,
        :,
        max(-py0, 0) : x.shape[2] - max(-py1, 0),
        max(-px0, 0) : x.shape[3] - max(-px1, 0),
    ]
    f = (f * gain).to(x.dtype)
    if not flip_filter:
        f = f.flip([0, 1])
    weight = f[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def filter2d(x: torch.Tensor, f: torch.Tensor, padding: int = 0, gain: float = 1.0) -> torch.Tensor:
    """Filter ``x`` with ``f`` keeping its size (``padding`` adds to each side)."""
    fw = f.shape[-1]
    p = [padding + fw // 2, padding + (fw - 1) // 2] * 2
    return upfirdn2d(x, f, padding=p, gain=gain)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, gain: float = 1.0) -> torch.Tensor:
    """Upsample ``x`` by ``up`` with the low-pass filter ``f`` (output H*up x W*up)."""
    fw = f.shape[-1]
    p = [(fw + up - 1) // 2, (fw - up) // 2] * 2
    return upfirdn2d(x, f, up=up, padding=p, gain=gain * up * up)


def downsample2d(
    x: torch.Tensor, f: torch.Tensor, down: int = 2, gain: float = 1.0
) -> torch.Tensor:
    """Downsample ``x`` by ``down`` after low-pass filtering with ``f`` (output H/down)."""
    fw = f.shape[-1]
    p = [(fw - down + 1) // 2, (fw - down) // 2] * 2
    return upfirdn2d(x, f, down=down, padding=p, gain=gain)


def _conv(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    if not flip_weight and (w.shape[-1] > 1 or w.shape[-2] > 1):
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    groups: int = 1,
    flip_weight: bool = True,
) -> torch.Tensor:
    """2-D convolution of ``x`` (N, C, H, W) by ``w`` (O, C/groups, k, k) with optional
    ``up``/``down`` resampling through the FIR filter ``f``.

    ``padding`` is relative to the upsampled image. ``flip_weight=True`` is correlation (as
    ``F.conv2d``), ``False`` a true convolution. Paths as in the published code.
    """
    out_channels, in_per_group, kh, kw = w.shape
    if (up > 1 or down > 1) and f is None:
        raise ValueError("conv2d_resample with up or down needs a resampling filter f")
    fw = f.shape[-1] if f is not None else 1
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fw + up - 1) // 2
        py1 += (fw - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fw - down + 1) // 2
        py1 += (fw - down) // 2

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up * up)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        # Transposed strided convolution, then the interpolation filter.
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw)
            w = w.transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(
            x,
            w,
            stride=up,
            padding=[pyt, pxt],
            groups=groups,
            transpose=True,
            flip_weight=not flip_weight,
        )
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, torch.ones(1, 1, dtype=x.dtype, device=x.device), padding=[px0, px1, py0, py1])
    return _conv(x, w, groups=groups, flip_weight=flip_weight)
