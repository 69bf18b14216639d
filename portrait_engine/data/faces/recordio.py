"""The insightface ``train.rec`` / ``train.idx`` face datasets, read without MXNet.

File format (MXNet / dmlc-core RecordIO, little-endian):

- a ``.rec`` file is a sequence of records; each record part is ``uint32 magic = 0xced7230a``,
  ``uint32 lrecord`` (upper 3 bits: continuation flag ``cflag``, lower 29 bits: length),
  ``length`` payload bytes, then zero padding to a multiple of 4 bytes. A payload that itself
  contains the magic word at a 4-byte aligned position is split there by the writer
  (``cflag`` 1 = first part, 2 = middle, 3 = last, 0 = whole record); the reader joins the
  parts, putting the magic word back between them.
- a payload is an ``IRHeader`` (``uint32 flag, float32 label, uint64 id, uint64 id2``, 24
  bytes); when ``flag > 0`` the label is instead the ``flag`` float32 values that follow the
  header; then the encoded image (JPEG in the insightface sets).
- the ``.idx`` text file holds one ``key<TAB>byte offset`` line per record.

insightface writes a header record at key 0 whose label is ``(first identity record key,
end key)``; the images are the keys ``1 .. label[0] - 1`` and the label of an image is the first
value of its header label. Without such a header every key of the index is an image.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from portrait_engine.data.faces.folder import check_size, decode_image

MAGIC = 0xCED7230A
_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1


@dataclass(frozen=True)
class RecordHeader:
    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def unpack(payload: bytes) -> tuple[RecordHeader, bytes]:
    """Split a record payload into its ``IRHeader`` (label array when ``flag > 0``) and data."""
    if len(payload) < _HEADER.size:
        raise ValueError(f"record of {len(payload)} bytes is shorter than its 24-byte header")
    flag, label, id1, id2 = _HEADER.unpack_from(payload)
    data = payload[_HEADER.size :]
    if flag > 0:
        if len(data) < 4 * flag:
            raise ValueError(f"record header announces {flag} labels but holds {len(data) // 4}")
        label = np.frombuffer(data[: 4 * flag], dtype="<f4").copy()
        data = data[4 * flag :]
    return RecordHeader(flag, label, id1, id2), data


def read_record(handle, offset: int, path: str = "") -> bytes:
    """The payload of the record that starts at byte ``offset`` (joining split parts)."""
    handle.seek(offset)
    parts = []
    while True:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated record at byte {offset} (end of file)")
        magic, lrecord = struct.unpack("<II", head)
        if magic != MAGIC:
            raise ValueError(
                f"{path}: no RecordIO magic at byte {handle.tell() - 8} "
                f"(found 0x{magic:08x}, expected 0x{MAGIC:08x}); wrong offset or not a .rec file"
            )
        cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
        body = handle.read((length + 3) // 4 * 4)
        if len(body) < length:
            raise ValueError(f"{path}: truncated record at byte {offset}")
        parts.append(body[:length])
        if cflag in (0, 3):
            break
        if cflag not in (1, 2):
            raise ValueError(f"{path}: bad continuation flag {cflag} at byte {offset}")
    return struct.pack("<I", MAGIC).join(parts)


def scan_offsets(path: str | os.PathLike) -> list[int]:
    """Offsets of every record of a ``.rec`` file, by walking it (when there is no ``.idx``)."""
    offsets = []
    with open(path, "rb") as handle:
        position, starting = 0, True
        while True:
            head = handle.read(8)
            if not head:
                break
            if len(head) < 8:
                raise ValueError(f"{path}: truncated record header at byte {position}")
            magic, lrecord = struct.unpack("<II", head)
            if magic != MAGIC:
                raise ValueError(f"{path}: no RecordIO magic at byte {position}; not a .rec file")
            cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
            if starting:
                offsets.append(position)
            starting = cflag in (0, 3)
            handle.seek((length + 3) // 4 * 4, os.SEEK_CUR)
            position = handle.tell()
    return offsets


def read_index(path: str | os.PathLike) -> dict[int, int]:
    """The ``key<TAB>offset`` lines of an ``.idx`` file."""
    index = {}
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}:{number}: expected 'key<TAB>offset', got {line!r}")
            try:
                index[int(fields[0])] = int(fields[1])
            except ValueError as error:
                raise ValueError(f"{path}:{number}: {error}") from error
    return index


class RecordIO(torch.utils.data.Dataset):
    """Faces in an insightface ``train.rec`` (+ ``train.idx``): item ``i`` is ``(image, label)``.

    Args:
        rec_path: the ``.rec`` file.
        idx_path: its ``.idx`` file; by default the ``.rec`` path with suffix ``.idx`` when it
            exists, else the ``.rec`` file is scanned for its record offsets.
        size: resize images to ``size × size`` (``None`` keeps their size: 112 in insightface).
        transform: optional callable applied to the image tensor.

    Labels are known up front: from insightface's identity records when the file has them (one
    read per identity), else from every image header (one read per image); ``num_classes`` is
    the largest label + 1. Safe with
    ``DataLoader`` workers: each process opens its own file handle.
    """

    def __init__(
        self,
        rec_path: str | os.PathLike,
        idx_path: str | os.PathLike | None = None,
        size: int | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"rec_path {str(self.rec_path)!r} is not a file")
        if idx_path is None:
            candidate = self.rec_path.with_suffix(".idx")
            idx_path = candidate if candidate.is_file() else None
        elif not Path(idx_path).is_file():
            raise FileNotFoundError(f"idx_path {str(idx_path)!r} is not a file")
        self.idx_path = None if idx_path is None else Path(idx_path)
        self.size = check_size(size)
        self.transform = transform
        if self.idx_path is not None:
            offsets = read_index(self.idx_path)
        else:
            offsets = dict(enumerate(scan_offsets(self.rec_path)))
        if not offsets:
            raise ValueError(f"{self.rec_path}: holds no records")
        self._handle = None
        self._pid = None
        keys = sorted(offsets)
        header0 = None
        if 0 in offsets:
            header, _ = unpack(read_record(self._file(), offsets[0], str(self.rec_path)))
            if header.flag > 0:
                header0 = (int(header.label[0]), int(header.label[1]))
        if header0 is not None:
            keys = list(range(1, header0[0]))
            missing = [k for k in keys if k not in offsets]
            if missing:
                raise ValueError(
                    f"{self.rec_path}: the header record lists images 1..{header0[0] - 1} but the "
                    f"index lacks {len(missing)} of them (first: {missing[:5]})"
                )
        self.header0 = header0
        self._offsets = [offsets[k] for k in keys]
        if not self._offsets:
            raise ValueError(f"{self.rec_path}: holds no image records")
        labels = self._identity_record_labels(offsets, header0) if header0 else None
        if labels is None:
            labels = np.array([self._read_label(o) for o in self._offsets], dtype=np.int64)
        self.labels = labels
        if self.labels.min() < 0:
            raise ValueError(f"{self.rec_path}: negative identity label {self.labels.min()}")
        self.num_classes = int(self.labels.max()) + 1

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.rec_path, "rb")  # noqa: SIM115 - kept open across items
            self._pid = os.getpid()
        return self._handle

    def _identity_record_labels(
        self, offsets: dict[int, int], header0: tuple[int, int]
    ) -> np.ndarray | None:
        """Labels from insightface's identity records (keys ``header0[0] .. header0[1] - 1``,
        record ``n`` labelled ``(first image key, end key)`` of identity ``n``): one read per
        identity instead of one per image. ``None`` when they are absent or do not tile the
        images exactly (then every image header is read)."""
        first, end = header0
        count = header0[0] - 1
        keys = range(first, end)
        if not keys or any(k not in offsets for k in keys):
            return None
        labels = np.full(count, -1, dtype=np.int64)
        for identity, key in enumerate(keys):
            header, _ = unpack(read_record(self._file(), offsets[key], str(self.rec_path)))
            if not isinstance(header.label, np.ndarray) or len(header.label) < 2:
                return None
            start, stop = int(header.label[0]), int(header.label[1])
            if not 1 <= start < stop <= count + 1 or (labels[start - 1 : stop - 1] != -1).any():
                return None
            labels[start - 1 : stop - 1] = identity
        return None if (labels < 0).any() else labels

    def _read_label(self, offset: int) -> int:
        header, _ = unpack(read_record(self._file(), offset, str(self.rec_path)))
        label = header.label
        value = float(label[0]) if isinstance(label, np.ndarray) else float(label)
        if value != int(value):
            raise ValueError(f"{self.rec_path}: non-integer label {value} at byte {offset}")
        return int(value)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        offset = self._offsets[index]
        header, data = unpack(read_record(self._file(), offset, str(self.rec_path)))
        label = header.label[0] if isinstance(header.label, np.ndarray) else header.label
        if int(label) != self.labels[index]:
            raise ValueError(
                f"{self.rec_path}: the image at byte {offset} is labelled {label:g} but the "
                f"identity records put it in identity {self.labels[index]}"
            )
        image = decode_image(data, self.size, name=f"{self.rec_path} record at byte {offset}")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handle"], state["_pid"] = None, None
        return state

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()

    def __repr__(self) -> str:
        return (
            f"RecordIO({str(self.rec_path)!r}, images={len(self)}, "
            f"identities={self.num_classes}, size={self.size})"
        )
