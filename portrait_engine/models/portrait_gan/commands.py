"""3DPortraitGAN: generate images, orbit videos, meshes, and predict poses of real images.

``portrait-engine generate portrait``, ``orbit portrait``, ``mesh portrait`` and
``predict-pose portrait`` (registered in :data:`portrait_engine.cli.MODEL_COMMANDS`). Without
``--checkpoint`` every command runs a randomly initialised model of ``--preset`` (``tiny`` by
default) and warns. Heavy imports happen inside the ``*_main`` functions.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

BACKENDS = ("auto", "torch", "triton", "native")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="a .safetensors checkpoint")
    parser.add_argument(
        "--preset",
        default="tiny",
        choices=("paper", "small", "tiny"),
        help="preset of the random model used without --checkpoint",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="kernel backend")


def _pose_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--pose",
        type=float,
        nargs=6,
        metavar=("NX", "NY", "NZ", "HX", "HY", "HZ"),
        help="body pose: neck and head axis-angle in radians (default zeros)",
    )
    group.add_argument(
        "--predict-pose", action="store_true", help="render at the pose the generator predicts"
    )
    parser.add_argument("--truncation", type=float, default=1.0, help="truncation psi")
    parser.add_argument(
        "--render-resolution", type=int, default=None, help="neural rendering resolution"
    )


def _setup(args, modules=("G",)):
    """The networks: from ``--checkpoint``, else random at ``--preset`` (RandomModelWarning)."""
    import torch

    from portrait_engine.models.portrait_gan.inference import load_networks

    return load_networks(
        args.checkpoint, modules, preset=args.preset, device=torch.device(args.device)
    )


# ---- generate ---------------------------------------------------------------------------------


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--seeds", default="0-3", help="seeds, e.g. '0-3,7'")
    parser.add_argument(
        "--yaw", type=float, nargs="+", default=[0.0], help="yaws in degrees (0: frontal)"
    )
    parser.add_argument("--pitch", type=float, default=0.0, help="pitch in degrees")
    _pose_arguments(parser)
    parser.add_argument("--out", default="portrait_grid.png", help="output PNG (a grid)")


def generate_main(args, console) -> int:
    from portrait_engine import use_backend
    from portrait_engine.models.portrait_gan.inference import (
        generate_images,
        image_grid,
        parse_seeds,
        save_png,
        to_uint8,
    )

    seeds = parse_seeds(args.seeds)
    _, nets = _setup(args)
    cameras = [(math.radians(y), math.radians(args.pitch)) for y in args.yaw]
    with use_backend(args.backend):
        images, poses = generate_images(
            nets["G"],
            seeds,
            cameras,
            pose=args.pose,
            predict_pose=args.predict_pose,
            truncation_psi=args.truncation,
            neural_rendering_resolution=args.render_resolution,
        )
    path = save_png(image_grid(to_uint8(images)), args.out)
    console.print(f"wrote {path} ({len(seeds)} seeds x {len(cameras)} views)")
    if args.predict_pose:
        for seed, row in zip(seeds, poses, strict=True):
            shown = ", ".join("[" + " ".join(f"{v:+.3f}" for v in p) + "]" for p in row.tolist())
            console.print(f"  seed {seed}: predicted pose {shown}")
    return 0


# ---- orbit ------------------------------------------------------------------------------------


def add_orbit_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=60, help="frames over 360 degrees of yaw")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--pitch", type=float, default=0.0, help="pitch in degrees")
    _pose_arguments(parser)
    parser.add_argument(
        "--out", default="portrait_orbit.mp4", help=".mp4 (imageio-ffmpeg) or .gif output"
    )


def orbit_main(args, console) -> int:
    from portrait_engine import use_backend
    from portrait_engine.models.portrait_gan.inference import orbit_frames, write_video

    if args.frames < 1 or args.fps < 1:
        raise SystemExit("--frames and --fps must be positive")
    _, nets = _setup(args)
    with use_backend(args.backend):
        frames = orbit_frames(
            nets["G"],
            args.seed,
            args.frames,
            pitch=math.radians(args.pitch),
            pose=args.pose,
            predict_pose=args.predict_pose,
            truncation_psi=args.truncation,
            neural_rendering_resolution=args.render_resolution,
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_video(frames, args.out, fps=args.fps)
    for warning in caught:
        console.print(f"[yellow]warning:[/yellow] {warning.message}")
    console.print(f"wrote {path} ({len(frames)} frames)")
    return 0


# ---- mesh -------------------------------------------------------------------------------------


def add_mesh_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=128, help="density grid per side")
    parser.add_argument("--chunk", type=int, default=2**18, help="points per density chunk")
    parser.add_argument(
        "--level", default="10", help="density iso-level (EG3D: 10), or 'auto' (mid-range)"
    )
    parser.add_argument("--truncation", type=float, default=1.0, help="truncation psi")
    parser.add_argument(
        "--pose",
        type=float,
        nargs=6,
        default=None,
        help="extract the body posed by these 6 numbers (default: the canonical space)",
    )
    parser.add_argument("--out", default="portrait.ply", help="output .ply")


def mesh_main(args, console) -> int:
    import torch

    from portrait_engine import use_backend
    from portrait_engine.models.portrait_gan.inference import (
        density_grid,
        latent,
        marching_cubes,
        orbit_camera,
        write_ply,
    )

    level = args.level if args.level == "auto" else float(args.level)
    config, nets = _setup(args)
    g = nets["G"]
    device = next(g.parameters()).device
    z = latent(args.seed, config.z_dim, device)
    pose = None if args.pose is None else torch.tensor([args.pose], device=device)
    with torch.no_grad(), use_backend(args.backend):
        ws = g.map(z, orbit_camera(0.0, device=device), pose, truncation_psi=args.truncation)
        sigma = density_grid(g, ws, args.resolution, chunk=args.chunk, pose=pose)
    vertices, faces = marching_cubes(sigma, level, config.box_warp)
    path = write_ply(args.out, vertices, faces)
    console.print(f"wrote {path} ({len(vertices)} vertices, {len(faces)} faces)")
    return 0


# ---- predict-pose -----------------------------------------------------------------------------


def add_predict_pose_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("data", help="dataset folder or zip (dataset.json with camera labels)")
    parser.add_argument("--masks", default=None, help="mask folder or zip with the same names")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--out", default=None, help="write the predictions as JSON here")


def predict_pose_main(args, console) -> int:
    from portrait_engine import use_backend
    from portrait_engine.data.portrait import PortraitDataset
    from portrait_engine.models.portrait_gan.inference import predict_poses

    dataset = PortraitDataset(args.data, mask_path=args.masks)
    config, nets = _setup(args, modules=("D",))
    with warnings.catch_warnings(record=True) as caught, use_backend(args.backend):
        warnings.simplefilter("always")
        results = predict_poses(
            nets["D"],
            dataset,
            raw_resolution=config.neural_rendering_resolution,
            batch_size=args.batch,
            limit=args.limit,
        )
    for warning in caught:
        console.print(f"[yellow]warning:[/yellow] {warning.message}")
    errors = []
    for r in results:
        error = float((r["predicted"] - r["label"]).abs().mean())
        errors.append(error)
        console.print(
            f"{r['name']}: predicted [{' '.join(f'{v:+.3f}' for v in r['predicted'].tolist())}]"
            f" label [{' '.join(f'{v:+.3f}' for v in r['label'].tolist())}]"
            f" mean |error| {error:.4f}"
        )
    console.print(f"{len(results)} images, mean |error| {sum(errors) / len(errors):.4f} rad")
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [
            {
                "name": r["name"],
                "predicted": r["predicted"].tolist(),
                "label": r["label"].tolist(),
            }
            for r in results
        ]
        path.write_text(json.dumps(rows, indent=1) + "\n")
        console.print(f"wrote {path}")
    return 0


# The CLI looks up `add_<command>_arguments` / `<command>_main` by the command's name, which
# for `predict-pose` contains a dash.
globals()["add_predict-pose_arguments"] = add_predict_pose_arguments
globals()["predict-pose_main"] = predict_pose_main
