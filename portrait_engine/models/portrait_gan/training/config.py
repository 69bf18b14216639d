"""``TrainConfig``: every training setting of 3DPortraitGAN that is not the architecture.

Defaults are the published first-stage values (3DPortraitGAN README's ``train.py`` command on
top of ``train.py``'s defaults, EG3D / PanoHead's loss): batch 32 (here per process x
processes), R1 gamma 1 on the image pair and 1 on the mask (``--gamma=1 --gamma_seg=1``),
lazy R1 every 16 steps, Adam (0, 0.99, eps 1e-8), G lr 0.0025 (``--cfg`` other than
``stylegan2``), D lr 0.002, blur 10 px faded over ``batch · 200 / 32`` kimg, density noise
faded over 200 kimg, generator pose conditioning swapped with probability 1 -> 0.7 over 1000
kimg, background swap 0.2, D pose loss weight 1, G pose regulariser 0.5 faded over 200 kimg,
G and D EMA with half-life ``batch · 10 / 32`` kimg and ramp-up 0.05, the neural rendering
resolution faded from the config's initial to final resolution over 1000 kimg.

:meth:`TrainConfig.for_preset` gives ``tiny`` [ours] shorter fades and a blur scaled to its
64-pixel images, so a few CPU minutes see the schedules move.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class TrainConfig:
    batch_size: int = 4  # per process (published: 32 in all, 4 per GPU on 8 GPUs)
    total_kimg: float = 6000.0  # the first published stage
    max_steps: int | None = None  # stops earlier when set
    g_lr: float = 0.0025
    d_lr: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8
    r1_gamma: float = 1.0
    r1_gamma_seg: float = 1.0
    d_reg_interval: int = 16
    blur_init_sigma: float = 10.0
    blur_fade_kimg: float | None = None  # None: batch · 200 / 32
    density_noise_fade_kimg: float = 200.0
    gpc_reg_prob: float | None = 0.7
    gpc_reg_fade_kimg: float = 1000.0
    bcg_reg_prob: float = 0.2
    pose_loss_weight: float = 1.0
    pose_reg_weight: float = 0.5
    pose_reg_kimg: float = 200.0
    train_g_pose_branch: bool = True
    ema_kimg: float | None = None  # None: batch · 10 / 32
    ema_rampup: float | None = 0.05
    neural_rendering_resolution_fade_kimg: float = 1000.0
    amp: str = "auto"  # "auto" (bf16 on CUDA devices that have it) | "bf16" | "none"
    noise_mode: str = "random"  # StyleGAN2 noise inputs; "const" makes a step deterministic
    deterministic_render: bool = False  # [tests] no jitter / importance / density-noise draws
    seed: int = 0
    num_workers: int = 0  # data loader processes (0: decode in the training loop)
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 0  # 0: only at the start and the end
    samples: bool = True  # sample grids and the final orbit at all
    metrics_every: int = 0  # 0: only at the start and the end
    metrics_samples: int = 64  # 0: no pose metrics

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        checks = {
            "batch_size": isinstance(self.batch_size, int) and self.batch_size >= 1,
            "total_kimg": self.total_kimg > 0,
            "max_steps": self.max_steps is None or self.max_steps >= 0,
            "g_lr": self.g_lr > 0,
            "d_lr": self.d_lr > 0,
            "r1_gamma": self.r1_gamma >= 0 and self.r1_gamma_seg >= 0,
            "d_reg_interval": self.d_reg_interval >= 1,
            "gpc_reg_prob": self.gpc_reg_prob is None or 0 <= self.gpc_reg_prob <= 1,
            "bcg_reg_prob": 0 <= self.bcg_reg_prob <= 1,
            "amp": self.amp in ("auto", "bf16", "none"),
            "noise_mode": self.noise_mode in ("random", "const"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid TrainConfig fields: {', '.join(bad)} ({self})")

    def blur_fade(self, global_batch: int) -> float:
        if self.blur_fade_kimg is not None:
            return self.blur_fade_kimg
        return global_batch * 200 / 32

    def ema(self, global_batch: int) -> float:
        return self.ema_kimg if self.ema_kimg is not None else global_batch * 10 / 32

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def for_preset(cls, preset: str, **overrides) -> TrainConfig:
        """Published values for ``paper`` and ``small``; ``tiny`` [ours]: batch 4, a blur of
        1.25 px (10 px at 512 scaled to 64) faded over 2 kimg, density noise and the pose
        regulariser over 2 kimg, the swap fade over 10 kimg, EMA half-life 0.5 kimg."""
        values: dict = {}
        if preset == "tiny":
            values.update(
                batch_size=4,
                total_kimg=20.0,
                blur_init_sigma=1.25,
                blur_fade_kimg=2.0,
                density_noise_fade_kimg=2.0,
                pose_reg_kimg=2.0,
                gpc_reg_fade_kimg=10.0,
                ema_kimg=0.5,
                neural_rendering_resolution_fade_kimg=10.0,
                checkpoint_every=200,
                metrics_samples=32,
            )
        elif preset not in ("paper", "small"):
            raise ValueError(f"preset must be paper, small or tiny, got {preset!r}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
