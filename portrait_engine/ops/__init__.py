"""The public ops. Each validates its inputs and runs on the chosen backend.

| op | what |
|---|---|
| :func:`triplane_sample` | tri-plane / tri-grid feature sampling (EG3D ``sample_from_planes``) |
| :func:`attention_pool` | attention-weighted embedding pooling (RI perceptibility attention) |
| :func:`ray_sample` | camera rays of an image (EG3D ``RaySampler``) |
| :func:`ray_march` | volume compositing along rays (EG3D ``MipRayMarcher2``) |
| :func:`sample_importance` | EG3D importance sampling of fine depths from coarse weights |
| :func:`merge_samples` | union of two depth-sorted sample sets per ray (EG3D ``unify_samples``) |
| :func:`lbs` | SMPL linear blend skinning (``smplx.lbs.lbs``), fused kinematics and skinning |
| :func:`skin_points` | blend per-joint transforms per point and apply or invert them |
| :func:`mesh_deform` | 3DPortraitGAN's posed-to-canonical point transfer (nearest triangle) |
| :func:`render_rays` | fused neural renderer: sample, OSG-decode and march each ray in one kernel |
| :func:`softplus` | the OSG decoder's hidden activation (``torch.nn.Softplus()``) |
| :func:`decoder_outputs` | the OSG decoder's output head: raw density, widened-sigmoid colours |
| :func:`cpu_cache_info`, :func:`empty_cpu_cache` | the native CPU kernels' cache of large outputs |
"""

from portrait_engine.ops.activation import decoder_outputs, softplus
from portrait_engine.ops.attention_pool import attention_pool
from portrait_engine.ops.importance import merge_samples, sample_importance
from portrait_engine.ops.memory import cpu_cache_info, empty_cpu_cache
from portrait_engine.ops.mesh_deform import mesh_deform
from portrait_engine.ops.rays import ray_march, ray_sample, unpack_camera_label
from portrait_engine.ops.render import render_rays
from portrait_engine.ops.skinning import lbs, skin_points
from portrait_engine.ops.triplane import triplane_sample

__all__ = [
    "attention_pool",
    "cpu_cache_info",
    "decoder_outputs",
    "empty_cpu_cache",
    "lbs",
    "merge_samples",
    "mesh_deform",
    "ray_march",
    "ray_sample",
    "render_rays",
    "sample_importance",
    "skin_points",
    "softplus",
    "triplane_sample",
    "unpack_camera_label",
]
