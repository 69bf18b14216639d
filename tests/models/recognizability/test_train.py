"""RI training: schedule, data order, batch assembly, learning, exact resume, fused = unfused,
bf16 autocast, the ``train ri`` command."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from portrait_engine.models.recognizability import RIConfig, load_for_inference
from portrait_engine.models.recognizability.checkpoint import load_checkpoint
from portrait_engine.models.recognizability.train import (
    Distributed,
    TrainConfig,
    Trainer,
    epoch_batches,
    learning_rate,
    make_batch,
)

IMAGE_SIZE = 32


class ClassPatterns(torch.utils.data.Dataset):
    """Tiny faces stand-in: each class a fixed random pattern, each image that pattern plus
    noise, in [-1, 1]."""

    def __init__(self, num_classes=4, per_class=8, size=IMAGE_SIZE, seed=0):
        g = torch.Generator().manual_seed(seed)
        patterns = torch.rand(num_classes, 3, size, size, generator=g) * 2 - 1
        self.labels = [c for c in range(num_classes) for _ in range(per_class)]
        noise = 0.3 * torch.randn(len(self.labels), 3, size, size, generator=g)
        self.images = (patterns[self.labels] + noise).clamp(-1, 1)
        self.num_classes = num_classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


def blur_down_up(images, generator):
    """Stand-in very-low-resolution degradation: 4x down, noise, up."""
    small = F.avg_pool2d(images, 4)
    small = small + 0.05 * torch.randn(small.shape, generator=generator)
    return F.interpolate(small, size=images.shape[-2:], mode="bilinear").clamp(-1, 1)


def wash_out(images, generator):
    """Stand-in unrecognisable degradation: the mean colour under heavy noise."""
    mean = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    return (mean + 0.8 * torch.randn(images.shape, generator=generator)).clamp(-1, 1)


DEGRADATIONS = (blur_down_up, wash_out)
MODEL = RIConfig(backbone="tiny", image_size=IMAGE_SIZE, embedding_dim=64)


def small_config(**changes):
    base = TrainConfig(
        batch_size=8,
        epochs=2,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.01,
        warmup_steps=2,
        margin="arcface",
        scale=16.0,
        margin_m=0.2,
        amp="none",
        ui_fraction=0.25,
        vlr_probability=0.5,
        checkpoint_every=3,
        log_every=2,
    )
    return dataclasses.replace(base, **changes)


def make_trainer(out_dir, config=None, model=MODEL, dataset=None):
    return Trainer(
        model,
        config or small_config(),
        dataset or ClassPatterns(),
        out_dir,
        degradations=DEGRADATIONS,
        progress=False,
    )


def test_learning_rate_warmup_poly_and_step():
    config = TrainConfig(lr=1.0, schedule="poly", poly_power=2.0)
    assert learning_rate(config, 0, 100, 10) == pytest.approx(0.1)
    assert learning_rate(config, 9, 100, 10) == pytest.approx(1.0)
    assert learning_rate(config, 10, 100, 10) == pytest.approx(1.0)
    assert learning_rate(config, 55, 100, 10) == pytest.approx((1 - 45 / 90) ** 2)
    assert learning_rate(config, 100, 100, 10) == pytest.approx(0.0)
    step = TrainConfig(lr=1.0, schedule="step", step_milestones=[0.5, 0.8], step_gamma=0.1)
    assert learning_rate(step, 49, 100, 0) == pytest.approx(1.0)
    assert learning_rate(step, 50, 100, 0) == pytest.approx(0.1)
    assert learning_rate(step, 80, 100, 0) == pytest.approx(0.01)


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="ui_fraction"):
        TrainConfig(ui_fraction=1.5)
    with pytest.raises(ValueError, match="unknown TrainConfig"):
        TrainConfig.from_dict({"learning_rate": 1})


def test_epoch_batches_shard_a_seeded_permutation():
    ranks = [epoch_batches(23, 3, epoch=1, seed=5, info=Distributed(r, 2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 23 // 6
    flat = [i for rank in ranks for batch in rank for i in batch]
    assert len(flat) == len(set(flat)) == 18
    assert ranks[0] == epoch_batches(23, 3, epoch=1, seed=5, info=Distributed(0, 2))
    assert ranks[0] != epoch_batches(23, 3, epoch=2, seed=5, info=Distributed(0, 2))


def test_make_batch_appends_ui_faces():
    dataset = ClassPatterns()
    images = dataset.images[:8]
    labels = torch.arange(8)
    config = small_config(ui_fraction=0.25, vlr_probability=1.0)
    batch, batch_labels, is_ui = make_batch(
        images, labels, config, 16, torch.Generator().manual_seed(0), *DEGRADATIONS
    )
    assert batch.shape == (10, 3, 16, 16)  # resized to the model's size
    assert batch_labels.tolist() == list(range(8)) + [0, 1]
    assert is_ui.tolist() == [False] * 8 + [True] * 2


def test_training_loss_is_the_weighted_sum_of_its_terms(tmp_path):
    from portrait_engine.models.recognizability import ri

    config = small_config(ui_pull_weight=2.0, attention_weight=3.0, id_weight=0.5, tau=0.5)
    trainer = make_trainer(tmp_path, config)
    trainer.net.train()
    dataset = ClassPatterns()
    images, labels, is_ui = make_batch(
        dataset.images[:8],
        torch.tensor(dataset.labels[:8]),
        config,
        IMAGE_SIZE,
        torch.Generator().manual_seed(0),
        *DEGRADATIONS,
    )
    parts = trainer.net(images, labels, is_ui)
    expected = (
        parts["loss_cls"]
        + config.ri_weight * parts["loss_ri"]
        + config.id_weight * parts["loss_id"]
        + config.ui_pull_weight * parts["loss_ui"]
        + config.attention_weight * parts["loss_attention"]
    )
    torch.testing.assert_close(parts["loss"].detach(), expected)
    assert parts["loss_attention"] >= 0 and bool(trainer.net.model.ui_centre_initialised)
    # the gradient of the attention term reaches the attention score head (against +c and -c
    # so that one of them has faces on its near side)
    model = trainer.net.model
    trainer.net.zero_grad()
    out = model(images)
    loss = ri.attention_mse_loss(F.normalize(out.embedding[~is_ui], dim=1), -model.ui_centre)
    loss = loss + ri.attention_mse_loss(F.normalize(out.embedding[~is_ui], dim=1), model.ui_centre)
    loss.backward()
    score_grad = model.pool.score_head[0].weight.grad
    assert score_grad is not None and score_grad.abs().sum() > 0


def test_dataset_checks(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        make_trainer(tmp_path, dataset=torch.utils.data.TensorDataset(torch.zeros(4, 3)))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        make_trainer(tmp_path, dataset=ClassPatterns(num_classes=2, per_class=2))


def test_training_learns_and_writes_a_loadable_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = small_config(epochs=12, checkpoint_every=1000)
    trainer = make_trainer(tmp_path, config)
    first = trainer.train_step(
        *next(iter(trainer._loader(epoch_batches(32, 8, 0, 0, trainer.dist))))
    )
    result = trainer.fit()
    assert result.step == trainer.total_steps == 12 * 4
    last = result.metrics
    assert last["loss_cls"] < 0.5 * first["loss_cls"]
    assert last["accuracy"] > 0.9
    assert math.isfinite(last["loss_ri"]) and math.isfinite(last["loss_id"])
    # UI faces sit at the UI centre: their RI is below the recognisable faces'
    assert last["ri_ui"] < last["ri_recognisable"]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") >= 10

    model = load_for_inference(tmp_path)
    assert not model.training
    images = ClassPatterns().images[:6]
    trainer.net.model.eval()
    with torch.no_grad():
        expected = trainer.net.model(images)
        got = model(images)
    torch.testing.assert_close(got.embedding, expected.embedding)
    torch.testing.assert_close(got.ri, expected.ri)
    assert bool(model.ui_centre_initialised)


def _final_state(trainer):
    return {k: v.clone() for k, v in trainer.net.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_is_exact(tmp_path, optimizer):
    config = small_config(optimizer=optimizer, lr=0.01, epochs=3, checkpoint_every=5)
    straight = make_trainer(tmp_path / "straight", config)
    straight.fit()
    assert straight.step == 12

    interrupted = make_trainer(tmp_path / "resumed", config)
    interrupted.fit(stop_at_step=5)  # a mid-epoch stop (4 steps per epoch)
    del interrupted
    resumed = make_trainer(tmp_path / "resumed", config)
    assert resumed.step == 5
    resumed.fit()
    a, b = _final_state(straight), _final_state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    saved = load_checkpoint(tmp_path / "resumed")
    assert saved["trainer"]["step"] == 12


def test_resume_refuses_another_model(tmp_path):
    make_trainer(tmp_path, small_config(max_steps=1)).fit()
    other = dataclasses.replace(MODEL, num_maps=2)
    with pytest.raises(ValueError, match="model config"):
        make_trainer(tmp_path, small_config(max_steps=2), model=other)


def test_fused_and_unfused_heads_train_alike(tmp_path):
    # SGD: Adam's per-parameter normalisation would blow rounding noise of near-zero
    # gradients up to the step size.
    states = []
    for fused in (True, False):
        config = small_config(optimizer="sgd", lr=0.05, max_steps=3, fused_ce=fused, chunk_size=3)
        trainer = make_trainer(tmp_path / str(fused), config)
        trainer.fit()
        states.append(_final_state(trainer))
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_step_is_finite(tmp_path):
    trainer = make_trainer(tmp_path, small_config(amp="bf16", max_steps=2))
    assert trainer.autocast_dtype == torch.bfloat16
    result = trainer.fit()
    assert all(math.isfinite(v) for v in result.metrics.values())


def test_train_command_on_synthetic_faces(tmp_path, capsys):
    pytest.importorskip("portrait_engine.data.faces.synthetic")
    from portrait_engine import cli

    code = cli.main(
        [
            "train",
            "ri",
            "--data",
            "synthetic",
            "--preset",
            "tiny",
            "--out",
            str(tmp_path),
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--identities",
            "4",
            "--images-per-identity",
            "4",
            "--no-progress",
        ]
    )
    assert code == 0
    assert "step 2" in capsys.readouterr().out
    assert load_for_inference(tmp_path).config.backbone == "tiny"


@pytest.mark.parametrize("margin", ["cosface", "adaface"])
def test_other_margins_train(tmp_path, margin):
    config = small_config(margin=margin, scale=None, margin_m=None, max_steps=2)
    trainer = make_trainer(tmp_path, config)
    result = trainer.fit()
    assert math.isfinite(result.metrics["loss"])
    if margin == "adaface":  # its norm statistics moved and were saved with the head
        assert load_checkpoint(tmp_path)["head"]["margin.batch_mean"].item() != 20.0


def test_presets_build_their_models():
    from portrait_engine.models.recognizability import RIModel
    from portrait_engine.models.recognizability.presets import preset

    model_config, train_config = preset("r50", batch_size=2)
    assert train_config.batch_size == 2 and train_config.optimizer == "sgd"
    model = RIModel(model_config).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 112, 112) * 2 - 1)
    assert out.embedding.shape == (1, 512) and out.attention.shape == (1, 1, 7, 7)
    r100 = RIModel(preset("r100")[0])
    assert sum(1 for k in r100.state_dict() if k.endswith(".conv2.weight")) == 49
    with pytest.raises(ValueError, match="preset must be one of"):
        preset("r18")


def test_train_command_on_an_identity_folder(tmp_path, capsys):
    image_module = pytest.importorskip("PIL.Image")
    from portrait_engine import cli

    dataset = ClassPatterns(num_classes=3, per_class=4, size=40)
    for index, (image, label) in enumerate(dataset):
        folder = tmp_path / "faces" / f"id{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = ((image.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        image_module.fromarray(pixels).save(folder / f"{index}.png")
    out = tmp_path / "run"
    argv = ["train", "ri", "--data", str(tmp_path / "faces"), "--preset", "tiny"]
    argv += ["--out", str(out), "--steps", "1", "--batch-size", "4", "--no-progress"]
    assert cli.main(argv) == 0
    assert "3 identities" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no such file"):
        cli.main(["train", "ri", "--data", str(tmp_path / "missing"), "--out", str(out)])


def _held_out_ri_by_condition(tmp_path, **changes):
    """Train a small RI model on synthetic faces (32 × 32, real degradations: 4–16 px VLR and
    ``degrade.unrecognizable``), then predict RI for held-out identities: clean, very low
    resolution, unrecognisable."""
    from portrait_engine.data.faces import SyntheticFaces, VeryLowResolution, unrecognizable

    torch.manual_seed(0)
    size = 32
    config = TrainConfig(
        batch_size=32,
        max_steps=150,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.05,
        warmup_steps=10,
        margin="arcface",
        scale=32.0,
        margin_m=0.3,
        amp="none",
        ui_fraction=0.25,
        vlr_probability=0.5,
        vlr_min_size=4,
        vlr_max_size=16,
        checkpoint_every=10**6,
        log_every=50,
    )
    config = dataclasses.replace(config, **changes)
    model_config = RIConfig(backbone="tiny", image_size=size, embedding_dim=128)
    train = SyntheticFaces(60, 10, size=size, seed=0, cache=True)
    trainer = Trainer(model_config, config, train, tmp_path, progress=False)
    trainer.fit()
    model = trainer.net.model.eval()
    test = SyntheticFaces(30, 6, size=size, seed=0, split="test")  # identities never seen
    clean = torch.stack([test[i][0] for i in range(len(test))])
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        return (
            model(clean).ri,
            model(VeryLowResolution(4, 16, generator=g)(clean)).ri,
            model(unrecognizable(clean, g)).ri,
        )


def test_ri_falls_with_degradation_on_held_out_identities(tmp_path):
    """The demo's claim at test scale: RI ranks clean > very low resolution > unrecognisable
    faces of identities never trained on, per image and on average. (Without the UI cluster
    loss this fails: the four kinds of UI faces spread out, the UI centre is their blurred
    average, and mildly down-sampled faces land *further* from it than clean ones — about
    64 % of pairs ordered, means within 0.02.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared CPU: one thread is several times faster here
    try:
        clean, vlr, ui = _held_out_ri_by_condition(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert clean.mean() > vlr.mean() + 0.05 > ui.mean() + 0.1
    assert (clean > vlr).float().mean() > 0.75  # the same face, degraded: lower RI
    assert (vlr > ui).float().mean() > 0.75
