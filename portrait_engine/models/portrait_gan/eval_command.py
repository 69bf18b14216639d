"""Evaluate a 3DPortraitGAN generator (``portrait-engine eval portrait``).

Metrics (see :mod:`portrait_engine.models.portrait_gan.evaluation`):

- multi-view consistency of rendered depth: ``--depth-latents`` latents at the rest pose,
  each rendered from ``--views`` cameras spread evenly over 360° of yaw at ``--pitch``, looking
  at 3DPortraitGAN's look-at point; the mean absolute depth disagreement over the box size,
  overall and per yaw gap (plotted in ``depth_consistency.png``);
- FID against the data with ``--fid-extractor`` (a TorchScript or ``.pt2`` file mapping
  images ``(N, 3, H, W)`` in [0, 255] to features ``(N, D)``; never downloaded): ``--num-samples``
  generated images, each at the camera and pose of a random data item, against as many data
  images (resized to the generator's resolution when they differ);
- the pose errors of the generator's and the discriminator's pose branches
  (``portrait_gan.metrics.pose_errors``) when that module is installed and the checkpoint
  holds a discriminator.

``--checkpoint`` is a generator checkpoint (:mod:`portrait_gan.checkpoint`; ``G_ema`` is used
when it holds one, else ``G``) or a folder, whose newest ``*.safetensors`` is used; a
safetensors file without the checkpoint header is read with its config from a JSON file
beside it (``<name>.json`` or ``config.json``). ``--data`` is a 360°PHQ dataset (zip or
folder) or ``synthetic`` (``--num-samples`` synthetic portraits at the generator's
resolution). Writes ``metrics.json`` (and the plot) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

METRICS_MODULE = "portrait_engine.models.portrait_gan.metrics"


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or folder")
    parser.add_argument("--data", required=True, help="'synthetic' or a dataset zip/folder")
    parser.add_argument("--masks", default=None, help="mask zip/folder of --data (optional)")
    parser.add_argument("--fid-extractor", default=None, help="TorchScript or .pt2 extractor")
    parser.add_argument("--num-samples", type=int, default=64, help="images for FID / poses")
    parser.add_argument("--depth-latents", type=int, default=4, help="latents for depth")
    parser.add_argument("--views", type=int, default=12, help="cameras over 360 deg of yaw")
    parser.add_argument("--pitch", type=float, default=0.0, help="pitch of the views, degrees")
    parser.add_argument(
        "--render-resolution", type=int, default=None, help="neural rendering resolution"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "triton", "native"))
    parser.add_argument("--out", default="portrait_eval", help="output folder")
    parser.add_argument("--no-plots", action="store_true")


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file itself; the ``networks.safetensors`` of a training run's output
    folder (its ``latest`` checkpoint) or of one ``checkpoint-<step>`` folder; otherwise the
    newest ``*.safetensors`` of a folder."""
    from portrait_engine.models.portrait_gan.training import checkpoint as training_checkpoint

    path = Path(path)
    if path.is_file() and path.name == "latest":
        path = path.parent
    if path.is_dir() and (
        training_checkpoint.has_checkpoint(path) or (path / "networks.safetensors").is_file()
    ):
        networks = training_checkpoint.resolve(path) / "networks.safetensors"
        if networks.is_file():
            return networks
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"), key=lambda p: (p.stat().st_mtime, p.name))
        if not files:
            raise FileNotFoundError(f"checkpoint folder {path} holds no *.safetensors file")
        return files[-1]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def _read_with_json_config(path: Path):
    """``(config, states)`` of a safetensors file whose config is in a JSON file beside it."""
    import safetensors.torch as st

    from portrait_engine.models.portrait_gan.checkpoint import CheckpointError
    from portrait_engine.models.portrait_gan.config import PortraitGANConfig

    for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
        if candidate.is_file():
            break
    else:
        raise CheckpointError(
            f"checkpoint {path} has no portrait_engine header and no {path.stem}.json or "
            "config.json beside it"
        )
    try:
        data = json.loads(candidate.read_text())
        config = PortraitGANConfig.from_dict(data.get("config", data))
    except (ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"config {candidate} is not a PortraitGANConfig: {err}") from err
    states: dict[str, dict] = {}
    for key, value in st.load_file(str(path), device="cpu").items():
        name, _, rest = key.partition(".")
        states.setdefault(name, {})[rest] = value
    return config, states


def load_for_evaluation(path: str | Path, device="cpu"):
    """``(config, generator, discriminator or None, info)`` from a checkpoint file/folder."""
    from portrait_engine.models.portrait_gan.checkpoint import (
        CheckpointError,
        load_state,
        read_checkpoint,
    )
    from portrait_engine.models.portrait_gan.discriminator import PoseAwareDualDiscriminator
    from portrait_engine.models.portrait_gan.generator import PortraitGenerator

    path = resolve_checkpoint(path)
    try:
        config, states, _ = read_checkpoint(path)
    except CheckpointError as err:
        if "has format None" not in str(err):
            raise
        config, states = _read_with_json_config(path)
    name = "G_ema" if "G_ema" in states else "G"
    if name not in states:
        raise CheckpointError(f"checkpoint {path} holds no generator (it has {sorted(states)})")
    generator = PortraitGenerator(config)
    load_state(generator, states[name], name, path)
    discriminator = None
    if "D" in states:
        discriminator = PoseAwareDualDiscriminator.from_config(config)
        load_state(discriminator, states["D"], "D", path)
        discriminator = discriminator.to(device).eval()
    info = {"checkpoint": str(path), "generator": name, "discriminator": "D" in states}
    return config, generator.to(device).eval(), discriminator, info


def _dataset(args, resolution: int, out: Path):
    from portrait_engine.data.portrait import PortraitDataset, make_synthetic_dataset

    if args.data == "synthetic":
        folder = out / "synthetic_data"
        images = make_synthetic_dataset(
            folder / "images.zip",
            args.num_samples,
            resolution,
            seed=args.seed,
            mask_path=folder / "masks.zip",
        )
        return PortraitDataset(images, mask_path=folder / "masks.zip")
    return PortraitDataset(args.data, mask_path=args.masks)


def _depth_consistency(args, config, generator, device):
    import numpy as np
    import torch

    from portrait_engine.models.portrait_gan.evaluation import (
        generator_depth_renderer,
        multiview_depth_consistency,
        orbit_cameras,
    )

    yaws = [2 * math.pi * k / args.views - math.pi for k in range(args.views)]
    cameras = orbit_cameras(yaws, math.radians(args.pitch)).to(device)
    rng = np.random.RandomState(args.seed)
    renderers = [
        generator_depth_renderer(
            generator,
            torch.from_numpy(rng.randn(1, config.z_dim)).to(device, torch.float32),
            conditioning_camera=orbit_cameras([0.0]).to(device),
            resolution=args.render_resolution,
            seed=args.seed + i,
        )
        for i in range(args.depth_latents)
    ]
    result = multiview_depth_consistency(renderers, cameras, box_size=config.box_warp)
    return result, yaws


def _fid(args, config, generator, dataset, device, console):
    import numpy as np
    import torch
    import torch.nn.functional as F

    from portrait_engine.models.portrait_gan.evaluation import (
        FeatureExtractor,
        extract_features,
        fid_from_features,
    )

    extractor = args.fid_extractor
    if not isinstance(extractor, FeatureExtractor):
        extractor = FeatureExtractor(extractor, device=device)
    rng = np.random.RandomState(args.seed)
    count = min(args.num_samples, len(dataset))
    indices = rng.choice(len(dataset), count, replace=False)
    size = config.img_resolution

    def real_batches():
        for start in range(0, count, args.batch_size):
            items = [dataset[int(i)] for i in indices[start : start + args.batch_size]]
            images = torch.stack([item["image"] for item in items]).float()
            if images.shape[-1] != size:
                images = F.interpolate(
                    images, size=(size, size), mode="bilinear", antialias=True
                ).clamp(0, 255)
            yield images

    def fake_batches():
        for start in range(0, count, args.batch_size):
            chosen = indices[start : start + args.batch_size]
            z = torch.from_numpy(rng.randn(len(chosen), config.z_dim)).to(device, torch.float32)
            camera = torch.stack([torch.from_numpy(dataset.camera(int(i))) for i in chosen])
            pose = torch.stack([torch.from_numpy(dataset.pose(int(i))) for i in chosen])
            with torch.no_grad():
                out = generator(
                    z,
                    camera.to(device, torch.float32),
                    pose.to(device, torch.float32),
                    noise_mode="const",
                    neural_rendering_resolution=args.render_resolution,
                )
            yield ((out["image"].float() + 1) * 127.5).clamp(0, 255)

    real = extract_features(extractor, real_batches())
    fake = extract_features(extractor, fake_batches())
    console.print(f"FID features: {len(real)} real, {len(fake)} generated, {real.shape[1]}-d")
    return fid_from_features(real, fake), count


def _plot(result, yaws, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    by_angle = result.by_angle(yaws)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(list(by_angle), list(by_angle.values()), "o-")
    left.set_xlabel("yaw difference between the views (degrees)")
    left.set_ylabel("mean |depth error| / box size")
    left.set_title(f"multi-view depth consistency (mean {result.error:.4f})")
    left.grid(True, alpha=0.3)
    image = right.imshow(result.pair_error, cmap="viridis")
    ticks = np.arange(len(yaws))
    labels = [f"{math.degrees(y):.0f}" for y in yaws]
    right.set_xticks(ticks, labels, rotation=90)
    right.set_yticks(ticks, labels)
    right.set_xlabel("checked in view (yaw)")
    right.set_ylabel("points of view (yaw)")
    right.set_title("error per view pair (blank: no shared surface)")
    fig.colorbar(image, ax=right)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def eval_main(args, console) -> int:
    import importlib.util

    import torch

    from portrait_engine import use_backend

    for name in ("num_samples", "depth_latents", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive")
    if args.views < 2:
        raise SystemExit("--views must be at least 2")
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.fid_extractor is not None:  # fail on a bad file before the long work
        from portrait_engine.models.portrait_gan.evaluation import FeatureExtractor

        args.fid_extractor = FeatureExtractor(args.fid_extractor, device=device)
    config, generator, discriminator, info = load_for_evaluation(args.checkpoint, device)
    console.print(f"evaluating {info['generator']} of {info['checkpoint']} ({config.preset_name})")
    metrics: dict = {"checkpoint": info, "data": args.data, "seed": args.seed}
    with use_backend(args.backend):
        try:
            result, yaws = _depth_consistency(args, config, generator, device)
        except ValueError as err:  # no surface (an untrained model): the metric is undefined
            if "surface" not in str(err):
                raise
            result = None
            metrics["depth_consistency"] = None
            metrics["depth_consistency_skipped"] = str(err)
            console.print(f"[yellow]depth consistency undefined: {err}[/]")
        else:
            metrics["depth_consistency"] = {
                "error": result.error,
                "coverage": result.coverage,
                "latents": args.depth_latents,
                "views": args.views,
                "pitch_degrees": args.pitch,
                "box_size": config.box_warp,
                "by_yaw_gap_degrees": {str(k): v for k, v in result.by_angle(yaws).items()},
            }
            console.print(
                f"depth consistency: mean |error| / box = {result.error:.5f} "
                f"(coverage {result.coverage:.2f})"
            )
        dataset = _dataset(args, config.img_resolution, out)
        if args.fid_extractor is not None:
            fid, count = _fid(args, config, generator, dataset, device, console)
            extractor = args.fid_extractor
            metrics["fid"] = {
                "value": fid,
                "samples": count,
                "extractor": str(extractor.path),
                "extractor_kind": extractor.kind,
            }
            console.print(f"FID ({count} samples): {fid:.3f}")
        else:
            metrics["fid"] = None
            metrics["fid_skipped"] = "no --fid-extractor given"
        if importlib.util.find_spec(METRICS_MODULE) is None:
            metrics["pose_errors"] = None
            metrics["pose_errors_skipped"] = f"{METRICS_MODULE} is not installed"
        elif discriminator is None:
            metrics["pose_errors"] = None
            metrics["pose_errors_skipped"] = "the checkpoint holds no discriminator"
        else:
            from portrait_engine.models.portrait_gan.metrics import pose_errors

            metrics["pose_errors"] = pose_errors(
                generator,
                discriminator,
                dataset,
                num_samples=min(args.num_samples, len(dataset)),
                batch_size=args.batch_size,
                device=device,
                seed=args.seed,
            )
    if metrics["pose_errors"] is None:
        console.print(f"pose errors skipped: {metrics['pose_errors_skipped']}")
    if not args.no_plots and result is not None:
        try:
            metrics["depth_plot"] = str(_plot(result, yaws, out / "depth_consistency.png"))
        except ImportError as err:
            console.print(f"[yellow]plot skipped: {err}[/]")
    path = out / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    console.print(f"wrote {path}")
    return 0
