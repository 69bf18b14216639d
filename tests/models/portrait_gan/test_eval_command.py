"""``portrait-engine eval portrait`` on the tiny preset: metrics JSON, plot, checkpoints."""

from __future__ import annotations

import json
import os
import time

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
from portrait_engine.models.portrait_gan.checkpoint import CheckpointError
from portrait_engine.models.portrait_gan.eval_command import (
    load_for_evaluation,
    resolve_checkpoint,
)


class _Pool(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        small = torch.nn.functional.adaptive_avg_pool2d(images / 255.0, 4)
        return small.flatten(1)  # (N, 48)


def _tiny(seed=0):
    torch.manual_seed(seed)
    config = PortraitGANConfig.preset("tiny")
    return config, PortraitGenerator(config).eval()


def test_registered():
    assert ("eval", "portrait") in cli.MODEL_COMMANDS
    args = cli.build_parser().parse_args(
        ["eval", "portrait", "--checkpoint", "c", "--data", "synthetic"]
    )
    assert args.num_samples == 64 and args.fid_extractor is None


def test_eval_writes_metrics_and_plot(tmp_path):
    config, g = _tiny()
    with torch.no_grad():  # dense everywhere: an opaque surface for the depth metric
        g.decoder.net[2].bias[0] += 30
    ckpt = save_checkpoint(tmp_path / "g.safetensors", config, {"G_ema": g})
    torch.jit.save(torch.jit.script(_Pool()), tmp_path / "features.pt")
    out = tmp_path / "eval"
    argv = ["eval", "portrait", "--checkpoint", str(ckpt), "--data", "synthetic"]
    argv += ["--fid-extractor", str(tmp_path / "features.pt"), "--num-samples", "6"]
    argv += ["--depth-latents", "1", "--views", "4", "--render-resolution", "16"]
    argv += ["--batch-size", "3", "--out", str(out)]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint"]["generator"] == "G_ema"
    depth = metrics["depth_consistency"]
    assert depth["views"] == 4 and depth["box_size"] == config.box_warp
    assert depth["error"] >= 0 and 0 <= depth["coverage"] <= 1
    assert metrics["fid"]["samples"] == 6 and metrics["fid"]["value"] > 0
    assert metrics["pose_errors"] is None and "pose_errors_skipped" in metrics
    with Image.open(out / "depth_consistency.png") as image:
        assert image.size[0] > 100


def test_eval_without_extractor_skips_fid(tmp_path):
    from portrait_engine.data.portrait import make_synthetic_dataset

    config, g = _tiny(1)
    ckpt = save_checkpoint(tmp_path / "g.safetensors", config, {"G": g})
    data = make_synthetic_dataset(tmp_path / "d.zip", 3, 32, seed=3)
    out = tmp_path / "eval"
    argv = ["eval", "portrait", "--checkpoint", str(ckpt), "--data", str(data)]
    argv += ["--depth-latents", "1", "--views", "3", "--render-resolution", "8", "--no-plots"]
    argv += ["--out", str(out)]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fid"] is None and metrics["fid_skipped"]
    # a random model renders no opaque surface: the depth metric is undefined, not made up
    assert metrics["depth_consistency"] is None
    assert "no scene" in metrics["depth_consistency_skipped"]
    assert not (out / "depth_consistency.png").exists()


def test_missing_extractor_is_a_clear_error(tmp_path):
    from portrait_engine.models.portrait_gan.evaluation import FeatureExtractorError

    config, g = _tiny()
    ckpt = save_checkpoint(tmp_path / "g.safetensors", config, {"G": g})
    argv = ["eval", "portrait", "--checkpoint", str(ckpt), "--data", "synthetic"]
    argv += ["--fid-extractor", str(tmp_path / "none.pt"), "--num-samples", "2"]
    argv += ["--depth-latents", "1", "--views", "2", "--render-resolution", "8"]
    argv += ["--out", str(tmp_path / "o")]
    with pytest.raises(FeatureExtractorError, match="none.pt does not exist"):
        cli.main(argv)


def test_checkpoint_folder_uses_the_newest_file(tmp_path):
    config, g = _tiny(0)
    _, g2 = _tiny(1)
    d = PoseAwareDualDiscriminator.from_config(config)
    old = save_checkpoint(tmp_path / "a-late-name.safetensors", config, {"G": g})
    new = save_checkpoint(tmp_path / "b.safetensors", config, {"G": g2, "D": d})
    past = time.time() - 100
    os.utime(old, (past, past))
    assert resolve_checkpoint(tmp_path) == new
    _, loaded, disc, info = load_for_evaluation(tmp_path)
    assert info["checkpoint"] == str(new) and disc is not None
    for a, b in zip(loaded.parameters(), g2.parameters(), strict=True):
        assert torch.equal(a, b)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        resolve_checkpoint(tmp_path / "empty")


def test_plain_safetensors_with_json_config(tmp_path):
    import safetensors.torch as st

    config, g = _tiny(2)
    tensors = {f"G_ema.{k}": v.contiguous().clone() for k, v in g.state_dict().items()}
    st.save_file(tensors, str(tmp_path / "step-100.safetensors"))
    with pytest.raises(CheckpointError, match="config.json"):
        load_for_evaluation(tmp_path / "step-100.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"config": config.to_dict()}))
    loaded_config, loaded, disc, info = load_for_evaluation(tmp_path)
    assert loaded_config == config and disc is None and info["generator"] == "G_ema"
    for a, b in zip(loaded.parameters(), g.parameters(), strict=True):
        assert torch.equal(a, b)


def test_pose_errors_are_called_when_the_metrics_module_exists(tmp_path, monkeypatch):
    import importlib.machinery
    import sys
    import types

    from portrait_engine.models.portrait_gan.eval_command import METRICS_MODULE

    calls = []

    def pose_errors(generator, discriminator, dataset, *, num_samples, batch_size, device, seed):
        calls.append((generator, discriminator, len(dataset), num_samples, batch_size, seed))
        return {"generator_pose_mae": 0.25}

    fake = types.ModuleType(METRICS_MODULE)
    fake.__spec__ = importlib.machinery.ModuleSpec(METRICS_MODULE, None)
    fake.pose_errors = pose_errors
    monkeypatch.setitem(sys.modules, METRICS_MODULE, fake)
    config, g = _tiny()
    d = PoseAwareDualDiscriminator.from_config(config)
    ckpt = save_checkpoint(tmp_path / "g.safetensors", config, {"G": g, "D": d})
    out = tmp_path / "eval"
    argv = ["eval", "portrait", "--checkpoint", str(ckpt), "--data", "synthetic"]
    argv += ["--num-samples", "3", "--depth-latents", "1", "--views", "2"]
    argv += ["--render-resolution", "8", "--batch-size", "2", "--seed", "5", "--out", str(out)]
    assert cli.main(argv) == 0
    assert len(calls) == 1
    generator, discriminator, size, num_samples, batch_size, seed = calls[0]
    assert isinstance(generator, PortraitGenerator)
    assert isinstance(discriminator, PoseAwareDualDiscriminator)
    assert (size, num_samples, batch_size, seed) == (3, 3, 2, 5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pose_errors"] == {"generator_pose_mae": 0.25}


def test_fid_resizes_data_of_another_resolution(tmp_path):
    from portrait_engine.data.portrait import make_synthetic_dataset

    config, g = _tiny(3)
    ckpt = save_checkpoint(tmp_path / "g.safetensors", config, {"G": g})
    data = make_synthetic_dataset(tmp_path / "d.zip", 4, 24, seed=3)  # the model makes 64²
    torch.jit.save(torch.jit.script(_Pool()), tmp_path / "features.pt")
    out = tmp_path / "eval"
    argv = ["eval", "portrait", "--checkpoint", str(ckpt), "--data", str(data)]
    argv += ["--fid-extractor", str(tmp_path / "features.pt"), "--num-samples", "10"]
    argv += ["--depth-latents", "1", "--views", "2", "--render-resolution", "8", "--no-plots"]
    argv += ["--out", str(out)]
    assert cli.main(argv) == 0
    fid = json.loads((out / "metrics.json").read_text())["fid"]
    assert fid["samples"] == 4 and fid["value"] > 0 and fid["extractor_kind"] == "torchscript"


def test_training_run_folder_resolves_to_its_latest_networks(tmp_path):
    """A `train portrait` output folder (``latest`` names a ``checkpoint-<step>`` folder):
    the evaluation reads that checkpoint's ``networks.safetensors``, not the newest file."""
    run = tmp_path / "run"
    for step in (1, 2):
        folder = run / f"checkpoint-{step:08d}"
        folder.mkdir(parents=True)
        (folder / "networks.safetensors").write_bytes(b"")
    (run / "latest").write_text("checkpoint-00000001\n")
    expected = run / "checkpoint-00000001" / "networks.safetensors"
    assert resolve_checkpoint(run) == expected
    assert resolve_checkpoint(run / "latest") == expected
    assert resolve_checkpoint(run / "checkpoint-00000002") == (
        run / "checkpoint-00000002" / "networks.safetensors"
    )
