"""``PortraitGANConfig``: every size and switch of the 3DPortraitGAN networks, in one dataclass.

The config is saved with every checkpoint (JSON, :meth:`PortraitGANConfig.to_json`) and read
back with :meth:`PortraitGANConfig.from_json`; unknown keys are an error, so a checkpoint of a
different layout fails loudly instead of loading half its weights.

Presets (:meth:`PortraitGANConfig.preset`):

- ``paper``: the published 3DPortraitGAN model (EG3D ``full-head`` lineage, PanoHead tri-grid):
  z, w 512; mapping depth 2 (EG3D's ``--map-depth`` default); backbone 256² emitting a
  tri-grid of 3 planes x 32 channels x depth 3 (288 channels); channel base 32768, max 512;
  neural rendering 64 -> 128 (fade), 48 + 48 samples, 3DPortraitGAN ``full-head`` rendering
  with its ``--radius_scale`` default 0.7: ray ``2.25 + 0.45 (1 - 0.7)`` = 2.385 ..
  ``2.7 + 0.6 · 0.7`` = 3.12, box_warp 0.7, triplane crop 0.1 (the published renderer's
  default); density noise 0 at inference (training fades it
  from 1 over ``density_noise_fade_kimg``: the loss sets it); pose deformation thickness 0.05;
  the
  corrected tri-plane axes of 3DPortraitGAN's renderer (PanoHead's, EG3D issue 67); EG3D's
  ``SuperresolutionHybrid8XDC`` (bilinear to 128, blocks of 256 and 128 channels -> 512²);
  ToRGB raw image and a background network (``--use_torgb_raw=1``, ``use_background``);
  the dual discriminator with mask channel at 512², mapping depth 8 (the StyleGAN2 default
  of ``D_kwargs.mapping_kwargs``), minibatch-std group 4, ``conv_clamp`` 256 (published
  with ``d_num_fp16_res=4``); the generator uses no clamp (``g_num_fp16_res=0``).
- ``small`` [ours]: 256² output (EG3D's ``SuperresolutionHybrid4X`` layout: a same-size block
  at 128 then one up block), backbone 128², z, w 256, channel base 16384, max 256, 32 + 32
  samples.
- ``tiny`` [ours]: 64² output from 32² neural rendering, backbone 32² with 16 channels x
  depth 3 per plane, z, w 64, channel base 1024 max 64; a few MB, trains on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESETS = ("paper", "small", "tiny")


def _is_pow2(n: int) -> bool:
    return isinstance(n, int) and n >= 4 and (n & (n - 1)) == 0


@dataclass
class PortraitGANConfig:
    """All hyper-parameters of the 3DPortraitGAN generator and discriminator."""

    # Latents and conditioning.
    z_dim: int = 512
    w_dim: int = 512
    camera_dim: int = 25  # 16 cam2world + 9 normalised intrinsics (EG3D label)
    pose_dim: int = 6  # neck and head axis-angle (3DPortraitGAN)
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.998
    c_scale: float = 1.0  # multiplier of the generator's conditioning label (EG3D c_scale)

    # StyleGAN2 backbone -> tri-grid.
    backbone_resolution: int = 256
    channel_base: int = 32768
    channel_max: int = 512
    triplane_channels: int = 32
    triplane_depth: int = 3  # 1 = plain EG3D tri-plane
    conv_clamp: float | None = None
    fused_modconv_default: bool | str = "inference_only"

    # Rendering (consumed by the renderer / decoder modules).
    img_resolution: int = 512
    neural_rendering_resolution: int = 64
    neural_rendering_resolution_final: int = 128
    feature_channels: int = 32  # decoder output = super-resolution input channels
    decoder_hidden: int = 64
    decoder_lr_multiplier: float = 1.0
    decoder_activation: str = "none"  # 3DPortraitGAN: "none" (with ToRGB raw); EG3D: "sigmoid"
    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    ray_start: float = 2.385  # 3DPortraitGAN full-head: 2.25 + (2.7 - 2.25)(1 - radius_scale)
    ray_end: float = 3.12  # (3.3 - 2.7) radius_scale + 2.7, radius_scale 0.7
    box_warp: float = 0.7  # radius_scale
    density_noise: float = 0.0  # std of the noise on raw densities (training schedule: loss)
    # PanoHead's crop margin. 3DPortraitGAN renders with 0.1: its
    # training/volumetric_rendering/renderer.py ImportanceRenderer.forward defaults
    # triplane_crop=0.1 and TriPlaneGenerator.synthesis (training/smpl_triplane.py) never
    # overrides it; PanoHead's renderer has the same default. Applied to the deformed points.
    triplane_crop: float = 0.1
    deform_thickness: float = 0.05  # 3DPortraitGAN's --thickness (PoseDeformer)
    # [ours] mesh size of the procedural stand-in body used when no SMPL file is given
    body_rings: int = 40
    body_around: int = 48
    plane_axes: str = "panohead"  # 3DPortraitGAN's corrected tri-plane axes (= PanoHead's)
    use_torgb_raw: bool = True
    use_background: bool = True

    # Super-resolution (EG3D hybrid).
    sr_input_resolution: int = 128
    sr_channels: tuple[int, int] = (256, 128)
    sr_antialias: bool = True
    sr_noise_mode: str = "none"

    # Pose branches (3DPortraitGAN).
    g_pose_hidden: tuple[int, ...] = (128, 32)
    d_pose_hidden: tuple[int, ...] = (2048, 512, 128, 32)
    explicitly_symmetry: bool = True

    # Discriminator.
    disc_channel_base: int = 32768
    disc_channel_max: int = 512
    disc_mapping_layers: int = 8
    disc_conv_clamp: float | None = 256
    mbstd_group_size: int = 4
    mbstd_num_channels: int = 1
    disc_c_noise: float = 0.0
    mask_channels: int = 1

    preset_name: str = field(default="paper")

    def __post_init__(self) -> None:
        for name in ("backbone_resolution", "img_resolution", "sr_input_resolution"):
            if not _is_pow2(getattr(self, name)):
                raise ValueError(f"{name} must be a power of two >= 4, got {getattr(self, name)}")
        for name in (
            "z_dim",
            "w_dim",
            "camera_dim",
            "mapping_layers",
            "channel_base",
            "channel_max",
            "triplane_channels",
            "triplane_depth",
            "feature_channels",
            "neural_rendering_resolution",
            "disc_channel_base",
            "disc_channel_max",
            "disc_mapping_layers",
            "body_rings",
            "body_around",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.pose_dim != 6:
            raise ValueError(f"pose_dim must be 6 (neck + head axis-angle), got {self.pose_dim}")
        self.sr_channels = tuple(self.sr_channels)
        self.g_pose_hidden = tuple(self.g_pose_hidden)
        self.d_pose_hidden = tuple(self.d_pose_hidden)
        if len(self.sr_channels) != 2:
            raise ValueError(f"sr_channels must have 2 entries, got {self.sr_channels}")
        factor = self.img_resolution // self.sr_input_resolution
        if factor not in (1, 2, 4):
            raise ValueError(
                "img_resolution / sr_input_resolution must be 1, 2 or 4 (two SR blocks), got "
                f"{self.img_resolution} / {self.sr_input_resolution}"
            )
        if self.feature_channels < 3:
            raise ValueError(f"feature_channels must be >= 3, got {self.feature_channels}")
        if self.sr_noise_mode not in ("random", "const", "none"):
            raise ValueError(f"sr_noise_mode must be random/const/none, got {self.sr_noise_mode!r}")
        if self.plane_axes not in ("eg3d", "panohead"):
            raise ValueError(f"plane_axes must be 'eg3d' or 'panohead', got {self.plane_axes!r}")
        if self.decoder_activation not in ("none", "sigmoid", "lrelu"):
            raise ValueError(
                f"decoder_activation must be none/sigmoid/lrelu, got {self.decoder_activation!r}"
            )
        if not (0 < self.ray_start < self.ray_end) or self.box_warp <= 0:
            raise ValueError(
                f"need 0 < ray_start < ray_end and box_warp > 0, got {self.ray_start}, "
                f"{self.ray_end}, {self.box_warp}"
            )
        if self.density_noise < 0 or self.triplane_crop < 0 or self.deform_thickness < 0:
            raise ValueError(
                "density_noise, triplane_crop and deform_thickness must be >= 0, got "
                f"{self.density_noise}, {self.triplane_crop}, {self.deform_thickness}"
            )
        if self.mbstd_group_size < 1:
            raise ValueError(f"mbstd_group_size must be >= 1, got {self.mbstd_group_size}")

    # Derived sizes.
    @property
    def conditioning_dim(self) -> int:
        """Length of the label the generator's and the discriminator's mappings see (31)."""
        return self.camera_dim + self.pose_dim

    @property
    def backbone_channels(self) -> int:
        """Output channels of the backbone: 3 planes x channels x depth (288 at ``paper``)."""
        return 3 * self.triplane_channels * self.triplane_depth

    @property
    def num_ws(self) -> int:
        """Number of w vectors the backbone consumes (2 per block + 1 for the last ToRGB)."""
        return 2 * int(math.log2(self.backbone_resolution)) - 2

    # Serialisation.
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PortraitGANConfig:
        if not isinstance(data, dict):
            raise TypeError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PortraitGANConfig keys: {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> PortraitGANConfig:
        """Parse JSON text, or read it from a path to an existing file."""
        text = str(text_or_path)
        path = Path(text) if not text.lstrip().startswith("{") else None
        if path is not None:
            if not path.is_file():
                raise FileNotFoundError(f"config file {path} does not exist")
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config is not valid JSON: {err}") from err
        return cls.from_dict(data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> PortraitGANConfig:
        """The ``paper``, ``small`` or ``tiny`` preset, with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
        values: dict[str, Any] = {"preset_name": name}
        if name == "small":
            values.update(
                z_dim=256,
                w_dim=256,
                backbone_resolution=128,
                channel_base=16384,
                channel_max=256,
                img_resolution=256,
                neural_rendering_resolution=64,
                neural_rendering_resolution_final=128,
                depth_resolution=32,
                depth_resolution_importance=32,
                sr_input_resolution=128,
                sr_channels=(128, 64),
                d_pose_hidden=(512, 128, 32),
                disc_channel_base=16384,
                disc_channel_max=256,
                disc_mapping_layers=4,
            )
        elif name == "tiny":
            values.update(
                z_dim=64,
                w_dim=64,
                backbone_resolution=32,
                channel_base=1024,
                channel_max=64,
                triplane_channels=16,
                img_resolution=64,
                neural_rendering_resolution=32,
                neural_rendering_resolution_final=32,
                feature_channels=16,
                decoder_hidden=32,
                depth_resolution=12,
                depth_resolution_importance=12,
                sr_input_resolution=32,
                sr_channels=(32, 16),
                g_pose_hidden=(32, 16),
                d_pose_hidden=(128, 32),
                disc_channel_base=1024,
                disc_channel_max=64,
                disc_mapping_layers=2,
                mbstd_group_size=2,
                body_rings=6,
                body_around=8,
            )
        values.update(overrides)
        return cls(**values)
