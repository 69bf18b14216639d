"""Body models for 3DPortraitGAN's pose deformation.

:func:`load_body_model` reads a real SMPL / SMPL-X file through ``smplx`` when the user has
one (licensed downloads: never fetched); :func:`procedural_body_model` builds a stand-in with
the same structure (SMPL's 24-joint tree, a head-neck-shoulders mesh) for tests, demos and
synthetic data. :meth:`BodyModel.full_pose` maps 3DPortraitGAN's 6-number body pose to the
neck (joint 12) and head (joint 15) rotations.
"""

from portrait_engine.body.loading import body_model, load_body_model
from portrait_engine.body.model import HEAD_JOINT, NECK_JOINT, BodyModel
from portrait_engine.body.procedural import SMPL_JOINT_NAMES, procedural_body_model

__all__ = [
    "HEAD_JOINT",
    "NECK_JOINT",
    "SMPL_JOINT_NAMES",
    "BodyModel",
    "body_model",
    "load_body_model",
    "procedural_body_model",
]
