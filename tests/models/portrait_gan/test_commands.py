"""The portrait commands run end to end on the tiny preset and write real files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from portrait_engine import cli
from portrait_engine.models.portrait_gan import (
    PortraitGANConfig,
    PortraitGenerator,
    PoseAwareDualDiscriminator,
    save_checkpoint,
)
from portrait_engine.models.portrait_gan import inference as inf
from portrait_engine.models.portrait_gan.inference import RandomModelWarning

RES = ["--render-resolution", "8"]


def run(*argv):
    return cli.main(list(argv))


def test_registered():
    for command in ("generate", "orbit", "mesh", "predict-pose"):
        assert (command, "portrait") in cli.MODEL_COMMANDS
    parser = cli.build_parser()
    args = parser.parse_args(["generate", "portrait", "--seeds", "1-2"])
    assert args.seeds == "1-2" and args.checkpoint is None


def test_generate_png(tmp_path):
    out = tmp_path / "grid.png"
    with pytest.warns(RandomModelWarning):
        assert (
            run(
                "generate",
                "portrait",
                "--seeds",
                "0-2",
                "--yaw",
                "0",
                "180",
                *RES,
                "--out",
                str(out),
            )
            == 0
        )
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (2 * 64, 3 * 64)
        pixels = np.asarray(image)
    assert pixels.std() > 0


def test_generate_from_checkpoint_matches_the_api(tmp_path):
    torch.manual_seed(5)
    config = PortraitGANConfig.preset("tiny")
    g = PortraitGenerator(config).eval()
    ckpt = save_checkpoint(tmp_path / "g.safetensors", config, {"G": g})
    out = tmp_path / "grid.png"
    assert (
        run(
            "generate",
            "portrait",
            "--checkpoint",
            str(ckpt),
            "--seeds",
            "3",
            "--yaw",
            "30",
            "--pitch",
            "10",
            "--pose",
            "0",
            "0.2",
            "0",
            "0",
            "0.1",
            "0",
            *RES,
            "--backend",
            "torch",
            "--out",
            str(out),
        )
        == 0
    )
    images, _ = inf.generate_images(
        g,
        [3],
        [(np.radians(30), np.radians(10))],
        pose=[0, 0.2, 0, 0, 0.1, 0],
        neural_rendering_resolution=8,
    )
    expected = inf.image_grid(inf.to_uint8(images))
    with Image.open(out) as image:
        actual = np.asarray(image)
    assert np.abs(actual.astype(int) - expected.astype(int)).max() <= 1


def test_generate_predicted_pose_prints(tmp_path, capsys):
    with pytest.warns(RandomModelWarning):
        run(
            "generate",
            "portrait",
            "--seeds",
            "0",
            "--predict-pose",
            *RES,
            "--out",
            str(tmp_path / "p.png"),
        )
    assert "predicted pose" in capsys.readouterr().out


def test_orbit_gif_frames(tmp_path, monkeypatch):
    monkeypatch.setattr(inf, "ffmpeg_available", lambda: False)
    with pytest.warns(RandomModelWarning):
        run("orbit", "portrait", "--frames", "5", *RES, "--out", str(tmp_path / "o.mp4"))
    path = tmp_path / "o.gif"  # MP4 falls back to GIF without imageio-ffmpeg
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        first = np.asarray(gif.convert("RGB"))
        gif.seek(2)
        half = np.asarray(gif.convert("RGB"))
    assert first.shape == (64, 64, 3)
    assert not np.array_equal(first, half)  # the back of the head is not the front


def test_mesh_ply_has_faces(tmp_path):
    pytest.importorskip("skimage")
    out = tmp_path / "m.ply"
    with pytest.warns(RandomModelWarning):
        run(
            "mesh",
            "portrait",
            "--resolution",
            "12",
            "--chunk",
            "500",
            "--level",
            "auto",
            "--out",
            str(out),
        )
    lines = out.read_text().splitlines()
    end = lines.index("end_header")
    header = lines[:end]
    vertices = int(next(x for x in header if x.startswith("element vertex")).split()[-1])
    faces = int(next(x for x in header if x.startswith("element face")).split()[-1])
    assert vertices > 0 and faces > 0
    points = np.loadtxt(lines[end + 1 : end + 1 + vertices])
    face_rows = np.loadtxt(lines[end + 1 + vertices :], dtype=int).reshape(-1, 4)
    assert len(face_rows) == faces and (face_rows[:, 0] == 3).all()
    assert face_rows[:, 1:].max() < vertices
    half = PortraitGANConfig.preset("tiny").box_warp / 2
    assert np.abs(points).max() <= half + 1e-5


def test_mesh_missing_scikit_image(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.warns(RandomModelWarning), pytest.raises(ImportError, match="scikit-image"):
        run("mesh", "portrait", "--resolution", "4", "--out", str(tmp_path / "m.ply"))


def test_predict_pose_json(tmp_path):
    from portrait_engine.data.portrait import PortraitDataset, make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d.zip", 3, 32, seed=1, mask_path=tmp_path / "m.zip")
    torch.manual_seed(2)
    config = PortraitGANConfig.preset("tiny")
    d = PoseAwareDualDiscriminator.from_config(config).eval()
    ckpt = save_checkpoint(tmp_path / "d.safetensors", config, {"D": d})
    out = tmp_path / "poses.json"
    assert (
        run(
            "predict-pose",
            "portrait",
            str(data),
            "--masks",
            str(tmp_path / "m.zip"),
            "--checkpoint",
            str(ckpt),
            "--batch",
            "2",
            "--out",
            str(out),
        )
        == 0
    )
    rows = json.loads(out.read_text())
    dataset = PortraitDataset(data, mask_path=tmp_path / "m.zip")
    assert [r["name"] for r in rows] == dataset.names[:3]
    for i, row in enumerate(rows):
        np.testing.assert_allclose(row["label"], dataset.pose(i), atol=1e-6)
        assert len(row["predicted"]) == 6 and np.isfinite(row["predicted"]).all()
    # the first batch is full, so its predictions are the discriminator's own on that batch
    item = [dataset[0], dataset[1]]
    image = torch.stack([it["image"] for it in item]).float() / 127.5 - 1
    mask = torch.stack([it["mask"] for it in item]).float() / 255
    from portrait_engine.models.portrait_gan import filtered_resizing, real_inputs

    image, mask = filtered_resizing(image, 64), filtered_resizing(mask, 64)  # D is 64 x 64
    with torch.no_grad():
        pose, _ = d.predict_pose(
            real_inputs(image, mask, config.neural_rendering_resolution),
            torch.stack([it["camera"] for it in item]).float(),
        )
    np.testing.assert_allclose(rows[0]["predicted"], pose[0].numpy(), atol=1e-5)


def test_orbit_mp4_frames(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio

    out = tmp_path / "o.mp4"
    with pytest.warns(RandomModelWarning):
        run("orbit", "portrait", "--frames", "6", "--fps", "12", *RES, "--out", str(out))
    reader = imageio.get_reader(out)
    try:
        frames = [frame for frame in reader]
    finally:
        reader.close()
    assert len(frames) == 6
    assert frames[0].shape == (64, 64, 3)
