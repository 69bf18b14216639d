"""Checkpoints: safetensors + JSON config, atomic, strict, never executing code."""

from __future__ import annotations

import json
import os

import pytest
import torch

from portrait_engine.models.portrait_gan import PortraitGANConfig, PoseAwareDualDiscriminator
from portrait_engine.models.portrait_gan.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from portrait_engine.models.portrait_gan.generator import PortraitGenerator

safetensors = pytest.importorskip("safetensors.torch")


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    config = PortraitGANConfig.preset("tiny", z_dim=32, w_dim=32)
    g = PortraitGenerator(config)
    d = PoseAwareDualDiscriminator.from_config(config)
    with torch.no_grad():
        g.mapping.w_avg.normal_()  # a buffer, not only parameters, must round-trip
    return config, g, d


def test_round_trip(tmp_path, nets):
    config, g, d = nets
    path = save_checkpoint(tmp_path / "ck.safetensors", config, {"G": g, "D": d}, {"kimg": "12"})
    loaded_config, built = load_checkpoint(path, modules=("G", "D"))
    assert loaded_config == config
    for name, original in (("G", g), ("D", d)):
        theirs = built[name].state_dict()
        ours = original.state_dict()
        assert set(theirs) == set(ours)
        for key, value in ours.items():
            assert torch.equal(theirs[key], value), f"{name}.{key}"
        assert not built[name].training
    _, _, metadata = read_checkpoint(path)
    assert metadata["kimg"] == "12"
    assert json.loads(metadata["config"])["z_dim"] == 32
    # no temporary file left next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors"]


def test_loaded_generator_renders_the_same(tmp_path, nets):
    config, g, _ = nets
    path = save_checkpoint(tmp_path / "g.safetensors", config, {"G_ema": g})
    _, built = load_checkpoint(path, modules=("G",))  # G falls back to G_ema
    z = torch.randn(1, config.z_dim)
    cam = torch.zeros(1, 25)
    cam[0, :16] = torch.eye(4).reshape(16)
    cam[0, 11] = 2.7
    cam[0, 16:] = torch.tensor([6.5104, 0, 0.5, 0, 6.5104, 0.5, 0, 0, 1])
    kwargs = dict(neural_rendering_resolution=8, noise_mode="const")
    with torch.no_grad():
        a = g.eval()(z, cam, generator=torch.Generator().manual_seed(1), **kwargs)
        b = built["G"](z, cam, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(a["image"], b["image"])


def test_bad_checkpoints(tmp_path, nets):
    config, g, d = nets
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(CheckpointError, match="junk"):
        load_checkpoint(junk)
    other = tmp_path / "other.safetensors"
    safetensors.save_file({"x": torch.zeros(2)}, str(other), metadata={"format": "other"})
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(other)
    only_d = save_checkpoint(tmp_path / "d.safetensors", config, {"D": d})
    with pytest.raises(CheckpointError, match="no module 'G'"):
        load_checkpoint(only_d)
    # a checkpoint of another layout fails loudly instead of loading half its weights
    small = PortraitGANConfig.preset("tiny")
    path = save_checkpoint(tmp_path / "g.safetensors", config, {"G": g})
    config_text = small.to_json()
    _, states, metadata = read_checkpoint(path)
    metadata["config"] = config_text
    flat = {f"G.{k}": v for k, v in states["G"].items()}
    mismatched = tmp_path / "mismatch.safetensors"
    safetensors.save_file(flat, str(mismatched), metadata=metadata)
    with pytest.raises(CheckpointError, match="shape|missing"):
        load_checkpoint(mismatched)


def test_bad_arguments(tmp_path, nets):
    config, g, _ = nets
    with pytest.raises(TypeError, match="config"):
        save_checkpoint(tmp_path / "a.safetensors", {"z_dim": 3}, {"G": g})
    with pytest.raises(ValueError, match="modules"):
        save_checkpoint(tmp_path / "a.safetensors", config, {})
    with pytest.raises(ValueError, match="module names"):
        save_checkpoint(tmp_path / "a.safetensors", config, {"G.x": g})
    with pytest.raises(TypeError, match="modules"):
        save_checkpoint(tmp_path / "a.safetensors", config, {"G": 3})


def test_failed_write_keeps_the_old_file(tmp_path, nets, monkeypatch):
    config, g, _ = nets
    path = save_checkpoint(tmp_path / "ck.safetensors", config, {"G": g})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, config, {"G": g}, {"note": "newer"})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors"]
