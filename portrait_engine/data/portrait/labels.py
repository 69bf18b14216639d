"""The 31-number label of the 360°PHQ / EG3D format, and its mirror image.

A label is ``[cam2world (16, row-major 4 x 4, OpenCV: x right, y down, z forward),
intrinsics (9, row-major 3 x 3, normalised by the image size: fx, fy in image widths,
cx = cy = 0.5), pose (6: neck then head axis-angle, radians)]``.

Horizontal flip (x -> -x in the world and in the image), as the published loaders do:

- camera (PanoHead / 3DPortraitGAN ``flip_yaw``): ``M' = S M S`` with ``S = diag(-1, 1, 1, 1)``,
  i.e. entries (0,1), (0,2), (0,3), (1,0), (2,0) of cam2world negated = label indices
  ``[1, 2, 3, 4, 8]``; intrinsics unchanged;
- pose (3DPortraitGAN ``get_coarse_pose``): an axis-angle vector is a pseudo-vector, so under
  the reflection its x component stays and its y, z components change sign: indices
  ``[1, 2, 4, 5]``.

Cameras on a sphere follow EG3D's ``LookAtPoseSampler`` / ``create_cam2world_matrix``: the
camera at ``radius * (sin(phi) cos(pi - h), cos(phi), sin(phi) sin(pi - h))`` with
``phi = arccos(1 - 2 v / pi)``, looking at the target, world up +y (the camera's y points
down). ``h = pi/2 + yaw``, ``v = pi/2 + pitch`` [ours: names], so yaw = pitch = 0 is the
frontal camera on +z, yaw > 0 moves the camera towards +x and pitch > 0 moves it down
(towards -y).
"""

from __future__ import annotations

import math

import numpy as np
import torch

CAMERA_DIM = 25
POSE_DIM = 6
LABEL_DIM = CAMERA_DIM + POSE_DIM
CAMERA_FLIP_INDICES = (1, 2, 3, 4, 8)
POSE_FLIP_INDICES = (1, 2, 4, 5)
# 3DPortraitGAN's average camera: focal 6.5104 image widths, radius 2.7.
DEFAULT_FOCAL = 6.5104
DEFAULT_RADIUS = 2.7
# 3DPortraitGAN's camera_lookat_point (its generation and video scripts; its average camera
# looks there too): 6.5 cm above the neck joint, which sits at the origin.
LOOKAT_POINT = (0.0, 0.0649, 0.0)


def _flipped(values, indices, last_dim: int, name: str):
    if values.shape[-1] != last_dim:
        raise ValueError(f"{name} must have last dimension {last_dim}, got {tuple(values.shape)}")
    out = values.clone() if isinstance(values, torch.Tensor) else np.array(values, copy=True)
    out[..., list(indices)] *= -1
    return out


def mirror_camera(camera):
    """Mirror a ``(..., 25)`` camera label (numpy or torch) horizontally; returns a copy."""
    return _flipped(camera, CAMERA_FLIP_INDICES, CAMERA_DIM, "camera")


def mirror_pose(pose):
    """Mirror a ``(..., 6)`` neck + head axis-angle pose horizontally; returns a copy."""
    return _flipped(pose, POSE_FLIP_INDICES, POSE_DIM, "pose")


def is_left_camera(camera: torch.Tensor) -> torch.Tensor:
    """3DPortraitGAN's ``explicitly_symmetry`` test: ``atan2(t_z, t_x)`` of the camera
    position in ``[-pi/2, pi/2]`` (the camera on the +x side). ``(N, 25)`` -> ``(N, 1)`` bool.
    """
    theta = torch.atan2(camera[:, 11:12], camera[:, 3:4])
    return (theta >= -math.pi / 2) & (theta <= math.pi / 2)


def intrinsics_matrix(focal: float = DEFAULT_FOCAL) -> np.ndarray:
    """Normalised 3 x 3 intrinsics with the principal point at the image centre."""
    return np.array([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], dtype=np.float64)


def lookat_cam2world(
    yaw: float,
    pitch: float,
    radius: float = DEFAULT_RADIUS,
    target: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """EG3D's look-at camera (OpenCV cam2world, 4 x 4 float64) at ``yaw``, ``pitch`` (radians)."""
    h = math.pi / 2 + yaw
    v = min(max(math.pi / 2 + pitch, 1e-5), math.pi - 1e-5)
    phi = math.acos(1 - 2 * v / math.pi)
    origin = np.array(
        [
            radius * math.sin(phi) * math.cos(math.pi - h),
            radius * math.cos(phi),
            radius * math.sin(phi) * math.sin(math.pi - h),
        ]
    ) + np.asarray(target, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - origin
    forward /= np.linalg.norm(forward)
    up = np.array([0.0, 1.0, 0.0])
    right = -np.cross(up, forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    up /= np.linalg.norm(up)
    cam2world = np.eye(4)
    cam2world[:3, 0], cam2world[:3, 1], cam2world[:3, 2] = right, up, forward
    cam2world[:3, 3] = origin
    return cam2world


def camera_label(cam2world: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """The 25-number camera label from a 4 x 4 cam2world and a 3 x 3 normalised intrinsics."""
    cam2world = np.asarray(cam2world, dtype=np.float64)
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    if cam2world.shape != (4, 4) or intrinsics.shape != (3, 3):
        raise ValueError(
            f"cam2world must be 4 x 4 and intrinsics 3 x 3, got {cam2world.shape}, "
            f"{intrinsics.shape}"
        )
    return np.concatenate([cam2world.reshape(16), intrinsics.reshape(9)])
