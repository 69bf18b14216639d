"""Identity-folder datasets (one sub-folder per identity) and the image decoding they share.

Layout: ``root/<identity>/<image>.{jpg,jpeg,png,bmp,webp}``, as CASIA-WebFace, VGGFace2 and
TinyFace's ``Training_Set`` are distributed. Identities are the sub-folder names in sorted
order, so the label of an identity is stable across runs and machines.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _pil():
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:  # pragma: no cover - pillow is a dependency
        raise ImportError("reading face images needs Pillow: pip install pillow") from error
    return Image, UnidentifiedImageError


def decode_image(
    data: bytes | str | os.PathLike, size: int | None = None, name: str = ""
) -> torch.Tensor:
    """Decode an image file or encoded bytes to ``(3, H, W)`` float32 in [-1, 1].

    ``size``: resize to ``size × size`` (bilinear with anti-aliasing) when given.
    ``name``: how the image is named in errors (defaults to the path).
    Raises ``ValueError`` naming the image when it cannot be decoded.
    """
    Image, UnidentifiedImageError = _pil()
    label = name or (str(data) if not isinstance(data, bytes | bytearray) else "<bytes>")
    try:
        source = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        with Image.open(source) as img:
            img = img.convert("RGB")
            width, height = img.size
            pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {label}: {error}") from error
    if width == 0 or height == 0:
        raise ValueError(f"cannot read image {label}: it has no pixels")
    image = pixels.view(height, width, 3).permute(2, 0, 1).float() / 127.5 - 1
    if size is not None and (height, width) != (size, size):
        image = F.interpolate(
            image.unsqueeze(0),
            size=(size, size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0].clamp(-1, 1)
    return image.contiguous()


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files of ``folder`` (by extension, case-insensitive), sorted."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def check_size(size: int | None) -> int | None:
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    return size


def check_root(root: str | os.PathLike, what: str = "root") -> Path:
    path = Path(root)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{what} {str(path)!r} is not a folder")
    return path


class IdentityFolder(torch.utils.data.Dataset):
    """Faces in ``root/<identity>/<image>``: item ``i`` is ``(image, label)``.

    Args:
        root: the folder of identity folders.
        size: images are resized to ``size × size`` (``None`` keeps each image's own size).
        transform: optional callable applied to the ``(3, H, W)`` image tensor.
        check: decode every image once now, so an unreadable file fails at construction
            rather than in the middle of an epoch.

    Raises ``FileNotFoundError`` / ``NotADirectoryError`` for a missing root, ``ValueError``
    for a root with no identity folders or identity folders with no images (naming them), and
    ``ValueError`` naming the file for an image that cannot be decoded.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int | None = 112,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        check: bool = False,
    ) -> None:
        self.root = check_root(root)
        self.size = check_size(size)
        self.transform = transform
        folders = sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not folders:
            raise ValueError(
                f"root {str(self.root)!r} holds no identity folders "
                "(expected root/<identity>/<image>)"
            )
        self.identities = [p.name for p in folders]
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for label, folder in enumerate(folders):
            images = list_images(folder)
            if not images:
                empty.append(folder.name)
            self.samples.extend((path, label) for path in images)
        if empty:
            shown = ", ".join(repr(name) for name in empty[:10])
            more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
            raise ValueError(
                f"{len(empty)} identity folder(s) in {str(self.root)!r} hold no images "
                f"({', '.join(IMAGE_EXTENSIONS)}): {shown}{more}"
            )
        self.num_classes = len(folders)
        self.labels = np.array([label for _, label in self.samples], dtype=np.int64)
        if check:
            for path, _ in self.samples:
                decode_image(path, self.size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = decode_image(path, self.size)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __repr__(self) -> str:
        return (
            f"IdentityFolder({str(self.root)!r}, identities={self.num_classes}, "
            f"images={len(self)}, size={self.size})"
        )
