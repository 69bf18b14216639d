"""A procedural stand-in for SMPL: the same structure, a head-neck-shoulders mesh.

SMPL's model files are licensed downloads, so tests, demos and synthetic data use this model,
built deterministically from a few numbers: SMPL's 24-joint kinematic tree with joints at
adult-sized positions (metres, y up, the face towards +z, the subject's left at +x), a closed
surface of revolution with elliptical rings (shoulders, neck and head) from the chest to the
top of the head, smooth skinning weights (a softmax of the distances to the upper-body
joints), a joint regressor (affine vertex combinations that reproduce the joint positions),
ten smooth shape blend shapes and small, smooth pose blend shapes.
"""

from __future__ import annotations

import math

import torch

from portrait_engine.body.model import BodyModel
from portrait_engine.ops.reference.skinning import SMPL_PARENTS

# Rest positions of SMPL's 24 joints (pelvis at the origin).
SMPL_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hand", "right_hand",
)  # fmt: skip
_JOINTS = (
    (0.0, 0.0, 0.0), (0.06, -0.09, 0.0), (-0.06, -0.09, 0.0), (0.0, 0.11, -0.02),
    (0.10, -0.47, 0.0), (-0.10, -0.47, 0.0), (0.0, 0.24, 0.0), (0.09, -0.87, -0.04),
    (-0.09, -0.87, -0.04), (0.0, 0.30, 0.0), (0.11, -0.93, 0.08), (-0.11, -0.93, 0.08),
    (0.0, 0.50, -0.01), (0.07, 0.41, 0.0), (-0.07, 0.41, 0.0), (0.0, 0.58, 0.02),
    (0.17, 0.44, -0.01), (-0.17, 0.44, -0.01), (0.42, 0.44, -0.03), (-0.42, 0.44, -0.03),
    (0.68, 0.44, -0.03), (-0.68, 0.44, -0.03), (0.76, 0.44, -0.03), (-0.76, 0.44, -0.03),
)  # fmt: skip
# Joints the mesh covers: they carry its skinning weights and are regressed from nearby
# vertices; the other joints are regressed from four far-apart anchor vertices.
_UPPER_BODY = (9, 12, 13, 14, 15, 16, 17)
# Ring profile (height, half-width x, half-depth z) from the chest to the crown.
_PROFILE = (
    (0.30, 0.17, 0.10), (0.40, 0.19, 0.11), (0.44, 0.19, 0.10), (0.47, 0.14, 0.08),
    (0.49, 0.07, 0.06), (0.52, 0.055, 0.055), (0.56, 0.055, 0.06), (0.58, 0.07, 0.08),
    (0.62, 0.085, 0.10), (0.66, 0.09, 0.105), (0.70, 0.085, 0.10), (0.74, 0.07, 0.08),
    (0.77, 0.04, 0.045),
)  # fmt: skip
_TOP = 0.785


def _interp(x: torch.Tensor, xs: list[float], ys: list[float]) -> torch.Tensor:
    xs_t = torch.tensor(xs, dtype=torch.float64)
    ys_t = torch.tensor(ys, dtype=torch.float64)
    i = torch.searchsorted(xs_t, x.clamp(xs[0], xs[-1]), right=True).clamp(1, len(xs) - 1)
    t = (x - xs_t[i - 1]) / (xs_t[i] - xs_t[i - 1])
    return ys_t[i - 1] + t.clamp(0, 1) * (ys_t[i] - ys_t[i - 1])


def _surface(rings: int, around: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices ``(rings·around + 2, 3)`` and outward triangles of the closed surface."""
    heights = [p[0] for p in _PROFILE]
    y = torch.linspace(heights[0], heights[-1], rings, dtype=torch.float64)
    rx = _interp(y, heights, [p[1] for p in _PROFILE])
    rz = _interp(y, heights, [p[2] for p in _PROFILE])
    angle = torch.arange(around, dtype=torch.float64) * (2 * math.pi / around)
    x = rx[:, None] * torch.sin(angle)[None, :]
    z = rz[:, None] * torch.cos(angle)[None, :]
    ring_vertices = torch.stack([x, y[:, None].expand(-1, around), z], dim=-1).reshape(-1, 3)
    bottom = torch.tensor([[0.0, heights[0], 0.0]], dtype=torch.float64)
    top = torch.tensor([[0.0, _TOP, 0.0]], dtype=torch.float64)
    vertices = torch.cat([ring_vertices, bottom, top])
    bottom_index, top_index = rings * around, rings * around + 1

    r = torch.arange(rings - 1)[:, None]
    a = torch.arange(around)[None, :]
    a1 = (a + 1) % around
    v00, v01 = r * around + a, r * around + a1
    v10, v11 = (r + 1) * around + a, (r + 1) * around + a1
    quads_a = torch.stack([v00, v01, v11], dim=-1).reshape(-1, 3)
    quads_b = torch.stack([v00, v11, v10], dim=-1).reshape(-1, 3)
    ring0 = torch.arange(around)
    last = (rings - 1) * around + torch.arange(around)
    bottom_fan = torch.stack(
        [torch.full_like(ring0, bottom_index), (ring0 + 1) % around, ring0], dim=-1
    )
    top_fan = torch.stack(
        [torch.full_like(last, top_index), last, (rings - 1) * around + (ring0 + 1) % around],
        dim=-1,
    )
    faces = torch.cat([quads_a, quads_b, bottom_fan, top_fan]).to(torch.int64)
    return vertices, faces


def _affine_weights(anchors: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Least-norm weights ``w`` with ``Σ w = 1`` and ``Σ w_k anchors_k = target``."""
    system = torch.cat([anchors.T, torch.ones(1, anchors.shape[0], dtype=anchors.dtype)])
    rhs = torch.cat([target, torch.ones(1, dtype=anchors.dtype)])
    return torch.linalg.pinv(system) @ rhs


def _joint_regressor(vertices: torch.Tensor, joints: torch.Tensor, nearest: int) -> torch.Tensor:
    regressor = torch.zeros(joints.shape[0], vertices.shape[0], dtype=torch.float64)
    # four far-apart anchors: both shoulder tips, the front of the chest and the crown
    anchors = torch.stack(
        [
            vertices[:, 0].argmax(),
            vertices[:, 0].argmin(),
            (vertices[:, 2] - vertices[:, 1]).argmax(),
            vertices[:, 1].argmax(),
        ]
    )
    for j in range(joints.shape[0]):
        if j in _UPPER_BODY:
            distance = (vertices - joints[j]).norm(dim=1)
            index = distance.topk(min(nearest, len(distance)), largest=False).indices
        else:
            index = anchors
        regressor[j, index] = _affine_weights(vertices[index], joints[j])
    return regressor


def _skinning_weights(vertices: torch.Tensor, joints: torch.Tensor, sigma: float) -> torch.Tensor:
    upper = torch.tensor(_UPPER_BODY)
    distance2 = ((vertices[:, None, :] - joints[None, upper, :]) ** 2).sum(-1)
    weights = torch.zeros(vertices.shape[0], joints.shape[0], dtype=torch.float64)
    weights[:, upper] = torch.softmax(-distance2 / (2 * sigma**2), dim=1)
    return weights


def _shape_directions(vertices: torch.Tensor, num_betas: int, generator) -> torch.Tensor:
    """Smooth displacement fields ``(V, 3, NB)`` of a few centimetres per unit beta."""
    centre = vertices.mean(0)
    rel = vertices - centre
    head = torch.sigmoid((vertices[:, 1] - 0.55) / 0.02)[:, None]
    shoulders = torch.sigmoid((0.47 - vertices[:, 1]) / 0.02)[:, None]
    neck_up = torch.sigmoid((vertices[:, 1] - 0.5) / 0.02)
    fields = [
        0.05 * rel,  # overall size
        0.15 * rel * torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) * shoulders,
        0.08 * (vertices - torch.tensor([0.0, 0.66, 0.0], dtype=torch.float64)) * head,
        0.02 * torch.stack([0 * neck_up, neck_up, 0 * neck_up], dim=1),  # neck length
        0.1 * rel * torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),  # depth
    ]
    while len(fields) < num_betas:
        freq = torch.randn(3, 3, generator=generator, dtype=torch.float64) * 4
        phase = torch.rand(3, generator=generator, dtype=torch.float64) * 2 * math.pi
        fields.append(0.01 * torch.sin(vertices @ freq + phase))
    return torch.stack(fields[:num_betas], dim=-1)


def _pose_directions(vertices: torch.Tensor, joints: torch.Tensor, generator) -> torch.Tensor:
    """Pose blend shapes ``((J−1)·9, V·3)``: smooth, millimetre-scale, near each joint."""
    num_joints = joints.shape[0]
    rows = []
    for j in range(1, num_joints):
        falloff = torch.exp(-((vertices - joints[j]) ** 2).sum(-1) / (2 * 0.08**2))  # (V,)
        coefficients = torch.randn(9, 3, generator=generator, dtype=torch.float64) * 0.004
        rows.append(coefficients[:, None, :] * falloff[None, :, None])  # (9, V, 3)
    return torch.cat(rows).reshape((num_joints - 1) * 9, -1)


def procedural_body_model(
    rings: int = 40,
    around: int = 48,
    num_betas: int = 10,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> BodyModel:
    """The stand-in model: ``rings · around + 2`` vertices, ``2 · rings · around`` faces.

    Deterministic for given arguments. The defaults give 1922 vertices and 3840 faces;
    ``rings=100, around=100`` gives about SMPL-X's head-and-neck face count (20k).
    """
    if rings < 2 or around < 3:
        raise ValueError(f"rings must be >= 2 and around >= 3, got {rings} and {around}")
    if num_betas < 1:
        raise ValueError(f"num_betas must be >= 1, got {num_betas}")
    generator = torch.Generator().manual_seed(seed)
    vertices, faces = _surface(rings, around)
    joints = torch.tensor(_JOINTS, dtype=torch.float64)
    model = BodyModel(
        v_template=vertices,
        shapedirs=_shape_directions(vertices, num_betas, generator),
        posedirs=_pose_directions(vertices, joints, generator),
        # two rings' worth of nearest vertices: never all in one plane
        J_regressor=_joint_regressor(vertices, joints, nearest=2 * around + 4),
        parents=torch.tensor(SMPL_PARENTS, dtype=torch.int64),
        lbs_weights=_skinning_weights(vertices, joints, sigma=0.07),
        faces=faces,
        name=f"procedural(rings={rings}, around={around}, seed={seed})",
    )
    return model.to(device=device, dtype=dtype)
