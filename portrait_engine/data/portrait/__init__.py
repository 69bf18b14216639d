"""The 360°PHQ / EG3D portrait data format: labels, the reader and the synthetic generator."""

from portrait_engine.data.portrait.dataset import DatasetError, PortraitDataset
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
from portrait_engine.data.portrait.synthetic import (
    make_synthetic_dataset,
    render_portrait,
    synthetic_entries,
)
from portrait_engine.data.portrait.writer import write_dataset

__all__ = [
    "CAMERA_DIM",
    "DatasetError",
    "LABEL_DIM",
    "POSE_DIM",
    "PortraitDataset",
    "camera_label",
    "intrinsics_matrix",
    "is_left_camera",
    "lookat_cam2world",
    "make_synthetic_dataset",
    "mirror_camera",
    "mirror_pose",
    "render_portrait",
    "synthetic_entries",
    "write_dataset",
]
