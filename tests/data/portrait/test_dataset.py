"""360°PHQ / EG3D reader: round trip with the synthetic writer, x-flip labels, bad datasets."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch

from portrait_engine.data.portrait.dataset import DatasetError, PortraitDataset
from portrait_engine.data.portrait.labels import (
    camera_label,
    intrinsics_matrix,
    lookat_cam2world,
    mirror_camera,
    mirror_pose,
)
from portrait_engine.data.portrait.synthetic import synthetic_entries
from portrait_engine.data.portrait.writer import write_dataset

RES = 16


@pytest.fixture(scope="module")
def entries():
    return list(synthetic_entries(5, resolution=RES, seed=7))


@pytest.mark.parametrize("kind", ["zip", "dir"])
def test_round_trip_with_the_synthetic_writer(entries, tmp_path, kind):
    suffix = ".zip" if kind == "zip" else ""
    path, masks = tmp_path / f"img{suffix}", tmp_path / f"mask{suffix}"
    assert write_dataset(path, entries, mask_path=masks) == 5
    ds = PortraitDataset(path, mask_path=masks)
    assert len(ds) == 5 and ds.resolution == RES and ds.num_channels == 3 and ds.has_masks
    by_name = {e[0]: e for e in entries}
    for i in range(len(ds)):
        item = ds[i]
        name, image, label, mask = by_name[item["name"]]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, RES, RES)
        np.testing.assert_array_equal(item["image"].numpy(), image.transpose(2, 0, 1))
        np.testing.assert_array_equal(item["mask"].numpy()[0], mask)
        assert item["camera"].dtype == torch.float32 and item["camera"].shape == (25,)
        np.testing.assert_allclose(item["camera"].numpy(), label[:25], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(item["pose"].numpy(), label[25:], rtol=1e-6, atol=1e-6)
        assert item["xflip"] is False
    ds.close()


def test_without_masks(entries, tmp_path):
    write_dataset(tmp_path / "d.zip", [(n, i, lab, None) for n, i, lab, _ in entries])
    ds = PortraitDataset(tmp_path / "d.zip", resolution=RES)
    assert not ds.has_masks and "mask" not in ds[0]


def test_xflip_mirrors_image_mask_camera_and_pose(entries, tmp_path):
    write_dataset(tmp_path / "d.zip", entries, mask_path=tmp_path / "m.zip")
    ds = PortraitDataset(tmp_path / "d.zip", mask_path=tmp_path / "m.zip", xflip=True)
    assert len(ds) == 10
    for i in range(5):
        a, b = ds[i], ds[i + 5]
        assert b["xflip"] and b["name"] == a["name"]
        torch.testing.assert_close(b["image"], a["image"].flip(2))
        torch.testing.assert_close(b["mask"], a["mask"].flip(2))
        cam, pose = a["camera"], a["pose"]
        # Published: label[[1, 2, 3, 4, 8]] *= -1 and pose[[1, 2, 4, 5]] *= -1.
        expected_cam = cam.clone()
        expected_cam[[1, 2, 3, 4, 8]] *= -1
        expected_pose = pose.clone()
        expected_pose[[1, 2, 4, 5]] *= -1
        torch.testing.assert_close(b["camera"], expected_cam)
        torch.testing.assert_close(b["pose"], expected_pose)
    assert ds[-1]["name"] == ds[9]["name"]
    with pytest.raises(IndexError):
        ds[10]


def test_max_size_keeps_a_seeded_subset(entries, tmp_path):
    write_dataset(tmp_path / "d.zip", entries, mask_path=tmp_path / "m.zip")
    full = PortraitDataset(tmp_path / "d.zip", mask_path=tmp_path / "m.zip")
    a = PortraitDataset(tmp_path / "d.zip", mask_path=tmp_path / "m.zip", max_size=3, xflip=True)
    b = PortraitDataset(tmp_path / "d.zip", max_size=3)
    assert len(a) == 6 and a.names == b.names and a.names == sorted(a.names)
    assert set(a.names) <= set(full.names)
    for i in range(3):
        j = full.names.index(a.names[i])
        torch.testing.assert_close(a[i]["image"], full[j]["image"])
        torch.testing.assert_close(a[i]["camera"], full[j]["camera"])
        torch.testing.assert_close(a[i]["mask"], full[j]["mask"])
    assert PortraitDataset(tmp_path / "d.zip", max_size=50).names == full.names
    with pytest.raises(ValueError, match="max_size"):
        PortraitDataset(tmp_path / "d.zip", max_size=0)


@pytest.mark.parametrize("yaw, pitch", [(0.3, 0.1), (2.5, -0.2), (-1.7, 0.3)])
def test_mirrored_camera_is_the_camera_at_minus_yaw(yaw, pitch):
    # Geometry, not bookkeeping: mirroring x -> -x moves a camera at yaw to -yaw.
    a = camera_label(lookat_cam2world(yaw, pitch), intrinsics_matrix())
    b = camera_label(lookat_cam2world(-yaw, pitch), intrinsics_matrix())
    np.testing.assert_allclose(mirror_camera(a), b, atol=1e-12)


def test_mirrored_pose_and_camera_render_the_mirror_image():
    # The synthetic figure is left-right symmetric, so the silhouette rendered with mirrored
    # pose and camera must be the mirror image: this checks the pose flip indices.
    from portrait_engine.data.portrait.synthetic import (
        render_portrait,
        sample_identity,
        sample_pose,
    )

    rng = np.random.default_rng(1)
    identity = sample_identity(rng)
    pose = sample_pose(rng, 2.0)
    k = intrinsics_matrix()
    cam = lookat_cam2world(0.7, 0.1)
    _, mask = render_portrait(identity, pose, cam, k, 24, supersample=1)
    mirrored = camera_label(cam, k)
    mirrored = mirror_camera(mirrored)[:16].reshape(4, 4)
    _, mask_m = render_portrait(identity, mirror_pose(pose), mirrored, k, 24, supersample=1)
    assert 0.05 < mask.mean() < 0.95
    np.testing.assert_array_equal(mask_m, mask[:, ::-1])
    # And a wrong flip (x component negated too) does not reproduce it.
    wrong = -pose
    _, mask_w = render_portrait(identity, wrong, mirrored, k, 24, supersample=1)
    assert not np.array_equal(mask_w, mask[:, ::-1])


# Bad datasets ------------------------------------------------------------------------------


def _write_zip(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def _png_bytes(size=RES, channels=3):
    import io

    from PIL import Image

    buf = io.BytesIO()
    shape = (size, size, channels) if channels > 1 else (size, size)
    Image.fromarray(np.zeros(shape, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _label(n=31):
    return [0.5] * n


def _json(labels):
    return json.dumps({"labels": labels})


@pytest.mark.parametrize(
    "files, match",
    [
        ({"a.png": _png_bytes()}, "dataset.json not found"),
        ({"a.png": _png_bytes(), "dataset.json": "{oops"}, "not valid JSON"),
        ({"a.png": _png_bytes(), "dataset.json": '{"labels": 3}'}, "expected"),
        ({"a.png": _png_bytes(), "dataset.json": _json([["a.png"]])}, r"labels\[0\]"),
        ({"a.png": _png_bytes(), "dataset.json": _json([["a.png", _label(25)]])}, "'a.png' has 25"),
        ({"a.png": _png_bytes(), "dataset.json": _json([["a.png", ["x"] * 31]])}, "numbers"),
        (
            {"a.png": _png_bytes(), "dataset.json": _json([["a.png", [math.inf] * 31]])},
            "non-finite",
        ),
        (
            {
                "a.png": _png_bytes(),
                "dataset.json": _json([["a.png", _label()], ["b.png", _label()]]),
            },
            "'b.png' is missing",
        ),
        (
            {
                "a.png": _png_bytes(),
                "b.png": _png_bytes(),
                "dataset.json": _json([["a.png", _label()]]),
            },
            "'b.png' has no label",
        ),
        (
            {
                "a.png": _png_bytes(),
                "dataset.json": _json([["a.png", _label()], ["./a.png", _label()]]),
            },
            "twice",
        ),
        (
            {"a.png": _png_bytes(), "dataset.json": _json([["../a.png", _label()]])},
            "escapes",
        ),
        (
            {"a.png": _png_bytes(), "dataset.json": _json([["/etc/a.png", _label()]])},
            "absolute",
        ),
        ({"dataset.json": _json([])}, "no image files"),
        (
            {"a.png": b"not a png", "dataset.json": _json([["a.png", _label()]])},
            "'a.png': cannot decode",
        ),
    ],
)
def test_bad_datasets_name_the_problem(tmp_path, files, match):
    path = _write_zip(tmp_path / "bad.zip", files)
    with pytest.raises(DatasetError, match=match):
        PortraitDataset(path)


def test_zip_member_escaping_the_archive(tmp_path):
    files = {"../evil.png": _png_bytes(), "dataset.json": _json([["a.png", _label()]])}
    with pytest.raises(DatasetError, match="escapes"):
        PortraitDataset(_write_zip(tmp_path / "bad.zip", files))


def test_unreadable_image_later_in_the_set(tmp_path):
    files = {
        "a.png": _png_bytes(),
        "b.png": b"\x89PNG garbage",
        "dataset.json": _json([["a.png", _label()], ["b.png", _label()]]),
    }
    ds = PortraitDataset(_write_zip(tmp_path / "d.zip", files))
    ds[0]
    with pytest.raises(DatasetError, match="'b.png': cannot decode"):
        ds[1]


def test_image_of_another_size(tmp_path):
    files = {
        "a.png": _png_bytes(),
        "b.png": _png_bytes(size=RES * 2),
        "dataset.json": _json([["a.png", _label()], ["b.png", _label()]]),
    }
    ds = PortraitDataset(_write_zip(tmp_path / "d.zip", files))
    with pytest.raises(DatasetError, match="'b.png' has shape"):
        ds[1]
    with pytest.raises(DatasetError, match="expected 32"):
        PortraitDataset(tmp_path / "d.zip", resolution=32)


def test_non_square_image(tmp_path):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(buf, format="PNG")
    files = {"a.png": buf.getvalue(), "dataset.json": _json([["a.png", _label()]])}
    with pytest.raises(DatasetError, match="not square"):
        PortraitDataset(_write_zip(tmp_path / "d.zip", files))


def test_mask_problems(tmp_path):
    files = {
        "a.jpg": _png_bytes(),  # decoders go by content, not extension
        "b.png": _png_bytes(),
        "dataset.json": _json([["a.jpg", _label()], ["b.png", _label()]]),
    }
    path = _write_zip(tmp_path / "d.zip", files)
    masks = _write_zip(tmp_path / "m.zip", {"a.png": _png_bytes(channels=1)})
    with pytest.raises(DatasetError, match="no mask for image 'b.png'"):
        PortraitDataset(path, mask_path=masks)
    masks = _write_zip(
        tmp_path / "m2.zip",
        {"a.png": _png_bytes(channels=1), "b.png": _png_bytes(size=RES + 1, channels=1)},
    )
    ds = PortraitDataset(path, mask_path=masks)
    assert ds[0]["mask"].shape == (1, RES, RES)
    with pytest.raises(DatasetError, match="mask 'b.png' is"):
        ds[1]


def test_paths_that_are_not_datasets(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        PortraitDataset(tmp_path / "nothing")
    (tmp_path / "file.txt").write_text("hi")
    with pytest.raises(DatasetError, match="directory or a .zip"):
        PortraitDataset(tmp_path / "file.txt")
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    with pytest.raises(DatasetError, match="not a readable zip"):
        PortraitDataset(tmp_path / "broken.zip")


def test_folder_symlink_escaping_the_dataset(tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png_bytes())
    root = tmp_path / "ds"
    root.mkdir()
    (root / "a.png").symlink_to(outside)
    (root / "dataset.json").write_text(_json([["a.png", _label()]]))
    with pytest.raises(DatasetError, match="outside the folder"):
        PortraitDataset(root)


@pytest.mark.parametrize("workers", [0, 2])
def test_works_with_a_dataloader(entries, tmp_path, workers):
    write_dataset(tmp_path / "d.zip", entries, mask_path=tmp_path / "m.zip")
    ds = PortraitDataset(tmp_path / "d.zip", mask_path=tmp_path / "m.zip", xflip=True)
    ds[0]  # open the zip in the parent before the workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False, num_workers=workers)
    batches = list(loader)
    assert sum(b["image"].shape[0] for b in batches) == 10
    batch = batches[0]
    assert batch["image"].shape == (4, 3, RES, RES)
    assert batch["camera"].shape == (4, 25) and batch["pose"].shape == (4, 6)
    assert batch["mask"].shape == (4, 1, RES, RES)
    for i in range(4):
        torch.testing.assert_close(batch["image"][i], ds[i]["image"])
