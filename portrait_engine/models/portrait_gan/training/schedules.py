"""The training schedules of 3DPortraitGAN, each a pure function of the images seen so far
(``cur_nimg``), so a resumed run continues every schedule exactly.

Published values (3DPortraitGAN ``train.py`` and its README command, EG3D / PanoHead
``training/loss.py`` and ``training_loop.py``); see ``docs/portrait_gan_training.md``.
"""

from __future__ import annotations

from portrait_engine.models.portrait_gan.discriminator import blur_sigma_at

__all__ = [
    "blur_sigma_at",
    "kimg_for_batch",
    "density_noise_at",
    "ema_beta_at",
    "lazy_regularisation",
    "neural_rendering_resolution_at",
    "pose_regularisation_weight_at",
    "swapping_prob_at",
]


def density_noise_at(cur_nimg: float, fade_kimg: float) -> float:
    """Std of the noise on raw densities: ``max(1 - nimg / (fade_kimg · 1e3), 0)`` (PanoHead's
    ``density_noise_fade_kimg``; 0 when the fade is off)."""
    if fade_kimg <= 0:
        return 0.0
    return max(1.0 - cur_nimg / (fade_kimg * 1e3), 0.0)


def swapping_prob_at(cur_nimg: float, prob: float | None, fade_kimg: float) -> float | None:
    """Generator-pose-conditioning swap probability (EG3D ``gpc_reg_prob``): from 1 at the
    start to ``prob`` after ``fade_kimg``, linearly. ``None`` (no conditioning) stays None."""
    if prob is None:
        return None
    alpha = min(cur_nimg / (fade_kimg * 1e3), 1.0) if fade_kimg > 0 else 1.0
    return (1 - alpha) * 1.0 + alpha * prob


def neural_rendering_resolution_at(
    cur_nimg: float, initial: int, final: int | None, fade_kimg: float
) -> int:
    """EG3D's neural rendering resolution fade: ``rint(initial (1 - a) + final a)``, ``a =
    min(nimg / (fade_kimg · 1e3), 1)``; ``initial`` when there is no final resolution."""
    if final is None or final == initial:
        return int(initial)
    alpha = min(cur_nimg / (fade_kimg * 1e3), 1.0) if fade_kimg > 0 else 1.0
    # np.rint rounds half to even, as Python's round does
    return int(round(initial * (1 - alpha) + final * alpha))


def pose_regularisation_weight_at(cur_nimg: float, weight: float, fade_kimg: float) -> float:
    """Weight of the generator pose regulariser (3DPortraitGAN ``--input_pose_params_reg_loss_
    weight`` 0.5 over ``--input_pose_params_reg_loss_kimg`` 200): ``weight · max(1 - nimg /
    (fade_kimg · 1e3), 0)``, a linear fade to zero [our reading: the published loss file was
    not at hand, only its two flags]."""
    if fade_kimg <= 0:
        return 0.0
    return weight * max(1.0 - cur_nimg / (fade_kimg * 1e3), 0.0)


def ema_beta_at(
    cur_nimg: float, batch_size: int, ema_kimg: float, ema_rampup: float | None
) -> float:
    """StyleGAN2-ADA's EMA decay per step: ``0.5 ** (batch / ema_nimg)``, ``ema_nimg =
    ema_kimg · 1e3``, ramped up as ``min(ema_nimg, nimg · ema_rampup)``."""
    ema_nimg = ema_kimg * 1e3
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


def lazy_regularisation(lr: float, betas: tuple[float, float], interval: int | None):
    """StyleGAN2's lazy-regularisation correction of Adam: ``lr · r`` and ``beta ** r`` with
    ``r = interval / (interval + 1)`` (unchanged without an interval)."""
    if not interval:
        return lr, tuple(betas)
    ratio = interval / (interval + 1)
    return lr * ratio, tuple(b**ratio for b in betas)


def kimg_for_batch(kimg_at_32: float, batch_size: int) -> float:
    """Published fades given for a batch of 32 scale with the batch (EG3D ``blur_fade_kimg =
    batch · 200 / 32``, ``ema_kimg = batch · 10 / 32``)."""
    return batch_size * kimg_at_32 / 32
