"""Synthetic 360° portraits: the posed body mesh, rendered with true cameras and poses.

Each portrait is the body model of the pose deformation (:func:`portrait_engine.body.
procedural_body_model`, SMPL's joint tree with a head-neck-shoulders mesh) with an identity's
shape (the stand-in's shape blend shapes: size, shoulder width, head size, neck length,
depth), posed by the image's 6 pose numbers with linear blend skinning
(:func:`portrait_engine.ops.lbs` through :meth:`BodyModel.forward`): ``pose[:3]`` is the
axis-angle of SMPL's neck (joint 12), ``pose[3:]`` the head's (joint 15, a child of the neck),
as 3DPortraitGAN's ``AlignedSMPL.generate_posed_smpl``; the mesh is translated so the rest
pose's neck joint is at the origin, as the generator's :class:`PoseDeformer` places it. So the
labels are the ground truth in the generator's own frame.

Identity [ours]: hair volume and the nose and ears are displacements of the posed mesh along
its normals (a few centimetres at most, inside the deformation's ``thickness``); skin, hair
(front hair line, length down the back), eyes, brows, lips and clothing (collar shape,
stripes) are a procedural texture evaluated at the template position of each pixel's surface
point, so features stay sharp at any mesh size; shape and colours vary per identity. The
figure is exactly left-right symmetric: the stand-in's pose blend shapes (random, hence
asymmetric, millimetre-sized) are left out and only its symmetric shape directions are used,
so the mirror of an image is the same identity rendered with :func:`labels.mirror_pose` and
:func:`labels.mirror_camera`, as the x-flip augmentation assumes.

Rendering: a z-buffer rasteriser of the mesh (:mod:`portrait_engine.data.portrait.raster`),
2 x 2 supersampling, Lambert shading with an ambient term, a light above the camera (in the
camera frame) and one from above (world +y), both symmetric under the mirror; the
background is the identity's colour with a vertical gradient and a soft halo behind the head.
The mask is the figure's coverage of each pixel (the fraction of its supersamples).

Cameras follow the published conventions (:mod:`portrait_engine.data.portrait.labels`):
OpenCV cam2world on a sphere of radius 2.7 looking at 3DPortraitGAN's look-at point
``(0, 0.0649, 0)`` (its ``camera_lookat_point``), normalised intrinsics with focal 6.5104,
yaw uniform over the full 360°, pitch normal (std 0.15 rad, clipped at ±0.45). The written
dataset is in exactly the 360°PHQ format (:func:`make_synthetic_dataset`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from portrait_engine.body import NECK_JOINT, BodyModel, procedural_body_model
from portrait_engine.data.portrait.labels import (
    DEFAULT_FOCAL,
    DEFAULT_RADIUS,
    LOOKAT_POINT,
    camera_label,
    intrinsics_matrix,
    lookat_cam2world,
)
from portrait_engine.data.portrait.raster import rasterize, vertex_normals
from portrait_engine.data.portrait.writer import write_dataset

# Mesh of the synthetic figure: rings x around of the stand-in (fine enough for a nose).
BODY_RINGS = 80
BODY_AROUND = 96
# Shape directions of the stand-in that are left-right symmetric (size, shoulders, head,
# neck length, depth); the others are random fields.
SYMMETRIC_BETAS = 5


@dataclass
class PortraitIdentity:
    """Shape and colours of one synthetic person (RGB in [0, 1]; lengths in metres)."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    shirt: tuple[float, float, float]
    shirt_stripes: tuple[float, float, float]
    eyes: tuple[float, float, float]
    background: tuple[float, float, float]
    betas: tuple[float, ...]  # the stand-in's first shape coefficients
    hair_volume: float  # thickness of the hair on top of the head
    hair_line: float  # front hair line, in head radii above the head centre
    hair_length: float  # how far the hair reaches down the back, in head radii below it
    stripe_frequency: float  # stripes per metre on the shirt (0: plain)
    collar_depth: float  # depth of the V of the collar below the neck joint
    nose: float  # nose height off the face


def sample_identity(rng: np.random.Generator) -> PortraitIdentity:
    """A random identity: shape, skin tone, hair (dark to blond, short to long), clothes."""
    tone = rng.uniform(0.25, 1.0)
    skin = (0.45 + 0.5 * tone, 0.3 + 0.45 * tone, 0.2 + 0.4 * tone)
    hair_tone = rng.uniform(0.0, 1.0) ** 2
    hair = tuple(
        float(np.clip(v, 0, 1))
        for v in (0.08 + 0.7 * hair_tone, 0.05 + 0.55 * hair_tone, 0.03 + 0.3 * hair_tone)
    )
    shirt = tuple(float(v) for v in rng.uniform(0.1, 0.9, 3))
    stripes = tuple(float(v) for v in rng.uniform(0.1, 0.9, 3))
    background = tuple(float(v) for v in rng.uniform(0.2, 0.95, 3))
    betas = (
        # The stand-in's head is taller above its neck joint than SMPL's: smaller sizes and
        # shorter necks keep the crown inside the published framing (look-at point 0.0649).
        rng.uniform(-3.0, -1.0),  # overall size
        rng.uniform(-1.0, 1.0),  # shoulder width
        rng.uniform(-1.0, 0.5),  # head size
        rng.uniform(-2.0, 0.0),  # neck length
        rng.uniform(-1.0, 1.0),  # depth
    )
    return PortraitIdentity(
        skin=tuple(float(v) for v in skin),
        hair=hair,
        shirt=shirt,
        shirt_stripes=stripes,
        eyes=tuple(float(v) for v in rng.uniform(0.05, 0.35, 3)),
        background=background,
        betas=tuple(float(b) for b in betas),
        hair_volume=float(rng.uniform(0.004, 0.02)),
        hair_line=float(rng.uniform(0.2, 0.6)),
        hair_length=float(rng.uniform(-0.2, 1.6)),
        stripe_frequency=float(rng.choice([0.0, 0.0, 40.0, 70.0])),
        collar_depth=float(rng.uniform(0.0, 0.08)),
        nose=float(rng.uniform(0.012, 0.022)),
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


def _mirror_symmetric_faces(faces: torch.Tensor, rings: int, around: int) -> torch.Tensor:
    """The stand-in's faces with each quad between two rings split along the diagonal that
    makes the triangulation mirror-symmetric (x -> -x maps quad ``a`` to ``around - 1 - a``
    and swaps the diagonals, so the two halves use opposite ones); the fans stay."""
    quads = (rings - 1) * around
    r = torch.arange(rings - 1)[:, None]
    a = torch.arange(around)[None, :]
    a1 = (a + 1) % around
    v00, v01 = r * around + a, r * around + a1
    v10, v11 = (r + 1) * around + a, (r + 1) * around + a1
    left = (a < around // 2).expand(rings - 1, -1)
    # both splits keep the loop v00 -> v01 -> v11 -> v10, so the winding stays outward
    first = torch.where(
        left[..., None], torch.stack([v00, v01, v11], -1), torch.stack([v00, v01, v10], -1)
    )
    second = torch.where(
        left[..., None], torch.stack([v00, v11, v10], -1), torch.stack([v01, v11, v10], -1)
    )
    return torch.cat([first.reshape(-1, 3), second.reshape(-1, 3), faces[2 * quads :]])


@functools.lru_cache(maxsize=2)
def synthetic_body(rings: int = BODY_RINGS, around: int = BODY_AROUND) -> BodyModel:
    """The figure's body model: the procedural stand-in in float64, made exactly left-right
    symmetric: no pose blend shapes (random in the stand-in) and a mirror-symmetric
    triangulation (the stand-in splits every quad along the same diagonal)."""
    if around % 2:
        raise ValueError(f"around must be even for a mirror-symmetric mesh, got {around}")
    body = procedural_body_model(rings, around, dtype=torch.float64)
    return replace(
        body,
        posedirs=torch.zeros_like(body.posedirs),
        faces=_mirror_symmetric_faces(body.faces, rings, around),
        name=body.name + "-synthetic",
    )


def template_frame(body: BodyModel) -> torch.Tensor:
    """Template vertices ``(V, 3)`` relative to the template's neck joint: the texture's
    coordinates (y up, the face towards +z)."""
    neck = body.J_regressor[NECK_JOINT] @ body.v_template
    return body.v_template - neck


# Head of the stand-in in the neck frame: centre and radii of its ellipsoid-like shape.
_HEAD_CENTRE = (0.0, 0.165, 0.0)
_HEAD_RADII = (0.09, 0.115, 0.105)


def _smoothstep(edge0: float, edge1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - edge0) / (edge1 - edge0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _head_coordinates(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Template points ``(..., 3)`` in head radii around the head centre: ``x, y, z``."""
    c = torch.as_tensor(_HEAD_CENTRE, dtype=p.dtype)
    r = torch.as_tensor(_HEAD_RADII, dtype=p.dtype)
    q = (p - c) / r
    return q[..., 0], q[..., 1], q[..., 2]


def _hair_amount(p: torch.Tensor, identity: PortraitIdentity) -> torch.Tensor:
    """How much a template point is hair, in [0, 1] (soft at the borders)."""
    x, y, z = _head_coordinates(p)
    # Front: above a hair line that rises towards the face; back and sides: down to the
    # hair length; nothing below y = -1.45 head radii (the base of the neck).
    front = _smoothstep(0.0, 0.12, y - identity.hair_line - 0.35 * z.clamp_min(0))
    back = _smoothstep(0.0, 0.15, -z + 0.1) * _smoothstep(0.0, 0.12, y + identity.hair_length)
    side_burns = _smoothstep(0.0, 0.15, x.abs() - 0.75) * _smoothstep(0.0, 0.1, y - 0.0)
    on_head = _smoothstep(0.0, 0.05, y + 1.45)
    return torch.maximum(torch.maximum(front, back), side_burns * (z < 0.55)) * on_head


def _displacement(p: torch.Tensor, identity: PortraitIdentity) -> torch.Tensor:
    """Outward offset ``(V,)`` of the surface at template points ``(V, 3)``: hair, nose,
    ears, the collar of the clothes."""
    x, y, z = _head_coordinates(p)
    hair = identity.hair_volume * _hair_amount(p, identity)
    # a nose on the face: higher towards its tip at y = -0.25 head radii
    nose_profile = (
        torch.exp(-((x / 0.11) ** 2)) * _smoothstep(0.2, -0.25, y) * _smoothstep(-0.5, -0.3, y)
    )
    nose = identity.nose * nose_profile * (z > 0.6)
    ears = 0.012 * torch.exp(-(((x.abs() - 1.0) / 0.12) ** 2 + (y / 0.25) ** 2 + (z / 0.2) ** 2))
    clothes = 0.006 * _smoothstep(0.0, 0.01, _collar_height(p, identity) - p[..., 1])
    return hair + nose + ears + clothes


def _collar_height(p: torch.Tensor, identity: PortraitIdentity) -> torch.Tensor:
    """Height (neck frame) of the clothes' edge above the template point's (x, z): a round
    neck at the back and sides, a V of ``collar_depth`` at the front."""
    v = identity.collar_depth * (1 - (p[..., 0].abs() / 0.06)).clamp_min(0) * (p[..., 2] > 0)
    return -0.025 - v


def _albedo(p: torch.Tensor, identity: PortraitIdentity) -> torch.Tensor:
    """Colour ``(..., 3)`` of the surface at template points ``(..., 3)``."""
    dtype = p.dtype

    def colour(rgb):
        return torch.as_tensor(rgb, dtype=dtype).expand(*p.shape[:-1], 3)

    x, y, z = _head_coordinates(p)
    skin = colour(identity.skin)
    # Lips, brows and eyes on the front of the head (z > 0.6 head radii).
    front = (z > 0.6).unsqueeze(-1)
    lips = ((x / 0.22) ** 2 + ((y + 0.53) / 0.06) ** 2 < 1).unsqueeze(-1) & front
    skin = torch.where(lips, skin * torch.as_tensor((0.85, 0.5, 0.5), dtype=dtype), skin)
    eye_x = x.abs() - 0.37
    sclera = ((eye_x / 0.17) ** 2 + ((y - 0.08) / 0.075) ** 2 < 1).unsqueeze(-1) & front
    iris = ((eye_x / 0.075) ** 2 + ((y - 0.08) / 0.075) ** 2 < 1).unsqueeze(-1) & front
    brows = ((eye_x / 0.2) ** 2 + ((y - 0.24) / 0.035) ** 2 < 1).unsqueeze(-1) & front
    hair_colour = colour(identity.hair)
    skin = torch.where(sclera, colour((0.92, 0.9, 0.88)), skin)
    skin = torch.where(iris, colour(identity.eyes), skin)
    skin = torch.where(brows, hair_colour * 0.8, skin)
    # Hair, with faint strands along y.
    strands = 0.9 + 0.1 * torch.cos(140 * p[..., 0]) * torch.cos(60 * p[..., 2])
    hair = hair_colour * strands.unsqueeze(-1)
    amount = (_hair_amount(p, identity) > 0.5).unsqueeze(-1)
    out = torch.where(amount, hair, skin)
    # Clothes below the collar, with horizontal stripes for some identities.
    shirt = colour(identity.shirt)
    if identity.stripe_frequency > 0:
        stripe = torch.sin(identity.stripe_frequency * 2 * math.pi * p[..., 1]) > 0.3
        shirt = torch.where(stripe.unsqueeze(-1), colour(identity.shirt_stripes), shirt)
    dressed = (p[..., 1] < _collar_height(p, identity)).unsqueeze(-1)
    return torch.where(dressed, shirt, out)


def posed_figure(
    identity: PortraitIdentity, pose: np.ndarray, *, body: BodyModel | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity's mesh posed by ``pose`` ``(6,)``: vertices ``(V, 3)`` float64 in the
    world (rest neck joint at the origin), displaced by hair, nose, ears and clothes, and
    the template coordinates ``(V, 3)`` of the texture."""
    body = synthetic_body() if body is None else body
    betas = torch.zeros(1, body.num_betas, dtype=torch.float64)
    betas[0, :SYMMETRIC_BETAS] = torch.as_tensor(identity.betas[:SYMMETRIC_BETAS])
    pose_t = torch.as_tensor(np.asarray(pose, dtype=np.float64)).reshape(1, 6)
    v_shaped = body.v_template + (body.shapedirs @ betas[0])
    neck = (body.J_regressor[NECK_JOINT] @ v_shaped).view(1, 1, 3)
    vertices = body.posed(pose_t, betas, neck=neck)[0]
    template = template_frame(body)
    offset = _displacement(template, identity)
    vertices = vertices + offset.unsqueeze(-1) * vertex_normals(vertices, body.faces)
    return vertices, template


def _background(identity: PortraitIdentity, n: int) -> torch.Tensor:
    """``(n, n, 3)``: the identity's colour, darker towards the bottom, a halo behind the
    head (symmetric left-right)."""
    pix = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    v, u = torch.meshgrid(pix, pix, indexing="ij")
    bg = torch.as_tensor(identity.background, dtype=torch.float64)
    gradient = 0.85 + 0.15 * (1 - v)
    halo = 0.12 * torch.exp(-((u - 0.5) ** 2 + (v - 0.35) ** 2) / 0.08)
    return (bg * gradient.unsqueeze(-1) + halo.unsqueeze(-1)).clamp(0, 1)


def render_fragments(
    identity: PortraitIdentity,
    pose: np.ndarray,
    cam2world: np.ndarray,
    intrinsics: np.ndarray,
    resolution: int,
):
    """Rasterise the posed figure: ``(fragments, world vertices (V, 3), template (V, 3),
    faces (F, 3))`` (see :func:`portrait_engine.data.portrait.raster.rasterize`)."""
    body = synthetic_body()
    vertices, template = posed_figure(identity, pose, body=body)
    c2w = torch.as_tensor(np.asarray(cam2world, dtype=np.float64))
    camera_vertices = (vertices - c2w[:3, 3]) @ c2w[:3, :3]
    k = torch.as_tensor(np.asarray(intrinsics, dtype=np.float64))
    fragments = rasterize(camera_vertices, body.faces, k, resolution)
    return fragments, vertices, template, body.faces


def render_portrait(
    identity: PortraitIdentity,
    pose: np.ndarray,
    cam2world: np.ndarray,
    intrinsics: np.ndarray,
    resolution: int,
    supersample: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one portrait. Returns image ``(R, R, 3)`` float32 in [0, 1] and mask ``(R, R)``
    (coverage in [0, 1])."""
    n = resolution * supersample
    fragments, vertices, template, faces = render_fragments(
        identity, pose, cam2world, intrinsics, n
    )
    covered = fragments.covered
    c2w = torch.as_tensor(np.asarray(cam2world, dtype=np.float64))
    normal = fragments.interpolate(vertex_normals(vertices, faces), faces)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    albedo = _albedo(fragments.interpolate(template, faces), identity)
    # A key light above the camera (camera frame, y down) and one from above (world +y).
    key = c2w[:3, :3] @ torch.tensor([0.0, -0.6, -0.8], dtype=torch.float64)
    top = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    shade = 0.35 + 0.55 * (normal @ key).clamp_min(0) + 0.25 * (normal @ top).clamp_min(0)
    rgb = (albedo * shade.unsqueeze(-1)).clamp(0, 1)
    rgb = torch.where(covered.unsqueeze(-1), rgb, _background(identity, n))
    image = rgb.reshape(resolution, supersample, resolution, supersample, 3).mean(dim=(1, 3))
    mask = covered.to(torch.float64)
    mask = mask.reshape(resolution, supersample, resolution, supersample).mean(dim=(1, 3))
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
        cam2world = lookat_cam2world(yaw, pitch, radius=radius, target=LOOKAT_POINT)
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
