"""Synthetic 360° portraits: procedural head-and-shoulders scenes with true cameras and poses.

Until the body model of the skinning issue lands, the figure is built from ellipsoids [ours]:
torso (shoulders), neck, head, a hair cap, two eyes and a nose, each with its own colour,
with per-identity variation of head proportions, shoulder width, hair volume and length and
all colours. The 6 pose numbers drive it as 3DPortraitGAN's do: ``pose[:3]`` is the neck's
axis-angle rotation about the neck joint (it moves neck, head, hair and face), ``pose[3:]``
the head's axis-angle rotation about the head joint (after the neck's), both in the world
frame of the rest pose (y up, the face looking along +z).

Images are ray-cast on the CPU in torch (2 x 2 supersampling, two directional lights and an
ambient term); the mask is the figure's coverage. Cameras follow the published conventions
(:mod:`portrait_engine.data.portrait.labels`): OpenCV cam2world on a sphere of radius 2.7
looking at the origin, normalised intrinsics with focal 6.5104 (3DPortraitGAN's average
camera), yaw uniform over the full 360°, pitch normal (std 0.15 rad, clipped at ±0.45). The
written dataset is in exactly the 360°PHQ format (:func:`make_synthetic_dataset`), so it
is the ground truth against which learned poses and cameras can be checked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from portrait_engine.data.portrait.labels import (
    DEFAULT_FOCAL,
    DEFAULT_RADIUS,
    camera_label,
    intrinsics_matrix,
    lookat_cam2world,
)
from portrait_engine.data.portrait.writer import write_dataset

# Joints of the rest pose (world units; the camera sees about +-0.21 around the origin).
NECK_JOINT = (0.0, -0.09, 0.0)
HEAD_JOINT = (0.0, -0.005, 0.0)
HEAD_CENTER = (0.0, 0.07, 0.0)


@dataclass
class PortraitIdentity:
    """Shape and colours of one synthetic person (RGB in [0, 1])."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    shirt: tuple[float, float, float]
    eyes: tuple[float, float, float]
    background: tuple[float, float, float]
    head_radii: tuple[float, float, float]
    shoulder_width: float
    hair_volume: float  # hair ellipsoid radii = head radii * hair_volume
    hair_line: float  # front hair line, in head heights above the head centre
    hair_length: float  # how far the hair reaches down the back, in head heights


def sample_identity(rng: np.random.Generator) -> PortraitIdentity:
    """A random identity: skin tones, hair colours (dark to blond), shirt and background."""
    tone = rng.uniform(0.25, 1.0)
    skin = (0.45 + 0.5 * tone, 0.3 + 0.45 * tone, 0.2 + 0.4 * tone)
    hair_tone = rng.uniform(0.0, 1.0) ** 2
    hair = tuple(
        float(np.clip(v, 0, 1))
        for v in (0.08 + 0.7 * hair_tone, 0.05 + 0.55 * hair_tone, 0.03 + 0.3 * hair_tone)
    )
    shirt = tuple(float(v) for v in rng.uniform(0.1, 0.9, 3))
    background = tuple(float(v) for v in rng.uniform(0.2, 0.95, 3))
    scale = rng.uniform(0.9, 1.1)
    head_radii = (
        0.07 * scale * rng.uniform(0.92, 1.08),
        0.088 * scale * rng.uniform(0.94, 1.06),
        0.08 * scale * rng.uniform(0.92, 1.08),
    )
    return PortraitIdentity(
        skin=tuple(float(v) for v in skin),
        hair=hair,
        shirt=shirt,
        eyes=(0.06, 0.05, 0.05),
        background=background,
        head_radii=head_radii,
        shoulder_width=float(rng.uniform(0.16, 0.21)),
        hair_volume=float(rng.uniform(1.04, 1.16)),
        hair_line=float(rng.uniform(0.15, 0.45)),
        hair_length=float(rng.uniform(0.1, 1.3)),
    )


def sample_pose(rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """A random neck + head axis-angle pose ``(6,)`` (radians), clipped at 2.5 std."""
    std = np.array([0.12, 0.2, 0.08, 0.15, 0.25, 0.1]) * scale
    return np.clip(rng.normal(0.0, 1.0, 6), -2.5, 2.5) * std


def sample_view(rng: np.random.Generator) -> tuple[float, float]:
    """``(yaw, pitch)``: yaw uniform in [-pi, pi), pitch normal(0, 0.15) clipped at +-0.45."""
    yaw = float(rng.uniform(-math.pi, math.pi))
    pitch = float(np.clip(rng.normal(0.0, 0.15), -0.45, 0.45))
    return yaw, pitch


def axis_angle_matrix(v: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: the 3 x 3 rotation of the axis-angle vector ``v``."""
    v = np.asarray(v, dtype=np.float64)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * (kx @ kx)


def _ellipsoid_hits(origin, direction, center, radii):
    """Entry and exit distances of rays (R, 3) with an axis-aligned ellipsoid; inf if missed."""
    r = torch.as_tensor(radii, dtype=origin.dtype)
    o = (origin - torch.as_tensor(center, dtype=origin.dtype)) / r
    d = direction / r
    a = (d * d).sum(-1)
    b = 2 * (o * d).sum(-1)
    c = (o * o).sum(-1) - 1
    disc = b * b - 4 * a * c
    hit = disc > 0
    root = disc.clamp_min(0).sqrt()
    t0 = torch.where(hit, (-b - root) / (2 * a), torch.full_like(a, math.inf))
    t1 = torch.where(hit, (-b + root) / (2 * a), torch.full_like(a, math.inf))
    return t0, t1


def render_portrait(
    identity: PortraitIdentity,
    pose: np.ndarray,
    cam2world: np.ndarray,
    intrinsics: np.ndarray,
    resolution: int,
    supersample: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast one portrait. Returns image ``(R, R, 3)`` float32 in [0, 1] and mask ``(R, R)``."""
    dtype = torch.float64
    n = resolution * supersample
    pix = (torch.arange(n, dtype=dtype) + 0.5) / n
    v, u = torch.meshgrid(pix, pix, indexing="ij")
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    cam_dirs = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], -1).reshape(-1, 3)
    c2w = torch.as_tensor(cam2world, dtype=dtype)
    dirs = cam_dirs @ c2w[:3, :3].T
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origin = c2w[:3, 3].expand_as(dirs)

    neck_r = torch.as_tensor(axis_angle_matrix(pose[:3]), dtype=dtype)
    head_r = torch.as_tensor(axis_angle_matrix(pose[3:]), dtype=dtype)
    neck_j = torch.as_tensor(NECK_JOINT, dtype=dtype)
    head_j = torch.as_tensor(HEAD_JOINT, dtype=dtype)
    # World -> rest frame of each group (rays map to rays, distances are kept).
    frames = {"body": (origin, dirs, torch.eye(3, dtype=dtype))}
    o_neck = (origin - neck_j) @ neck_r + neck_j
    d_neck = dirs @ neck_r
    frames["neck"] = (o_neck, d_neck, neck_r)
    o_head = (o_neck - head_j) @ head_r + head_j
    d_head = d_neck @ head_r
    frames["head"] = (o_head, d_head, neck_r @ head_r)

    hx, hy, hz = identity.head_radii
    hc = HEAD_CENTER
    w = identity.shoulder_width
    parts = [
        ("body", (0.0, -0.205, -0.01), (w, 0.095, 0.095), identity.shirt),
        ("neck", (0.0, -0.05, -0.005), (0.036, 0.07, 0.038), identity.skin),
        ("head", hc, (hx, hy, hz), identity.skin),
        ("head", (0.0, hc[1] - 0.005, hc[2] + hz * 0.98), (0.012, 0.018, 0.016), identity.skin),
        ("head", (-0.38 * hx, hc[1] + 0.18 * hy, hc[2] + 0.86 * hz), (0.011,) * 3, identity.eyes),
        ("head", (0.38 * hx, hc[1] + 0.18 * hy, hc[2] + 0.86 * hz), (0.011,) * 3, identity.eyes),
    ]
    best_t = torch.full((dirs.shape[0],), math.inf, dtype=dtype)
    color = torch.zeros(dirs.shape[0], 3, dtype=dtype)
    normal = torch.zeros(dirs.shape[0], 3, dtype=dtype)

    def consider(t, group, center, radii, albedo):
        o, d, rot = frames[group]
        closer = (t > 0) & (t < best_t)
        if not closer.any():
            return
        p = o + t.unsqueeze(-1).clamp_max(1e3) * d
        n_local = (p - torch.as_tensor(center, dtype=dtype)) / torch.as_tensor(
            radii, dtype=dtype
        ) ** 2
        n_world = n_local @ rot.T
        n_world = n_world / n_world.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        best_t.copy_(torch.where(closer, t, best_t))
        color[closer] = torch.as_tensor(albedo, dtype=dtype)
        normal[closer] = n_world[closer]

    for group, center, radii, albedo in parts:
        t0, _ = _ellipsoid_hits(frames[group][0], frames[group][1], center, radii)
        consider(t0, group, center, radii, albedo)

    # Hair: a larger ellipsoid around the head, kept above the hair line in front and down
    # to the hair length at the back; its inner surface shows where the outer one is cut.
    hair_radii = tuple(r * identity.hair_volume for r in identity.head_radii)
    hair_center = (hc[0], hc[1] + 0.1 * hy, hc[2] - 0.08 * hz)
    o, d, _ = frames["head"]
    t0, t1 = _ellipsoid_hits(o, d, hair_center, hair_radii)

    def on_hair(t):
        p = o + t.unsqueeze(-1).clamp_max(1e3) * d
        y = (p[:, 1] - hc[1]) / hy
        z = (p[:, 2] - hc[2]) / hz
        front = y > identity.hair_line + 0.4 * z
        back = (z < -0.15) & (y > -identity.hair_length)
        return front | back

    t_hair = torch.where(
        on_hair(t0), t0, torch.where(on_hair(t1), t1, torch.full_like(t0, math.inf))
    )
    consider(t_hair, "head", hair_center, hair_radii, identity.hair)

    hit = torch.isfinite(best_t)
    lights = [
        (np.array([0.4, 0.7, 0.6]), 0.6),
        (np.array([-0.5, 0.2, -0.8]), 0.25),
    ]
    shade = torch.full((dirs.shape[0],), 0.35, dtype=dtype)
    for direction, strength in lights:
        ldir = torch.as_tensor(direction / np.linalg.norm(direction), dtype=dtype)
        shade = shade + strength * (normal @ ldir).clamp_min(0)
    rgb = (color * shade.unsqueeze(-1)).clamp(0, 1)
    bg = torch.as_tensor(identity.background, dtype=dtype)
    gradient = (0.85 + 0.15 * (1 - v.reshape(-1))).unsqueeze(-1)
    rgb = torch.where(hit.unsqueeze(-1), rgb, bg * gradient)
    image = rgb.reshape(resolution, supersample, resolution, supersample, 3).mean(dim=(1, 3))
    mask = hit.to(dtype).reshape(resolution, supersample, resolution, supersample).mean(dim=(1, 3))
    return image.float().numpy(), mask.float().numpy()


def synthetic_entries(
    num_images: int,
    resolution: int = 64,
    seed: int = 0,
    pose_scale: float = 1.0,
    focal: float = DEFAULT_FOCAL,
    radius: float = DEFAULT_RADIUS,
) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(name, image (R, R, 3) uint8, label (31,), mask (R, R) uint8)`` per portrait."""
    if num_images < 1 or resolution < 4:
        raise ValueError(
            f"num_images and resolution must be >= 1 and >= 4, got {num_images}, {resolution}"
        )
    rng = np.random.default_rng(seed)
    intrinsics = intrinsics_matrix(focal)
    for i in range(num_images):
        identity = sample_identity(rng)
        pose = sample_pose(rng, pose_scale)
        yaw, pitch = sample_view(rng)
        cam2world = lookat_cam2world(yaw, pitch, radius=radius)
        image, mask = render_portrait(identity, pose, cam2world, intrinsics, resolution)
        label = np.concatenate([camera_label(cam2world, intrinsics), pose])
        name = f"{i // 1000:05d}/img{i:08d}.png"
        yield (
            name,
            np.round(image * 255).astype(np.uint8),
            label,
            np.round(mask * 255).astype(np.uint8),
        )


def make_synthetic_dataset(
    path: str | Path,
    num_images: int = 256,
    resolution: int = 64,
    seed: int = 0,
    mask_path: str | Path | None = None,
    pose_scale: float = 1.0,
) -> Path:
    """Render ``num_images`` synthetic portraits into ``path`` (folder or ``.zip``) in the
    360°PHQ format, masks into ``mask_path`` when given. Returns ``path``."""
    entries = synthetic_entries(num_images, resolution, seed, pose_scale)
    if mask_path is None:
        entries = ((n, img, label, None) for n, img, label, _ in entries)
    write_dataset(path, entries, mask_path=mask_path)
    return Path(path)
