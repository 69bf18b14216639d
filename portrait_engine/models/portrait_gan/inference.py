"""3DPortraitGAN inference helpers: cameras, image grids, orbit videos, meshes, pose prediction.

The Python API behind ``portrait-engine generate|orbit|mesh|predict-pose portrait``:

- :func:`load_networks`: a checkpoint's networks, or (no checkpoint) a randomly initialised
  model of a preset with a warning, so the commands run anywhere;
- :func:`orbit_camera`: EG3D's look-at camera label at a yaw and pitch (radius 2.7,
  focal 6.5104: 3DPortraitGAN's average camera, looking at its look-at point (0, 0.0649, 0));
- :func:`generate_images`: images for seeds at chosen cameras and body pose, or at the pose the
  generator predicts (3DPortraitGAN's ``gen_samples_with_pose_prediction``);
- :func:`image_grid`, :func:`save_png`, :func:`write_video` (MP4 through imageio-ffmpeg when
  installed, else an animated GIF through pillow);
- :func:`density_grid` (EG3D's ``gen_videos`` shape extraction: raw density on a cube of side
  ``box_warp``, sampled in chunks so memory stays bounded), :func:`marching_cubes` (scikit-image)
  and :func:`write_ply`;
- :func:`predict_poses`: the discriminator's pose branch on real images of a dataset.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from portrait_engine.data.portrait.labels import (
    DEFAULT_FOCAL,
    DEFAULT_RADIUS,
    LOOKAT_POINT,
    camera_label,
    intrinsics_matrix,
    lookat_cam2world,
)
from portrait_engine.models.portrait_gan.config import PortraitGANConfig


class RandomModelWarning(UserWarning):
    """Emitted when a command runs a randomly initialised model (no checkpoint)."""


def load_networks(
    checkpoint: str | Path | None,
    modules: tuple[str, ...] = ("G",),
    *,
    preset: str = "tiny",
    device: torch.device | str = "cpu",
    seed: int = 0,
):
    """``(config, {name: module})`` from a checkpoint, or randomly initialised (with a
    :class:`RandomModelWarning`) at ``preset`` when ``checkpoint`` is None."""
    from portrait_engine.models.portrait_gan.checkpoint import load_checkpoint
    from portrait_engine.models.portrait_gan.discriminator import PoseAwareDualDiscriminator
    from portrait_engine.models.portrait_gan.generator import PortraitGenerator

    if checkpoint is not None:
        return load_checkpoint(checkpoint, modules=modules, device=device)
    warnings.warn(
        f"no checkpoint given: running a randomly initialised {preset!r} model (its images "
        "are noise-like; pass --checkpoint for a trained one)",
        RandomModelWarning,
        stacklevel=2,
    )
    config = PortraitGANConfig.preset(preset)
    torch.manual_seed(seed)
    built = {}
    for name in modules:
        if name in ("G", "G_ema"):
            built[name] = PortraitGenerator(config)
        elif name == "D":
            built[name] = PoseAwareDualDiscriminator.from_config(config)
        else:
            raise ValueError(f"modules may be 'G', 'G_ema' or 'D', got {name!r}")
        built[name] = built[name].to(device).eval()
    return config, built


def orbit_camera(
    yaw: float,
    pitch: float = 0.0,
    *,
    radius: float = DEFAULT_RADIUS,
    focal: float = DEFAULT_FOCAL,
    batch: int = 1,
    device: torch.device | str = "cpu",
    target: tuple[float, float, float] = LOOKAT_POINT,
) -> torch.Tensor:
    """``(batch, 25)`` EG3D camera labels at ``yaw``, ``pitch`` (radians; yaw 0 = frontal),
    looking at ``target`` (3DPortraitGAN's look-at point, as the synthetic data's cameras)."""
    label = camera_label(
        lookat_cam2world(yaw, pitch, radius, target=target), intrinsics_matrix(focal)
    )
    return torch.from_numpy(label).to(device=device, dtype=torch.float32).expand(batch, -1)


def parse_seeds(text: str) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                low, high = part.split("-", 1)
                seeds.extend(range(int(low), int(high) + 1))
            else:
                seeds.append(int(part))
        except ValueError as err:
            raise ValueError(f"seeds must look like '0-3,7', got {text!r}") from err
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative integers like '0-3,7', got {text!r}")
    return seeds


def latent(seed: int, z_dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The ``(1, z_dim)`` latent of a seed (NumPy's RandomState, as StyleGAN's scripts)."""
    z = np.random.RandomState(seed).randn(1, z_dim)
    return torch.from_numpy(z).to(device=device, dtype=torch.float32)


def _pose_tensor(pose, batch: int, device) -> torch.Tensor | None:
    if pose is None:
        return None
    pose = torch.as_tensor(pose, dtype=torch.float32, device=device).reshape(-1)
    if pose.numel() != 6:
        raise ValueError(f"pose must have 6 numbers (neck, head axis-angle), got {pose.numel()}")
    return pose.reshape(1, 6).expand(batch, -1)


@torch.no_grad()
def generate_images(
    generator,
    seeds: Sequence[int],
    cameras: Sequence[tuple[float, float]],
    *,
    pose: Sequence[float] | None = None,
    predict_pose: bool = False,
    truncation_psi: float = 1.0,
    neural_rendering_resolution: int | None = None,
    render_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(len(seeds), len(cameras), 3, R, R)`` in [-1, 1] and the poses rendered
    ``(len(seeds), len(cameras), 6)``. With ``predict_pose`` each view gets the generator's
    predicted pose for its seed and camera; else ``pose`` (zeros when None). The mapping is
    conditioned on each view's own camera."""
    device = next(generator.parameters()).device
    z_dim = generator.config.z_dim
    rows, poses = [], []
    for seed in seeds:
        z = latent(seed, z_dim, device)
        row, row_poses = [], []
        for yaw, pitch in cameras:
            camera = orbit_camera(yaw, pitch, device=device)
            out = generator(
                z,
                camera,
                _pose_tensor(pose, 1, device),
                predict_pose=predict_pose,
                truncation_psi=truncation_psi,
                neural_rendering_resolution=neural_rendering_resolution,
                noise_mode="const",
                generator=torch.Generator(device=device).manual_seed(render_seed),
            )
            row.append(out["image"][0].float().cpu())
            row_poses.append(out["pose"][0].float().cpu())
        rows.append(torch.stack(row))
        poses.append(torch.stack(row_poses))
    return torch.stack(rows), torch.stack(poses)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(..., 3, H, W)`` in [-1, 1] -> ``(..., H, W, 3)`` uint8 (EG3D's ``* 127.5 + 128``)."""
    x = (images.detach().float().cpu() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def image_grid(images: np.ndarray) -> np.ndarray:
    """``(rows, cols, H, W, 3)`` uint8 -> one ``(rows·H, cols·W, 3)`` image."""
    if images.ndim != 5 or images.shape[-1] != 3:
        raise ValueError(f"images must be (rows, cols, H, W, 3), got {images.shape}")
    rows, cols, h, w, c = images.shape
    return images.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")
    return path


@torch.no_grad()
def orbit_frames(
    generator,
    seed: int,
    frames: int,
    *,
    pitch: float = 0.0,
    pose: Sequence[float] | None = None,
    predict_pose: bool = False,
    truncation_psi: float = 1.0,
    neural_rendering_resolution: int | None = None,
) -> list[np.ndarray]:
    """``frames`` uint8 images of one seed on a full 360° yaw orbit (yaw ``2π k / frames``)."""
    if frames < 1:
        raise ValueError(f"frames must be positive, got {frames}")
    cameras = [(2 * math.pi * k / frames, pitch) for k in range(frames)]
    images, _ = generate_images(
        generator,
        [seed],
        cameras,
        pose=pose,
        predict_pose=predict_pose,
        truncation_psi=truncation_psi,
        neural_rendering_resolution=neural_rendering_resolution,
    )
    return list(to_uint8(images[0]))


def ffmpeg_available() -> bool:
    try:
        import imageio.v2  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = 30) -> Path:
    """Write frames as MP4 (``.mp4`` and imageio-ffmpeg installed) or an animated GIF. An
    ``.mp4`` path without imageio-ffmpeg becomes ``.gif`` with a warning. Returns the path."""
    if not frames:
        raise ValueError("frames must not be empty")
    if fps < 1:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".mp4":
        if ffmpeg_available():
            import imageio.v2 as imageio

            with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1) as out:
                for frame in frames:
                    out.append_data(np.ascontiguousarray(frame))
            return path
        warnings.warn(
            "imageio-ffmpeg is not installed (pip install imageio-ffmpeg): writing a GIF instead",
            stacklevel=2,
        )
        path = path.with_suffix(".gif")
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000 / fps)),
        loop=0,
        disposal=2,
    )
    return path


@torch.no_grad()
def density_grid(
    generator,
    ws: torch.Tensor,
    resolution: int = 128,
    *,
    chunk: int = 2**18,
    pose: torch.Tensor | None = None,
) -> np.ndarray:
    """Raw density ``(res, res, res)`` float32 at the vertices of a grid over the cube of side
    ``box_warp`` (index ``[i, j, k]`` at ``(x_i, y_j, z_k)``, ``x_i = -s/2 + i·s/(res-1)``),
    canonical space unless ``pose`` ``(1, 6)`` is given. ``chunk`` points at a time."""
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if ws.ndim != 3 or ws.shape[0] != 1:
        raise ValueError(f"ws must have shape (1, K, w_dim), got {tuple(ws.shape)}")
    side = generator.config.box_warp
    planes = generator.planes(ws, noise_mode="const")
    axis = torch.linspace(-side / 2, side / 2, resolution, device=ws.device)
    out = np.empty(resolution**3, dtype=np.float32)
    total = resolution**3
    for start in range(0, total, chunk):
        index = torch.arange(start, min(start + chunk, total), device=ws.device)
        i = index // (resolution * resolution)
        j = (index // resolution) % resolution
        k = index % resolution
        points = torch.stack([axis[i], axis[j], axis[k]], dim=-1).unsqueeze(0)
        sigma = generator.sample_density(planes, points, pose)
        out[start : start + len(index)] = sigma.reshape(-1).float().cpu().numpy()
    return out.reshape(resolution, resolution, resolution)


def marching_cubes(
    sigma: np.ndarray, level: float | str = 10.0, side: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(V, 3)`` in world units and faces ``(F, 3)`` of the ``level`` iso-surface of a
    density grid from :func:`density_grid` (scikit-image's marching cubes). ``level="auto"``:
    halfway between the grid's min and max [ours, for untrained models; EG3D uses 10]."""
    try:
        from skimage import measure
    except ImportError as err:
        raise ImportError(
            "mesh extraction needs scikit-image for marching cubes: pip install scikit-image "
            "(or the 'portrait' extra)"
        ) from err
    low, high = float(np.min(sigma)), float(np.max(sigma))
    if level == "auto":
        level = (low + high) / 2
    level = float(level)
    if not (low < level < high):
        raise ValueError(
            f"the density never crosses level {level:g} (grid min {low:g}, max {high:g}): "
            "choose a level in between, or 'auto'"
        )
    resolution = sigma.shape[0]
    step = side / (resolution - 1)
    vertices, faces, _, _ = measure.marching_cubes(sigma, level=level, spacing=(step,) * 3)
    return (vertices - side / 2).astype(np.float32), faces.astype(np.int64)


def write_ply(path: str | Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """ASCII PLY with ``vertex`` (x, y, z float) and ``face`` (vertex_indices list)."""
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be (F, 3), got {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError("faces index vertices out of range")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        out.write("ply\nformat ascii 1.0\n")
        out.write(f"element vertex {len(vertices)}\nproperty float x\nproperty float y\n")
        out.write(f"property float z\nelement face {len(faces)}\n")
        out.write("property list uchar int vertex_indices\nend_header\n")
        np.savetxt(out, vertices, fmt="%.6f")
        np.savetxt(out, np.concatenate([np.full((len(faces), 1), 3), faces], axis=1), fmt="%d")
    return path


@torch.no_grad()
def predict_poses(
    discriminator,
    dataset,
    *,
    raw_resolution: int,
    batch_size: int = 8,
    limit: int | None = None,
):
    """The discriminator's pose branch on a :class:`PortraitDataset`: a list of
    ``{"name", "predicted" (6,), "label" (6,)}``. ``raw_resolution``: the neural rendering
    resolution the discriminator was trained with (its raw-image input). Images are resized to
    the discriminator's resolution; a dataset without masks gets an all-foreground mask (with
    a warning)."""
    from portrait_engine.models.portrait_gan.discriminator import filtered_resizing, real_inputs

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = next(discriminator.parameters()).device
    resolution = discriminator.img_resolution
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise ValueError("the dataset is empty")
    if not dataset.has_masks:
        warnings.warn("the dataset has no masks: using all-foreground masks", stacklevel=2)
    results = []
    for start in range(0, count, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, count))]
        real = len(items)
        # minibatch-std needs full groups: pad a short last batch with copies, drop their output
        items = items + [items[-1]] * (batch_size - real)
        image = torch.stack([it["image"] for it in items]).to(device)
        image = image.float() / 127.5 - 1
        if "mask" in items[0]:
            mask = torch.stack([it["mask"] for it in items]).to(device).float() / 255
        else:
            mask = torch.ones_like(image[:, :1])
        if image.shape[-1] != resolution:
            image = filtered_resizing(image, resolution)
            mask = filtered_resizing(mask, resolution)
        inputs = real_inputs(image, mask, raw_resolution, blur_sigma=0.0)
        camera = torch.stack([it["camera"] for it in items]).to(device).float()
        pose, _ = discriminator.predict_pose(inputs, camera)
        for it, p in zip(items[:real], pose[:real].cpu(), strict=True):
            results.append({"name": it["name"], "predicted": p, "label": it["pose"].float()})
    return results


__all__ = [
    "RandomModelWarning",
    "density_grid",
    "generate_images",
    "image_grid",
    "latent",
    "load_networks",
    "marching_cubes",
    "orbit_camera",
    "orbit_frames",
    "parse_seeds",
    "predict_poses",
    "save_png",
    "to_uint8",
    "write_ply",
    "write_video",
]
