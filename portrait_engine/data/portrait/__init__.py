"""The 360°PHQ / EG3D portrait data format: labels, the reader and the synthetic generator."""

from portrait_engine.data.portrait.labels import (
    CAMERA_DIM,
    LABEL_DIM,
    POSE_DIM,
    camera_label,
    intrinsics_matrix,
    is_left_camera,
    lookat_cam2world,
    mirror_camera,
    mirror_pose,
)

__all__ = [
    "CAMERA_DIM",
    "LABEL_DIM",
    "POSE_DIM",
    "camera_label",
    "intrinsics_matrix",
    "is_left_camera",
    "lookat_cam2world",
    "mirror_camera",
    "mirror_pose",
]
