"""Writer of the 360°PHQ / EG3D format (the inverse of :class:`PortraitDataset`).

Images and masks are PNG files; ``dataset.json`` holds ``{"labels": [[name, [31 numbers]]]}``.
A path ending in ``.zip`` becomes a zip archive (files stored, PNG is already compressed),
anything else a folder. Masks go to a second archive with the same names, as 360°PHQ ships
them.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from portrait_engine.data.portrait.dataset import LABELS_FILE
from portrait_engine.data.portrait.labels import LABEL_DIM


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class _Sink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = None
        if path.suffix.lower() == ".zip":
            path.parent.mkdir(parents=True, exist_ok=True)
            self.zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED)
        else:
            path.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, data: bytes) -> None:
        if self.zip is not None:
            self.zip.writestr(name, data)
        else:
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def write_dataset(
    path: str | Path,
    entries: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
    mask_path: str | Path | None = None,
) -> int:
    """Write ``(name, image (H, W, 3) uint8, label (31,), mask (H, W) uint8 or None)`` entries.

    Returns the number of images written.
    """
    images = _Sink(Path(path))
    masks = _Sink(Path(mask_path)) if mask_path is not None else None
    labels = []
    try:
        for name, image, label, mask in entries:
            label = np.asarray(label, dtype=np.float64).reshape(-1)
            if label.shape != (LABEL_DIM,):
                raise ValueError(
                    f"label of {name!r} must have {LABEL_DIM} numbers, got {label.size}"
                )
            if image.dtype != np.uint8 or image.ndim != 3:
                raise ValueError(
                    f"image {name!r} must be (H, W, C) uint8, got {image.shape} {image.dtype}"
                )
            images.write(name, _png(image))
            if masks is not None:
                if mask is None:
                    raise ValueError(f"mask of {name!r} is missing while mask_path is set")
                masks.write(name, _png(mask))
            labels.append([name, [float(v) for v in label]])
        images.write(LABELS_FILE, json.dumps({"labels": labels}).encode())
    finally:
        images.close()
        if masks is not None:
            masks.close()
    return len(labels)
