"""3DPortraitGAN training (issue 7): losses, schedules, the loop, resumable checkpoints.

``Trainer(model_config, TrainConfig(...), dataset, out_dir).fit()``; the command line is
``portrait-engine train portrait`` (:mod:`.commands`). Published hyper-parameters and their
sources: ``docs/portrait_gan_training.md``.
"""

from portrait_engine.models.portrait_gan.training.config import TrainConfig
from portrait_engine.models.portrait_gan.training.loop import Trainer, TrainResult, autocast_dtype
from portrait_engine.models.portrait_gan.training.loss import (
    PhaseInputs,
    PortraitGANLoss,
    Schedule,
)

__all__ = [
    "PhaseInputs",
    "PortraitGANLoss",
    "Schedule",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "autocast_dtype",
]
