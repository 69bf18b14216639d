"""Embedding computation and export, ONNX export, plots, and the ``eval ri`` command."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from portrait_engine.data.faces import SyntheticFaces
from portrait_engine.models.recognizability import RIConfig, RIModel, export, plots
from portrait_engine.models.recognizability import evaluation as ev

TINY = RIConfig(backbone="tiny", image_size=32, embedding_dim=16, num_maps=1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RIModel(TINY).eval()


def test_compute_embeddings_matches_the_model_batch_by_batch(model):
    ds = SyntheticFaces(2, 3, size=40)  # resized to the model's 32 inside
    out = export.compute_embeddings(model, ds, batch_size=4)
    assert out["embedding"].shape == (6, 16) and out["ri"].shape == (6,)
    assert out["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    images = torch.stack([ds[i][0] for i in range(6)])
    images = torch.nn.functional.interpolate(
        images, size=(32, 32), mode="bilinear", antialias=True, align_corners=False
    )
    with torch.no_grad():
        expected = model(images)
    assert np.allclose(out["embedding"], expected.embedding.numpy(), atol=1e-5)
    assert np.allclose(out["ri"], expected.ri.numpy(), atol=1e-5)
    # a tensor input, a transform, and the model's mode restored
    model.train()
    doubled = export.compute_embeddings(model, images, batch_size=5, transform=lambda x: x * 0)
    assert model.training
    model.eval()
    assert "labels" not in doubled
    with torch.no_grad():
        zero = model(torch.zeros(6, 3, 32, 32))
    assert np.allclose(doubled["embedding"], zero.embedding.numpy(), atol=1e-5)


def test_compute_embeddings_errors(model):
    with pytest.raises(ValueError, match="batch_size"):
        export.compute_embeddings(model, torch.zeros(1, 3, 32, 32), batch_size=0)
    with pytest.raises(ValueError, match="images"):
        export.compute_embeddings(model, torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match="empty"):
        export.compute_embeddings(model, torch.zeros(0, 3, 32, 32))


def test_export_embeddings_round_trip(tmp_path):
    emb = np.random.default_rng(0).normal(size=(5, 4))
    paths = export.export_embeddings(tmp_path, emb, [0, 1, 2, 3, 4], np.arange(5.0), "x_")
    assert paths["embeddings"].name == "x_embeddings.npy"
    loaded = np.load(paths["embeddings"])
    assert loaded.dtype == np.float32 and np.allclose(loaded, emb.astype(np.float32))
    assert np.load(paths["labels"]).tolist() == [0, 1, 2, 3, 4]
    assert np.load(paths["ri"]).dtype == np.float32
    with pytest.raises(ValueError, match="labels"):
        export.export_embeddings(tmp_path, emb, [0, 1])
    with pytest.raises(ValueError, match="embeddings"):
        export.export_embeddings(tmp_path, np.zeros(3))


def test_onnx_export(model, tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed: ONNX export untested")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed: torch cannot export")
    path = export.export_onnx(model, tmp_path / "ri.onnx")
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["embedding", "ri"]
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime missing: outputs not compared")
    session = ort.InferenceSession(str(path))
    images = torch.rand(3, 3, 32, 32) * 2 - 1  # a batch size other than the export's
    embedding, ri = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images)
    assert np.allclose(embedding, expected.embedding.numpy(), atol=1e-4)
    assert np.allclose(ri, expected.ri.numpy(), atol=1e-4)


def test_plots_write_png_files(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    same = rng.uniform(size=400) < 0.3
    scores = rng.normal(size=400) + same
    curve = ev.error_versus_reject(scores, same, rng.uniform(size=400), fmr=0.01)
    png = b"\x89PNG\r\n\x1a\n"
    for path in (
        plots.plot_erc({"random": curve}, tmp_path / "erc.png"),
        plots.plot_roc({"a": ev.roc_curve(scores, same)}, tmp_path / "roc.png"),
        plots.plot_cmc({"a": [0.5, 0.7, 1.0]}, tmp_path / "cmc.png"),
        plots.save_image_grid(torch.rand(5, 3, 8, 8) * 2 - 1, tmp_path / "grid.png", columns=3),
    ):
        assert path.read_bytes()[:8] == png
    with pytest.raises(ValueError, match="empty"):
        plots.plot_erc({}, tmp_path / "none.png")
    with pytest.raises(ValueError, match="images"):
        plots.save_image_grid(torch.rand(3, 8, 8), tmp_path / "bad.png")


def test_save_image_grid_places_images(tmp_path):
    from PIL import Image

    images = torch.stack([torch.full((3, 4, 4), -1.0), torch.full((3, 4, 4), 1.0)])
    path = plots.save_image_grid(images, tmp_path / "g.png", columns=2, padding=1)
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (6, 11, 3)
    assert (pixels[1:5, 1:5] == 0).all() and (pixels[1:5, 6:10] == 255).all()


def _write_checkpoint(model, directory):
    """The checkpoint layout load_for_inference reads: model.safetensors + config.json."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"model": dataclasses.asdict(TINY)}))


def test_eval_command_on_synthetic_faces(model, tmp_path):
    pytest.importorskip("safetensors")
    pytest.importorskip("matplotlib")
    from portrait_engine.cli import main

    _write_checkpoint(model, tmp_path / "ckpt")
    out = tmp_path / "eval"
    argv = ["eval", "ri", "--checkpoint", str(tmp_path / "ckpt"), "--data", "synthetic"]
    argv += ["--out", str(out), "--identities", "4", "--images-per-identity", "3"]
    argv += ["--distractors", "3", "--resolutions", "8", "16", "--batch-size", "8"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gallery_size"] == 7 and metrics["probes"] == 8
    assert set(metrics["identification"]) == {"8px", "16px"}
    for ident in metrics["identification"].values():
        assert 0 <= ident["rank1"] <= ident["rank5"] <= ident["rank20"] == 1.0
    assert set(metrics["quality"]["erc_area"]) >= {"RI (predicted)", "embedding norm", "random"}
    # the exported probe embeddings are what the model gives for those degraded probes
    probe = np.load(out / "probe_8px_embeddings.npy")
    assert probe.shape == (8, 16)
    assert np.load(out / "probe_8px_labels.npy").tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for name in ("erc.png", "roc.png", "cmc.png", "samples.png", "gallery_embeddings.npy"):
        assert (out / name).is_file()


def test_eval_command_on_an_identity_folder(model, tmp_path):
    pytest.importorskip("safetensors")
    from PIL import Image

    from portrait_engine.cli import main

    faces = SyntheticFaces(3, 3, size=32)
    for i in range(len(faces)):
        image, label = faces[i]
        folder = tmp_path / "data" / f"id{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = ((image + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    _write_checkpoint(model, tmp_path / "ckpt")
    out = tmp_path / "eval"
    argv = ["eval", "ri", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(tmp_path / "data")]
    argv += ["--out", str(out), "--resolutions", "12", "--no-plots", "--fmr", "0.1"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gallery_size"] == 3 and metrics["probes"] == 6


def test_eval_command_missing_data(model, tmp_path):
    pytest.importorskip("safetensors")
    from portrait_engine.cli import main

    _write_checkpoint(model, tmp_path / "ckpt")
    argv = ["eval", "ri", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(tmp_path / "x")]
    with pytest.raises(FileNotFoundError, match="--data"):
        main(argv + ["--out", str(tmp_path / "eval")])


def test_eval_command_on_a_tinyface_folder(model, tmp_path):
    pytest.importorskip("safetensors")
    from PIL import Image

    from portrait_engine.cli import main

    faces = SyntheticFaces(4, 4, size=24, split="test")
    parts = {"Probe": [], "Gallery_Match": [], "Gallery_Distractor": []}
    for i in range(len(faces)):
        image, label = faces[i]
        n = i % 4
        folder = "Gallery_Match" if n == 0 else "Probe"
        name = f"{label + 1}_{n}.jpg"
        if label == 3:  # the last identity becomes distractors, in a sub-folder
            folder, name = "Gallery_Distractor", f"sub/d{n}.jpg"
        path = tmp_path / "tf" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = ((image + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(path, quality=95)
        parts[folder].append(name)
    _write_checkpoint(model, tmp_path / "ckpt")
    out = tmp_path / "eval"
    argv = ["eval", "ri", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(tmp_path / "tf")]
    argv += ["--out", str(out), "--no-plots", "--fmr", "0.1", "--max-distractors", "3"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gallery_size"] == 3 + 3 and metrics["probes"] == 9
    assert set(metrics["identification"]) == {"native"}
    gallery_labels = np.load(out / "gallery_labels.npy")
    assert sorted(gallery_labels.tolist()) == [-1, -1, -1, 1, 2, 3]
