"""Plain-PyTorch references of every op: the oracles the kernels are tested against.

Readable, differentiable by autograd, and written to match the published models' semantics;
one module per op family, everything re-exported here.
"""

from portrait_engine.ops.reference.activation import (
    SOFTPLUS_THRESHOLD,
    decoder_outputs_reference,
    softplus_reference,
)
from portrait_engine.ops.reference.importance import (
    importance_uniforms,
    merge_samples_reference,
    sample_importance_reference,
)
from portrait_engine.ops.reference.pooling import attention_pool_reference
from portrait_engine.ops.reference.rays import (
    CAMERA_LABEL_SIZE,
    TRANSMITTANCE_EPS,
    ray_march_reference,
    ray_sample_reference,
    unpack_camera_label_reference,
)
from portrait_engine.ops.reference.render import (
    color_activation_reference,
    decode_reference,
    decoder_effective_weights,
    render_rays_reference,
)
from portrait_engine.ops.reference.skinning import (
    SMPL_PARENTS,
    batch_rodrigues_reference,
    forward_kinematics_reference,
    lbs_reference,
    mesh_deform_reference,
    nearest_faces_reference,
    nearest_two_distances,
    point_triangle_distance2,
    skin_points_reference,
    triangle_frames,
)
from portrait_engine.ops.reference.triplane import (
    EG3D_PLANE_AXES,
    NAMED_PLANE_AXES,
    PANOHEAD_PLANE_AXES,
    plane_axes_tensor,
    project_onto_planes,
    triplane_sample_reference,
)

__all__ = [
    "CAMERA_LABEL_SIZE",
    "SOFTPLUS_THRESHOLD",
    "TRANSMITTANCE_EPS",
    "EG3D_PLANE_AXES",
    "NAMED_PLANE_AXES",
    "PANOHEAD_PLANE_AXES",
    "SMPL_PARENTS",
    "attention_pool_reference",
    "importance_uniforms",
    "merge_samples_reference",
    "batch_rodrigues_reference",
    "forward_kinematics_reference",
    "lbs_reference",
    "mesh_deform_reference",
    "nearest_faces_reference",
    "nearest_two_distances",
    "point_triangle_distance2",
    "skin_points_reference",
    "softplus_reference",
    "triangle_frames",
    "plane_axes_tensor",
    "project_onto_planes",
    "color_activation_reference",
    "decoder_outputs_reference",
    "decode_reference",
    "decoder_effective_weights",
    "render_rays_reference",
    "ray_march_reference",
    "ray_sample_reference",
    "sample_importance_reference",
    "triplane_sample_reference",
    "unpack_camera_label_reference",
]
