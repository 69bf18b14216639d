"""Training presets: ``tiny`` (CPU demo), ``r50`` and ``r100`` (insightface-scale training).

``r50``/``r100`` follow insightface's and CR-FIQA's IResNet recipes (SGD, momentum 0.9,
weight decay 5e-4, lr 0.1 at batch 128 per device with linear scaling, polynomial decay,
ArcFace s = 64, m = 0.5, bf16 autocast on GPUs); the paper's own settings were not at hand.
``tiny`` is ours: a 64 × 64 input, :class:`TinyBackbone`, AdamW and a softer ArcFace margin
(s = 32, m = 0.3) so a few CPU minutes on synthetic faces reach a useful model.
"""

from __future__ import annotations

import dataclasses

from portrait_engine.models.recognizability.model import RIConfig
from portrait_engine.models.recognizability.train import TrainConfig

PRESETS: dict[str, tuple[RIConfig, TrainConfig]] = {
    "tiny": (
        RIConfig(backbone="tiny", image_size=64, embedding_dim=512, num_maps=1),
        TrainConfig(
            batch_size=64,
            epochs=8,
            optimizer="adamw",
            lr=2e-3,
            weight_decay=0.05,
            warmup_steps=30,
            schedule="poly",
            margin="arcface",
            scale=32.0,
            margin_m=0.3,
            amp="none",
            ui_fraction=0.25,
            vlr_probability=0.5,
            checkpoint_every=200,
            log_every=10,
        ),
    ),
    "r50": (
        RIConfig(backbone="iresnet50", image_size=112, embedding_dim=512, num_maps=1),
        TrainConfig(
            batch_size=128,
            epochs=20,
            optimizer="sgd",
            lr=0.1,
            weight_decay=5e-4,
            warmup_epochs=1.0,
            schedule="poly",
            margin="arcface",
            amp="auto",
            ui_fraction=0.125,
            vlr_probability=0.5,
            checkpoint_every=2000,
            log_every=50,
        ),
    ),
    "r100": (
        RIConfig(backbone="iresnet100", image_size=112, embedding_dim=512, num_maps=1),
        TrainConfig(
            batch_size=128,
            epochs=20,
            optimizer="sgd",
            lr=0.1,
            weight_decay=5e-4,
            warmup_epochs=1.0,
            schedule="poly",
            margin="arcface",
            amp="auto",
            ui_fraction=0.125,
            vlr_probability=0.5,
            checkpoint_every=2000,
            log_every=50,
        ),
    ),
}


def preset(name: str, **train_overrides) -> tuple[RIConfig, TrainConfig]:
    """Copies of a preset's configs, with training fields replaced by the non-None overrides."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {name!r}")
    model, train = PRESETS[name]
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    return dataclasses.replace(model), dataclasses.replace(train, **overrides)
