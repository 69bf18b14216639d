"""Train 3DPortraitGAN (``portrait-engine train portrait``).

``--data synthetic`` renders a synthetic 360° portrait set with true cameras and poses (once,
into ``OUT/synthetic``); a path trains on a 360°PHQ / EG3D dataset (folder or zip with
``dataset.json``; masks with ``--masks``). Under ``torchrun`` it trains data-parallel.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="'synthetic' or a dataset folder / zip")
    parser.add_argument("--masks", default=None, help="mask folder / zip of a real dataset")
    parser.add_argument("--xflip", action="store_true", help="add mirrored copies (published)")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "paper"])
    parser.add_argument("--out", default="runs/portrait", help="output dir (resumed if a run)")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK or cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="per process")
    parser.add_argument("--kimg", type=float, default=None, help="train this many kimg in all")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this step")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--amp", choices=["auto", "bf16", "none"], default=None)
    parser.add_argument("--g-lr", type=float, default=None)
    parser.add_argument("--d-lr", type=float, default=None)
    parser.add_argument("--gamma", type=float, default=None, help="R1 weight (image pair)")
    parser.add_argument("--gamma-seg", type=float, default=None, help="R1 weight (mask)")
    parser.add_argument("--log-every", type=int, default=None, help="steps between scalars")
    parser.add_argument("--metrics-every", type=int, default=None, help="steps between metrics")
    parser.add_argument("--sample-every", type=int, default=None, help="steps between grids")
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument(
        "--metrics-samples", type=int, default=None, help="images per pose metric (0: off)"
    )
    parser.add_argument("--no-samples", action="store_true", help="write no sample grids")
    parser.add_argument("--workers", type=int, default=None, help="data loader processes")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "triton", "native"],
        help="kernel backend of the renderer and deformer",
    )
    parser.add_argument(
        "--synthetic-images", type=int, default=512, help="synthetic: images to render"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 on a shared machine)"
    )
    parser.add_argument("--no-progress", action="store_true")


def build_dataset(args, resolution: int, out: Path, is_main: bool):
    """The training set named by ``--data`` (and a description for the checkpoint)."""
    from portrait_engine.data.portrait import PortraitDataset, make_synthetic_dataset

    if args.data == "synthetic":
        root = out / "synthetic"
        images, masks = root / f"images-{resolution}", root / f"masks-{resolution}"
        if is_main and not (images / "dataset.json").is_file():
            make_synthetic_dataset(
                images, args.synthetic_images, resolution, seed=0, mask_path=masks
            )
        _wait_for_rank0()
        description = f"synthetic:{args.synthetic_images}x{resolution}"
        return PortraitDataset(images, mask_path=masks, xflip=args.xflip), description
    path = Path(args.data)
    if not path.exists():
        raise FileNotFoundError(f"--data {args.data}: no such file or directory")
    dataset = PortraitDataset(path, mask_path=args.masks, xflip=args.xflip)
    return dataset, str(path.resolve())


def _wait_for_rank0() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def train_main(args: argparse.Namespace, console) -> int:
    import os

    import torch

    from portrait_engine import use_backend
    from portrait_engine.models.portrait_gan.config import PortraitGANConfig
    from portrait_engine.models.portrait_gan.training import TrainConfig, Trainer
    from portrait_engine.training import init_distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device is None:
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    info = init_distributed(torch.device(device))
    model_config = PortraitGANConfig.preset(args.preset)
    train_config = TrainConfig.for_preset(
        args.preset,
        batch_size=args.batch_size,
        total_kimg=args.kimg,
        max_steps=args.max_steps,
        seed=args.seed,
        amp=args.amp,
        g_lr=args.g_lr,
        d_lr=args.d_lr,
        r1_gamma=args.gamma,
        r1_gamma_seg=args.gamma_seg,
        log_every=args.log_every,
        metrics_every=args.metrics_every,
        sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every,
        metrics_samples=args.metrics_samples,
        samples=False if args.no_samples else None,
        num_workers=args.workers,
    )
    out = Path(args.out)
    dataset, description = build_dataset(args, model_config.img_resolution, out, info.is_main)
    with use_backend(args.backend):
        trainer = Trainer(
            model_config,
            train_config,
            dataset,
            out,
            device=device,
            progress=not args.no_progress,
            console=console,
            data_description=description,
        )
        if trainer.dist.is_main:
            console.print(
                f"train portrait: preset {args.preset}, {len(dataset)} images ({description}), "
                f"{trainer.total_steps} steps of {train_config.batch_size} x "
                f"{trainer.dist.world_size} on {device}, from step {trainer.step} "
                f"(kimg {trainer.cur_nimg / 1000:.2f}); output in {out}"
            )
        result = trainer.fit()
    if trainer.dist.is_main:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
        console.print(
            f"step {result.step} (kimg {result.cur_nimg / 1000:.2f}): {shown}; "
            f"{result.images_per_second:.2f} images/s; checkpoint and samples in "
            f"{result.out_dir}"
        )
    return 0
