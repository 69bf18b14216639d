"""IdentityFolder, RecordIO (on a .rec/.idx the test writes byte by byte) and TinyFace."""

import io
import struct

import numpy as np
import pytest
import torch

from portrait_engine.data.faces import IdentityFolder, RecordIO, TinyFace
from portrait_engine.data.faces.tinyface import DISTRACTOR_LABEL

PIL = pytest.importorskip("PIL.Image")


def _pixels(seed, height=12, width=10):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _encode(pixels, fmt="PNG"):
    buffer = io.BytesIO()
    PIL.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _as_tensor(pixels):
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1


# ------------------------------------------------------------------------------------------
# IdentityFolder
# ------------------------------------------------------------------------------------------


def _write_folder(root, layout):
    """layout: {identity: [seed, ...]}; PNG (lossless) so decoded pixels can be compared."""
    expected = {}
    for identity, seeds in layout.items():
        (root / identity).mkdir(parents=True)
        for n, seed in enumerate(seeds):
            pixels = _pixels(seed)
            (root / identity / f"{n:03d}.png").write_bytes(_encode(pixels))
            expected[(identity, n)] = pixels
    return expected


def test_identity_folder_reads_identities_in_sorted_order(tmp_path):
    expected = _write_folder(tmp_path, {"bob": [1, 2], "alice": [3], "carol": [4, 5, 6]})
    (tmp_path / "notes.txt").write_text("not an identity")
    ds = IdentityFolder(tmp_path, size=None)
    assert ds.identities == ["alice", "bob", "carol"]
    assert ds.num_classes == 3
    assert list(ds.labels) == [0, 1, 1, 2, 2, 2]
    image, label = ds[2]
    assert label == 1
    assert torch.allclose(image, _as_tensor(expected[("bob", 1)]), atol=1e-6)
    assert image.shape == (3, 12, 10)


def test_identity_folder_resizes_and_transforms(tmp_path):
    _write_folder(tmp_path, {"a": [1]})
    ds = IdentityFolder(tmp_path, size=16, transform=lambda x: x * 0)
    image, _ = ds[0]
    assert image.shape == (3, 16, 16) and torch.count_nonzero(image) == 0
    plain = IdentityFolder(tmp_path, size=16)[0][0]
    assert plain.min() >= -1 and plain.max() <= 1


def test_identity_folder_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        IdentityFolder(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        IdentityFolder(tmp_path / "file")


def test_identity_folder_empty_root(tmp_path):
    with pytest.raises(ValueError, match="no identity folders"):
        IdentityFolder(tmp_path)


def test_identity_folder_identities_without_images_are_named(tmp_path):
    _write_folder(tmp_path, {"a": [1]})
    (tmp_path / "ghost").mkdir()
    (tmp_path / "ghost" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="'ghost'"):
        IdentityFolder(tmp_path)


def test_identity_folder_unreadable_image_is_named(tmp_path):
    _write_folder(tmp_path, {"a": [1]})
    (tmp_path / "a" / "broken.jpg").write_bytes(b"this is not a jpeg")
    ds = IdentityFolder(tmp_path)
    with pytest.raises(ValueError, match="broken.jpg"):
        ds[1]
    with pytest.raises(ValueError, match="broken.jpg"):
        IdentityFolder(tmp_path, check=True)


def test_identity_folder_bad_size(tmp_path):
    _write_folder(tmp_path, {"a": [1]})
    with pytest.raises(ValueError, match="size"):
        IdentityFolder(tmp_path, size=0)


# ------------------------------------------------------------------------------------------
# RecordIO: the test writes MXNet's format itself (independently of the reader)
# ------------------------------------------------------------------------------------------

MAGIC = 0xCED7230A


def _ir_header(label, id1=0, id2=0):
    """IRHeader: uint32 flag, float32 label, uint64 id, uint64 id2 (+ label array if flag > 0)."""
    if np.ndim(label) == 0:
        return struct.pack("<IfQQ", 0, float(label), id1, id2)
    values = np.asarray(label, dtype="<f4")
    return struct.pack("<IfQQ", len(values), 0.0, id1, id2) + values.tobytes()


def _record_bytes(payload):
    """One dmlc RecordIO record, split where the payload holds the magic word at an aligned
    position (cflag 1 = first, 2 = middle, 3 = last; 0 = whole), padded to 4 bytes."""
    magic = struct.pack("<I", MAGIC)
    out, start = b"", 0
    for i in range(0, len(payload) // 4 * 4, 4):
        if payload[i : i + 4] == magic:
            flag = 1 if start == 0 else 2
            out += magic + struct.pack("<I", (flag << 29) | (i - start)) + payload[start:i]
            start = i + 4
    flag = 3 if start else 0
    tail = payload[start:]
    out += magic + struct.pack("<I", (flag << 29) | len(tail)) + tail
    out += b"\0" * (-len(tail) % 4)
    return out


def _write_rec(tmp_path, records, with_idx=True, name="train"):
    """records: list of (key, payload). Returns (.rec path, .idx path)."""
    rec = tmp_path / f"{name}.rec"
    idx = tmp_path / f"{name}.idx"
    blob, lines = b"", []
    for key, payload in records:
        lines.append(f"{key}\t{len(blob)}")
        blob += _record_bytes(payload)
    rec.write_bytes(blob)
    if with_idx:
        idx.write_text("\n".join(lines) + "\n")
    return rec, idx


def _insightface_records(images):
    """images: list of (label, encoded bytes). insightface layout: header record 0 with label
    (first identity-record key, end key), images 1..n, then one record per identity."""
    n = len(images)
    identities = sorted({label for label, _ in images})
    records = [(0, _ir_header([n + 1, n + 1 + len(identities)]))]
    for key, (label, data) in enumerate(images, 1):
        records.append((key, _ir_header(label, id1=key) + data))
    for offset, identity in enumerate(identities):
        keys = [k for k, (label, _) in enumerate(images, 1) if label == identity]
        records.append((n + 1 + offset, _ir_header([keys[0], keys[-1] + 1])))
    return records


def test_recordio_reads_insightface_layout(tmp_path):
    pixels = [_pixels(s) for s in range(5)]
    labels = [0, 0, 1, 2, 2]
    rec, _ = _write_rec(
        tmp_path, _insightface_records(list(zip(labels, [_encode(p) for p in pixels], strict=True)))
    )
    ds = RecordIO(rec)
    assert len(ds) == 5
    assert ds.header0 == (6, 9)
    assert list(ds.labels) == labels and ds.num_classes == 3
    for i in range(5):
        image, label = ds[i]
        assert label == labels[i]
        assert torch.allclose(image, _as_tensor(pixels[i]), atol=1e-6)


def test_recordio_labels_from_identity_records_are_checked_against_image_headers(tmp_path):
    encoded = [_encode(_pixels(s)) for s in range(4)]
    records = _insightface_records(list(zip([0, 1, 1, 1], encoded, strict=True)))
    # identity records say identity 0 = image 1, identity 1 = images 2..4; make image 2's own
    # header disagree (label 5): the labels come from the identity records, the item raises
    records[2] = (2, _ir_header(5.0) + encoded[1])
    rec, _ = _write_rec(tmp_path, records)
    ds = RecordIO(rec)
    assert list(ds.labels) == [0, 1, 1, 1]
    assert ds[0][1] == 0
    with pytest.raises(ValueError, match="labelled 5"):
        ds[1]


def test_recordio_identity_records_that_do_not_tile_fall_back_to_headers(tmp_path):
    encoded = [_encode(_pixels(s)) for s in range(3)]
    records = _insightface_records(list(zip([0, 1, 2], encoded, strict=True)))
    records[-1] = (records[-1][0], _ir_header([2, 3]))  # overlaps identity 1's range
    rec, _ = _write_rec(tmp_path, records)
    assert list(RecordIO(rec).labels) == [0, 1, 2]


def test_recordio_jpeg_and_resize(tmp_path):
    pixels = np.full((20, 20, 3), 200, dtype=np.uint8)
    rec, idx = _write_rec(tmp_path, [(0, _ir_header(7.0) + _encode(pixels, "JPEG"))])
    ds = RecordIO(rec, idx, size=8)
    image, label = ds[0]
    assert label == 7 and ds.num_classes == 8
    assert image.shape == (3, 8, 8)
    assert torch.allclose(image, torch.full_like(image, 200 / 127.5 - 1), atol=0.03)


def test_recordio_joins_records_split_at_the_magic_word(tmp_path):
    """A payload holding the magic word at an aligned offset is stored in parts."""
    data = _encode(_pixels(9))
    magic = struct.pack("<I", MAGIC)
    header = _ir_header(1.0)  # 24 bytes, so the magic below lands on a 4-byte boundary
    # a PNG ignores bytes after IEND, so trailing magic words keep the image readable
    payload = header + data + b"\0" * (-len(data) % 4) + magic + b"abcd" + magic + magic
    rec, _ = _write_rec(tmp_path, [(0, payload), (1, _ir_header(2.0) + data)])
    blob = rec.read_bytes()
    flags = []
    position = 0
    while position < len(blob):
        _, lrecord = struct.unpack_from("<II", blob, position)
        flags.append(lrecord >> 29)
        position += 8 + ((lrecord & ((1 << 29) - 1)) + 3) // 4 * 4
    assert flags[:4] == [1, 2, 2, 3]  # the writer really split it
    ds = RecordIO(rec)
    assert list(ds.labels) == [1, 2]
    assert torch.equal(ds[0][0], ds[1][0])
    # and without an index, scanning finds the two records, not five parts
    (tmp_path / "train.idx").unlink()
    scanned = RecordIO(rec)
    assert scanned.idx_path is None and list(scanned.labels) == [1, 2]


def test_recordio_without_header_record_or_index(tmp_path):
    encoded = [_encode(_pixels(s)) for s in range(3)]
    records = [(k, _ir_header(float(k % 2)) + e) for k, e in enumerate(encoded)]
    rec, _ = _write_rec(tmp_path, records, with_idx=False)
    ds = RecordIO(rec)
    assert list(ds.labels) == [0, 1, 0]
    assert torch.allclose(ds[1][0], _as_tensor(_pixels(1)), atol=1e-6)


def test_recordio_works_after_pickling(tmp_path):
    import pickle

    rec, _ = _write_rec(tmp_path, [(0, _ir_header(0.0) + _encode(_pixels(0)))])
    ds = RecordIO(rec)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[0][0], ds[0][0])


def test_recordio_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="rec_path"):
        RecordIO(tmp_path / "missing.rec")
    junk = tmp_path / "junk.rec"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="magic"):
        RecordIO(junk)
    empty = tmp_path / "empty.rec"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="no records"):
        RecordIO(empty)
    rec, idx = _write_rec(tmp_path, [(0, _ir_header(0.0) + b"not an image")], name="bad")
    ds = RecordIO(rec, idx)
    with pytest.raises(ValueError, match="cannot read image"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="idx_path"):
        RecordIO(rec, tmp_path / "none.idx")


def test_recordio_header_listing_missing_images(tmp_path):
    records = [(0, _ir_header([4, 5])), (1, _ir_header(0.0) + _encode(_pixels(0)))]
    rec, _ = _write_rec(tmp_path, records)
    with pytest.raises(ValueError, match="lacks 2"):
        RecordIO(rec)


def test_recordio_truncated_file(tmp_path):
    rec, _ = _write_rec(tmp_path, [(0, _ir_header(0.0) + _encode(_pixels(0)))], with_idx=False)
    rec.write_bytes(rec.read_bytes()[:-9])
    with pytest.raises(ValueError, match="truncated"):
        RecordIO(rec)[0]


# ------------------------------------------------------------------------------------------
# TinyFace
# ------------------------------------------------------------------------------------------


def _write_tinyface(base):
    parts = {
        "Probe": ["1_1.jpg", "1_2.jpg", "2_1.jpg", "10_4.jpg"],
        "Gallery_Match": ["1_3.jpg", "2_2.jpg", "10_1.jpg"],
        "Gallery_Distractor": ["a/x_1.jpg", "b/y_2.jpg", "z.jpg"],
    }
    for folder, names in parts.items():
        for n, name in enumerate(names):
            path = base / "tinyface" / "Testing_Set" / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_encode(_pixels(n, 16, 20), "JPEG"))


def test_tinyface_parts_and_labels(tmp_path):
    _write_tinyface(tmp_path)
    probe = TinyFace(tmp_path, "probe")
    assert [p.name for p in probe.paths] == ["10_4.jpg", "1_1.jpg", "1_2.jpg", "2_1.jpg"]
    assert list(probe.labels) == [10, 1, 1, 2]
    assert probe.num_classes == 3
    gallery = TinyFace(tmp_path / "tinyface", "gallery_match", size=32)
    assert sorted(gallery.labels) == [1, 2, 10]
    image, label = gallery[0]
    assert image.shape == (3, 32, 32) and label in (1, 2, 10)
    distractors = TinyFace(tmp_path / "tinyface" / "Testing_Set", "gallery_distractor")
    assert len(distractors) == 3  # sub-folders are searched
    assert set(distractors.labels) == {DISTRACTOR_LABEL} and distractors.num_classes == 0
    image, label = distractors[0]
    assert image.shape == (3, 16, 20) and label == DISTRACTOR_LABEL


def test_tinyface_errors(tmp_path):
    with pytest.raises(ValueError, match="part"):
        TinyFace(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="Probe"):
        TinyFace(tmp_path, "probe")
    (tmp_path / "Probe").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        TinyFace(tmp_path, "probe")
    (tmp_path / "Probe" / "anon.jpg").write_bytes(_encode(_pixels(0), "JPEG"))
    with pytest.raises(ValueError, match="integer identity"):
        TinyFace(tmp_path, "probe")
