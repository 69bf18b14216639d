"""Train the RI face recogniser (``portrait-engine train ri``).

``--data synthetic`` trains on procedural faces (``SyntheticFaces``, split "train"); a path
trains on an insightface RecordIO directory (``train.rec`` + ``train.idx``) or an identity
folder tree (one sub-folder per identity). Under ``torchrun`` it trains with DDP.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="'synthetic' or a dataset directory")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "r50", "r100"])
    parser.add_argument("--out", required=True, help="output dir (resumed if it holds a run)")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK or cpu")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="train this many steps in all")
    parser.add_argument("--batch-size", type=int, default=None, help="per process")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default=None)
    parser.add_argument("--schedule", choices=["poly", "step"], default=None)
    parser.add_argument("--margin", choices=["arcface", "cosface", "adaface"], default=None)
    parser.add_argument("--amp", choices=["auto", "bf16", "none"], default=None)
    parser.add_argument("--unfused-ce", action="store_true", help="plain B x classes logits")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="data loader workers")
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--identities", type=int, default=200, help="synthetic: identities")
    parser.add_argument("--images-per-identity", type=int, default=16, help="synthetic: images")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 on a shared machine)"
    )
    parser.add_argument("--no-progress", action="store_true")


def build_dataset(spec: str, image_size: int, identities: int, images_per_identity: int, seed: int):
    """The training set named by ``--data``."""
    if spec == "synthetic":
        from portrait_engine.data.faces import SyntheticFaces

        return SyntheticFaces(
            identities, images_per_identity, size=image_size, seed=seed, cache=True
        )
    root = Path(spec)
    if not root.exists():
        raise FileNotFoundError(f"--data {spec}: no such file or directory")
    if (root / "train.rec").is_file() or root.suffix == ".rec":
        from portrait_engine.data.faces import RecordIO

        rec = root if root.suffix == ".rec" else root / "train.rec"
        return RecordIO(rec)
    from portrait_engine.data.faces import IdentityFolder

    return IdentityFolder(root, size=image_size)


def train_main(args: argparse.Namespace, console) -> int:
    import torch

    from portrait_engine.models.recognizability.presets import preset
    from portrait_engine.models.recognizability.train import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)

    model_config, train_config = preset(
        args.preset,
        epochs=args.epochs,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        schedule=args.schedule,
        margin=args.margin,
        amp=args.amp,
        seed=args.seed,
        num_workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        fused_ce=False if args.unfused_ce else None,
    )
    if args.margin and args.margin != "arcface":
        # the preset's margin value is ArcFace's; the other margins keep their own defaults
        train_config.margin_m = None
    device = args.device
    if device is None:
        import os

        local = int(os.environ.get("LOCAL_RANK", 0))
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dataset = build_dataset(
        args.data,
        model_config.image_size,
        args.identities,
        args.images_per_identity,
        train_config.seed,
    )
    trainer = Trainer(
        model_config,
        train_config,
        dataset,
        args.out,
        device=device,
        progress=not args.no_progress,
        console=console,
    )
    if trainer.dist.is_main:
        console.print(
            f"train ri: preset {args.preset}, {len(dataset)} images of {trainer.num_classes} "
            f"identities, {trainer.total_steps} steps of {train_config.batch_size} x "
            f"{trainer.dist.world_size} on {device}, from step {trainer.step}"
        )
    result = trainer.fit()
    if trainer.dist.is_main:
        shown = ", ".join(
            f"{k} {v:.4g}" for k, v in result.metrics.items() if k not in ("step", "epoch")
        )
        console.print(
            f"step {result.step}: {shown}; {result.images_per_second:.1f} images/s; "
            f"checkpoint in {result.out_dir}"
        )
    return 0
