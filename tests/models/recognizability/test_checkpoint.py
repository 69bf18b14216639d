"""Checkpoints: round trip, atomic replacement, pruning, clear errors, load_for_inference."""

import json

import pytest
import torch

from portrait_engine.models.recognizability import RIConfig, RIModel, load_for_inference
from portrait_engine.models.recognizability import checkpoint as ckpt


def _state(seed):
    torch.manual_seed(seed)
    model = RIModel(RIConfig(backbone="tiny", image_size=32, embedding_dim=16))
    weight = torch.nn.Parameter(torch.randn(5, 16))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.randn_like(weight)
    optimizer.step()
    return model, weight, optimizer


def _save(out_dir, step, seed=0, keep=2):
    model, weight, optimizer = _state(seed)
    path = ckpt.save_checkpoint(
        out_dir,
        step,
        config={"model": vars(model.config), "num_classes": 5},
        model_state=model.state_dict(),
        head_state={"weight": weight.detach()},
        optimizer_state=optimizer.state_dict(),
        trainer_tensors={"torch_rng": torch.get_rng_state()},
        trainer_json={"step": step, "world_size": 1},
        keep=keep,
    )
    return path, model, weight, optimizer


def test_round_trip(tmp_path):
    path, model, weight, optimizer = _save(tmp_path, 7)
    assert path.name == "checkpoint-00000007"
    assert (tmp_path / "latest").read_text().strip() == path.name
    state = ckpt.load_checkpoint(tmp_path)
    assert state["path"] == path
    assert state["trainer"] == {"step": 7, "world_size": 1}
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value), key
    assert torch.equal(state["head"]["weight"], weight.detach())
    restored_weight = torch.nn.Parameter(torch.zeros(5, 16))
    restored = torch.optim.AdamW([restored_weight], lr=0.5)
    restored.load_state_dict(state["optimizer"])
    original = optimizer.state_dict()
    again = restored.state_dict()
    assert again["param_groups"] == original["param_groups"]
    for name in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(again["state"][0][name], original["state"][0][name]), name
    assert json.loads((path / "config.json").read_text())["num_classes"] == 5


def test_load_for_inference_reads_the_model(tmp_path):
    path, model, _, _ = _save(tmp_path, 3)
    loaded = load_for_inference(path)
    assert not loaded.training
    model.eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).embedding, model(images).embedding)
    with pytest.raises(FileNotFoundError, match="not an RI checkpoint"):
        load_for_inference(tmp_path / "nowhere")


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep=2)
    kept = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert kept == ["checkpoint-00000003", "checkpoint-00000004"]
    assert not list(tmp_path.glob(".checkpoint-*"))  # no temporary leftovers


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    calls = {"n": 0}
    real = ckpt.save_file

    def failing(tensors, filename):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(tensors, filename)

    monkeypatch.setattr(ckpt, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2)
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-00000001"
    assert not (tmp_path / "checkpoint-00000002").exists()
    assert not list(tmp_path.glob(".checkpoint-*"))
    assert ckpt.load_checkpoint(tmp_path)["trainer"]["step"] == 1


def test_an_incomplete_checkpoint_is_refused(tmp_path):
    path, *_ = _save(tmp_path, 1)
    (path / "optimizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="optimizer.json"):
        ckpt.load_checkpoint(path)
    load_for_inference(path)  # inference needs only the model and its config
