"""Reader of the 360°PHQ / EG3D image-set format, with optional masks and mirrored labels.

The format, as the published loaders read it (EG3D / PanoHead ``ImageFolderDataset``,
3DPortraitGAN ``MaskLabeledDataset``):

- a folder or a ``.zip`` of images (any depth; PNG, JPEG, ...), plus ``dataset.json`` at its
  root: ``{"labels": [[relative/path.png, [31 numbers]], ...]}``: 16 cam2world + 9 intrinsics
  (the 25-number EG3D camera) + 6 pose numbers (neck and head axis-angle);
- images are listed in sorted path order, all of one size (square);
- an optional second folder or zip of masks, matched to images by path without extension
  (so ``img/0001.jpg`` takes ``img/0001.png`` from the mask archive);
- ``xflip=True`` doubles the set: the second copy is mirrored left-right, its camera mirrored
  (label indices 1, 2, 3, 4, 8 negated) and its pose mirrored (indices 1, 2, 4, 5 negated),
  the mask mirrored with the image (3DPortraitGAN ``Dataset.get_label`` /
  ``get_coarse_pose``).

Where the published code asserts or raises a bare ``KeyError``, this reader raises
:class:`DatasetError` (a ``ValueError``) naming the entry: a missing ``dataset.json``, a bad
JSON layout, a label of the wrong length or with non-finite numbers, a label naming a file
that is not there, an image without a label, a duplicate entry, a path that escapes the
archive (absolute, ``..``), an image or mask that cannot be decoded or has the wrong size.

Items are dicts of tensors: ``image`` uint8 ``(C, H, W)``, ``camera`` float32 ``(25,)``,
``pose`` float32 ``(6,)``, ``mask`` uint8 ``(1, H, W)`` when masks are given, ``xflip``
bool, ``name`` str. Decoding uses Pillow (imported on first use).
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from portrait_engine.data.portrait.labels import (
    CAMERA_DIM,
    LABEL_DIM,
    mirror_camera,
    mirror_pose,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
LABELS_FILE = "dataset.json"


class DatasetError(ValueError):
    """A malformed dataset; the message names the path and the entry."""


def _ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _safe_name(name: Any, where: str) -> str:
    """Normalise an archive-relative path; reject one that escapes the archive."""
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{where}: file name must be a non-empty string, got {name!r}")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise DatasetError(f"{where}: path {name!r} is absolute (escapes the archive)")
    norm = posixpath.normpath(norm)
    if norm == ".." or norm.startswith("../"):
        raise DatasetError(f"{where}: path {name!r} escapes the archive")
    return norm


class _Archive:
    """A folder or a zip file, read by archive-relative names."""

    def __init__(self, path: str | Path, role: str) -> None:
        self.path = Path(path)
        self.role = role
        self._zip: zipfile.ZipFile | None = None
        self._pid = os.getpid()
        if self.path.is_dir():
            self.kind = "dir"
            root = self.path.resolve()
            names = set()
            for dirpath, _dirs, files in os.walk(root):
                for f in files:
                    names.add(Path(dirpath, f).relative_to(root).as_posix())
        elif self.path.is_file() and _ext(str(self.path)) == ".zip":
            self.kind = "zip"
            try:
                names = {n for n in self._zipfile().namelist() if not n.endswith("/")}
            except zipfile.BadZipFile as err:
                raise DatasetError(f"{role} {self.path}: not a readable zip file ({err})") from err
        elif not self.path.exists():
            raise DatasetError(f"{role} {self.path} does not exist")
        else:
            raise DatasetError(f"{role} {self.path} must be a directory or a .zip file")
        self.names = names

    def _zipfile(self) -> zipfile.ZipFile:
        # A forked DataLoader worker must not share the parent's file offset: reopen there.
        if self._zip is not None and self._pid != os.getpid():
            self._zip = None
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._zip

    def read(self, name: str) -> bytes:
        if self.kind == "zip":
            return self._zipfile().read(name)
        root = self.path.resolve()
        target = (root / name).resolve()
        if root != target and root not in target.parents:
            raise DatasetError(f"{self.role} {self.path}: {name!r} resolves outside the folder")
        return target.read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zip=None)


def _decode(data: bytes, where: str, mode: str | None = None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            if mode is not None and img.mode != mode:
                img = img.convert(mode)
            array = np.array(img)
    except Exception as err:  # Pillow raises several types for corrupt files
        raise DatasetError(f"{where}: cannot decode image ({type(err).__name__}: {err})") from err
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype != np.uint8:
        raise DatasetError(f"{where}: expected 8-bit pixels, got {array.dtype}")
    return array.transpose(2, 0, 1)


def _parse_labels(raw: bytes, where: str) -> dict[str, np.ndarray]:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{where}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list):
        raise DatasetError(f'{where}: expected {{"labels": [[name, [numbers]], ...]}}')
    labels: dict[str, np.ndarray] = {}
    for i, entry in enumerate(data["labels"]):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise DatasetError(
                f"{where}: labels[{i}] must be [file name, [numbers]], got {entry!r}"
            )
        name = _safe_name(entry[0], f"{where}: labels[{i}]")
        values = entry[1]
        if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            raise DatasetError(f"{where}: label of {name!r} must be a list of numbers")
        if len(values) != LABEL_DIM:
            raise DatasetError(
                f"{where}: label of {name!r} has {len(values)} numbers, expected {LABEL_DIM} "
                f"({CAMERA_DIM} camera + {LABEL_DIM - CAMERA_DIM} pose)"
            )
        if not all(math.isfinite(v) for v in values):
            raise DatasetError(f"{where}: label of {name!r} has non-finite numbers")
        if name in labels:
            raise DatasetError(f"{where}: {name!r} is labelled twice")
        labels[name] = np.asarray(values, dtype=np.float32)
    return labels


class PortraitDataset(torch.utils.data.Dataset):
    """The 360°PHQ / EG3D dataset at ``path`` (folder or zip), optional masks at ``mask_path``.

    Args:
        path: folder or ``.zip`` with the images and ``dataset.json``.
        mask_path: folder or ``.zip`` of masks with the same names (extension may differ).
        xflip: append a mirrored copy of every image (labels mirrored as published).
        resolution: if given, the images must have this size.
        max_size: keep at most this many images, a random subset (published: numpy
            ``RandomState(random_seed)`` shuffle, first ``max_size``, sorted), before x-flip.
        random_seed: seed of that subset.
    """

    def __init__(
        self,
        path: str | Path,
        mask_path: str | Path | None = None,
        xflip: bool = False,
        resolution: int | None = None,
        max_size: int | None = None,
        random_seed: int = 0,
    ) -> None:
        if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"max_size must be a positive int or None, got {max_size!r}")
        self._images = _Archive(path, "dataset")
        self._masks = _Archive(mask_path, "mask set") if mask_path is not None else None
        where = f"{self._images.path}/{LABELS_FILE}"
        if LABELS_FILE not in self._images.names:
            raise DatasetError(f"dataset {self._images.path}: {LABELS_FILE} not found")
        labels = _parse_labels(self._images.read(LABELS_FILE), where)
        image_names = sorted(n for n in self._images.names if _ext(n) in IMAGE_EXTENSIONS)
        for name in image_names:
            if _safe_name(name, f"dataset {self._images.path}") != name:
                raise DatasetError(
                    f"dataset {self._images.path}: member {name!r} is not a clean path"
                )
        if not image_names:
            raise DatasetError(f"dataset {self._images.path}: no image files found")
        for name in labels:
            if name not in self._images.names:
                raise DatasetError(f"{where}: labelled file {name!r} is missing from the dataset")
        for name in image_names:
            if name not in labels:
                raise DatasetError(f"dataset {self._images.path}: image {name!r} has no label")
        self.names = image_names
        self.labels = np.stack([labels[n] for n in image_names])
        self._mask_names: list[str] | None = None
        if self._masks is not None:
            by_stem: dict[str, str] = {}
            for n in sorted(self._masks.names):
                if _ext(n) in IMAGE_EXTENSIONS:
                    by_stem.setdefault(os.path.splitext(n)[0], n)
            missing = [n for n in image_names if os.path.splitext(n)[0] not in by_stem]
            if missing:
                raise DatasetError(
                    f"mask set {self._masks.path}: no mask for image {missing[0]!r}"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                )
            self._mask_names = [by_stem[os.path.splitext(n)[0]] for n in image_names]
        if max_size is not None and len(self.names) > max_size:
            keep = np.arange(len(self.names))
            np.random.RandomState(random_seed).shuffle(keep)
            keep = np.sort(keep[:max_size])
            self.names = [self.names[i] for i in keep]
            self.labels = self.labels[keep]
            if self._mask_names is not None:
                self._mask_names = [self._mask_names[i] for i in keep]
        first = self._load_image(0)
        c, h, w = first.shape
        if h != w:
            raise DatasetError(
                f"dataset {self._images.path}: image {self.names[0]!r} is {w}x{h}, not square"
            )
        if resolution is not None and h != resolution:
            raise DatasetError(
                f"dataset {self._images.path}: images are {h}x{h}, expected {resolution}"
            )
        self.image_shape = (c, h, w)
        self.xflip = bool(xflip)

    # Sizes.
    @property
    def resolution(self) -> int:
        return self.image_shape[1]

    @property
    def num_channels(self) -> int:
        return self.image_shape[0]

    @property
    def has_masks(self) -> bool:
        return self._masks is not None

    @property
    def num_raw(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return self.num_raw * (2 if self.xflip else 1)

    # Loading.
    def _load_image(self, raw: int) -> np.ndarray:
        name = self.names[raw]
        return _decode(self._images.read(name), f"dataset {self._images.path}: image {name!r}")

    def _load_mask(self, raw: int) -> np.ndarray:
        name = self._mask_names[raw]
        where = f"mask set {self._masks.path}: mask {name!r}"
        mask = _decode(self._masks.read(name), where, mode="L")
        if mask.shape[1:] != self.image_shape[1:]:
            raise DatasetError(
                f"{where} is {mask.shape[2]}x{mask.shape[1]}, the images are "
                f"{self.image_shape[2]}x{self.image_shape[1]}"
            )
        return mask

    def camera(self, idx: int) -> np.ndarray:
        """The (possibly mirrored) 25-number camera label of item ``idx``."""
        raw, flip = self._index(idx)
        camera = self.labels[raw, :CAMERA_DIM].copy()
        return mirror_camera(camera) if flip else camera

    def pose(self, idx: int) -> np.ndarray:
        """The (possibly mirrored) 6-number pose of item ``idx``."""
        raw, flip = self._index(idx)
        pose = self.labels[raw, CAMERA_DIM:].copy()
        return mirror_pose(pose) if flip else pose

    def _index(self, idx: int) -> tuple[int, bool]:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} items")
        idx %= len(self)
        return idx % self.num_raw, idx >= self.num_raw

    def __getitem__(self, idx: int) -> dict[str, Any]:
        raw, flip = self._index(idx)
        image = self._load_image(raw)
        if image.shape != self.image_shape:
            raise DatasetError(
                f"dataset {self._images.path}: image {self.names[raw]!r} has shape "
                f"{image.shape}, the first image {self.image_shape}"
            )
        item: dict[str, Any] = {"name": self.names[raw], "xflip": flip}
        if flip:
            image = image[:, :, ::-1]
        item["image"] = torch.from_numpy(np.ascontiguousarray(image))
        item["camera"] = torch.from_numpy(self.camera(idx))
        item["pose"] = torch.from_numpy(self.pose(idx))
        if self._masks is not None:
            mask = self._load_mask(raw)
            if flip:
                mask = mask[:, :, ::-1]
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask))
        return item

    def close(self) -> None:
        self._images.close()
        if self._masks is not None:
            self._masks.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
