"""3DPortraitGAN networks (issue 6): StyleGAN2 layers, the camera + pose conditioned mapping,
the tri-grid backbone, the pose branches, EG3D's hybrid super-resolution and the pose-aware
dual discriminator, assembled in ``PortraitGenerator``, and safetensors checkpoints. The
rendering modules (renderer, decoder, pose deformer) live in
:mod:`portrait_engine.nn`.
"""

from portrait_engine.models.portrait_gan.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from portrait_engine.models.portrait_gan.config import PRESETS, PortraitGANConfig
from portrait_engine.models.portrait_gan.discriminator import (
    PoseAwareDualDiscriminator,
    blur,
    blur_sigma_at,
    filtered_resizing,
    real_inputs,
)
from portrait_engine.models.portrait_gan.generator import PortraitDecoder, PortraitGenerator
from portrait_engine.models.portrait_gan.image_head import NeuralImageHead
from portrait_engine.models.portrait_gan.mapping import (
    MappingNetwork,
    PortraitMapping,
    conditioning_label,
)
from portrait_engine.models.portrait_gan.pose_branch import (
    DiscriminatorPoseBranch,
    GeneratorPoseBranch,
)
from portrait_engine.models.portrait_gan.superresolution import SuperResolution
from portrait_engine.models.portrait_gan.synthesis import (
    BackgroundSynthesis,
    SynthesisNetwork,
    TriGridSynthesis,
)

__all__ = [
    "PRESETS",
    "BackgroundSynthesis",
    "CheckpointError",
    "DiscriminatorPoseBranch",
    "GeneratorPoseBranch",
    "MappingNetwork",
    "NeuralImageHead",
    "PortraitDecoder",
    "PortraitGANConfig",
    "PortraitGenerator",
    "PortraitMapping",
    "PoseAwareDualDiscriminator",
    "SuperResolution",
    "SynthesisNetwork",
    "TriGridSynthesis",
    "blur",
    "blur_sigma_at",
    "conditioning_label",
    "filtered_resizing",
    "load_checkpoint",
    "read_checkpoint",
    "real_inputs",
    "save_checkpoint",
]
