"""TinyFace (Cheng et al., ACCV 2018): native very-low-resolution faces, identification protocol.

Layout of the test set (as distributed, and as AdaFace's aligned copies keep it)::

    <root>/Probe/<identity>_<n>.jpg               faces to identify
    <root>/Gallery_Match/<identity>_<n>.jpg        the gallery faces of the probe identities
    <root>/Gallery_Distractor/**/<name>.jpg        faces of people in no probe (any sub-folders)

``root`` may be that folder, or a folder holding ``Testing_Set/`` or ``tinyface/Testing_Set/``.
The identity of a probe or gallery-match image is the integer before the first ``_`` of its
file name (as in the protocol's ``*_img_ID_pairs.mat``); distractors have the label
:data:`DISTRACTOR_LABEL`. Labels are TinyFace's own identity numbers, so probe and gallery
labels agree across parts; ``num_classes`` counts the distinct identities of the part.
The protocol: closed-set identification of each probe against gallery match plus distractors,
rank-1/5/20 (see ``models.recognizability.evaluation.identification``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from portrait_engine.data.faces.folder import check_root, check_size, decode_image, list_images

PARTS = {
    "probe": "Probe",
    "gallery_match": "Gallery_Match",
    "gallery_distractor": "Gallery_Distractor",
}
DISTRACTOR_LABEL = -1


def find_part(root: Path, part: str) -> Path:
    folder = PARTS[part]
    for base in (root, root / "Testing_Set", root / "tinyface" / "Testing_Set"):
        if (base / folder).is_dir():
            return base / folder
    raise FileNotFoundError(
        f"no {folder}/ folder for part {part!r} under {str(root)!r} (looked in the root, "
        f"Testing_Set/ and tinyface/Testing_Set/)"
    )


def identity_of(path: Path) -> int:
    prefix = path.stem.split("_", 1)[0]
    try:
        return int(prefix)
    except ValueError:
        raise ValueError(
            f"TinyFace image {str(path)!r}: the file name must start with the integer identity "
            f"followed by '_' (e.g. 12_3.jpg)"
        ) from None


class TinyFace(torch.utils.data.Dataset):
    """One part of the TinyFace test set: item ``i`` is ``(image, label)``.

    Args:
        root: the TinyFace folder (see the module docstring for what is accepted).
        part: ``"probe"``, ``"gallery_match"`` or ``"gallery_distractor"``.
        size: resize to ``size × size`` (``None`` keeps the native tiny size; recognisers
            usually take 112, up-sampled).
        transform: optional callable applied to the image tensor.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        part: str = "probe",
        size: int | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if part not in PARTS:
            raise ValueError(f"part must be one of {sorted(PARTS)}, got {part!r}")
        self.root = check_root(root)
        self.part = part
        self.size = check_size(size)
        self.transform = transform
        self.folder = find_part(self.root, part)
        distractor = part == "gallery_distractor"
        self.paths = list_images(self.folder, recursive=distractor)
        if not self.paths:
            raise ValueError(f"TinyFace part {part!r}: {str(self.folder)!r} holds no images")
        if distractor:
            self.labels = np.full(len(self.paths), DISTRACTOR_LABEL, dtype=np.int64)
        else:
            self.labels = np.array([identity_of(p) for p in self.paths], dtype=np.int64)
        self.num_classes = 0 if distractor else len(np.unique(self.labels))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = decode_image(self.paths[index], self.size)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"TinyFace({str(self.root)!r}, part={self.part!r}, images={len(self)})"
