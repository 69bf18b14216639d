"""3DPortraitGAN training at the tiny preset: one step, R1, exact resume, corrupt checkpoints.

Every test trains on a small synthetic set (8 portraits at 64², with masks) rendered once per
module; steps take about a second on one CPU core.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from portrait_engine.data.portrait import PortraitDataset, make_synthetic_dataset
from portrait_engine.models.portrait_gan import CheckpointError
from portrait_engine.models.portrait_gan.training import TrainConfig, Trainer, schedules


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("portraits")
    make_synthetic_dataset(root / "images", 8, 64, seed=3, mask_path=root / "masks")
    return PortraitDataset(root / "images", mask_path=root / "masks")


def tiny_config(**overrides) -> TrainConfig:
    values = dict(batch_size=2, metrics_samples=0, log_every=1, checkpoint_every=1000)
    values.update(overrides)
    return TrainConfig.for_preset("tiny", **values)


def make_trainer(out, dataset, **overrides) -> Trainer:
    return Trainer("tiny", tiny_config(**overrides), dataset, out, progress=False)


def _flat(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_one_step_changes_every_network_and_gives_finite_losses(tmp_path, dataset):
    trainer = make_trainer(tmp_path, dataset)
    before = {name: _flat(getattr(trainer, name)) for name in ("G", "D", "G_ema", "D_ema")}
    g_branch, d_branch = _flat(trainer.G.pose_branch), _flat(trainer.D.pose_branch)
    values = trainer.train_step()
    assert trainer.step == 1
    for key in ("G/loss_adv", "G/pose_reg", "D/loss_fake", "D/loss_real", "D/pose_loss"):
        assert math.isfinite(values[key]), key
    assert "D/r1" in values  # step 0 is an R1 step (every 16)
    for name, flat in before.items():
        after = _flat(getattr(trainer, name))
        assert torch.isfinite(after).all(), name
        assert not torch.equal(after, flat), f"{name} did not change"
    # both pose branches were trained: G's by its pose regulariser and the adversarial loss,
    # D's by the pose loss on generated images
    assert not torch.equal(_flat(trainer.G.pose_branch), g_branch)
    assert not torch.equal(_flat(trainer.D.pose_branch), d_branch)


def test_r1_is_positive_and_its_gradient_reaches_the_discriminator(tmp_path, dataset):
    trainer = make_trainer(tmp_path, dataset)
    schedule = trainer.loss.schedule(0.0)
    image, mask, camera = trainer._real_batch(0)
    real = trainer.loss.real_inputs(image, mask, schedule)
    trainer.D.requires_grad_(True)
    parts = trainer.loss.r1_loss(real, camera, schedule)
    assert parts["D/r1_penalty"] > 0 and parts["D/r1_penalty_seg"] > 0
    assert float(parts["loss"].detach()) == pytest.approx(
        trainer.config.d_reg_interval * float(parts["D/r1"])
    )
    parts["loss"].backward()
    first = trainer.D.b64.fromrgb.weight.grad
    assert first is not None and first.abs().sum() > 0
    # the mask channel (the last input channel) gets its own R1 gradient
    assert first[:, -1].abs().sum() > 0
    grads = [p.grad for p in trainer.D.parameters() if p.grad is not None]
    assert len(grads) > len(list(trainer.D.parameters())) // 2
    assert all(torch.isfinite(g).all() for g in grads)


def test_resume_repeats_the_next_step_exactly(tmp_path, dataset):
    trainer = make_trainer(tmp_path / "a", dataset)
    trainer.train_step()
    trainer.train_step()
    trainer.save()
    expected = trainer.train_step()
    expected_params = _flat(trainer.G)

    resumed = make_trainer(tmp_path / "a", dataset)
    assert resumed.step == 2
    actual = resumed.train_step()
    assert actual == expected
    assert torch.equal(_flat(resumed.G), expected_params)
    assert torch.equal(_flat(resumed.D_ema), _flat(trainer.D_ema))


def test_loader_workers_give_the_same_batches(tmp_path, dataset):
    inline = make_trainer(tmp_path / "a", dataset)
    workers = make_trainer(tmp_path / "b", dataset, num_workers=1)
    for step in (0, 1, 2, 5):  # 8 images, batch 2: step 5 is in the second epoch
        for a, b in zip(inline._real_batch(step), workers._real_batch(step), strict=True):
            assert torch.equal(a, b)


def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_overwritten(tmp_path, dataset):
    trainer = make_trainer(tmp_path, dataset)
    trainer.train_step()
    path = trainer.save()
    networks = path / "networks.safetensors"
    networks.write_bytes(networks.read_bytes()[: networks.stat().st_size // 2])
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="networks.safetensors"):
        make_trainer(tmp_path, dataset)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == snapshot

    (path / "trainer.json").write_text("{not json")
    networks.unlink()
    with pytest.raises(CheckpointError, match="lacks"):
        make_trainer(tmp_path, dataset)


def test_fit_writes_scalars_samples_metrics_and_a_checkpoint(tmp_path, dataset):
    trainer = make_trainer(tmp_path, dataset, max_steps=2, metrics_samples=4)
    result = trainer.fit()
    assert result.step == 2 and result.images_per_second > 0
    rows = [json.loads(line) for line in (tmp_path / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "G/loss_adv" in r] == [1, 2]
    metrics = [r for r in rows if "pose/d_error" in r]
    assert [r["step"] for r in metrics] == [0, 2]
    assert all(math.isfinite(r["pose/g_error"]) for r in metrics)
    assert set(result.metrics) == {
        "pose/d_error",
        "pose/g_error",
        "pose/g_distribution_error",
        "pose/data_spread",
    }
    samples = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert "step-000000.png" in samples and "step-000002.png" in samples
    assert any(name.startswith("step-000002-orbit") for name in samples)
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-00000002"


def test_schedules_follow_the_published_formulas():
    assert schedules.blur_sigma_at(0, 10, 200) == 10
    assert schedules.blur_sigma_at(100_000, 10, 200) == pytest.approx(5)
    assert schedules.blur_sigma_at(300_000, 10, 200) == 0
    assert schedules.density_noise_at(50_000, 200) == pytest.approx(0.75)
    assert schedules.swapping_prob_at(0, 0.7, 1000) == 1
    assert schedules.swapping_prob_at(500_000, 0.7, 1000) == pytest.approx(0.85)
    assert schedules.swapping_prob_at(2_000_000, 0.7, 1000) == pytest.approx(0.7)
    assert schedules.neural_rendering_resolution_at(0, 64, 128, 1000) == 64
    assert schedules.neural_rendering_resolution_at(500_000, 64, 128, 1000) == 96
    assert schedules.neural_rendering_resolution_at(5_000_000, 64, 128, 1000) == 128
    assert schedules.pose_regularisation_weight_at(100_000, 0.5, 200) == pytest.approx(0.25)
    assert schedules.pose_regularisation_weight_at(300_000, 0.5, 200) == 0
    assert schedules.ema_beta_at(0, 32, 10, 0.05) == 0  # copies G at the start
    assert schedules.ema_beta_at(10**9, 32, 10, 0.05) == pytest.approx(0.5 ** (32 / 10_000))
    lr, betas = schedules.lazy_regularisation(0.002, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.002 * 16 / 17) and betas[1] == pytest.approx(0.99 ** (16 / 17))


def test_cli_trains_and_a_rerun_resumes(tmp_path):
    from portrait_engine import cli

    out = tmp_path / "run"
    common = ["train", "portrait", "--data", "synthetic", "--preset", "tiny", "--out", str(out)]
    common += ["--synthetic-images", "8", "--batch-size", "2", "--no-progress", "--threads", "1"]
    common += ["--no-samples", "--metrics-samples", "0"]
    assert cli.main([*common, "--max-steps", "1"]) == 0
    assert (out / "latest").read_text().strip() == "checkpoint-00000001"
    assert cli.main([*common, "--max-steps", "2"]) == 0
    rows = [json.loads(line) for line in (out / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "G/loss_adv" in r] == [1, 2]
    config = json.loads((out / "checkpoint-00000002" / "config.json").read_text())
    assert config["data"] == "synthetic:8x64" and config["train"]["batch_size"] == 2


def test_a_bf16_autocast_step_gives_finite_losses(tmp_path, dataset):
    # bf16 autocast on the CPU: the backbone, image head and D in bf16, the pose branch,
    # mapping and volume rendering in float32 (their ops take one dtype)
    trainer = make_trainer(tmp_path, dataset, amp="bf16")
    assert trainer.loss.autocast_dtype == torch.bfloat16
    values = trainer.train_step()
    assert all(math.isfinite(values[k]) for k in ("G/loss_adv", "D/loss_real", "D/r1"))
    assert all(torch.isfinite(p).all() for p in trainer.G.parameters())


@pytest.mark.cuda
def test_one_bf16_step_on_a_gpu(tmp_path, dataset):
    trainer = Trainer("tiny", tiny_config(amp="auto"), dataset, tmp_path, device="cuda")
    if torch.cuda.is_bf16_supported():
        assert trainer.loss.autocast_dtype == torch.bfloat16
    values = trainer.train_step()
    assert all(math.isfinite(values[k]) for k in ("G/loss_adv", "D/loss_real", "D/r1"))
