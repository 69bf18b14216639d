"""Very-low-resolution synthesis and the degradations that make faces unrecognisable.

:class:`VeryLowResolution` is the AdaFace-style low-resolution augmentation widened to the RI
setting (faces of 8 to 32 pixels): an optional Gaussian blur, a down-sampling to a random side
in ``[min_size, max_size]`` with a random interpolation (area, bilinear or bicubic with
anti-aliasing, nearest), sensor noise and JPEG compression at the low resolution, then an
up-sampling back to the input size with a random interpolation. :func:`unrecognizable` makes the
unrecognisable-identity (UI) faces of Deng et al. ("Harnessing Unrecognizable Faces for
Improving Face Recognition"): so little signal is left (a 2 to 5 pixel face, a blur wider than
the eyes' spacing, noise that buries a tiny face) that no identity can be read from them.

Both take a ``(3, H, W)`` or ``(B, 3, H, W)`` float tensor in [-1, 1] and return a tensor of the
same shape, dtype and device, in [-1, 1]; each image of a batch draws its own degradation.
Randomness comes only from the ``torch.Generator`` given (or made from ``seed``), so a seeded
pipeline is reproducible.
"""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F

DOWN_MODES = ("area", "bilinear", "bicubic", "nearest")
UP_MODES = ("bilinear", "bicubic", "nearest")


def _check_images(image: torch.Tensor, name: str = "image") -> tuple[torch.Tensor, bool]:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if not image.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor in [-1, 1], got {image.dtype}")
    if image.dim() == 3:
        image, single = image.unsqueeze(0), True
    elif image.dim() == 4:
        single = False
    else:
        raise ValueError(f"{name} must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    if image.shape[1] != 3:
        raise ValueError(f"{name} must have 3 channels, got shape {tuple(image.shape)}")
    if image.shape[-1] < 1 or image.shape[-2] < 1:
        raise ValueError(f"{name} must not be empty, got shape {tuple(image.shape)}")
    return image, single


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _choice(g: torch.Generator, options):
    return options[int(torch.randint(len(options), (), generator=g))]


def resample(
    image: torch.Tensor, size: int, down: str = "bicubic", up: str = "bicubic"
) -> torch.Tensor:
    """Down-sample to ``size`` pixels on the shorter side, then back to the input size.

    ``image``: ``(B, 3, H, W)``. ``down`` in :data:`DOWN_MODES` (bilinear and bicubic with
    anti-aliasing, as a camera's optics would), ``up`` in :data:`UP_MODES`.
    """
    if down not in DOWN_MODES:
        raise ValueError(f"down must be one of {DOWN_MODES}, got {down!r}")
    if up not in UP_MODES:
        raise ValueError(f"up must be one of {UP_MODES}, got {up!r}")
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    low = (max(1, round(height * scale)), max(1, round(width * scale)))
    kwargs = {"antialias": True} if down in ("bilinear", "bicubic") else {}
    align = {"align_corners": False} if down in ("bilinear", "bicubic") else {}
    small = F.interpolate(image.float(), size=low, mode=down, **kwargs, **align)
    align = {"align_corners": False} if up in ("bilinear", "bicubic") else {}
    return F.interpolate(small, size=(height, width), mode=up, **align).to(image.dtype)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` with standard deviation ``sigma`` pixels."""
    if sigma <= 0:
        return image
    radius = max(1, int(3 * sigma + 0.5))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=image.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    x = image.float()
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return x.to(image.dtype)


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress and decode each ``(3, H, W)`` image of a ``(B, 3, H, W)`` batch (Pillow)."""
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - pillow is a dependency
        raise ImportError("JPEG degradation needs Pillow: pip install pillow") from error
    out = []
    for one in image:
        pixels = ((one.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(
            buffer, format="JPEG", quality=int(quality)
        )
        buffer.seek(0)
        decoded = torch.frombuffer(
            bytearray(Image.open(buffer).convert("RGB").tobytes()), dtype=torch.uint8
        ).view(one.shape[1], one.shape[2], 3)
        out.append(decoded.permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(out).to(image.device, image.dtype)


class VeryLowResolution:
    """Random very-low-resolution degradation (AdaFace-style), applied with probability ``p``.

    Args:
        min_size, max_size: the low-resolution side is drawn uniformly from this range (pixels).
        p: probability that an image is degraded at all (else it is returned unchanged).
        blur_p, max_blur_sigma: probability and largest sigma (pixels at the input size) of a
            Gaussian blur before down-sampling.
        noise_p, max_noise_std: probability and largest std (in [-1, 1] units) of Gaussian
            noise added at the low resolution.
        jpeg_p, jpeg_quality: probability and (low, high) quality range of JPEG at the low
            resolution.
        seed, generator: where the randomness comes from (a generator wins over a seed).

    ``transform(image)`` with ``image`` ``(3, H, W)`` or ``(B, 3, H, W)`` in [-1, 1].
    """

    def __init__(
        self,
        min_size: int = 8,
        max_size: int = 32,
        p: float = 1.0,
        blur_p: float = 0.3,
        max_blur_sigma: float = 1.5,
        noise_p: float = 0.3,
        max_noise_std: float = 0.06,
        jpeg_p: float = 0.3,
        jpeg_quality: tuple[int, int] = (30, 90),
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not (isinstance(min_size, int) and isinstance(max_size, int)):
            raise TypeError(f"min_size and max_size must be ints, got {min_size!r}, {max_size!r}")
        if not 1 <= min_size <= max_size:
            raise ValueError(
                f"need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}"
            )
        for name, value in (("p", p), ("blur_p", blur_p), ("noise_p", noise_p), ("jpeg_p", jpeg_p)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        low_q, high_q = jpeg_quality
        if not 1 <= low_q <= high_q <= 100:
            raise ValueError(
                f"jpeg_quality must be (low, high) within [1, 100], got {jpeg_quality}"
            )
        self.min_size, self.max_size = min_size, max_size
        self.p, self.blur_p, self.noise_p, self.jpeg_p = p, blur_p, noise_p, jpeg_p
        self.max_blur_sigma, self.max_noise_std = max_blur_sigma, max_noise_std
        self.jpeg_quality = (int(low_q), int(high_q))
        self.generator = _generator(seed, generator)

    def degrade_one(self, image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Degrade one ``(1, 3, H, W)`` image with draws from ``g``."""
        if torch.rand((), generator=g).item() >= self.p:
            return image
        size = int(torch.randint(self.min_size, self.max_size + 1, (), generator=g))
        down, up = _choice(g, DOWN_MODES), _choice(g, UP_MODES)
        if torch.rand((), generator=g).item() < self.blur_p:
            image = gaussian_blur(image, _uniform(g, 0.3, self.max_blur_sigma))
        height, width = image.shape[-2:]
        scale = size / min(height, width)
        low = (max(1, round(height * scale)), max(1, round(width * scale)))
        kwargs = (
            {"antialias": True, "align_corners": False} if down in ("bilinear", "bicubic") else {}
        )
        small = F.interpolate(image.float(), size=low, mode=down, **kwargs)
        if torch.rand((), generator=g).item() < self.noise_p:
            std = _uniform(g, 0.0, self.max_noise_std)
            noise = torch.randn(small.shape, generator=g).to(small.device)
            small = small + std * noise
        if torch.rand((), generator=g).item() < self.jpeg_p:
            quality = int(
                torch.randint(self.jpeg_quality[0], self.jpeg_quality[1] + 1, (), generator=g)
            )
            small = jpeg(small.clamp(-1, 1), quality)
        kwargs = {"align_corners": False} if up in ("bilinear", "bicubic") else {}
        big = F.interpolate(small, size=(height, width), mode=up, **kwargs)
        return big.clamp(-1, 1).to(image.dtype)

    def __call__(
        self, image: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        batch, single = _check_images(image)
        g = generator if generator is not None else self.generator
        out = (
            torch.cat([self.degrade_one(one.unsqueeze(0), g) for one in batch])
            if len(batch)
            else batch
        )
        return out[0] if single else out

    def __repr__(self) -> str:
        return (
            f"VeryLowResolution(min_size={self.min_size}, max_size={self.max_size}, p={self.p}, "
            f"blur_p={self.blur_p}, noise_p={self.noise_p}, jpeg_p={self.jpeg_p})"
        )


UNRECOGNIZABLE_KINDS = ("tiny", "blur", "noise", "tiny_jpeg")


def unrecognizable(
    image: torch.Tensor, generator: torch.Generator | None = None, kind: str | None = None
) -> torch.Tensor:
    """Degrade faces until no identity is left: the unrecognisable-identity (UI) faces.

    Each image draws one of :data:`UNRECOGNIZABLE_KINDS` (or uses ``kind``):

    - ``"tiny"``: down-sampled to 2 to 5 pixels and back up;
    - ``"blur"``: a Gaussian blur with sigma 12 to 20 % of the image side;
    - ``"noise"``: down-sampled to 6 to 8 pixels, buried under noise of std 0.6 to 1.0;
    - ``"tiny_jpeg"``: down-sampled to 4 to 6 pixels, JPEG quality 5 to 15, back up.

    ``image`` ``(3, H, W)`` or ``(B, 3, H, W)`` in [-1, 1]; returns the same shape in [-1, 1].
    """
    if kind is not None and kind not in UNRECOGNIZABLE_KINDS:
        raise ValueError(f"kind must be one of {UNRECOGNIZABLE_KINDS} or None, got {kind!r}")
    batch, single = _check_images(image)
    g = _generator(None, generator)
    out = []
    for one in batch:
        one = one.unsqueeze(0)
        which = kind or _choice(g, UNRECOGNIZABLE_KINDS)
        side = min(one.shape[-2:])
        up = _choice(g, UP_MODES)
        if which == "tiny":
            one = resample(one, int(torch.randint(2, 6, (), generator=g)), "area", up)
        elif which == "blur":
            one = gaussian_blur(one, _uniform(g, 0.12, 0.2) * side)
        elif which == "noise":
            size = int(torch.randint(6, 9, (), generator=g))
            one = resample(one, size, "area", up)
            noise = torch.randn(one.shape, generator=g).to(one.device, one.dtype)
            one = one + _uniform(g, 0.6, 1.0) * noise
        else:
            size = int(torch.randint(4, 7, (), generator=g))
            height, width = one.shape[-2:]
            small = F.interpolate(one.float(), size=(size, size), mode="area")
            small = jpeg(small, int(torch.randint(5, 16, (), generator=g)))
            one = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
            one = one.to(image.dtype)
        out.append(one.clamp(-1, 1))
    result = torch.cat(out) if out else batch
    return result[0] if single else result
