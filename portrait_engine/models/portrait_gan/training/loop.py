"""The 3DPortraitGAN training loop: phases, EMA, data order, DDP, logging, checkpoints.

One step (EG3D / StyleGAN2-ADA ``training_loop``): G main (Adam on G), D main (Adam on D), and
every ``d_reg_interval`` steps D R1 (same D optimizer, whose lr and betas carry the lazy
regularisation correction); each phase draws its own latents and dataset labels. Gradients are
averaged over ranks in one flat all-reduce and NaN/inf entries replaced as published
(``nan_to_num(nan=0, posinf=1e5, neginf=-1e5)``), then G_ema and D_ema follow with the
ramped-up EMA.

Data parallelism: under ``torchrun`` (``WORLD_SIZE > 1``) every rank holds the whole G and D
(rank 0's initial weights broadcast), takes its rows of each global batch and averages
gradients before each optimizer step (gloo on the CPU, NCCL on GPUs). We average gradients
explicitly, as the published loop does, rather than wrapping the networks in
``DistributedDataParallel``: R1 differentiates D's gradient (a double backward, which DDP's
reducer does not support) and one phase runs D several times before its backward.

Randomness: the global batch's draws (latents, label indices, swaps) come from a generator
seeded by ``(seed, step)`` on every rank; the renderer's, the noise inputs' and D's from seeds
of ``(seed, step, rank)``; the real data order from ``(seed, epoch)``. A resumed run therefore
repeats exactly what the uninterrupted one would have done.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from portrait_engine.models.portrait_gan.config import PortraitGANConfig
from portrait_engine.models.portrait_gan.discriminator import (
    PoseAwareDualDiscriminator,
    filtered_resizing,
)
from portrait_engine.models.portrait_gan.generator import PortraitGenerator
from portrait_engine.models.portrait_gan.training import checkpoint as ckpt
from portrait_engine.models.portrait_gan.training import schedules
from portrait_engine.models.portrait_gan.training.config import TrainConfig
from portrait_engine.models.portrait_gan.training.loss import PhaseInputs, PortraitGANLoss
from portrait_engine.training import (
    all_reduce_gradients,
    broadcast_module,
    capture_rng_state,
    epoch_batches,
    init_distributed,
    restore_rng_state,
)
from portrait_engine.training.progress import training_progress


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 under ``"bf16"``, or under ``"auto"`` on a CUDA device that supports it."""
    if amp == "bf16":
        return torch.bfloat16
    if amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _seed(*parts: int) -> int:
    value = 0x9E3779B9
    for part in parts:
        value = (value * 1_000_003 + int(part) + 1) % (2**62)
    return value


@dataclass
class TrainResult:
    step: int
    cur_nimg: int
    out_dir: Path
    metrics: dict[str, float]
    seconds: float
    images_per_second: float


class Trainer:
    """Train 3DPortraitGAN on a :class:`~portrait_engine.data.portrait.PortraitDataset`.

    Args:
        model_config: the networks (a preset name is accepted).
        train_config: the training settings.
        dataset: items with ``image`` (uint8, the config's ``img_resolution`` or resized to
            it), ``camera``, ``pose`` and ``mask`` (all-foreground when absent); ``camera(i)``
            and ``pose(i)`` give labels without decoding the image.
        out_dir: checkpoints, ``scalars.jsonl``, TensorBoard events, samples; an existing
            checkpoint there is resumed.
        device: where to train.
        progress: a rich progress line (rank 0).
    """

    def __init__(
        self,
        model_config: PortraitGANConfig | str,
        train_config: TrainConfig,
        dataset,
        out_dir: str | Path,
        device: str | torch.device = "cpu",
        progress: bool = True,
        console=None,
        data_description: str = "",
    ) -> None:
        if isinstance(model_config, str):
            model_config = PortraitGANConfig.preset(model_config)
        self.model_config = model_config
        self.config = train_config
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.progress = progress
        self.console = console
        self.data_description = data_description
        self.dist = init_distributed(self.device)
        self.global_batch = train_config.batch_size * self.dist.world_size
        if len(dataset) < self.global_batch:
            raise ValueError(
                f"dataset has {len(dataset)} images, fewer than one global batch of "
                f"{self.global_batch}"
            )
        self.steps_per_epoch = len(dataset) // self.global_batch

        torch.manual_seed(train_config.seed)
        self.G = PortraitGenerator(model_config).to(self.device).train()
        self.D = PoseAwareDualDiscriminator.from_config(model_config).to(self.device).train()
        broadcast_module(self.G, self.dist)
        broadcast_module(self.D, self.dist)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.D_ema = copy.deepcopy(self.D).eval().requires_grad_(False)
        self.G.requires_grad_(False)
        self.D.requires_grad_(False)

        cfg = train_config
        g_params = [
            p
            for name, p in self.G.named_parameters()
            if cfg.train_g_pose_branch or not name.startswith("pose_branch.")
        ]
        self.opt_G = torch.optim.Adam(g_params, lr=cfg.g_lr, betas=cfg.betas, eps=cfg.eps)
        d_lr, d_betas = schedules.lazy_regularisation(cfg.d_lr, cfg.betas, cfg.d_reg_interval)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=d_lr, betas=d_betas, eps=cfg.eps)
        self.loss = PortraitGANLoss(
            self.G, self.D, cfg, self.global_batch, autocast_dtype(cfg.amp, self.device)
        )
        self.step = 0
        self.total_steps = max(1, math.ceil(cfg.total_kimg * 1000 / self.global_batch))
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self._epoch_cache: tuple[int, list[list[int]]] | None = None
        self._loader = None  # (the step its next batch is for, the iterator)
        self._writer = None
        if ckpt.has_checkpoint(self.out_dir):
            self.resume(self.out_dir)

    @property
    def cur_nimg(self) -> int:
        return self.step * self.global_batch

    # ---- data ---------------------------------------------------------------------------------

    def _items(self, step: int) -> list[dict]:
        """This rank's dataset items of ``step``: decoded in the loop, or by ``num_workers``
        loader processes that run ahead within the epoch."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            batches = epoch_batches(
                len(self.dataset), self.config.batch_size, epoch, self.config.seed, self.dist
            )
            self._epoch_cache = (epoch, batches)
            self._loader = None
        batches = self._epoch_cache[1]
        if self.config.num_workers <= 0:
            return [self.dataset[i] for i in batches[offset]]
        if self._loader is None or self._loader[0] != step:
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=batches[offset:],
                num_workers=self.config.num_workers,
                collate_fn=list,
            )
            self._loader = (step, iter(loader))
        items = next(self._loader[1])
        self._loader = (step + 1, self._loader[1])
        return items

    def _real_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        items = self._items(step)
        image = torch.stack([it["image"] for it in items])
        if "mask" in items[0]:
            mask = torch.stack([it["mask"] for it in items])
        else:
            mask = torch.full_like(image[:, :1], 255)
        camera = torch.stack([torch.as_tensor(it["camera"]) for it in items]).float()
        image, mask = image.to(self.device), mask.to(self.device)
        size = self.model_config.img_resolution
        if image.shape[-1] != size:
            image = filtered_resizing(image.float() / 127.5 - 1, size)
            mask = filtered_resizing(mask.float() / 255, size)
        return image, mask, camera.to(self.device)

    def phase_inputs(self, generator: torch.Generator) -> PhaseInputs:
        """One phase's generator inputs for the global batch, drawn from ``generator``."""
        n = self.global_batch
        z = torch.randn(n, self.model_config.z_dim, generator=generator)
        index = torch.randint(len(self.dataset), (n,), generator=generator).tolist()
        camera = torch.stack([torch.as_tensor(self.dataset.camera(i)) for i in index]).float()
        pose = torch.stack([torch.as_tensor(self.dataset.pose(i)) for i in index]).float()
        swap = torch.rand(n, generator=generator)
        swap_background = torch.rand(n, generator=generator)
        b = self.config.batch_size
        rows = slice(self.dist.rank * b, (self.dist.rank + 1) * b)
        return PhaseInputs(z, camera, pose, swap, swap_background, rows).to(self.device)

    # ---- one step -----------------------------------------------------------------------------

    def _optimizer_step(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        params = [p for p in module.parameters() if p.requires_grad]
        all_reduce_gradients(params, self.dist)
        for p in params:
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
        optimizer.step()

    @torch.no_grad()
    def _update_ema(self) -> None:
        cfg = self.config
        beta = schedules.ema_beta_at(
            self.cur_nimg, self.global_batch, cfg.ema(self.global_batch), cfg.ema_rampup
        )
        for ema, net in ((self.G_ema, self.G), (self.D_ema, self.D)):
            for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
                b_ema.copy_(b)
        self.G_ema.neural_rendering_resolution = self.G.neural_rendering_resolution

    def train_step(self) -> dict[str, float]:
        """G main, D main and (every ``d_reg_interval`` steps) D R1; then the EMAs."""
        cfg = self.config
        schedule = self.loss.schedule(self.cur_nimg)
        self.G.neural_rendering_resolution = schedule.neural_rendering_resolution
        shared = torch.Generator().manual_seed(_seed(cfg.seed, self.step))
        g_inputs = self.phase_inputs(shared)
        d_inputs = self.phase_inputs(shared)
        local = _seed(cfg.seed, self.step, self.dist.rank, 17)
        torch.manual_seed(local)
        render = torch.Generator(device=self.device).manual_seed(local)
        image, mask, camera = self._real_batch(self.step)
        real = self.loss.real_inputs(image, mask, schedule)
        values: dict[str, torch.Tensor] = {}

        self.G.requires_grad_(True)
        self.opt_G.zero_grad(set_to_none=True)
        parts = self.loss.generator_loss(g_inputs, schedule, generator=render)
        parts.pop("loss").backward()
        self._optimizer_step(self.G, self.opt_G)
        self.G.requires_grad_(False)
        values.update(parts)

        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        parts = self.loss.discriminator_loss(d_inputs, real, camera, schedule, generator=render)
        parts.pop("loss").backward()
        self._optimizer_step(self.D, self.opt_D)
        values.update(parts)
        if (
            cfg.d_reg_interval
            and self.step % cfg.d_reg_interval == 0
            and (cfg.r1_gamma > 0 or cfg.r1_gamma_seg > 0)
        ):
            self.opt_D.zero_grad(set_to_none=True)
            parts = self.loss.r1_loss(real, camera, schedule)
            parts.pop("loss").backward()
            self._optimizer_step(self.D, self.opt_D)
            values.update(parts)
        self.D.requires_grad_(False)

        self._update_ema()
        self.step += 1
        out = {k: float(v) for k, v in values.items()}
        out.update(schedule.as_dict())
        out["kimg"] = self.cur_nimg / 1000
        for key in ("G/loss_adv", "D/loss_fake", "D/loss_real"):
            if not math.isfinite(out[key]):
                raise FloatingPointError(f"{key} is {out[key]} at step {self.step}: {out}")
        return out

    # ---- checkpoints --------------------------------------------------------------------------

    def _config_dict(self) -> dict:
        return {
            "model": self.model_config.to_dict(),
            "train": self.config.to_dict(),
            "world_size": self.dist.world_size,
            "data": self.data_description,
        }

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0; every rank waits for it)."""
        path = None
        if self.dist.is_main:
            path = ckpt.save_training_checkpoint(
                self.out_dir,
                self.step,
                model_config=self.model_config,
                config=self._config_dict(),
                networks={"G": self.G, "G_ema": self.G_ema, "D": self.D, "D_ema": self.D_ema},
                optimizers={"G": self.opt_G, "D": self.opt_D},
                trainer_tensors=capture_rng_state(self.device),
                trainer_json={
                    "step": self.step,
                    "cur_nimg": self.cur_nimg,
                    "world_size": self.dist.world_size,
                    "schedule": self.loss.schedule(self.cur_nimg).as_dict(),
                },
                keep=self.config.keep_checkpoints,
            )
        if self.dist.enabled:
            torch.distributed.barrier()
        return path

    def resume(self, path: str | Path) -> None:
        """Load a checkpoint (or an output directory's latest) into this trainer."""
        state = ckpt.load_training_checkpoint(path, self.device)
        if state["model_config"] != self.model_config:
            raise ckpt.CheckpointError(
                f"checkpoint {state['path']} has another model config "
                f"({state['model_config'].preset_name} preset) than this run "
                f"({self.model_config.preset_name})"
            )
        saved_batch = state["config"]["train"]["batch_size"] * state["trainer"]["world_size"]
        if saved_batch != self.global_batch:
            raise ckpt.CheckpointError(
                f"checkpoint {state['path']} was trained with a global batch of {saved_batch}, "
                f"this run has {self.global_batch}"
            )
        for name, module in (
            ("G", self.G),
            ("G_ema", self.G_ema),
            ("D", self.D),
            ("D_ema", self.D_ema),
        ):
            ckpt.load_state(module, state["networks"][name], name, state["path"])
        self.opt_G.load_state_dict(state["optimizers"]["G"])
        self.opt_D.load_state_dict(state["optimizers"]["D"])
        self.step = int(state["trainer"]["step"])
        restore_rng_state(state["trainer_tensors"], self.device)

    # ---- logging ------------------------------------------------------------------------------

    def _log_scalars(self, values: dict[str, float]) -> None:
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "scalars.jsonl", "a") as handle:
            handle.write(json.dumps({"step": self.step, **values}) + "\n")
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: scalars.jsonl only
                self._writer = False
            else:
                self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        if self._writer:
            for key, value in values.items():
                self._writer.add_scalar(key, value, self.step)
            self._writer.flush()

    def write_samples(self, tag: str, orbit: bool = False) -> list[Path]:
        """A grid of G_ema images (4 seeds x 6 yaws over 360°, each at its predicted pose),
        and with ``orbit`` a 360° orbit video of seed 0, under ``out_dir/samples``."""
        from portrait_engine.models.portrait_gan.inference import (
            generate_images,
            image_grid,
            orbit_frames,
            save_png,
            to_uint8,
            write_video,
        )

        folder = self.out_dir / "samples"
        cameras = [(2 * math.pi * k / 6, 0.0) for k in range(6)]
        images, _ = generate_images(self.G_ema, [0, 1, 2, 3], cameras, predict_pose=True)
        paths = [save_png(image_grid(to_uint8(images)), folder / f"{tag}.png")]
        if orbit:
            frames = orbit_frames(self.G_ema, 0, 24, predict_pose=True)
            paths.append(write_video(frames, folder / f"{tag}-orbit.gif", fps=12))
        return paths

    def pose_metrics(self) -> dict[str, float]:
        from portrait_engine.models.portrait_gan.metrics import pose_errors

        return pose_errors(
            self.G_ema,
            self.D,
            self.dataset,
            num_samples=self.config.metrics_samples,
            batch_size=max(self.config.batch_size, self.model_config.mbstd_group_size),
            device=self.device,
            seed=self.config.seed,
        )

    # ---- the loop -----------------------------------------------------------------------------

    def fit(self, stop_at_step: int | None = None) -> TrainResult:
        """Train to ``total_steps`` (or ``stop_at_step``): log every ``log_every`` steps,
        pose metrics and sample grids at the start, every ``metrics_every`` /
        ``sample_every`` steps and at the end, checkpoints every ``checkpoint_every`` steps
        and at the end."""
        cfg = self.config
        end = min(self.total_steps, stop_at_step or self.total_steps)
        main = self.dist.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        start_step, start = self.step, time.perf_counter()
        metrics: dict[str, float] = {}
        if main and cfg.metrics_samples > 0 and self.step < end:
            metrics = self.pose_metrics()
            self._log_scalars(metrics)
        if main and cfg.samples and self.step < end:
            self.write_samples(f"step-{self.step:06d}")
        progress = self._progress() if (self.progress and main) else None
        task = None
        if progress is not None:
            progress.start()
            task = progress.add_task("train portrait", total=end, completed=self.step, info="")
        window: list[dict[str, float]] = []
        timed = (time.perf_counter(), self.step)
        try:
            while self.step < end:
                values = self.train_step()
                window.append(values)
                now = time.perf_counter()
                rate = (self.step - timed[1]) * self.global_batch / max(now - timed[0], 1e-9)
                if self.step % cfg.log_every == 0 or self.step == end:
                    # losses averaged over the window; schedule values and kimg as of now
                    averaged = {
                        k: sum(w.get(k, 0.0) for w in window) / len(window)
                        for k in window[-1]
                        if not k.startswith("schedule/") and k != "kimg"
                    }
                    averaged.update({k: v for k, v in values.items() if k.startswith("schedule/")})
                    averaged["kimg"] = values["kimg"]
                    averaged["images_per_second"] = rate
                    self._log_scalars(averaged)
                    window = []
                    timed = (now, self.step)
                if main and cfg.metrics_every and self.step % cfg.metrics_every == 0:
                    if self.step < end:
                        metrics = self.pose_metrics()
                        self._log_scalars(metrics)
                if main and cfg.samples and cfg.sample_every and self.step % cfg.sample_every == 0:
                    if self.step < end:
                        self.write_samples(f"step-{self.step:06d}")
                if self.step % cfg.checkpoint_every == 0 and self.step < end:
                    self.save()
                if progress is not None:
                    progress.update(
                        task,
                        completed=self.step,
                        info=(
                            f"kimg {values['kimg']:.2f} G {values['G/loss_adv']:.3f} "
                            f"D {values['D/loss_fake'] + values['D/loss_real']:.3f} "
                            f"pose {values['D/pose_loss']:.4f} {rate:.1f} img/s"
                        ),
                    )
        finally:
            if progress is not None:
                progress.stop()
        seconds = time.perf_counter() - start
        if main and self.step > start_step:
            if cfg.metrics_samples > 0:
                metrics = self.pose_metrics()
                self._log_scalars(metrics)
            if cfg.samples:
                self.write_samples(f"step-{self.step:06d}", orbit=True)
        if self.step > start_step:
            self.save()
        if self._writer:
            self._writer.close()
        images = (self.step - start_step) * self.global_batch
        return TrainResult(
            self.step,
            self.cur_nimg,
            self.out_dir,
            metrics,
            seconds,
            images / seconds if seconds > 0 else 0.0,
        )

    def _progress(self):
        return training_progress(self.console)
